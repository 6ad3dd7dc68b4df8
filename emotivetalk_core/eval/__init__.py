"""Evaluation metrics of the paper's tables: FID, FVD, Sync-C / Sync-D and E-FID between generated
and ground-truth videos, with the standard networks read from local safetensors files.

``python -m emotivetalk_core.eval`` (:mod:`.cli`) is the command; docs/EVALUATION.md describes the
metrics, the weight files and how to convert the published checkpoints. The pieces:
:mod:`.frechet` (the Frechet distance), :mod:`.inception` (FID), :mod:`.i3d` (FVD),
:mod:`.syncnet` (Sync-C / Sync-D, MFCC), :mod:`.expression` (E-FID), :mod:`.weights` (loading),
:mod:`.videos` (pairing), :mod:`.evaluate` (running them over videos).

Importing this package (or :mod:`.cli`) imports neither torch nor scipy: ComfyUI imports
``emotivetalk_core`` at start-up. The network modules import torch when they are used.
"""
