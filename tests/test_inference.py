"""The fast inference paths give today's outputs (issue: inference at the hardware's pace):
the sparse CPU encoder, the reverse chain's shared step embedding, the softmax decoder."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import scarkids
from scarkids import SCARKIDS
from scarkids.module.diffusion import DiffusionPrior


@pytest.fixture(scope="module")
def model(one_thread):
    adata = scarkids.datasets.simulate(600, 150, n_batches=3, n_cell_types=3, seed=2)
    X = sp.lil_matrix(adata.X)
    X[5] = 0  # an empty cell
    adata.X = sp.csr_matrix(X)
    SCARKIDS.setup_anndata(adata, batch_key="batch", labels_key="cell_type")
    return SCARKIDS(adata, seed=0).train(3, progress_bar=False)


@pytest.mark.parametrize("transform", ["normalize_log1p", "log1p", "none"])
@pytest.mark.parametrize("encode_batch", [False, True])
def test_sparse_encoder_equals_the_dense_one(transform, encode_batch):
    adata = scarkids.datasets.simulate(300, 80, n_batches=2, n_cell_types=2, seed=1)
    SCARKIDS.setup_anndata(adata, batch_key="batch")
    m = SCARKIDS(adata, input_transform=transform, encode_batch=encode_batch, seed=0)
    m.module.eval()
    with torch.no_grad():
        dense = np.concatenate(
            [m.module.inference(x, b, sample=False)["z"].numpy() for _, x, b in m._chunks(None, 64)]
        )
    sparse = m.get_latent_representation(batch_size=100)  # chunks that do not divide n
    np.testing.assert_allclose(sparse, dense, rtol=1e-5, atol=1e-5)


def test_sparse_encoder_handles_empty_cells_and_backed_data(model, tmp_path):
    z = model.get_latent_representation()
    assert np.isfinite(z).all()
    import anndata as ad

    path = tmp_path / "a.h5ad"
    model.adata.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    np.testing.assert_allclose(model.get_latent_representation(backed), z, rtol=1e-5, atol=1e-6)


def test_softmax_decoder_equals_exp_log_rho(model):
    z = torch.as_tensor(model.get_latent_representation()[:50])
    b = torch.arange(50) % 3
    with torch.no_grad():
        ref = model.module.generative(z, b, None)["log_rho"].exp()
        fast = model.module.decoder.normalized_expression(z, b)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-7)
    with torch.no_grad():
        one = model.module.decoder.normalized_expression(z, b, batch=2)
        ref2 = model.module.generative(z, torch.full((50,), 2), None)["log_rho"].exp()
    torch.testing.assert_close(one, ref2, rtol=1e-5, atol=1e-7)
    expr = model.get_normalized_expression(
        transform_batch=["batch_0", "batch_1"], return_numpy=True
    )
    np.testing.assert_allclose(expr.sum(1), 1e4, rtol=1e-4)


def test_shared_step_equals_the_per_row_step():
    torch.manual_seed(0)
    prior = DiffusionPrior(6, 4, n_steps=50).eval()
    for p in prior.parameters():
        p.data.normal_(0, 0.2)
    z, lab = torch.randn(30, 6), torch.randint(0, 5, (30,))
    with torch.no_grad():
        for step in (1, 17, 50):
            t = torch.full((30,), step)
            ref = prior.net(z, t, lab)
            fast = prior.net.at_step(z, step, prior.net.label(lab))
            torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-6)
