"""emotivetalk_core: the EmotiveTalk method (V-AID, Di-CTE, EDI, ETHD) as a plain Python library.

Never imports ComfyUI. Importing the package is cheap: heavy libraries (diffusers, transformers,
librosa, PyAV) are imported inside the functions that need them.
"""

__version__ = "0.1.0"
