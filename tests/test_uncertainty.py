"""Calibrated probabilities and the prior's novelty score (issue: cell types the reference
never saw, and probabilities that mean what they say)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

import scarkids
from scarkids import SCARKIDS
from scarkids.errors import InputDataError
from scarkids.model.uncertainty import fit_temperature

HELD_OUT = "type_4"


def _simulated():
    return scarkids.datasets.simulate(
        2500, 300, n_batches=2, n_cell_types=5, batch_effect=0.4, seed=7
    )


@pytest.fixture(scope="module")
def split(one_thread):
    """A reference without one of five cell types, and all cells (with that type)."""
    adata = _simulated()
    ref = adata[adata.obs["cell_type"] != HELD_OUT].copy()
    ref.obs["cell_type"] = ref.obs["cell_type"].astype(str)
    SCARKIDS.setup_anndata(ref, batch_key="batch", labels_key="cell_type")
    model = SCARKIDS(ref, n_latent=8, seed=0)
    model.train(60, progress_bar=False, seed=0)
    return model, adata


@pytest.fixture(scope="module")
def three_way(one_thread):
    """A model trained on 80% of the cells and validated on 10%, and the last 10% (cells it
    never saw)."""
    adata = _simulated()
    part = np.random.default_rng(0).permutation(adata.n_obs) % 10
    ref, val, unseen = (adata[m].copy() for m in (part < 8, part == 8, part == 9))
    for a in (ref, val):
        SCARKIDS.setup_anndata(a, batch_key="batch", labels_key="cell_type")
    model = SCARKIDS(ref, n_latent=8, seed=0)
    model.train(40, progress_bar=False, seed=0, validation_adata=val)
    return model, unseen


def test_fit_temperature_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2, (4000, 5))
    labels = np.array([rng.choice(5, p=np.exp(r) / np.exp(r).sum()) for r in true_logits])
    # an overconfident model: logits 3x too large; the fitted temperature undoes it
    assert fit_temperature(3 * true_logits, labels) == pytest.approx(3.0, rel=0.1)


def test_fit_temperature_does_not_sharpen_on_no_evidence():
    # every cell right with a wide margin: the plain NLL keeps falling as T -> 0, and
    # sharpening would saturate every probability at 1; the prior on log T keeps T near 1
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 300)
    logits = rng.normal(0, 1, (300, 4))
    logits[np.arange(300), labels] += 12
    assert 0.8 < fit_temperature(logits, labels) < 1.25
    # ... while an underconfident model is still sharpened: logits 3x too small
    true_logits = rng.normal(0, 2, (4000, 5))
    drawn = np.array([rng.choice(5, p=np.exp(r) / np.exp(r).sum()) for r in true_logits])
    assert fit_temperature(true_logits / 3, drawn) == pytest.approx(1 / 3, rel=0.1)


def test_temperature_fitted_on_validation_lowers_the_nll_of_unseen_cells(three_way):
    model, unseen = three_way
    assert model.temperature != 1.0
    z = torch.as_tensor(model.get_latent_representation(unseen))
    codes = pd.Index(model.label_names).get_indexer(unseen.obs["cell_type"].astype(str))
    assert (codes >= 0).all()
    logits = model.module.classifier(z).detach().double()
    labels = torch.as_tensor(codes)
    raw = F.cross_entropy(logits, labels).item()
    scaled = F.cross_entropy(logits / model.temperature, labels).item()
    assert scaled < raw


def test_novelty_flags_the_type_the_reference_never_saw(split):
    model, adata = split
    q = adata.copy()
    scores = model.novelty(q)
    is_new = (q.obs["cell_type"] == HELD_OUT).to_numpy()
    assert roc_auc_score(is_new, scores) >= 0.95
    table = model.predict_with_uncertainty(q)
    assert {"novelty", "unknown"} <= set(table.columns)
    flagged_new = table["unknown"][is_new].mean()
    flagged_known = table["unknown"][~is_new].mean()
    assert flagged_new >= 0.7 and flagged_known <= 0.1
    assert (table["predicted_label"][table["unknown"]] == "unknown").all()


def test_novelty_is_reproducible_and_its_own_noise_is_small(split):
    model, adata = split
    a, b = model.novelty(adata, seed=3), model.novelty(adata, seed=3)
    np.testing.assert_array_equal(a, b)
    c = model.novelty(adata, seed=4)
    # the estimate's noise (two seeds) against its spread over cells: at the default draws
    # the noise sd is below a fifth of the spread
    noise = np.std(a - c) / np.sqrt(2)
    assert noise < 0.2 * np.std(a)


def test_novelty_threshold_is_the_validation_quantile(split):
    model, _ = split
    ref = np.asarray(model.calibration["validation_novelty"])
    assert len(ref) > 100
    assert model.novelty_threshold(0.5) == pytest.approx(np.quantile(ref, 0.5))
    assert model.novelty_threshold(None) is None
    for bad in (0, 1, 1.5, -0.1, "x"):
        with pytest.raises(InputDataError, match="strictly between 0 and 1"):
            model.novelty_threshold(bad)


def test_calibration_is_saved_and_loaded(split, tmp_path):
    model, adata = split
    loaded = SCARKIDS.load(model.save(tmp_path / "m.pt"))
    assert loaded.temperature == model.temperature
    assert loaded.novelty_threshold() == model.novelty_threshold()
    np.testing.assert_allclose(loaded.novelty(adata[:50].copy()), model.novelty(adata[:50].copy()))


@pytest.mark.parametrize("prior", ["gaussian", "mixture"])
def test_every_prior_has_a_novelty(prior):
    adata = scarkids.datasets.simulate(400, 50, n_batches=2, n_cell_types=2, seed=0)
    SCARKIDS.setup_anndata(adata, batch_key="batch", labels_key="cell_type")
    m = SCARKIDS(adata, n_latent=4, prior=prior).train(3, progress_bar=False)
    s = m.novelty()
    assert s.shape == (400,) and np.isfinite(s).all()
    np.testing.assert_array_equal(s, m.novelty(seed=9))  # exact densities: no draws
