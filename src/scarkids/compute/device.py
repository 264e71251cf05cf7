"""Choosing the torch device for a run."""

from __future__ import annotations

import torch

from scarkids.errors import InputDataError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` (a CUDA GPU when there is one, else the CPU), ``"cpu"``, ``"cuda"``,
    ``"cuda:1"`` or a :class:`torch.device`, as a :class:`torch.device`; a one-line
    :class:`~scarkids.errors.InputDataError` when CUDA is asked for and absent."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputDataError(
            "device 'cuda' was requested but no CUDA GPU is available; use 'auto' or 'cpu'"
        )
    return torch.device(device)
