"""Training: the loop, its settings and resumable state, devices, distributed runs, memory.

:class:`TrainingSettings` is the one source of the training defaults; the config schema,
:meth:`scarkids.SCARKIDS.train` and the command line read them from there. Names load on
first use, so that reading the settings does not load torch.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "TrainingSettings": "settings",
    "default_batch_size": "settings",
    "default_learning_rate": "settings",
    "default_max_epochs": "settings",
    "TrainingData": "state",
    "TrainingState": "state",
    "resolve_device": "device",
    "cluster_latent": "loop",
    "evaluate_loss": "loop",
    "train_module": "loop",
    "release_freed_memory": "memory",
    "releasing_memory": "memory",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"scarkids.train.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'scarkids.train' has no attribute {name!r}")
