"""What a training run is given and what it carries from epoch to epoch.

:class:`TrainingData` (device-resident tensors) and :class:`TrainingState` (everything a checkpoint needs to continue a run exactly
where an epoch ended, RNG streams included). The loop itself is :mod:`scarkids.train.loop`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from scarkids.train.settings import (  # noqa: F401 (re-exported)
    CELL_PASSES,
    TrainingSettings,
    default_batch_size,
    default_learning_rate,
    default_max_epochs,
)


class RowStore(Protocol):
    """What the loop needs of a count store (:class:`scarkids.data.DeviceMatrix`, or
    :class:`scarkids.data.ChunkedStore` for counts read from disk)."""

    def rows_and_nonzeros(self, idx: torch.Tensor) -> tuple[torch.Tensor, object]: ...

    def row_block(self, start: int, end: int) -> torch.Tensor: ...

    def shuffle(self, index: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor: ...

    def end_epoch(self) -> None: ...


@dataclass
class TrainingData:
    """Device-resident tensors for one training run."""

    X: RowStore  # counts on the device, or read from disk chunk by chunk
    batch: torch.Tensor  # (n,) long
    labels: torch.Tensor  # (n,) long, -1 = unlabelled
    train_index: torch.Tensor  # (n_train,) long
    val_index: torch.Tensor  # (n_val,) long, may be empty
    label_mode: str = "mixed"


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
    cluster_refresh_epoch: int | None = None

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
