"""The clusterings of unsupervised training, in numpy: the initial clusters of the latent,
and the merge of mixture components into clusters.

Initial clusters: over-cluster the latent, merge by Ward
--------------------------------------------------------
Unsupervised training treats the cell type c as latent, and the clusters that its prior
components settle into depend on where they start. Plain k-means with K = the number of
types splits large heterogeneous types (naive and memory T cells) while merging small
distinct ones, and which of these it does flips with the seed. On the latent of a trained
unsupervised model, over-clustering and merging by Ward matched the author labels (Hungarian
accuracy) far better than k-means with K on one real dataset and as well on another
(docs/benchmarks/clustering.md has the accuracy of the clusters as they are made now).

So the latent is first cut into ``3 K`` k-means pieces, and pieces are merged pairwise by the
Ward criterion ``n_a n_b / (n_a + n_b) ||c_a - c_b||^2`` (the increase of the within-cluster
sum of squares) down to the number of clusters used. ``K`` is a maximum (the seed's "max
number of cell types"): the number used is ``min(K, n_communities)``, the number of Leiden
communities (modularity, resolution 1) of the latent's 15-nearest-neighbour graph; the
surplus slots start empty. Everything is seeded and single-threaded, so the same latent
gives the same clusters on any machine.

Merging mixture components into clusters
----------------------------------------
A mixture fitted with more components than there are cell types splits the large types into
several components and keeps the small ones apart; merging the components the posterior
confuses most recovers the types better than fitting as many components as types, where a
large type's two halves take two components and two small types share one
(``benchmarks/clustering.py``).

The criterion of :func:`merge_clusters` follows the entropy one of Baudry et al. (2010,
"Combining mixture components for clustering", J. Comput. Graph. Stat. 19(2)): merging
groups ``a`` and ``b`` lowers the entropy of the cells' soft assignments by
``sum_i [(t_ia + t_ib) log(t_ia + t_ib) - t_ia log t_ia - t_ib log t_ib]``. Here that decrease
is divided by the smaller group's mass ``min(sum_i t_ia, sum_i t_ib)``: the entropy the
merger removes per cell of the smaller group, so that how much of a group is confused with
another counts, not how large the two are. Unnormalised, a cluster holding a cell's worth
of mass can never win against two large types that overlap a little, and the large types
merge first, which recovers the types worse on simulated and on real data
(``benchmarks/clustering.py``; docs/benchmarks/clustering.md).
"""

from __future__ import annotations

import random

import numpy as np

#: pieces cut by k-means per cluster, before the Ward merge
OVERCLUSTER = 3
#: neighbours of the graph whose Leiden communities bound the number of clusters
N_NEIGHBORS = 15


def ward_merge(z: np.ndarray, pieces: np.ndarray, n_clusters: int) -> np.ndarray:
    """Merge the labelled ``pieces`` (n,) of ``z`` (n, d) down to ``n_clusters`` groups.

    Each step joins the two groups whose union raises the within-group sum of squares least
    (Ward). Returns group labels (n,) in ``0..n_clusters-1``, numbered by decreasing size.
    """
    ids, pieces = np.unique(pieces, return_inverse=True)
    sizes = np.bincount(pieces).astype(np.float64)
    centres = np.zeros((len(ids), z.shape[1]))
    np.add.at(centres, pieces, z.astype(np.float64))
    centres /= sizes[:, None]
    group = np.arange(len(ids))
    alive = list(range(len(ids)))
    while len(alive) > n_clusters:
        c, s = centres[alive], sizes[alive]
        cost = (s[:, None] * s[None, :] / (s[:, None] + s[None, :])) * (
            (c[:, None, :] - c[None, :, :]) ** 2
        ).sum(-1)
        np.fill_diagonal(cost, np.inf)
        i, j = np.unravel_index(np.argmin(cost), cost.shape)
        a, b = alive[min(i, j)], alive[max(i, j)]
        centres[a] = (sizes[a] * centres[a] + sizes[b] * centres[b]) / (sizes[a] + sizes[b])
        sizes[a] += sizes[b]
        group[group == b] = a
        alive.remove(b)
    labels = group[pieces]
    order = np.argsort(-np.bincount(labels, minlength=len(ids))[alive], kind="stable")
    rank = np.empty(len(ids), dtype=np.int64)
    rank[np.asarray(alive)[order]] = np.arange(len(alive))
    return rank[labels]


def n_communities(z: np.ndarray, seed: int, n_neighbors: int = N_NEIGHBORS) -> int:
    """Leiden communities (modularity, resolution 1) of the kNN graph of ``z`` (n, d)."""
    import igraph
    from sklearn.neighbors import NearestNeighbors

    k = min(n_neighbors, len(z) - 1)
    if k < 1:
        return 1
    idx = NearestNeighbors(n_neighbors=k + 1).fit(z).kneighbors(z, return_distance=False)
    edges = np.stack([np.repeat(np.arange(len(z)), k), idx[:, 1:].ravel()], 1)
    graph = igraph.Graph(n=len(z), edges=edges, directed=False).simplify()
    # igraph draws from one process-wide generator: seed it, then give the default back
    igraph.set_random_number_generator(random.Random(seed))
    try:
        part = graph.community_leiden(objective_function="modularity", n_iterations=-1)
    finally:
        igraph.set_random_number_generator(random)
    return len(set(part.membership))


def _fit_subset(n: int, seed: int, fit_cells: int) -> np.ndarray:
    """Sorted indices of the cells a clustering is fitted on: all ``n``, or a seeded subset
    of ``fit_cells`` above that many."""
    if n <= fit_cells:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, fit_cells, replace=False))


def latent_communities(z: np.ndarray, seed: int, *, fit_cells: int = 20_000) -> int:
    """Leiden communities of the latent means ``z`` (n, d) (:func:`n_communities`), on the
    cells :func:`initial_clusters` would fit on; one thread, so the same anywhere."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        return n_communities(z[_fit_subset(len(z), seed, fit_cells)], seed)


def initial_clusters(
    z: np.ndarray,
    max_clusters: int,
    seed: int,
    *,
    fit_cells: int = 20_000,
    per_community: int = 1,
) -> np.ndarray:
    """Cluster labels (n,) of the latent means ``z`` (n, d): at most ``max_clusters`` of them.

    Above ``fit_cells`` cells the clustering is fitted on a seeded subset and every cell is
    then given the cluster of its nearest k-means piece. 20,000 cells keep it at about two
    seconds on 2 cores whatever the data size (on 90,000 cells fitted whole it took 19 s on
    well-separated codes and far longer on an early latent, where Leiden converges slowly:
    an unsupervised 2-epoch training of 100k cells took 193 s, 46 s with the subset).

    Parameters
    ----------
    z
        ``(n, d)`` latent means.
    max_clusters
        Most clusters returned (fewer when the latent has fewer Leiden communities, times
        ``per_community``).
    seed
        Seed of the subset, k-means and Leiden.
    fit_cells
        Largest number of cells the clustering is fitted on.
    per_community
        Clusters allowed per Leiden community (a model that merges ``cluster_factor``
        mixture components per cluster after training asks for that many).

    Returns
    -------
    numpy.ndarray
        ``(n,)`` int64 cluster labels, numbered by decreasing size.
    """
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    fit = _fit_subset(len(z), seed, fit_cells)
    with threadpool_limits(1):  # one thread: the same sums, hence the same clusters, anywhere
        bound = per_community * n_communities(z[fit], seed)
        n_used = max(1, min(max_clusters, bound, len(fit)))
        n_pieces = min(OVERCLUSTER * max_clusters, len(fit))
        km = KMeans(n_clusters=n_pieces, n_init=4, random_state=seed).fit(z[fit])
        pieces = km.predict(z)
    merged = ward_merge(z, pieces, n_used)
    return merged


def align_labels(new: np.ndarray, old: np.ndarray, n_labels: int) -> np.ndarray:
    """Renumber the clusters ``new`` (n,) so that each takes the index of the ``old`` label
    (n,) it shares most cells with (Hungarian matching); the rest take unused indices."""
    from scipy.optimize import linear_sum_assignment

    table = np.zeros((n_labels, n_labels))
    np.add.at(table, (new, old), 1)
    rows, cols = linear_sum_assignment(-table)
    mapping = np.empty(n_labels, dtype=np.int64)
    mapping[rows] = cols
    return mapping[new]


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


def keep_cluster_numbers(new: list[list[str]], old: list[list[str]] | None) -> list:
    """``new`` clusters (lists of component names, largest first) renumbered so that a
    cluster sharing the most components with a previous session's cluster keeps its number
    (one-to-one, by shared components); the others follow, largest first."""
    if not old:
        return new
    from scipy.optimize import linear_sum_assignment

    shared = np.array([[len(set(a) & set(b)) for b in old] for a in new])
    rows, cols = linear_sum_assignment(-shared)
    place = {int(r): int(c) for r, c in zip(rows, cols, strict=True) if shared[r, c] > 0}
    slots = [None] * max(len(new), len(old))
    for r, c in place.items():
        slots[c] = new[r]
    rest = iter(g for i, g in enumerate(new) if i not in place)
    out = [g if g is not None else next(rest, None) for g in slots]
    return [g for g in out if g is not None] + list(rest)


def merge_components(
    probs: np.ndarray,
    z: np.ndarray,
    names: np.ndarray,
    max_clusters: int,
    seed: int,
    previous: list[list[str]] | None = None,
) -> tuple[list[list[str]], int]:
    """The clusters of an unsupervised model's mixture components, after training.

    The components are merged (:func:`merge_clusters`) into at most ``max_clusters``
    clusters, and no more than the latent ``z`` has Leiden communities
    (:func:`latent_communities`); the clusters are numbered by decreasing mass, then
    renumbered so that each keeps the number of the ``previous`` session's cluster it shares
    most components with (:func:`keep_cluster_numbers`).

    Parameters
    ----------
    probs
        ``(n_cells, n_components)`` ``q(c | z0)`` of every training cell over the components
        in use (rows sum to 1).
    z
        ``(n_cells, n_latent)`` latent means of the same cells.
    names
        ``(n_components,)`` names of the columns of ``probs``.
    max_clusters
        Most clusters.
    seed
        Seed of the Leiden communities (and of their subset of cells).
    previous
        The clusters of the previous session (lists of component names), or ``None``.

    Returns
    -------
    tuple of (list of list of str, int)
        The clusters, each a list of component names, and the number of Leiden communities.
    """
    communities = latent_communities(z, seed)
    groups = merge_clusters(probs, min(max_clusters, communities))
    mass = np.array([probs[:, g].sum() for g in groups])
    names = np.asarray(names, dtype=object)
    new = [[str(c) for c in names[groups[i]]] for i in np.argsort(-mass, kind="stable")]
    return keep_cluster_numbers(new, previous), communities


def merge_labels(
    probs: np.ndarray, names: np.ndarray, max_clusters: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """``probs`` (n_cells, n_labels) of the labels ``names`` (n_labels,) merged into at most
    ``max_clusters`` groups (:func:`merge_clusters`), each group's probability the sum of
    its labels' and its name theirs joined by ``+`` (``"cluster_3+cluster_7"``); unchanged
    when ``max_clusters`` is ``None`` or at least the number of labels."""
    names = np.asarray(names, dtype=object)
    if max_clusters is None or max_clusters >= probs.shape[1]:
        return probs, names
    groups = merge_clusters(probs, int(max_clusters))
    probs = np.stack([probs[:, g].sum(1) for g in groups], axis=1)
    return probs, np.asarray(["+".join(names[g]) for g in groups], dtype=object)
