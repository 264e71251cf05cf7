"""Checkpoints written by earlier code load and give the same outputs (issue: a house that
shows its plan: behaviour unchanged by the move to subpackages)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import scarkids
from scarkids import SCARKIDS

DATA = Path(__file__).resolve().parent / "data"


def test_a_checkpoint_of_the_flat_layout_loads_with_the_same_outputs(one_thread):
    """tests/data/make_old_checkpoint.py wrote it with the code before the move (793ff14)."""
    adata = scarkids.datasets.simulate(200, 60, n_batches=2, n_cell_types=3, seed=11)
    SCARKIDS.setup_anndata(adata, batch_key="batch", labels_key="cell_type")
    model = SCARKIDS.load(DATA / "checkpoint_0.1.0_flat.pt", adata)
    expected = np.load(DATA / "checkpoint_0.1.0_flat_outputs.npz")
    np.testing.assert_allclose(model.get_latent_representation(), expected["latent"], atol=1e-5)
    np.testing.assert_allclose(model.predict(soft=True).to_numpy(), expected["probs"], atol=1e-5)
    expression = model.get_normalized_expression(transform_batch=0, return_numpy=True)[:20]
    np.testing.assert_allclose(expression, expected["expression"], rtol=1e-4)
