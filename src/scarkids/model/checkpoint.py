"""Checkpoint files: one ``.pt`` file, written atomically, validated when read."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from scarkids.errors import CheckpointError
from scarkids.train import distributed

FORMAT = "scarkids-checkpoint"
FORMAT_VERSION = 1


def resolve_path(path: str | os.PathLike) -> Path:
    """A directory (existing, or a path without suffix) means ``<dir>/model.pt``."""
    p = Path(path)
    if p.is_dir() or p.suffix == "":
        return p / "model.pt"
    return p


def write_atomic(payload: dict, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file beside ``path``, then rename over it.

    A reader never sees a half-written checkpoint, even when the process is killed. In a
    distributed run only rank 0 writes (every rank holds the same weights).
    """
    path = resolve_path(path)
    if not distributed.is_main_process():
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise CheckpointError(
            f"{path}: cannot write checkpoint ({e.strerror}); choose a writable checkpoint_dir"
        ) from e
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; a checkpoint is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read(path: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> dict:
    """Load and validate a checkpoint written by :func:`write_atomic`."""
    path = resolve_path(path)
    if not path.exists():
        raise CheckpointError(
            f"{path}: checkpoint not found (ls the checkpoint_dir, or pass --checkpoint)"
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
