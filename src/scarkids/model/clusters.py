"""Merging an unsupervised model's clusters into at most a given number of groups.

A mixture fitted with more components than there are cell types splits the large types into
several components and keeps the small ones apart; merging the components the posterior
confuses most recovers the types better than fitting as many components as types, where a
large type's two halves take two components and two small types share one
(``benchmarks/clustering.py``).

The criterion follows the entropy one of Baudry et al. (2010, "Combining mixture components
for clustering", J. Comput. Graph. Stat. 19(2)): merging groups ``a`` and ``b`` lowers the
entropy of the cells' soft assignments by
``sum_i [(t_ia + t_ib) log(t_ia + t_ib) - t_ia log t_ia - t_ib log t_ib]``. Here that decrease
is divided by the smaller group's mass ``min(sum_i t_ia, sum_i t_ib)``: the entropy the
merger removes per cell of the smaller group, so that how much of a group is confused with
another counts, not how large the two are. Unnormalised, a cluster holding a cell's worth
of mass can never win against two large types that overlap a little, and the large types
merge first (simulated data, 5 types in 10 clusters: ARI 0.76 against 1.0; kang at K = 16,
merged to 8: Hungarian accuracy 0.74 against 0.83).
"""

from __future__ import annotations

import numpy as np


def _xlogx(p: np.ndarray) -> np.ndarray:
    return p * np.log(np.clip(p, 1e-300, None))


def merge_clusters(probs: np.ndarray, max_clusters: int, max_cells: int = 50_000) -> list:
    """Groups of clusters, merged by the normalised entropy criterion until at most
    ``max_clusters`` remain.

    Parameters
    ----------
    probs
        ``(n_cells, n_clusters)`` soft assignments (rows sum to 1).
    max_clusters
        Largest number of groups returned (at least 1).
    max_cells
        At most this many cells (every k-th, deterministic) decide the merges.

    Returns
    -------
    list of list of int
        The groups, each a sorted list of column indices of ``probs``, ordered by their
        first column; fewer columns than ``max_clusters`` give one group per column.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if max_clusters < 1:
        raise ValueError(f"max_clusters must be at least 1, got {max_clusters}")
    stride = max(1, -(-probs.shape[0] // max_cells))
    q = [probs[::stride, j].copy() for j in range(probs.shape[1])]
    groups = [[j] for j in range(probs.shape[1])]
    own = [float(_xlogx(c).sum()) for c in q]
    mass = [max(float(c.sum()), 1e-12) for c in q]

    def gain(i: int, j: int) -> float:  # entropy decrease per cell of the smaller group
        return (float(_xlogx(q[i] + q[j]).sum()) - own[i] - own[j]) / min(mass[i], mass[j])

    k = len(q)
    g = np.full((k, k), -np.inf)
    for i in range(k):
        for j in range(i + 1, k):
            g[i, j] = gain(i, j)
    alive = list(range(k))
    while len(alive) > max_clusters:
        sub = g[np.ix_(alive, alive)]
        a, b = np.unravel_index(np.argmax(sub), sub.shape)
        i, j = sorted((alive[a], alive[b]))
        q[i] = q[i] + q[j]
        own[i] = float(_xlogx(q[i]).sum())
        mass[i] += mass[j]
        groups[i] = sorted(groups[i] + groups[j])
        alive.remove(j)
        g[j, :] = g[:, j] = -np.inf
        for other in alive:
            if other != i:
                lo, hi = sorted((i, other))
                g[lo, hi] = gain(lo, hi)
    return sorted((groups[i] for i in alive), key=lambda grp: grp[0])
