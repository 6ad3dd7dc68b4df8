"""Measures shared by tests and benchmarks.

``seam_ratio`` (docs/ARCHITECTURE.md, "Long video: windows and seams") is the one way seams are
measured everywhere: the mean absolute frame-to-frame change of decoded frames at window
boundaries divided by the same inside windows. 1 means boundaries look like any other moment; a
visible seam is well above.
"""

from __future__ import annotations

import torch


def boundary_transitions(spans: list[tuple[int, int]]) -> list[int]:
    """Transitions ``j`` (frame j -> j + 1) at window boundaries.

    For overlapping windows, every transition from the frame before the next window starts to
    the previous window's last frame (the whole handover); for back-to-back windows, the cut.
    """
    transitions: set[int] = set()
    for (_, previous_stop), (next_start, _) in zip(spans, spans[1:]):
        transitions.update(range(next_start - 1, max(previous_stop, next_start)))
    return sorted(transitions)


def seam_ratio(frames: torch.Tensor, spans: list[tuple[int, int]]) -> float:
    """``frames [N, ...]``; ``spans`` the (start, stop) of each window over them."""
    if len(spans) < 2:
        raise ValueError("a seam ratio needs at least two windows")
    change = (frames[1:].float() - frames[:-1].float()).abs().flatten(1).mean(dim=1)
    at_boundaries = boundary_transitions(spans)
    inside = sorted(set(range(len(change))) - set(at_boundaries))
    return float(change[at_boundaries].mean() / change[inside].mean())
