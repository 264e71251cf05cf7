"""Training and inference on a CUDA GPU (skipped, with a message, on machines without one).

The likelihood, the store and the whole minibatch loss are compared with the reference
path on the GPU in test_fast_path.py; here: a training step never waits for the host, a
model trained on the GPU integrates (float32 and mixed precision) and loads on a CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from helpers import same_label_fraction

import scarkids
from scarkids import SCARKIDS
from scarkids.data.store import DeviceMatrix
from scarkids.module.vae import SCARKIDSModule

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def adata():
    data = scarkids.datasets.simulate(1500, 300, n_batches=2, n_cell_types=4, seed=5)
    SCARKIDS.setup_anndata(data, batch_key="batch", labels_key="cell_type")
    return data


@pytest.mark.parametrize("label_mode", ["labelled", "unlabelled"])
def test_training_step_never_syncs_with_host(adata, label_mode):
    """Gather, loss, backward, clipping and the fused AdamW step under CUDA's sync debug
    mode "error": any operation that waits for the GPU (``.item()``, a data-dependent
    shape, a host copy) raises."""
    device = torch.device("cuda")
    counts = sp.csr_matrix(adata.X)
    store = DeviceMatrix(counts, device)
    assert store.dense
    batch = torch.tensor(adata.obs["batch"].cat.codes.to_numpy(), dtype=torch.long, device=device)
    labels = torch.tensor(
        adata.obs["cell_type"].cat.codes.to_numpy(), dtype=torch.long, device=device
    )
    if label_mode == "unlabelled":
        labels = torch.full_like(labels, -1)
    module = SCARKIDSModule(counts.shape[1], 2, 4).to(device)
    params = list(module.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-3, fused=True)
    perm = torch.randperm(counts.shape[0], device=device)

    def step(idx):
        x, nonzero = store.rows_and_nonzeros(idx)
        out = module.loss(x, batch[idx], labels[idx], label_mode=label_mode, nonzero=nonzero)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 50.0)
        optimizer.step()
        return out.loss

    step(perm[:256])  # warm-up: lazy initialisations may sync once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        losses = [step(perm[i : i + 256]) for i in range(256, 1280, 256)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(torch.stack(losses)).all()


@pytest.mark.parametrize("mixed_precision", [False, True])
def test_gpu_training_integrates_and_loads_on_cpu(adata, mixed_precision, tmp_path):
    model = SCARKIDS(adata, seed=0)
    model.train(25, progress_bar=False, seed=0, device="cuda", mixed_precision=mixed_precision)
    assert np.isfinite(model.history["val_loss"]).all()
    types = adata.obs["cell_type"].to_numpy()
    z = model.get_latent_representation()
    assert same_label_fraction(z, types) > 0.9
    assert (model.predict() == types).mean() > 0.9
    model.save(tmp_path / "model")
    on_cpu = SCARKIDS.load(tmp_path / "model", adata, device="cpu")
    np.testing.assert_allclose(on_cpu.get_latent_representation(), z, rtol=1e-3, atol=1e-3)


def test_gpu_unsupervised_training_with_cluster_initialisation(adata):
    unlabelled = adata.copy()
    SCARKIDS.setup_anndata(unlabelled, batch_key="batch")
    model = SCARKIDS(unlabelled, seed=0)
    model.train(20, progress_bar=False, seed=0, device="cuda")
    assert np.isfinite(model.history["val_loss"]).all()
    z = model.get_latent_representation()
    assert same_label_fraction(z, adata.obs["cell_type"].to_numpy()) > 0.85


def test_gpu_training_picks_the_automatic_batch_size(caplog):
    """On a GPU, ``batch_size=None`` is the largest of 128..4096 that leaves 200 steps per
    epoch: 256 for 60,000 cells (``default_batch_size``), and the learning rate follows."""
    import logging

    from scarkids.train import default_batch_size, default_learning_rate

    data = scarkids.datasets.simulate(60_000, 200, n_batches=2, n_cell_types=4, seed=1)
    SCARKIDS.setup_anndata(data, batch_key="batch")
    model = SCARKIDS(data, n_latent=8, seed=0)
    with caplog.at_level(logging.INFO, logger="scarkids"):
        model.train(1, batch_size=None, device="cuda", progress_bar=False)
    expected = default_batch_size(60_000, "cuda")
    assert expected == 256
    assert f"batch size {expected} (automatic, cuda)" in caplog.text
    assert model.history["learning_rate"][0] == pytest.approx(default_learning_rate(expected))
