"""The fast training path computes the same losses and gradients as the plain reference path.

Reference: the elementwise ZINB/NB log-densities (``count_log_prob``, checked against scipy
in test_distributions.py) summed over genes through autograd, dense minibatches, and the
diffusion bound with each (cell, label) pair as its own row.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from helpers import DEVICES, NEEDS_CUDA

from scarkids.data.simulate import simulate
from scarkids.data.store import DeviceMatrix
from scarkids.distributions.counts import (
    NonZeros,
    count_log_prob,
    count_log_prob_sum,
    digamma,
    softmax_count_log_prob_sum,
)
from scarkids.module.vae import SCARKIDSModule


def _inputs(theta_rows: int, zero_inflated: bool, dtype=torch.float64, device="cpu"):
    """Counts and parameters drawn on the CPU (the same numbers on every device), then
    moved to ``device``."""
    g = torch.Generator().manual_seed(0)
    n, n_genes = 32, 300
    x = torch.poisson(torch.rand(n, n_genes, generator=g, dtype=dtype) * 4) * (
        torch.rand(n, n_genes, generator=g, dtype=dtype) < 0.4
    )
    x[0, :5] = torch.tensor([1e4, 5e5, 1.0, 2.0, 0.0], dtype=dtype)  # very large counts
    log_mu = (torch.randn(n, n_genes, generator=g, dtype=dtype) * 3).requires_grad_()
    log_theta = (torch.randn(theta_rows, n_genes, generator=g, dtype=dtype) * 4).requires_grad_()
    logits = (
        (torch.randn(n, n_genes, generator=g, dtype=dtype) * 3).requires_grad_()
        if zero_inflated
        else None
    )
    if device != "cpu":
        move = lambda t: t.detach().to(device).requires_grad_(t.requires_grad)  # noqa: E731
        x, log_mu, log_theta = x.to(device), move(log_mu), move(log_theta)
        logits = move(logits) if logits is not None else None
    return x, log_mu, log_theta, logits


@pytest.mark.parametrize("sparse", [True, False])
@pytest.mark.parametrize("theta_rows", [1, 32])
@pytest.mark.parametrize("zero_inflated", [True, False])
@pytest.mark.parametrize("device", DEVICES)
def test_fused_likelihood_matches_reference(sparse, theta_rows, zero_inflated, device):
    x, log_mu, log_theta, logits = _inputs(theta_rows, zero_inflated, device=device)
    inputs = [log_mu, log_theta] + ([logits] if zero_inflated else [])
    weights = torch.linspace(-1, 2, x.shape[0], dtype=x.dtype, device=x.device)

    reference = count_log_prob(x, log_mu, log_theta, logits).sum(-1)
    fast = count_log_prob_sum(x, log_mu, log_theta, logits, sparse=sparse)
    torch.testing.assert_close(fast, reference, rtol=1e-10, atol=1e-8)

    grads_ref = torch.autograd.grad((reference * weights).sum(), inputs)
    grads_fast = torch.autograd.grad((fast * weights).sum(), inputs)
    for a, b in zip(grads_fast, grads_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("sparse", [True, False])
@pytest.mark.parametrize("theta_rows", [1, 32])
@pytest.mark.parametrize("zero_inflated", [True, False])
@pytest.mark.parametrize("device", DEVICES)
def test_softmax_likelihood_matches_reference(sparse, theta_rows, zero_inflated, device):
    """The softmax folded into the fused likelihood: same values and gradients (logits,
    dispersion, dropout) as log_softmax + library through autograd."""
    x, logits, log_theta, drop = _inputs(theta_rows, zero_inflated, device=device)
    log_library = x.sum(-1).clamp_min(1.0).log()
    inputs = [logits, log_theta] + ([drop] if zero_inflated else [])
    weights = torch.linspace(-1, 2, x.shape[0], dtype=x.dtype, device=x.device)

    log_mu = torch.log_softmax(logits, -1) + log_library[:, None]
    reference = count_log_prob(x, log_mu, log_theta, drop).sum(-1)
    fast = softmax_count_log_prob_sum(x, logits, log_library, log_theta, drop, sparse=sparse)
    torch.testing.assert_close(fast, reference, rtol=1e-10, atol=1e-8)

    grads_ref = torch.autograd.grad((reference * weights).sum(), inputs)
    grads_fast = torch.autograd.grad((fast * weights).sum(), inputs)
    for a, b in zip(grads_fast, grads_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_fused_likelihood_float32_close_to_float64():
    x, log_mu, log_theta, logits = _inputs(1, True)
    exact = count_log_prob_sum(x, log_mu, log_theta, logits)
    single = count_log_prob_sum(
        x.float(), log_mu.float(), log_theta.float(), logits.float()
    ).double()
    assert torch.isfinite(single).all()
    torch.testing.assert_close(single, exact, rtol=1e-4, atol=1e-2)


def test_digamma_matches_torch():
    y = torch.cat([torch.logspace(-4, 6, 5000), torch.rand(5000) * 30 + 1e-3]).double()
    rel = (digamma(y) - torch.digamma(y)).abs() / torch.digamma(y).abs().clamp_min(1.0)
    assert rel.max() < 1e-9


@pytest.mark.parametrize(
    "device, dense",
    [
        ("cpu", False),
        pytest.param("cuda", False, marks=NEEDS_CUDA),
        pytest.param("cuda", True, marks=NEEDS_CUDA),
    ],
)
def test_store_gathers_rows_and_nonzeros(device, dense):
    """CSR store (CPUs; GPUs for data too large to be dense) and dense store (GPUs)."""
    rng = np.random.default_rng(1)
    dense_np = rng.poisson(0.7, size=(200, 57)).astype(np.float32)
    dense_np[5] = 0  # an empty cell
    store = DeviceMatrix(
        sp.csr_matrix(dense_np), torch.device(device), dense_limit_bytes=1e9 if dense else 0
    )
    assert store.dense == dense
    index = torch.tensor([5, 3, 199, 3, 0, 42], device=device)
    rows, nz = store.rows_and_nonzeros(index)
    expected = torch.as_tensor(dense_np, device=device)[index]
    torch.testing.assert_close(rows, expected)
    if dense:
        assert nz is None  # the dense likelihood finds the non-zeros itself
    else:
        reference = NonZeros.of(expected)
        for field in ("index", "row", "gene", "counts", "log_factorial"):
            torch.testing.assert_close(getattr(nz, field), getattr(reference, field))
    # contiguous blocks (k-means initialisation) are sliced, not gathered
    for start, end in [(0, 200), (3, 9), (5, 6), (198, 200)]:
        torch.testing.assert_close(
            store.row_block(start, end), torch.as_tensor(dense_np[start:end], device=device)
        )


@pytest.mark.parametrize("label_mode", ["labelled", "unlabelled", "mixed"])
@pytest.mark.parametrize("device", DEVICES)
def test_module_loss_fast_path_equals_reference_path(label_mode, device, monkeypatch):
    """A whole minibatch loss: same value and parameter gradients with the fast path and
    with the reference likelihood, dense rows and one prior row per (cell, label)."""
    adata = simulate(64, 120, n_batches=2, n_cell_types=3, seed=3)
    x_np = adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)
    x = torch.as_tensor(x_np, dtype=torch.float32)
    batch = torch.tensor(adata.obs["batch"].cat.codes.to_numpy(), dtype=torch.long)
    labels = torch.tensor(adata.obs["cell_type"].cat.codes.to_numpy(), dtype=torch.long)
    if label_mode == "unlabelled":
        labels = torch.full_like(labels, -1)
    elif label_mode == "mixed":
        labels[::2] = -1
    torch.manual_seed(0)
    module = SCARKIDSModule(120, 2, 3).to(device)
    module.eval()  # no dropout: both passes see the same network
    x, batch, labels = x.to(device), batch.to(device), labels.to(device)
    store = DeviceMatrix(sp.csr_matrix(x_np), torch.device(device))  # dense on a GPU
    rows, nz = store.rows_and_nonzeros(torch.arange(64, device=device))

    def run(fast: bool):
        module.zero_grad()
        gen = torch.Generator(device=device).manual_seed(7)
        out = module.loss(
            rows if fast else x,
            batch,
            labels,
            label_mode=label_mode,
            generator=gen,
            nonzero=nz if fast else None,
        )
        out.loss.backward()
        grads = {k: p.grad.clone() for k, p in module.named_parameters() if p.grad is not None}
        return out, grads

    fast_out, fast_grads = run(True)

    import scarkids.module.diffusion as diffusion
    import scarkids.module.vae as module_lib

    def reference_likelihood(x, logits, log_library, log_theta, drop, nonzero=None):
        log_mu = torch.log_softmax(logits, -1) + log_library[:, None]
        return count_log_prob(x, log_mu, log_theta, drop).sum(-1)

    original_bound = diffusion.DiffusionPrior.negative_bound

    def bound_one_row_per_label(self, z0, label_index, t, scale, eps, *, detach_net=False,
                                every_label=False):  # fmt: skip
        if not every_label:
            return original_bound(self, z0, label_index, t, scale, eps, detach_net=detach_net)
        n, c = z0.shape[0], label_index.shape[0]
        rep = lambda v: v.repeat_interleave(c, 0)  # noqa: E731
        out = original_bound(
            self, rep(z0), label_index.repeat(n), rep(t), rep(scale), rep(eps),
            detach_net=detach_net,
        )  # fmt: skip
        return {k: v.view(n, c) for k, v in out.items()}

    monkeypatch.setattr(module_lib, "softmax_count_log_prob_sum", reference_likelihood)
    monkeypatch.setattr(diffusion.DiffusionPrior, "negative_bound", bound_one_row_per_label)
    ref_out, ref_grads = run(False)

    torch.testing.assert_close(fast_out.loss, ref_out.loss, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(
        fast_out.reconstruction, ref_out.reconstruction, rtol=1e-5, atol=1e-3
    )
    torch.testing.assert_close(fast_out.vae_kl, ref_out.vae_kl, rtol=1e-5, atol=1e-3)
    assert fast_grads.keys() == ref_grads.keys()
    for name, grad in fast_grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-3, atol=1e-4, msg=name)


@pytest.mark.parametrize("device", DEVICES)
def test_dense_fill_from_csr_matches_toarray(device):
    """A GPU store is filled from the CSR arrays block by block (no host densifying): the
    same matrix as scipy's toarray, with empty rows, unsorted and duplicate entries."""
    from scarkids.data.store import _dense_on_device

    # row 0: column 4 twice and out of order; row 1 empty
    raw = sp.csr_matrix(
        (np.array([1, 2, 3, 4, 5], np.float32), [4, 1, 4, 0, 2], [0, 3, 3, 5]), shape=(3, 6)
    )
    big = sp.random(301, 40, density=0.2, format="csr", random_state=3, dtype=np.float32)
    big.data[:] = np.random.default_rng(2).integers(1, 9, big.nnz)
    for X in (raw, big):
        expected = torch.as_tensor(X.toarray())
        for source in (X, X.toarray()):
            dense = _dense_on_device(source, torch.device(device), block_cells=2)
            torch.testing.assert_close(dense.cpu(), expected)


def test_kmeans_initialisation_on_a_subset_assigns_every_cell():
    """Above ``fit_cells`` the k-means centres are fitted on a random subset and every
    cell is assigned to its nearest centre: the same clusters as fitting on all cells."""
    from sklearn.metrics import adjusted_rand_score

    from scarkids.train.loop import TrainingData, cluster_latent

    rng = np.random.default_rng(4)
    truth = rng.integers(0, 4, 3000)
    centres = np.array([[0, 0], [40, 0], [0, 40], [40, 40]], dtype=np.float32)
    X = np.zeros((3000, 5), np.float32)
    X[:, :2] = centres[truth] + rng.normal(0, 1.0, (3000, 2))
    X[:, 2:] = rng.poisson(1.0, (3000, 3))

    class FirstTwoGenes(torch.nn.Module):  # a "module" whose latent is genes 0 and 1
        n_latent = 2

        def inference(self, x, batch, sample):
            return {"z": x[:, :2]}

    data = TrainingData(
        X=DeviceMatrix(sp.csr_matrix(X), torch.device("cpu")),
        batch=torch.zeros(3000, dtype=torch.long),
        labels=torch.full((3000,), -1),
        train_index=torch.arange(3000),
        val_index=torch.arange(0),
    )
    subset = cluster_latent(FirstTwoGenes(), data, 4, seed=0, chunk=512, fit_cells=200)
    every = cluster_latent(FirstTwoGenes(), data, 4, seed=0, chunk=512)
    assert subset.shape == (3000,) and subset.dtype == torch.long
    assert adjusted_rand_score(truth, subset.numpy()) == 1.0
    assert adjusted_rand_score(every.numpy(), subset.numpy()) == 1.0
