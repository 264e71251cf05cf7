"""Shared test helpers (import as `from helpers import ...`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


#: devices a test runs on: the CPU always, a CUDA GPU where there is one (these cases skip
#: with a message on machines without one, such as CI; run them on a GPU machine)
NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEVICES = ["cpu", pytest.param("cuda", marks=NEEDS_CUDA)]


def shared_file(name: str) -> Path:
    """A file of ../shared/data, or a clean skip where that folder is absent."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(
            f"{path} not found: the shared datasets live in ../shared/data beside the checkout"
        )
    return path


def same_label_fraction(embedding: np.ndarray, labels, k: int = 15) -> float:
    """Mean fraction of each cell's k nearest neighbours that share its label."""
    from sklearn.neighbors import NearestNeighbors

    idx = (
        NearestNeighbors(n_neighbors=k + 1)
        .fit(embedding)
        .kneighbors(embedding, return_distance=False)
    )
    labels = np.asarray(labels)
    return float((labels[idx[:, 1:]] == labels[:, None]).mean())


def random_expectation(labels) -> float:
    """Expected same-label neighbour fraction when neighbours ignore the label."""
    _, counts = np.unique(np.asarray(labels), return_counts=True)
    p = counts / counts.sum()
    return float((p**2).sum())
