"""Writing ``.h5ad`` files the same way under pandas 2 and pandas 3."""

from __future__ import annotations

import os
import warnings


def write_h5ad_file(adata, path: str | os.PathLike) -> None:
    """``adata.write_h5ad(path)``, with anndata's FutureWarnings silenced and pandas 3's
    string columns and indexes written as nullable strings (anndata writes those only on
    opt-in, ``allow_write_nullable_strings``; files then need anndata >= 0.11 to read)."""
    import anndata as ad

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        if hasattr(ad.settings, "allow_write_nullable_strings"):
            with ad.settings.override(allow_write_nullable_strings=True):
                adata.write_h5ad(path)
        else:
            adata.write_h5ad(path)
