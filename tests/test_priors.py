"""Swappable latent priors (issue: does the diffusion prior earn its place?): the controls
``gaussian`` and ``mixture`` train with everything else identical."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import random_expectation, same_label_fraction
from scipy.stats import multivariate_normal

import scarkids
from scarkids import SCARKIDS
from scarkids.errors import InputDataError
from scarkids.module.priors import GaussianPrior, MixturePrior


def test_mixture_log_density_equals_scipy():
    torch.manual_seed(0)
    prior = MixturePrior(3, 4).double()
    with torch.no_grad():
        prior.log_std.normal_(0, 0.5)
    z = torch.randn(20, 3, dtype=torch.float64)
    labels = torch.arange(20) % 5  # 0 = null, 1..4 = types
    ours = prior.log_prob(z, labels).detach().numpy()
    mean, std = prior.mean.detach().numpy(), prior.log_std.detach().exp().numpy()
    ref = [
        multivariate_normal(mean[k], np.diag(std[k] ** 2)).logpdf(z[i].numpy())
        for i, k in enumerate(labels.tolist())
    ]
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    every = prior.log_prob(z, torch.arange(1, 5), every_label=True).detach().numpy()  # (n, C)
    for c in range(4):
        ref_c = multivariate_normal(mean[c + 1], np.diag(std[c + 1] ** 2)).logpdf(z.numpy())
        np.testing.assert_allclose(every[:, c], ref_c, atol=1e-5)


def test_gaussian_prior_is_the_standard_normal_whatever_the_label():
    z = torch.randn(10, 4, dtype=torch.float64)
    nll = GaussianPrior(4, 3).negative_bound(z, torch.arange(1, 4), every_label=True)["nll"]
    ref = -multivariate_normal(np.zeros(4), np.eye(4)).logpdf(z.numpy())
    for c in range(3):
        np.testing.assert_allclose(nll[:, c].numpy(), ref, atol=1e-10)


def strong_batch_data(seed: int = 1):
    return scarkids.datasets.simulate(
        2000, 500, n_batches=3, n_cell_types=5, batch_effect=0.4, library_shift=0.4, seed=seed
    )


@pytest.mark.slow
@pytest.mark.parametrize("prior", ["gaussian", "mixture"])
def test_each_prior_trains(prior):
    """Both controls train: the latent separates the types and the classifier predicts
    them. The cell-type-conditioned mixture also integrates the batches (as the diffusion
    prior does, tests/test_model.py); N(0, I) does not on this strong batch effect: same-batch
    neighbours 0.38-0.53 above the 0.33 of random (seeds 0-2), the mixture 0.13-0.21 above
    (seeds 0-4; seed 0 gave 0.142 here and 0.162 in one full-suite run, too close to the
    0.15 this test once asked). The bar, 0.25, lies between the two."""
    adata = strong_batch_data()
    SCARKIDS.setup_anndata(adata, batch_key="batch", labels_key="cell_type")
    model = SCARKIDS(adata, seed=0, prior=prior)
    model.train(60, progress_bar=False, seed=0)
    z = model.get_latent_representation()
    assert same_label_fraction(z, adata.obs["cell_type"]) >= 0.9
    assert (model.predict() == adata.obs["cell_type"].to_numpy()).mean() >= 0.9
    expected = random_expectation(adata.obs["batch"])
    excess = same_label_fraction(z, adata.obs["batch"]) - expected
    if prior == "mixture":
        assert abs(excess) <= 0.25
    else:  # N(0, I) for every type leaves the batches apart
        assert excess > 0.25


@pytest.mark.parametrize("prior", ["diffusion", "gaussian", "mixture"])
def test_a_checkpoint_of_each_prior_saves_loads_and_maps_a_query(prior, tmp_path, one_thread):
    adata = scarkids.datasets.simulate(300, 60, n_batches=3, n_cell_types=3, seed=4)
    ref = adata[adata.obs["batch"] != "batch_2"].copy()
    query = adata[adata.obs["batch"] == "batch_2"].copy()
    SCARKIDS.setup_anndata(ref, batch_key="batch", labels_key="cell_type")
    model = SCARKIDS(ref, n_latent=4, seed=0, prior=prior, n_diffusion_steps=20)
    model.train(3, progress_bar=False, seed=0)
    model.save(tmp_path / "ref")
    loaded = SCARKIDS.load(tmp_path / "ref", ref)
    assert loaded.module.prior_type == prior and type(loaded.module.prior) is type(
        model.module.prior
    )
    np.testing.assert_allclose(
        loaded.get_latent_representation(), model.get_latent_representation(), atol=1e-6
    )
    SCARKIDS.setup_anndata(query, batch_key="batch")
    mapped = SCARKIDS.load_query_data(query, tmp_path / "ref")
    mapped.train(2, supervised=False, progress_bar=False, seed=0)
    assert set(mapped.predict(query)) <= set(model.registry.label_categories)
    # the query session (freeze="new_batches") leaves the reference where it was: the same
    # codes, predictions and prior densities for the reference's cells
    np.testing.assert_allclose(
        mapped.get_latent_representation(ref), model.get_latent_representation(ref), atol=1e-5
    )
    assert (mapped.predict(ref) == model.predict(ref)).all()
    np.testing.assert_allclose(mapped.novelty(ref), model.novelty(ref), rtol=1e-4, atol=1e-4)
    if prior == "diffusion":
        assert mapped.refine_latent(query, n_steps=5).shape == (query.n_obs, 4)
    else:
        with pytest.raises(InputDataError, match="refinement needs the diffusion prior"):
            mapped.refine_latent(query, n_steps=5)


def test_new_cell_types_extend_every_prior():
    from scarkids.module import SCARKIDSModule

    for prior in ("diffusion", "gaussian", "mixture"):
        module = SCARKIDSModule(30, 2, 3, n_latent=4, n_diffusion_steps=10, prior=prior)
        module.extend_labels(2)
        assert module.prior.n_labels == 5 and module.n_labels == 5
