"""``mixed_precision`` / ``training.use_amp``: bfloat16 genes-wide layers while training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import same_label_fraction

import scarkids
from scarkids import SCARKIDS
from scarkids.nn.layers import wide_linear


def test_wide_linear_bf16_close_to_float32_and_differentiable():
    g = torch.Generator().manual_seed(0)
    layer = torch.nn.Linear(2000, 64)
    x = torch.rand(32, 2000, generator=g).log1p().requires_grad_()
    exact = wide_linear(layer, x, False)
    low = wide_linear(layer, x, True)
    assert low.dtype == torch.float32
    rel = (low - exact).norm() / exact.norm()
    assert 1e-6 < rel < 1e-2  # really computed in bfloat16, and close
    low.sum().backward()
    assert layer.weight.grad.dtype == torch.float32 and x.grad.dtype == torch.float32
    expected = torch.ones(32, 64) @ layer.weight.detach()
    assert (x.grad - expected).norm() / expected.norm() < 1e-2


@pytest.mark.slow
def test_mixed_precision_training_matches_float32():
    adata = scarkids.datasets.simulate(1500, 300, n_batches=2, n_cell_types=4, seed=5)
    SCARKIDS.setup_anndata(adata, batch_key="batch", labels_key="cell_type")
    runs = {}
    for mixed in (False, True):
        model = SCARKIDS(adata, seed=0)
        model.train(25, progress_bar=False, seed=0, mixed_precision=mixed)
        # the flags are training-only: inference runs in float32 again
        assert not model.module.encoder.body.bf16 and not model.module.decoder.bf16
        runs[mixed] = model
    loss32 = np.array(runs[False].history["val_loss"])
    loss16 = np.array(runs[True].history["val_loss"])
    assert np.all(np.abs(loss16 - loss32) / np.abs(loss32) < 0.02)
    assert not np.array_equal(loss16, loss32)  # the bfloat16 path did run
    z = runs[True].get_latent_representation()
    types = adata.obs["cell_type"].to_numpy()
    assert same_label_fraction(z, types) > 0.9
    assert (runs[True].predict() == types).mean() > 0.9
