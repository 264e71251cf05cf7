"""The model's promises (issue: the scARKIDS model and its Python API)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import torch
from helpers import random_expectation, same_label_fraction, shared_file
from sklearn.metrics import adjusted_rand_score

import scarkids
from scarkids import SCARKIDS


def strong_batch_data(seed: int = 1):
    return scarkids.datasets.simulate(
        2000, 500, n_batches=3, n_cell_types=5, batch_effect=0.4, library_shift=0.4, seed=seed
    )


@pytest.fixture(scope="module")
def supervised_model():
    adata = strong_batch_data()
    SCARKIDS.setup_anndata(adata, batch_key="batch", labels_key="cell_type")
    model = SCARKIDS(adata, seed=0)
    model.train(100, progress_bar=False, seed=0)
    return model


def pca_of_counts(adata):
    a = adata.copy()
    sc.pp.normalize_total(a)
    sc.pp.log1p(a)
    sc.pp.pca(a, n_comps=20)
    return a.obsm["X_pca"]


@pytest.mark.slow
def test_training_improves_validation_elbo(supervised_model):
    elbo = supervised_model.history["val_elbo"]
    assert elbo[-1] > elbo[0] + 50  # nats per cell
    assert np.isfinite(elbo).all()


@pytest.mark.slow
def test_integration_on_simulated_strong_batch_effect(supervised_model):
    adata = supervised_model.adata
    raw = pca_of_counts(adata)
    expected = random_expectation(adata.obs["batch"])
    assert same_label_fraction(raw, adata.obs["batch"]) > 0.9  # the batch effect is strong
    z = supervised_model.get_latent_representation()
    assert z.shape == (adata.n_obs, 10) and z.dtype == np.float32
    assert abs(same_label_fraction(z, adata.obs["batch"]) - expected) <= 0.1
    assert same_label_fraction(z, adata.obs["cell_type"]) > 0.9


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(5))
def test_unsupervised_recovers_cell_types(seed):
    """Every seed, not one lucky one: the clusters of ``predict()`` are the cell types."""
    adata = strong_batch_data(seed=2)
    SCARKIDS.setup_anndata(adata, batch_key="batch")
    model = SCARKIDS(adata, n_labels=5, seed=seed)
    model.train(60, progress_bar=False, seed=seed)
    assert model.registry.labels_are_clusters
    assert adjusted_rand_score(adata.obs["cell_type"], model.predict()) >= 0.8


@pytest.mark.slow
def test_unsupervised_clusters_above_the_true_number_stay_pure():
    """With twice the true number of clusters allowed, no cluster mixes types: each is
    (nearly) one cell type, and predictions name only the clusters in use."""
    adata = strong_batch_data(seed=2)
    SCARKIDS.setup_anndata(adata, batch_key="batch")
    model = SCARKIDS(adata, n_labels=10, seed=0)
    model.train(60, progress_bar=False, seed=0)
    pred = model.predict()
    in_use = model.label_names
    # K is a maximum: the 20 components merge into no more clusters than the latent has
    # Leiden communities (5 types), not into the 10 allowed
    assert 5 <= len(in_use) <= 7 and set(pred) <= set(in_use)
    table = pd.crosstab(pred, adata.obs["cell_type"].to_numpy())
    assert table.max(axis=1).sum() / adata.n_obs >= 0.95  # majority-mapped accuracy
    soft = model.predict(soft=True)
    assert list(soft.columns) == in_use
    np.testing.assert_allclose(soft.sum(1), 1.0, rtol=1e-5)
    # merged down to the true number, the groups are the cell types
    merged = model.predict(max_clusters=5)
    assert len(set(merged)) <= 5
    assert adjusted_rand_score(adata.obs["cell_type"], merged) >= 0.9
    groups = model.predict(soft=True, max_clusters=5)
    assert groups.shape == (adata.n_obs, 5) and set(merged) <= set(groups.columns)
    assert sorted(n for g in groups.columns for n in g.split("+")) == sorted(in_use)
    np.testing.assert_allclose(groups.sum(1), 1.0, rtol=1e-5)
    assert list(model.predict(soft=True, max_clusters=len(in_use)).columns) == in_use
    with pytest.raises(scarkids.errors.InputDataError, match="at least 1"):
        model.predict(max_clusters=0)


@pytest.mark.slow
def test_unsupervised_clusters_are_merged_components(tmp_path):
    """The prior fits cluster_factor x n_labels components; training ends by merging those
    in use into at most n_labels clusters, which predictions, checkpoints, generation and
    refinement all name the same way."""
    adata = strong_batch_data(seed=2)
    SCARKIDS.setup_anndata(adata, batch_key="batch")
    model = SCARKIDS(adata, n_labels=np.int64(5), seed=1)  # a numpy integer saves too
    assert model.module.n_labels == 10 and model.registry.max_clusters == 5
    model.train(60, progress_bar=False, seed=1)  # at 60 epochs ARI 1.0 on seeds 0-4
    groups = model.registry.cluster_groups
    members = sorted(c for g in groups for c in g)
    in_use = np.asarray(model.registry.label_categories)[model.module.labels_in_use().numpy()]
    assert members == sorted(in_use)  # a partition of the components in use
    assert model.label_names == [f"cluster_{i}" for i in range(len(groups))]
    assert len(groups) <= 5
    pred = model.predict()
    assert set(pred) <= set(model.label_names)
    assert adjusted_rand_score(adata.obs["cell_type"], pred) >= 0.9
    mass = model.predict(soft=True).sum(0).to_numpy()
    assert (np.diff(mass) <= 1e-6 * adata.n_obs).all()  # numbered by decreasing mass
    # the clusters are saved with the model
    loaded = SCARKIDS.load(model.save(tmp_path / "m.pt"), adata)
    assert loaded.registry.cluster_groups == groups
    assert np.array_equal(loaded.predict(), pred)
    # a cluster's generated cells are predicted as that cluster
    b0 = model.registry.batch_categories[0]
    out = model.generate(60, cell_type="cluster_1", batch=b0, seed=0)
    assert set(out.obs["cell_type"].astype(str)) == {"cluster_1"}
    assert (model.predict(out) == "cluster_1").mean() >= 0.8
    # refinement conditions each cell on its cluster's most probable component
    refined = model.refine_latent(labels=pred, n_steps=5, seed=0)
    assert refined.shape == (adata.n_obs, 10) and np.isfinite(refined).all()
    with pytest.raises(scarkids.errors.InputDataError, match="does not know"):
        model.refine_latent(labels=["cluster_99"] * adata.n_obs, n_steps=5)


@pytest.mark.parametrize("kwargs", [{"cluster_factor": 0}, {"n_labels": 0}, {"n_labels": 2.5}])
def test_bad_cluster_numbers_are_one_line_errors(kwargs):
    adata = scarkids.datasets.simulate(60, 30, n_batches=2, n_cell_types=2, seed=0)
    SCARKIDS.setup_anndata(adata, batch_key="batch")
    with pytest.raises(scarkids.errors.InputDataError, match="positive integer"):
        SCARKIDS(adata, **kwargs)


def test_a_later_session_keeps_the_cluster_numbers():
    """Clusters re-merged after a later session keep the number of the earlier cluster
    they share most components with; new ones follow."""
    from scarkids.labels.clustering import keep_cluster_numbers

    old = [["c"], ["a"], ["d", "e"]]
    new = [["a", "b"], ["c"], ["d"], ["f"]]
    assert keep_cluster_numbers(new, old) == [["c"], ["a", "b"], ["d"], ["f"]]
    assert keep_cluster_numbers(new, None) == new
    assert keep_cluster_numbers([["a", "c"]], old) == [["a", "c"]]


@pytest.mark.slow
def test_max_clusters_needs_an_unsupervised_model(supervised_model):
    with pytest.raises(scarkids.errors.InputDataError, match="max_clusters"):
        supervised_model.predict(max_clusters=3)


def test_a_cluster_without_mass_is_switched_off():
    from scarkids.module import SCARKIDSModule

    module = SCARKIDSModule(20, 2, 4, n_latent=3, n_diffusion_steps=10)
    module.set_label_prior(torch.tensor([500.0, 300.0, 0.2, 199.8]))
    pi = module.log_label_prior.exp()
    assert module.labels_in_use().tolist() == [True, True, False, True]
    np.testing.assert_allclose(pi.sum().item(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(
        pi[[0, 1, 3]].numpy(), np.array([500, 300, 199.8]) / 999.8, rtol=1e-5
    )


@pytest.mark.slow
def test_semi_supervised_labels_hidden_cells():
    adata = strong_batch_data(seed=3)
    rng = np.random.default_rng(0)
    hidden = rng.random(adata.n_obs) < 0.5
    truth = adata.obs["cell_type"].astype(str).to_numpy()
    adata.obs["partial"] = np.where(hidden, "Unknown", truth)
    SCARKIDS.setup_anndata(adata, batch_key="batch", labels_key="partial")
    model = SCARKIDS(adata, seed=0)
    model.train(40, progress_bar=False, seed=0)
    assert "Unknown" not in model.registry.label_categories
    accuracy = (model.predict()[hidden] == truth[hidden]).mean()
    assert accuracy >= 0.9


def test_same_seed_same_losses_and_different_seed_differs():
    adata = scarkids.datasets.simulate(400, 100, n_batches=2, n_cell_types=3, seed=5)
    SCARKIDS.setup_anndata(adata, batch_key="batch", labels_key="cell_type")
    runs = []
    for seed in (7, 7, 8):
        model = SCARKIDS(adata, seed=seed)
        model.train(5, progress_bar=False, seed=seed)
        runs.append(model.history["train_loss"])
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


@pytest.mark.slow
def test_save_load_gives_identical_latent(supervised_model, tmp_path):
    path = supervised_model.save(tmp_path / "model")
    assert path.name == "model.pt"
    loaded = SCARKIDS.load(tmp_path / "model", supervised_model.adata)
    np.testing.assert_array_equal(
        loaded.get_latent_representation(), supervised_model.get_latent_representation()
    )
    assert loaded.registry == supervised_model.registry
    np.testing.assert_array_equal(loaded.predict(), supervised_model.predict())


@pytest.mark.slow
def test_load_aligns_genes_by_name(supervised_model, tmp_path):
    supervised_model.save(tmp_path / "m.pt")
    adata = supervised_model.adata
    shuffled = adata[:, np.random.default_rng(0).permutation(adata.n_vars)].copy()
    loaded = SCARKIDS.load(tmp_path / "m.pt")
    np.testing.assert_allclose(
        loaded.get_latent_representation(shuffled),
        supervised_model.get_latent_representation(),
        atol=1e-5,
    )


@pytest.mark.slow
def test_modes_switch_through_checkpoints(supervised_model, tmp_path):
    supervised_model.save(tmp_path / "sup.pt")
    adata = supervised_model.adata.copy()
    del adata.uns["_scarkids_setup"]
    SCARKIDS.setup_anndata(adata, batch_key="batch")  # no labels: unsupervised session
    model = SCARKIDS.load(tmp_path / "sup.pt", adata)
    model.train(3, progress_bar=False)
    assert len(model.history["train_loss"]) == 3
    # predictions keep the names learnt in the supervised session
    assert set(model.predict()) <= set(supervised_model.registry.label_categories)
    model.save(tmp_path / "unsup.pt")

    SCARKIDS.setup_anndata(adata, batch_key="batch", labels_key="cell_type")
    again = SCARKIDS.load(tmp_path / "unsup.pt", adata)
    again.train(3, progress_bar=False)
    assert again.history["train_accuracy"][-1] > 0.9

    unsup = SCARKIDS(adata.copy(), n_labels=5)
    SCARKIDS.setup_anndata(unsup.adata, batch_key="batch")
    unsup = SCARKIDS(unsup.adata, n_labels=5)
    unsup.train(2, progress_bar=False)
    unsup.save(tmp_path / "u.pt")
    sup = SCARKIDS.load(tmp_path / "u.pt", adata)
    sup.train(3, progress_bar=False)
    assert not sup.registry.labels_are_clusters and sup.registry.cluster_groups is None
    # one label slot per former cluster (5), not per mixture component (10)
    n_types = adata.obs["cell_type"].nunique()
    assert sup.module.n_labels == len(sup.registry.label_categories) == max(5, n_types)
    assert set(adata.obs["cell_type"].astype(str)) <= set(sup.registry.label_categories)


@pytest.mark.slow
def test_corrected_expression_and_predictions(supervised_model):
    adata = supervised_model.adata
    expr = supervised_model.get_normalized_expression(transform_batch="batch_0", library_size=1e4)
    assert expr.shape == (adata.n_obs, adata.n_vars)
    np.testing.assert_allclose(expr.sum(axis=1), 1e4, rtol=1e-3)
    own = supervised_model.get_normalized_expression(return_numpy=True)
    assert not np.allclose(own, expr.to_numpy())
    table = supervised_model.predict_with_uncertainty(confidence_threshold=0.5)
    assert list(table.columns) == [
        "predicted_label",
        "top_label",
        "probability",
        "entropy",
        "novelty",
        "unknown",
        "unknown_reason",
    ]
    assert (table["probability"] <= 1).all() and (table["entropy"] >= 0).all()
    # about 1% of the known cells are above the validation cells' 99th novelty percentile
    assert table["unknown"].mean() < 0.05
    with pytest.raises(scarkids.InputDataError, match="not a batch"):
        supervised_model.get_normalized_expression(transform_batch="nope")


@pytest.mark.slow
def test_refinement_is_seeded(supervised_model):
    a = supervised_model.refine_latent(n_steps=10, seed=1)
    b = supervised_model.refine_latent(n_steps=10, seed=1)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (supervised_model.adata.n_obs, 10) and np.isfinite(a).all()


@pytest.mark.slow
def test_training_improves_validation_elbo_on_pbmc():
    adata = sc.read_h5ad(shared_file("pbmc_3chem_symphony.h5ad"))
    SCARKIDS.setup_anndata(adata, batch_key="batch", labels_key="cell_type")
    model = SCARKIDS(adata, seed=0)
    model.train(25, progress_bar=False, seed=0)
    elbo = model.history["val_elbo"]
    assert max(elbo[-5:]) > elbo[0] + 20


def test_default_learning_rate_scales_with_batch_size():
    from scarkids.train import default_learning_rate

    assert default_learning_rate(128) == pytest.approx(1e-3)
    assert default_learning_rate(1024) == pytest.approx(1e-3 * 8**0.5)
    adata = scarkids.datasets.simulate(400, 50, n_batches=2, n_cell_types=2, seed=0)
    SCARKIDS.setup_anndata(adata, batch_key="batch", labels_key="cell_type")
    for batch_size, given, expected in ((512, None, 2e-3), (512, 5e-4, 5e-4), (128, None, 1e-3)):
        model = SCARKIDS(adata, seed=0)
        model.train(1, batch_size=batch_size, learning_rate=given, progress_bar=False)
        assert model.history["learning_rate"][0] == pytest.approx(expected)


def test_train_and_the_module_refuse_arguments_outside_their_choices():
    from scarkids.errors import InputDataError

    adata = scarkids.datasets.simulate(200, 30, n_batches=2, n_cell_types=2, seed=0)
    SCARKIDS.setup_anndata(adata, batch_key="batch", labels_key="cell_type")
    model = SCARKIDS(adata, seed=0)
    bad = {"lr_scheduler": "cosin", "freeze": "everything", "batch_size": 1}
    for key, value in bad.items():
        with pytest.raises(InputDataError, match=f"{key} must be"):
            model.train(1, progress_bar=False, **{key: value})
    assert not model.is_trained  # refused before any work
    with pytest.raises(ValueError, match="decoder_layers must be at least 1, got 0"):
        SCARKIDS(adata, decoder_layers=0)
    with pytest.raises(ValueError, match="encoder_hidden_dims needs at least one"):
        SCARKIDS(adata, encoder_hidden_dims=())


def test_the_automatic_batch_size_follows_the_device_and_the_data(caplog):
    import logging

    from scarkids.train import default_batch_size

    assert default_batch_size(1_000_000, "cpu") == 128
    # on a GPU: the largest of 128 .. 4096 leaving 200 steps per epoch over 90% of the cells
    sizes = {n: default_batch_size(n, "cuda") for n in (1_000, 60_000, 200_000, 10**6, 10**8)}
    assert sizes == {1_000: 128, 60_000: 256, 200_000: 512, 10**6: 4096, 10**8: 4096}
    for n, b in sizes.items():
        assert b == 128 or 0.9 * n / b >= 200
    adata = scarkids.datasets.simulate(400, 50, n_batches=2, n_cell_types=2, seed=0)
    SCARKIDS.setup_anndata(adata, batch_key="batch", labels_key="cell_type")
    model = SCARKIDS(adata, seed=0)
    with caplog.at_level(logging.INFO, logger="scarkids"):
        model.train(1, batch_size=None, progress_bar=False, device="cpu")
    assert "batch size 128 (automatic, cpu)" in caplog.text
    assert model.history["learning_rate"][0] == pytest.approx(1e-3)


def test_the_automatic_epoch_budget_is_said(monkeypatch, caplog, capsys):
    """train() without max_epochs says how many epochs it chose and why."""
    import logging

    import scarkids.train.settings as settings

    monkeypatch.setattr(settings, "default_max_epochs", lambda n: 2)
    adata = scarkids.datasets.simulate(120, 30, n_batches=2, n_cell_types=2, seed=0)
    SCARKIDS.setup_anndata(adata, batch_key="batch", labels_key="cell_type")
    with caplog.at_level(logging.INFO, logger="scarkids"):
        SCARKIDS(adata, n_latent=3, n_diffusion_steps=10).train(progress_bar=True)
    said = "scARKIDS: 2 epochs (automatic: about 5e+05 cell passes for 120 cells"
    assert said in caplog.text and said in capsys.readouterr().out


def test_classifier_dims_limits_the_classifier_to_the_first_latent_dimensions():
    import torch

    from scarkids.module import SCARKIDSModule

    module = SCARKIDSModule(30, 2, 3, n_latent=6, classifier_dims=2, prior="mixture")
    module.eval()
    z = torch.randn(8, 6)
    moved = z.clone()
    moved[:, 2:] += 5.0  # the dimensions the classifier does not read
    assert torch.allclose(module.label_log_probs(z), module.label_log_probs(moved))
    moved[:, 0] += 5.0
    assert not torch.allclose(module.label_log_probs(z), module.label_log_probs(moved))
    with pytest.raises(ValueError, match="classifier_dims"):
        SCARKIDSModule(30, 2, 3, n_latent=6, classifier_dims=7)
