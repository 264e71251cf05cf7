"""What a training run is given and what it carries from epoch to epoch.

:class:`TrainingData` (device-resident tensors), :class:`TrainingSettings` (the loop's
knobs) and :class:`TrainingState` (everything a checkpoint needs to continue a run exactly
where an epoch ended, RNG streams included). The loop itself is :mod:`scarkids.training`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .data import DeviceMatrix


@dataclass
class TrainingData:
    """Device-resident tensors for one training run."""

    X: DeviceMatrix  # or a ChunkedStore (counts read from disk)
    batch: torch.Tensor  # (n,) long
    labels: torch.Tensor  # (n,) long, -1 = unlabelled
    train_index: torch.Tensor  # (n_train,) long
    val_index: torch.Tensor  # (n_val,) long, may be empty
    label_mode: str = "mixed"


@dataclass
class TrainingSettings:
    max_epochs: int = 100
    batch_size: int = 128
    learning_rate: float = 1e-3
    weight_decay: float = 1e-6
    grad_clip_norm: float | None = 10.0
    #: the genes-wide layers in bfloat16 while training (see scarkids.nn.wide_linear)
    mixed_precision: bool = False
    kl_warmup_epochs: int = 0
    lr_warmup_epochs: int = 0
    lr_scheduler: str | None = None
    classification_weight: float = 50.0
    early_stopping: bool = True
    early_stopping_patience: int = 20
    nan_retries: int = 2
    #: unsupervised only: after this many epochs the latent means are clustered with
    #: k-means and, for ``cluster_pretrain_epochs`` epochs, those clusters act as labels, so
    #: that q(c|z0) and p(z0|c) agree on a partition before c is treated as latent again
    #: (otherwise q(c|z0) tends to stay uniform). ``None`` disables it.
    cluster_init_epoch: int | None | str = "auto"
    cluster_pretrain_epochs: int = 10
    seed: int = 0
    progress_bar: bool = True
    #: name shown in the progress bar and log lines
    name: str = "scARKIDS"


@dataclass
class TrainingState:
    """Everything needed to continue a run exactly where an epoch ended."""

    epoch: int = 0  # completed epochs
    history: dict[str, list[float]] = field(default_factory=dict)
    best_loss: float = math.inf
    best_epoch: int = -1
    best_state: dict | None = None
    epochs_since_best: int = 0
    optimizer_state: dict | None = None
    rng_state: dict | None = None
    lr_scale: float = 1.0
    stopped_early: bool = False
    pseudo_labels: torch.Tensor | None = None
    cluster_init_epoch: int | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict) -> TrainingState:
        return cls(**d)


EpochCallback = Callable[[TrainingState, dict[str, float], bool], None]


def get_rng_state() -> dict:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
