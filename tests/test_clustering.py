"""The initial clusters of unsupervised training (issue: unsupervised mode that keeps the
seed's promise): over-clustering merged by Ward, K as a maximum, seeded and reproducible."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score
from threadpoolctl import threadpool_limits

from scarkids.train.clustering import initial_clusters, n_communities, ward_merge
from scarkids.train.loop import align_labels


def blobs(sizes, seed=0, spread=1.0, dim=4):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 12, (len(sizes), dim))
    truth = np.repeat(np.arange(len(sizes)), sizes)
    return centres[truth] + rng.normal(0, spread, (len(truth), dim)), truth


def test_ward_merge_joins_the_pieces_of_each_blob():
    z, truth = blobs([300, 200, 100])
    pieces = np.arange(len(z)) % 7 * 3 + truth  # 21 pieces, 7 per blob
    merged = ward_merge(z, pieces, 3)
    assert adjusted_rand_score(truth, merged) == 1.0
    assert np.bincount(merged).tolist() == [300, 200, 100]  # numbered by size


def test_ward_merge_cost_is_the_increase_of_the_sum_of_squares():
    """Of three pieces, the pair whose union adds least to the within sum of squares merges:
    a large and a small piece at the same distance, the small one joins (Ward, not centroid)."""
    a = np.zeros((100, 1))
    b = np.full((100, 1), 10.0)
    c = np.full((5, 1), -10.0)
    z = np.vstack([a, b, c])
    pieces = np.repeat([0, 1, 2], [100, 100, 5])
    merged = ward_merge(z, pieces, 2)
    assert merged[0] == merged[-1] != merged[100]


def test_k_is_a_maximum():
    z, truth = blobs([300, 300, 200, 200])
    labels = initial_clusters(z, 10, seed=0)
    assert n_communities(z, seed=0) == 4
    assert len(np.unique(labels)) == 4
    assert adjusted_rand_score(truth, labels) == 1.0
    assert len(np.unique(initial_clusters(z, 3, seed=0))) == 3  # fewer allowed than found


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_same_seed_same_clusters_whatever_the_threads(seed):
    z, _ = blobs([500, 300, 300, 100], seed=seed, spread=4.0)  # overlapping: ties matter
    first = initial_clusters(z, 4, seed=seed)
    with threadpool_limits(2):
        second = initial_clusters(z, 4, seed=seed)
    np.testing.assert_array_equal(first, second)


def test_subset_fit_assigns_every_cell():
    z, truth = blobs([3000, 2000, 1000])
    labels = initial_clusters(z, 3, seed=0, fit_cells=600)
    assert labels.shape == (6000,)
    assert adjusted_rand_score(truth, labels) == 1.0


def test_align_labels_keeps_each_cluster_where_it_was():
    old = np.repeat([2, 0, 1], 10)
    new = np.repeat([0, 1, 2], 10)
    np.testing.assert_array_equal(align_labels(new, old, 4), old)
    # a new cluster that matches nothing takes an unused index
    new2 = np.repeat([0, 1, 2, 3], [10, 10, 5, 5])
    out = align_labels(new2, old, 4)
    assert (out[:20] == old[:20]).all() and len(set(out)) == 4
