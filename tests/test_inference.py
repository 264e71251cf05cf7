"""The fast inference paths give today's outputs (issue: inference at the hardware's pace):
the sparse CPU encoder, the reverse chain's shared step embedding, the softmax decoder."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import scarkids
from scarkids import SCARKIDS
from scarkids.errors import InputDataError
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


def random_prior(n_steps: int, n: int):
    """An eval-mode prior (latent 6, 4 types) with random weights, n codes and labels."""
    torch.manual_seed(0)
    prior = DiffusionPrior(6, 4, n_steps=n_steps).eval()
    for p in prior.parameters():
        p.data.normal_(0, 0.2)
    return prior, torch.randn(n, 6), torch.randint(0, 5, (n,))


def test_shared_step_equals_the_per_row_step():
    prior, z, lab = random_prior(50, 30)
    with torch.no_grad():
        for step in (1, 17, 50):
            t = torch.full((30,), step)
            ref = prior.net(z, t, lab)
            fast = prior.net.at_step(z, step, prior.net.label(lab))
            torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-6)


def test_in_place_expression_equals_the_generative_model(model):
    """get_normalized_expression computes each chunk in its rows of the output (CPU): the
    same numbers as the generative model's rho, for one target batch, an average of
    several, and each cell's own batch; chunks that do not divide the cells."""
    z = torch.as_tensor(model.get_latent_representation())
    own = torch.as_tensor(model.adata.obs["batch"].cat.codes.to_numpy().astype(np.int64))
    with torch.no_grad():

        def rho(b):
            return model.module.generative(z, b, None)["log_rho"].exp().numpy() * 1e4

        ref_own = rho(own)
        ref_one = rho(torch.full_like(own, 1))
        ref_avg = (rho(torch.zeros_like(own)) + ref_one + rho(torch.full_like(own, 2))) / 3
    kw = dict(return_numpy=True, batch_size=97)
    np.testing.assert_allclose(model.get_normalized_expression(**kw), ref_own, rtol=1e-4, atol=1e-4)
    one = model.get_normalized_expression(transform_batch="batch_1", **kw)
    np.testing.assert_allclose(one, ref_one, rtol=1e-4, atol=1e-4)
    avg = model.get_normalized_expression(transform_batch=[0, 1, 2], **kw)
    np.testing.assert_allclose(avg, ref_avg, rtol=1e-4, atol=1e-4)
    chunks = np.concatenate(
        [c for _, c in model.iter_normalized_expression(transform_batch=[0, 1, 2], batch_size=97)]
    )
    np.testing.assert_allclose(chunks, avg, rtol=1e-5, atol=1e-5)


def test_reverse_chain_equals_the_plain_ddpm_loop():
    """denoise (step rows computed once, blocks in place, coefficients as numbers) gives
    the textbook reverse chain: mean (z - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t),
    plus sqrt(beta_t) noise, with eps from the network's plain forward."""
    prior, z, lab = random_prior(60, 40)
    with torch.no_grad():
        fast = prior.denoise(z, lab, 45, generator=torch.Generator().manual_seed(3))
        gen, ref = torch.Generator().manual_seed(3), z
        for step in range(45, 0, -1):
            i = step - 1
            eps = prior.net(ref, torch.full((40,), step), lab)
            ref = (ref - prior.betas[i] / (1 - prior.abar[i]).sqrt() * eps) / prior.alphas[i].sqrt()
            if step > 1:
                ref = ref + prior.betas[i].sqrt() * torch.randn(ref.shape, generator=gen)
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-5)


def test_strided_refinement_is_the_textbook_ddim_chain_from_the_noised_codes():
    """refine(n_sampling_steps=K): q noises the codes to step n, then K evenly spaced
    reverse steps of DDIM with eta = 1 (z_s = sqrt(abar_s) z0_hat + sqrt(1 - abar_s -
    sigma^2) eps_hat + sigma noise), written out here with tensors; K = n is the full
    chain, K outside 1..n an error."""
    prior, z0, lab = random_prior(100, 40)
    with torch.no_grad():
        fast = prior.refine(
            z0, lab, 60, n_sampling_steps=7, generator=torch.Generator().manual_seed(5)
        )
        gen = torch.Generator().manual_seed(5)
        t = torch.full((40,), 60)
        z = prior.diffuse(z0, t, torch.randn(z0.shape, generator=gen))
        steps = [60, 50, 40, 30, 21, 11, 1]  # linspace(60, 1, 7), rounded
        for k, step in enumerate(steps):
            eps = prior.net(z, torch.full((40,), step), lab)
            a = prior.abar[step - 1]
            z0_hat = (z - (1 - a).sqrt() * eps) / a.sqrt()
            if k + 1 == len(steps):
                break
            a_s = prior.abar[steps[k + 1] - 1]
            var = (1 - a_s) / (1 - a) * (1 - a / a_s)
            z = a_s.sqrt() * z0_hat + (1 - a_s - var).sqrt() * eps
            z = z + var.sqrt() * torch.randn(z.shape, generator=gen)
        full = prior.refine(
            z0, lab, 60, n_sampling_steps=60, generator=torch.Generator().manual_seed(5)
        )
        chain = prior.refine(z0, lab, 60, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(fast, z0_hat, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(full, chain)
    assert not torch.allclose(fast, chain, atol=1e-3)  # a different sampler, not the same chain
    for bad in (0, 61):
        with pytest.raises(ValueError, match="n_sampling_steps"):
            prior.refine(z0, lab, 60, n_sampling_steps=bad)


def test_refine_latent_strided_option(model):
    """The model's refine_latent takes the strided sampler: K = n_steps is the full chain,
    a K outside 1..n_steps a one-line InputDataError naming the argument."""
    z = model.get_latent_representation()
    full = model.refine_latent(latent=z, n_steps=12, seed=1)
    np.testing.assert_array_equal(
        model.refine_latent(latent=z, n_steps=12, n_sampling_steps=12, seed=1), full
    )
    strided = model.refine_latent(latent=z, n_steps=12, n_sampling_steps=4, seed=1)
    assert strided.shape == z.shape and np.isfinite(strided).all()
    assert not np.allclose(strided, full)
    with pytest.raises(InputDataError, match="n_sampling_steps must be between 1 and n_steps"):
        model.refine_latent(latent=z, n_steps=12, n_sampling_steps=13)


def test_refinement_and_generation_do_not_depend_on_the_batch_size(model):
    """The same seed gives the same refined codes and the same generated cells whatever
    ``batch_size`` (chunks that do not divide n included): every step's noise is one draw
    for all cells, only the network runs in chunks. (Before, each chunk drew its own noise
    in turn, so a GPU's memory-chosen chunk size changed the result.)"""
    z = model.get_latent_representation()
    whole = model.refine_latent(latent=z, n_steps=20, seed=3, batch_size=4096)
    for batch_size in (97, 256):
        np.testing.assert_allclose(
            model.refine_latent(latent=z, n_steps=20, seed=3, batch_size=batch_size),
            whole,
            rtol=1e-5,
            atol=1e-6,
        )
        strided = model.refine_latent(
            latent=z, n_steps=20, n_sampling_steps=5, seed=3, batch_size=batch_size
        )
        np.testing.assert_allclose(
            strided,
            model.refine_latent(latent=z, n_steps=20, n_sampling_steps=5, seed=3),
            rtol=1e-5,
            atol=1e-6,
        )
    assert not np.allclose(model.refine_latent(latent=z, n_steps=20, seed=4), whole)
    t = model.label_names[0]
    a = model.generate(150, cell_type=t, seed=2, batch_size=4096)
    b = model.generate(150, cell_type=t, seed=2, batch_size=64)
    np.testing.assert_allclose(a.obsm["X_scarkids"], b.obsm["X_scarkids"], rtol=1e-5, atol=1e-6)
    # counts are drawn from the same means: equal but for float ties at integer boundaries
    assert (a.X != b.X).nnz <= 1e-3 * a.X.shape[0] * a.X.shape[1]
