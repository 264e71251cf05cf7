"""scARKIDS: single-cell RNA-seq integration with a VAE and a latent diffusion prior.

Heavy submodules (torch, anndata) load on first use, so ``scarkids.config`` and the command
line's ``--help`` stay fast.
"""

from __future__ import annotations

import importlib
from importlib import metadata

from scarkids.errors import (
    CheckpointError,
    ConfigError,
    InputDataError,
    ScarkidsError,
    TrainingError,
)

try:  # the one place the version is written is pyproject.toml
    __version__ = metadata.version("scarkids")
except metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0.0.0+unknown"

_LAZY = {
    "SCARKIDS": ("model.scarkids", "SCARKIDS"),
    "datasets": ("datasets", None),
    "evaluate": ("evaluation", "evaluate"),
}

__all__ = [
    "SCARKIDS",
    "datasets",
    "evaluate",
    "ScarkidsError",
    "ConfigError",
    "InputDataError",
    "CheckpointError",
    "TrainingError",
    "__version__",
]


def __getattr__(name: str):
    if name in _LAZY:
        module_name, attr = _LAZY[name]
        module = importlib.import_module(f".{module_name}", __name__)
        return module if attr is None else getattr(module, attr)
    raise AttributeError(f"module 'scarkids' has no attribute {name!r}")
