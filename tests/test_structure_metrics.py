"""What the labels don't name: the fine-label and within-batch measures against values worked
out by hand on tiny examples, and fine structure that survives coarse-label training."""

from __future__ import annotations

import numpy as np
import pytest

import scarkids
from scarkids import SCARKIDS
from scarkids.metrics import fine_label_structure, neighbour_overlap, within_batch_structure


def test_neighbour_overlap_matches_the_hand_counted_nearest_neighbours():
    # nearest neighbour in a: 0->1, 1->0, 3->1, 7->3, 15->7
    a = np.array([[0.0], [1.0], [3.0], [7.0], [15.0]])
    # nearest neighbour in b: 0->5 (1), 5->6 (2), 6->5 (1), 20->22 (4), 22->20 (3)
    b = np.array([[0.0], [5.0], [6.0], [20.0], [22.0]])
    overlap = neighbour_overlap(a, b, n_neighbors=1)
    np.testing.assert_allclose(overlap, [1.0, 0.0, 1.0, 0.0, 1.0])
    np.testing.assert_allclose(neighbour_overlap(a, a, n_neighbors=2), 1.0)


def test_fine_label_structure_scores_separated_and_interleaved_fine_types():
    rng = np.random.default_rng(0)
    # coarse A: two fine types 10 units apart; coarse B: one fine type (no row)
    a1, a2 = rng.normal(0, 0.1, (20, 2)), rng.normal(0, 0.1, (20, 2)) + [10.0, 0.0]
    b = rng.normal(0, 0.1, (10, 2)) + [0.0, 50.0]
    x = np.vstack([a1, a2, b])
    coarse = ["A"] * 40 + ["B"] * 10
    fine = ["a1"] * 20 + ["a2"] * 20 + ["b"] * 10
    table = fine_label_structure(x, coarse, fine, n_neighbors=5)
    assert list(table.index) == ["A"]
    row = table.loc["A"]
    assert (row["n_cells"], row["n_fine"]) == (40, 2)
    assert row["knn_balanced_accuracy"] == 1.0 and row["kmeans_ari"] == 1.0
    assert row["fine_asw"] > 0.95
    # 0..9 on a line, fine labels alternating: k-means splits {0..4} | {5..9}, contingency
    # [[3, 2], [2, 3]]: ARI = (8 - 400/45) / (20 - 400/45) = -0.08
    line = np.arange(10.0)[:, None]
    alternating = ["p", "q"] * 5
    t = fine_label_structure(line, ["C"] * 10, alternating, n_neighbors=1, n_folds=5)
    assert t.loc["C", "kmeans_ari"] == pytest.approx(-0.08)
    assert t.loc["C", "fine_asw"] < 0


def test_within_batch_structure_is_one_for_the_batch_pca_and_low_for_noise():
    rng = np.random.default_rng(1)
    expression = rng.normal(size=(120, 40)) * np.linspace(3, 0.1, 40)
    batch = np.repeat(["b0", "b1"], 60)
    pcs = np.vstack(
        [
            np.linalg.svd(e - e.mean(0), full_matrices=False)[0][:, :5]
            * np.linalg.svd(e - e.mean(0), full_matrices=False)[1][:5]
            for e in (expression[:60], expression[60:])
        ]
    )
    same = within_batch_structure(expression, pcs, batch, n_neighbors=5, n_pcs=5)
    assert same["all"] == pytest.approx(1.0)
    assert set(same.index) == {"b0", "b1", "all"}
    noise = within_batch_structure(expression, rng.normal(size=(120, 5)), batch, n_neighbors=5)
    assert noise["all"] < 0.3


def test_within_batch_structure_rejects_a_batch_vector_of_the_wrong_length():
    with pytest.raises(ValueError, match="batch needs one entry per cell"):
        within_batch_structure(np.ones((10, 3)), np.ones((10, 2)), ["b"] * 9)


@pytest.mark.slow
def test_two_programmes_under_one_label_stay_apart_after_coarse_label_training(one_thread):
    adata = scarkids.datasets.simulate(
        2000, 300, n_batches=2, n_cell_types=4, batch_effect=0.6, seed=3
    )
    fine = adata.obs["cell_type"].astype(str).to_numpy()
    coarse = np.where(np.isin(fine, ["type_0", "type_1"]), "type_01", fine)
    adata.obs["coarse"] = coarse
    SCARKIDS.setup_anndata(adata, batch_key="batch", labels_key="coarse")
    model = SCARKIDS(adata, seed=0, n_latent=8)
    model.train(60, progress_bar=False, seed=0)
    table = fine_label_structure(model.get_latent_representation(), coarse, fine)
    assert table.loc["type_01", "knn_balanced_accuracy"] >= 0.9
