"""Checkpoint files: one ``.pt`` file, written atomically, validated when read."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from scarkids.compute import distributed
from scarkids.data.files import write_atomic
from scarkids.errors import CheckpointError

FORMAT = "scarkids-checkpoint"
FORMAT_VERSION = 2


def resolve_path(path: str | os.PathLike) -> Path:
    """A directory (existing, or a path without suffix) means ``<dir>/model.pt``."""
    p = Path(path)
    if p.is_dir() or p.suffix == "":
        return p / "model.pt"
    return p


def save(payload: dict, path: str | os.PathLike) -> Path:
    """``torch.save`` the ``payload`` to ``path`` (a directory means ``<dir>/model.pt``),
    atomically (:func:`scarkids.data.files.write_atomic`) and flushed to disk.

    A reader never sees a half-written checkpoint, even when the process is killed. In a
    distributed run only rank 0 writes (every rank holds the same weights).
    """
    path = resolve_path(path)
    if not distributed.is_main_process():
        return path

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())

    try:
        return write_atomic(path, write)
    except OSError as e:
        raise CheckpointError(
            f"{path}: cannot write checkpoint ({e.strerror}); save it in a writable folder"
        ) from e


def read(path: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> dict:
    """Load and validate a checkpoint written by :func:`save`."""
    path = resolve_path(path)
    if not path.exists():
        raise CheckpointError(
            f"{path}: checkpoint not found; check the path given to SCARKIDS.load"
        )
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for a bad file
        raise CheckpointError(
            f"{path}: not a readable checkpoint ({type(e).__name__}); the file is corrupted or "
            "was not written by scARKIDS"
        ) from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a scARKIDS checkpoint (no '{FORMAT}' header)")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: written by a newer scARKIDS (format {payload['format_version']}, "
            f"package {payload.get('package_version')}); upgrade scarkids to read it"
        )
    return payload
