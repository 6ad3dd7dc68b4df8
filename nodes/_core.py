"""The library, imported the right way whichever way the pack itself was imported.

ComfyUI imports the pack as a package named after its folder (``ComfyUI-EmotiveTalk``), so this
module is ``ComfyUI-EmotiveTalk.nodes._core`` and the library is the sibling package
``ComfyUI-EmotiveTalk.emotivetalk_core``; a plain ``import emotivetalk_core`` would fail there (the
custom_nodes folder is not on sys.path), or worse, pick up another copy. Under pytest the repo
root is on sys.path and ``nodes`` is a top-level package, where ``..`` does not exist.

Rather than trying the relative import and catching ImportError (which would also swallow a
genuine ImportError raised inside the library and replace it with a misleading one), the
package's own ``__package__`` says which case this is.
"""

from __future__ import annotations

import importlib

_PARENT = __package__.rpartition(".")[0]  # "ComfyUI-EmotiveTalk.nodes" -> "ComfyUI-EmotiveTalk"; "nodes" -> ""
CORE_PACKAGE = f"{_PARENT}.emotivetalk_core" if _PARENT else "emotivetalk_core"

# Light modules only (torch, numpy): diffusers, transformers and av load inside core functions.
audio = importlib.import_module(f"{CORE_PACKAGE}.media.audio")
bundles = importlib.import_module(f"{CORE_PACKAGE}.bundles")
configs = importlib.import_module(f"{CORE_PACKAGE}.configs")
emotion = importlib.import_module(f"{CORE_PACKAGE}.emotion")
pipeline = importlib.import_module(f"{CORE_PACKAGE}.pipeline")
settings = importlib.import_module(f"{CORE_PACKAGE}.settings")
text = importlib.import_module(f"{CORE_PACKAGE}.networks.text")


def core_module(name: str):
    """A library module imported on first use (media.video_writer, svd.load, media.face_crop: kept out of start-up)."""
    return importlib.import_module(f"{CORE_PACKAGE}.{name}")
