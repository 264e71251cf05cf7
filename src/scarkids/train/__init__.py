"""Training: the loop, its settings (the one source of the training defaults) and its
resumable state.

:class:`TrainingSettings` is the one source of the training defaults; the config schema,
:meth:`scarkids.SCARKIDS.train` and the command line read them from there. The package
re-exports the documented names only (the loop's functions are imported from
:mod:`scarkids.train.loop`); the device, the process group and memory release are in
:mod:`scarkids.compute`. Names load on first use, so that reading the settings does not load
torch.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "TrainingSettings": "settings",
    "default_batch_size": "settings",
    "default_learning_rate": "settings",
    "default_max_epochs": "settings",
    "TrainingState": "state",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"scarkids.train.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'scarkids.train' has no attribute {name!r}")
