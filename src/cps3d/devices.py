"""Which torch device a run uses: the one asked for, else CUDA when available, else the CPU (training, prediction,
the demo and comparisons choose it here alike)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a torch device; None: CUDA when available, else the CPU. A CUDA device asked for on a machine
    without CUDA is a ValueError (rather than a failure later, inside torch)."""
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    chosen = torch.device(device)
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} was requested but no CUDA device is available; use --device cpu")
    return chosen
