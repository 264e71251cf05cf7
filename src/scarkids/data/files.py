"""Writing files so that a reader never sees half of one: the one atomic writer, and the one
``.h5ad`` writer (the same under pandas 2 and pandas 3)."""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_atomic(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp)`` for a temporary file beside ``path``, then rename it over ``path``.

    Parameters
    ----------
    path
        The file to write; its folder is created when missing.
    write
        Writes the content to the temporary file whose name it is given.

    Returns
    -------
    pathlib.Path
        ``path``. A reader sees the old file or the complete new one, never half of one; when
        ``write`` raises, the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes owner-only files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """``obj`` as indented JSON (values JSON cannot hold written as strings), atomically."""
    text = json.dumps(obj, indent=2, default=str) + "\n"
    return write_atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_h5ad(adata, path: str | os.PathLike, *, atomic: bool = True) -> Path:
    """Write ``adata`` to ``path`` as ``.h5ad``.

    Parameters
    ----------
    adata
        The AnnData to write.
    path
        The file to write.
    atomic
        Write a temporary file and rename it (:func:`write_atomic`); ``False`` writes
        ``path`` directly (for a caller that is already writing a temporary file).

    Returns
    -------
    pathlib.Path
        ``path``. anndata's FutureWarnings are silenced; pandas 3's string columns and
        indexes are written as nullable strings (anndata writes those only on opt-in,
        ``allow_write_nullable_strings``; such files need anndata >= 0.11 to read).
    """
    if atomic:
        return write_atomic(path, lambda tmp: write_h5ad(adata, tmp, atomic=False))
    import anndata as ad

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        if hasattr(ad.settings, "allow_write_nullable_strings"):
            with ad.settings.override(allow_write_nullable_strings=True):
                adata.write_h5ad(path)
        else:
            adata.write_h5ad(path)
    return Path(path)
