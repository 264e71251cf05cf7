"""The initial clusters of unsupervised training (issue: unsupervised mode that keeps the
seed's promise): over-clustering merged by Ward, K as a maximum, seeded and reproducible."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score
from threadpoolctl import threadpool_limits

from scarkids.labels.clustering import (
    align_labels,
    initial_clusters,
    merge_clusters,
    n_communities,
    ward_merge,
)


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
    # two components per community: each blob in two pieces, no piece across two blobs
    two = initial_clusters(z, 10, seed=0, per_community=2)
    assert len(np.unique(two)) == 8
    assert max(len(np.unique(truth[two == c])) for c in np.unique(two)) == 1


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


def split_types(seed=0):
    """Soft assignments of three types of 500 cells, each type split between two clusters
    (columns 0-1, 2-3, 4-5); a tenth of type 1's and type 2's cells are unsure between the
    two types; a seventh cluster holds half a cell's mass, all of it on type 0's cells."""
    rng = np.random.default_rng(seed)
    n = 500
    truth = np.repeat([0, 1, 2], n)
    probs = np.full((3 * n, 7), 1e-6)
    for t in range(3):
        w = rng.uniform(0, 1, n)
        probs[truth == t, 2 * t] += w
        probs[truth == t, 2 * t + 1] += 1 - w
    unsure = rng.random(3 * n) < 0.1
    probs[(truth == 1) & unsure, 4] += 0.4
    probs[(truth == 2) & unsure, 2] += 0.4
    probs[truth == 0, 6] += 0.001
    return probs / probs.sum(1, keepdims=True), truth


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_merging_joins_the_clusters_of_each_type(seed):
    """The pieces of each type merge, the near-empty cluster joins the type it sits on, and
    the two types that overlap a little stay apart (unnormalised, the entropy criterion
    merges those two large types before the small cluster: it gives [[0, 1], [2, 3, 4, 5],
    [6]])."""
    probs, _ = split_types(seed)
    assert merge_clusters(probs, 3) == [[0, 1, 6], [2, 3], [4, 5]]
    assert merge_clusters(probs, 3, max_cells=500) == [[0, 1, 6], [2, 3], [4, 5]]
    assert merge_clusters(probs, 1) == [list(range(7))]


def test_merging_to_as_many_clusters_or_more_keeps_each():
    probs, _ = split_types()
    assert merge_clusters(probs, 7) == merge_clusters(probs, 20) == [[j] for j in range(7)]
    with pytest.raises(ValueError, match="max_clusters"):
        merge_clusters(probs, 0)
