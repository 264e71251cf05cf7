"""The label space: cell types, mixture components and clusters, by name and by code.

A model's labels are the slots of its classifier ``q(c | z0)`` and prior ``p(z0 | c)``,
named by ``Registry.label_categories`` and coded by their index there:

- **supervised** (the data has labels): the cell types.
- **unsupervised** (``Registry.labels_are_clusters``): unnamed mixture components,
  ``cluster_factor`` per cluster, named ``component_0, component_1, ...``
  (``cluster_0, ...`` when ``cluster_factor`` is 1: every component is a cluster). After
  training, the components in use are merged into at most ``Registry.max_clusters``
  clusters (``Registry.cluster_groups``: per cluster, its components' names, largest cluster
  first), which predictions name ``cluster_0, cluster_1, ...``. Generation codes a cluster
  by the number of components plus its index.
- **in use**: a component whose mixing proportion fell below 0.1% is switched off
  (``SCARKIDSModule.labels_in_use``); a model whose every component is a cluster reports
  only those in use.

A supervised session on an unsupervised model names the slots after its cell types. The
functions here map names, codes and groups; none trains, reads an AnnData or touches torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from scarkids.errors import InputDataError

#: the name of cluster ``i`` is ``f"{CLUSTER}_{i}"``
CLUSTER = "cluster"
#: the name of mixture component ``i`` (of a model that merges several per cluster)
COMPONENT = "component"


def check_cluster_numbers(n_labels, cluster_factor) -> None:
    """A one-line error unless ``n_labels`` and ``cluster_factor`` are positive integers."""
    for name, value in (("n_labels", n_labels), ("cluster_factor", cluster_factor)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise InputDataError(
                f"{name} must be a positive integer for unsupervised training, got {value!r}"
            )


def check_max_clusters(max_clusters, labels_are_clusters: bool, caller: str) -> None:
    """A one-line error unless ``max_clusters`` is ``None`` or a positive integer asked of an
    unsupervised model (``caller`` names the method in the message)."""
    if max_clusters is None:
        return
    if not labels_are_clusters:
        raise InputDataError(
            f"{caller}: max_clusters merges an unsupervised model's clusters; this "
            "model was trained on cell-type labels (drop max_clusters)"
        )
    if isinstance(max_clusters, bool) or not isinstance(max_clusters, (int, np.integer)):
        raise InputDataError(
            f"{caller}: max_clusters must be a positive integer, got {max_clusters!r}"
        )
    if max_clusters < 1:
        raise InputDataError(f"{caller}: max_clusters must be at least 1, got {max_clusters}")


def cluster_names(stop: int, start: int = 0) -> list[str]:
    """``cluster_{start}``, ..., ``cluster_{stop - 1}``."""
    return [f"{CLUSTER}_{i}" for i in range(start, stop)]


def component_names(n_clusters: int, cluster_factor: int) -> list[str]:
    """The names of an unsupervised model's ``n_clusters * cluster_factor`` components:
    ``cluster_i`` when each is a cluster (``cluster_factor`` 1), else ``component_i``."""
    prefix = CLUSTER if cluster_factor == 1 else COMPONENT
    return [f"{prefix}_{i}" for i in range(int(n_clusters * cluster_factor))]


def component_prior(probs, n_clusters: int, cluster_factor: int):
    """Prior probabilities of the components: ``probs`` given per cluster (``n_clusters`` of
    them) are shared equally by the cluster's ``cluster_factor`` components (a list);
    otherwise ``probs`` itself."""
    if probs is not None and cluster_factor > 1 and len(probs) == n_clusters:
        shared = np.repeat(np.asarray(probs, dtype=float) / cluster_factor, cluster_factor)
        return shared.tolist()
    return probs


def components_per_cluster(n_components: int, max_clusters: int) -> int:
    """Mixture components per reported cluster (at least 1)."""
    return max(1, n_components // max_clusters)


def names_in_use(categories: Sequence[str], in_use: np.ndarray) -> list[str]:
    """The names of the labels in use (``in_use``: ``(n_labels,)`` bool)."""
    return [n for n, u in zip(categories, in_use, strict=True) if u]


def label_names(
    categories: Sequence[str],
    labels_are_clusters: bool,
    cluster_groups: list[list[str]] | None,
    in_use: np.ndarray,
) -> list[str]:
    """The names predictions use: the cell types; the merged clusters
    (``cluster_0, cluster_1, ...``); or, when every component is a cluster, those in use
    (``in_use``: ``(n_labels,)`` bool)."""
    if not labels_are_clusters:
        return list(categories)
    if cluster_groups:
        return cluster_names(len(cluster_groups))
    return names_in_use(categories, in_use)


def cluster_components(
    categories: Sequence[str], cluster_groups: list[list[str]] | None
) -> list[list[int]] | None:
    """Per cluster, its components' codes (indices into ``categories``); ``None`` without
    merged clusters (every component is a cluster, or the labels are cell types)."""
    if not cluster_groups:
        return None
    index = {name: i for i, name in enumerate(categories)}
    return [[index[c] for c in group] for group in cluster_groups]


def label_codes(names: np.ndarray, categories: Sequence[str]) -> np.ndarray:
    """Codes ``(n,)`` of the names ``(n,)`` in ``categories``; -1 where not one of them."""
    return pd.Index(categories).get_indexer(names)


def most_probable_components(
    codes: np.ndarray, clusters: np.ndarray, groups: list[list[int]], probs: np.ndarray
) -> np.ndarray:
    """``codes`` ``(n,)`` where each cell of a cluster (``clusters``: ``(n,)`` indices into
    ``groups``, -1 for none) takes the code of its cluster's component that ``probs``
    ``(n, n_components)`` finds most probable for it (in place; returned)."""
    for g, comps in enumerate(groups):
        rows = np.flatnonzero(clusters == g)
        if rows.size:
            codes[rows] = np.asarray(comps)[probs[np.ix_(rows, comps)].argmax(1)]
    return codes


def generation_code(
    name: str, categories: Sequence[str], names: Sequence[str], clustered: bool
) -> int:
    """The code of ``name``, one of the prediction ``names``: its index in ``categories``,
    or with merged clusters (``clustered``) the number of categories plus its cluster's
    index."""
    if clustered:
        return len(categories) + list(names).index(name)
    return list(categories).index(name)


def generation_name(code: int, categories: Sequence[str], names: Sequence[str]) -> str:
    """The name of a :func:`generation_code`."""
    n = len(categories)
    return categories[code] if code < n else names[code - n]


def describe(n_labels: int, labels_are_clusters: bool, max_clusters: int | None) -> str:
    """The labels in words: ``"8 mixture components (at most 4 clusters)"``,
    ``"5 unsupervised clusters"`` or ``"4 cell types"``."""
    if labels_are_clusters and max_clusters and max_clusters < n_labels:
        return f"{n_labels} mixture components (at most {max_clusters} clusters)"
    if labels_are_clusters:
        return f"{n_labels} unsupervised clusters"
    return f"{n_labels} cell types"
