"""Differential expression from the generative model, the way scvi-tools computes it
(lvm-DE; Boyeau et al., PNAS 2023).

A mixin of :class:`scarkids.model.SCARKIDS`. For each group of cells, ``n_samples`` draws
of the normalised expression ``rho(z, b)``: a cell of the group at random, ``z ~ q(z | x)``
of that cell, decoded in every batch of the data and averaged (``batch_correction=True``;
a difference in the groups' batch composition then does not show up as DE) or in the
cell's own batch. Draws of the two groups are paired at random and give the posterior of
the log2 fold change per gene, ``LFC = log2(rho1 + eps) - log2(rho2 + eps)``:

- mode ``"change"``: ``proba_de = max(P(LFC > delta), P(LFC < -delta))``: one direction
  (a gene whose paired draws scatter both ways is not a change);
- mode ``"vanilla"``: ``proba_m1 = P(rho1 > rho2)``, ``proba_de = max(proba_m1, 1 - proba_m1)``;

In mode ``"change"`` a pseudocount is added before the log: by default, per comparison, one
count at the median library size of the two groups' cells (``1 / median library``), so that
the LFC of genes a cell of typical depth would not see once shrinks towards 0 and does not
decide ``proba_de``. ``lfc_*`` are computed with a thousandth of it.
``bayes_factor = log(proba_de / proba_not_de)``; a gene is called DE (``is_de_fdr_<t>``)
when it is among the most probable genes whose mean ``proba_not_de`` (the posterior
expected false discovery proportion) stays at most ``fdr_target``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from scarkids.errors import InputDataError

#: the columns of :meth:`ModelDifferentialExpression.differential_expression`, in order
#: (``is_de_fdr_<target>`` after ``raw_normalized_mean2``; ``proba_m1`` and ``proba_m2`` in
#: mode ``"vanilla"`` only)
DE_COLUMNS = [
    "proba_de",
    "proba_not_de",
    "bayes_factor",
    "scale1",
    "scale2",
    "lfc_mean",
    "lfc_median",
    "lfc_std",
    "lfc_min",
    "lfc_max",
    "raw_mean1",
    "raw_mean2",
    "non_zeros_proportion1",
    "non_zeros_proportion2",
    "raw_normalized_mean1",
    "raw_normalized_mean2",
]
MODES = ("change", "vanilla")


def _as_mask(idx, n: int, name: str) -> np.ndarray:
    """A boolean mask of ``n`` cells from a mask or integer positions; a clear error else."""
    arr = np.asarray(idx)
    if arr.dtype == bool:
        if arr.shape != (n,):
            raise InputDataError(f"{name}: a boolean mask needs {n} entries, got {arr.shape}")
        return arr
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise InputDataError(f"{name}: give integer cell positions or a boolean mask")
    if arr.size and (arr.min() < -n or arr.max() >= n):
        raise InputDataError(f"{name}: cell positions must lie in 0..{n - 1}")
    mask = np.zeros(n, dtype=bool)
    mask[arr.astype(np.int64)] = True
    return mask


def fdr_calls(proba_de: np.ndarray, fdr_target: float) -> np.ndarray:
    """``(G,)`` bool: the genes called DE at posterior expected FDR ``fdr_target``.

    Genes are taken by decreasing ``proba_de`` while the mean ``1 - proba_de`` of those
    taken (the expected false discovery proportion) is at most ``fdr_target``.

    Parameters
    ----------
    proba_de
        ``(G,)`` posterior probabilities of DE.
    fdr_target
        Target expected false discovery proportion, in (0, 1).

    Returns
    -------
    numpy.ndarray
        ``(G,)`` bool, True for the genes called DE.
    """
    order = np.argsort(-proba_de, kind="stable")
    expected_fdr = np.cumsum(1 - proba_de[order]) / np.arange(1, proba_de.size + 1)
    n_called = int(np.max(np.nonzero(expected_fdr <= fdr_target)[0], initial=-1)) + 1
    calls = np.zeros(proba_de.size, dtype=bool)
    calls[order[:n_called]] = True
    return calls


def _library_pseudocount(library: np.ndarray, m1: np.ndarray, m2: np.ndarray) -> float:
    """The offset added before the log in mode ``"change"``: one count at the median library
    size of the two groups' cells, ``1 / median(library)`` (an expression a cell of typical
    depth would not see once cannot show a fold change)."""
    return float(1.0 / max(np.median(library[m1 | m2]), 1.0))


def _check_arguments(mode, delta, fdr_target, n_samples) -> None:
    """One-line errors for the settings of a DE request that cannot be met."""
    if mode not in MODES:
        raise InputDataError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or delta < 0:
        raise InputDataError(f"delta must be a number >= 0 (e.g. 0.25), got {delta!r}")
    if not 0 < fdr_target < 1:
        raise InputDataError(f"fdr_target must lie strictly between 0 and 1, got {fdr_target!r}")
    if int(n_samples) < 1:
        raise InputDataError(f"n_samples must be at least 1, got {n_samples!r}")


class ModelDifferentialExpression:
    """Differential expression between groups of cells (see :class:`SCARKIDS`)."""

    @torch.no_grad()
    def differential_expression(
        self,
        adata=None,
        groupby: str | None = None,
        group1: str | None = None,
        group2: str | None = None,
        idx1=None,
        idx2=None,
        *,
        mode: str = "change",
        delta: float = 0.25,
        batch_correction: bool = True,
        fdr_target: float = 0.05,
        n_samples: int = 5000,
        pseudocount: float | None = None,
        seed: int = 0,
        batch_size: int = 1024,
    ) -> pd.DataFrame:
        """Posterior differential expression between groups of cells, as scvi-tools'
        ``differential_expression`` (lvm-DE): one group against another, against the rest
        of the cells, or every group of ``groupby`` in turn against the rest.

        Parameters
        ----------
        adata
            AnnData of raw counts with the model's genes and batches (set up with
            :meth:`setup_anndata`, or read with the model's batch key and layer); ``None``
            uses the model's.
        groupby
            ``adata.obs`` column that defines the groups (ignored with ``idx1``).
        group1
            The group to test; ``None`` tests every group of ``groupby`` in turn.
        group2
            The group to compare with; ``None`` compares with all other cells ("rest").
        idx1, idx2
            Instead of ``groupby``: cells of each group as a boolean mask or integer
            positions (``idx2`` ``None``: the rest). They must not overlap.
        mode
            ``"change"``: probability that ``|LFC| > delta``; ``"vanilla"``: probability
            that one group's expression is higher (``proba_m1``, ``proba_m2``).
        delta
            Smallest absolute log2 fold change that counts as a change (mode ``"change"``), >= 0.
        batch_correction
            Decode every drawn code in every batch of ``adata`` and average, so that the
            groups' batch composition does not appear as DE; ``False``: in the cell's own
            batch.
        fdr_target
            Posterior expected false discovery proportion of the genes called DE, in (0, 1).
        n_samples
            Posterior draws per group (cells drawn with replacement, one ``z`` per draw).
        pseudocount
            Added to the normalised expression (each cell's sums to 1) before the log;
            ``None``: one count at the median library size of the compared cells (see
            above).
        seed
            Seed of the draws and pairings: the same seed gives the same table.
        batch_size
            Draws decoded at a time (memory: ``batch_size * n_genes`` floats per batch).

        Returns
        -------
        pandas.DataFrame
            One row per gene and comparison, indexed by gene name, sorted by decreasing
            ``proba_de`` within each comparison, with the columns of :data:`DE_COLUMNS`,
            ``is_de_fdr_<fdr_target>`` (bool), ``comparison`` (``"A vs B"``), ``group1`` and
            ``group2``. ``scale`` is the mean normalised expression (sums to 1 over genes),
            ``lfc_*`` are in log2, ``raw_*`` are means of the counts (``normalized``: per
            10,000 counts of each cell).
        """
        adata_ = self.adata if adata is None else adata
        n = adata_.n_obs
        comparisons = self._de_comparisons(adata_, groupby, group1, group2, idx1, idx2)
        _check_arguments(mode, delta, fdr_target, n_samples)
        X, batch, _ = self._encode(adata_, labels="ignore")
        X = sp.csr_matrix(X)
        library = np.asarray(X.sum(1)).ravel()
        norm = sp.diags(1e4 / np.maximum(library, 1)) @ X
        self.module.eval()
        mean, std = self._posterior_moments(adata_, n)
        batches = np.unique(batch).tolist() if batch_correction else None
        cache: dict[bytes, np.ndarray] = {}

        def scales(mask: np.ndarray, key: int) -> np.ndarray:
            tag = np.packbits(mask).tobytes()
            if tag not in cache:
                cells = np.flatnonzero(mask)
                rng = np.random.default_rng([seed, key])
                draw = rng.choice(cells, int(n_samples), replace=True)
                cache[tag] = self._draw_scales(
                    mean[draw], std[draw], batch[draw], batches, rng, batch_size
                )
            return cache[tag]

        tables = []
        for k, (name1, name2, m1, m2) in enumerate(comparisons):
            s1, s2 = scales(m1, 2 * k), scales(m2, 2 * k + 1)
            rng = np.random.default_rng([seed, 7919, k])
            pairs = (
                rng.integers(0, len(s1), int(n_samples)),
                rng.integers(0, len(s2), int(n_samples)),
            )
            offset = pseudocount
            if offset is None:
                offset = _library_pseudocount(library, m1, m2)
            table = self._comparison_table(
                s1, s2, pairs, mode=mode, delta=delta, pseudocount=offset, fdr_target=fdr_target
            )
            for suffix, m in (("1", m1), ("2", m2)):
                table[f"raw_mean{suffix}"] = np.asarray(X[m].mean(0)).ravel()
            for suffix, m in (("1", m1), ("2", m2)):
                table[f"non_zeros_proportion{suffix}"] = np.asarray((X[m] > 0).mean(0)).ravel()
            for suffix, m in (("1", m1), ("2", m2)):
                table[f"raw_normalized_mean{suffix}"] = np.asarray(norm[m].mean(0)).ravel()
            table = table[[*DE_COLUMNS, *(c for c in table.columns if c not in DE_COLUMNS)]]
            table["comparison"] = f"{name1} vs {name2}"
            table["group1"], table["group2"] = name1, name2
            order = np.lexsort(
                (-np.abs(table["lfc_mean"].to_numpy()), -table["proba_de"].to_numpy())
            )
            tables.append(table.iloc[order])
        out = pd.concat(tables)
        float_cols = [c for c in out.columns if out[c].dtype.kind == "f"]
        out[float_cols] = out[float_cols].astype(np.float64)
        return out

    def _comparison_table(
        self, s1, s2, pairs, *, mode: str, delta: float, pseudocount: float, fdr_target: float
    ) -> pd.DataFrame:
        """The posterior columns of one comparison (genes in the model's order) from the
        groups' draws ``s1``, ``s2`` (``(n_draws, G)``) paired by ``pairs``."""
        a, b = s1[pairs[0]], s2[pairs[1]]
        table = pd.DataFrame(index=pd.Index(self.registry.gene_names, name="gene"))
        if mode == "change":
            shrunk = np.log2(a + pseudocount) - np.log2(b + pseudocount)
            proba = np.maximum((shrunk > delta).mean(0), (shrunk < -delta).mean(0))
            del shrunk
            pseudocount = 1e-3 * pseudocount  # the LFC summaries: nearly unshrunk
        else:
            m1_higher = (a > b).mean(0)
            proba = np.maximum(m1_higher, 1 - m1_higher)
        lfc = np.log2(a + pseudocount) - np.log2(b + pseudocount)
        table["proba_de"] = proba
        table["proba_not_de"] = 1 - proba
        table["bayes_factor"] = np.log(proba + 1e-8) - np.log(1 - proba + 1e-8)
        table["scale1"], table["scale2"] = s1.mean(0), s2.mean(0)
        table["lfc_mean"], table["lfc_median"] = lfc.mean(0), np.median(lfc, axis=0)
        table["lfc_std"], table["lfc_min"], table["lfc_max"] = lfc.std(0), lfc.min(0), lfc.max(0)
        table[f"is_de_fdr_{fdr_target}"] = fdr_calls(proba, fdr_target)
        if mode == "vanilla":
            table["proba_m1"], table["proba_m2"] = m1_higher, 1 - m1_higher
        return table

    def _de_comparisons(self, adata, groupby, group1, group2, idx1, idx2):
        """``[(name1, name2, mask1, mask2)]`` of the requested comparisons; one-line errors
        for requests that cannot be met."""
        n = adata.n_obs
        if idx1 is not None:
            m1 = _as_mask(idx1, n, "idx1")
            m2 = ~m1 if idx2 is None else _as_mask(idx2, n, "idx2")
            if (m1 & m2).any():
                raise InputDataError(
                    f"idx1 and idx2 overlap in {int((m1 & m2).sum())} cells: a cell can be in "
                    "one group only"
                )
            pairs = [("idx1", "rest" if idx2 is None else "idx2", m1, m2)]
        else:
            if groupby is None:
                raise InputDataError("give groupby (an obs column) or idx1 to define the groups")
            if groupby not in adata.obs:
                raise InputDataError(
                    f"groupby {groupby!r} is not a column of obs; columns: "
                    f"{', '.join(map(str, list(adata.obs.columns)[:12]))}"
                )
            col = adata.obs[groupby].astype(str).to_numpy()
            present = pd.unique(col).tolist()
            for name, g in (("group1", group1), ("group2", group2)):
                if g is not None and str(g) not in present:
                    raise InputDataError(
                        f"{name} {g!r} is not a group of obs[{groupby!r}]; groups: "
                        f"{', '.join(map(repr, present[:12]))}"
                    )
            if group1 is not None and group2 is not None and str(group1) == str(group2):
                raise InputDataError(f"group1 and group2 are both {group1!r}: give two groups")
            firsts = [str(group1)] if group1 is not None else sorted(present)
            pairs = []
            for g in firsts:
                m1 = col == g
                m2 = (col == str(group2)) if group2 is not None else ~m1
                pairs.append((g, "rest" if group2 is None else str(group2), m1, m2))
        for name1, name2, m1, m2 in pairs:
            for name, m in ((name1, m1), (name2, m2)):
                if not m.any():
                    raise InputDataError(f"group {name!r} has no cells: nothing to compare")
        return pairs

    def _posterior_moments(self, adata, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``(n, d)`` means and standard deviations of ``q(z0 | x)`` of every cell."""
        mean = np.empty((n, self.module.n_latent), dtype=np.float32)
        std = np.empty_like(mean)
        for sl, m, s in self._encoded(adata, 4096):
            mean[sl], std[sl] = m.cpu().numpy(), s.cpu().numpy()
        return mean, std

    def _draw_scales(self, mean, std, batch, batches, rng, batch_size: int) -> np.ndarray:
        """``(n_draws, G)`` float32 normalised expression of codes drawn from ``N(mean, std)``
        (one per row), decoded in each of ``batches`` and averaged, or in ``batch`` (per
        row) when ``batches`` is ``None``."""
        eps = rng.standard_normal(mean.shape).astype(np.float32)
        z_all = mean + std * eps
        decoder = self.module.decoder
        out = np.empty((mean.shape[0], len(self.registry.gene_names)), dtype=np.float32)
        for start in range(0, mean.shape[0], batch_size):
            sl = slice(start, min(start + batch_size, mean.shape[0]))
            z = torch.as_tensor(z_all[sl], device=self.device)
            b = torch.as_tensor(batch[sl], device=self.device, dtype=torch.long)
            if batches is None:
                rho = decoder.normalized_expression(z, b)
            else:
                rho = decoder.normalized_expression(z, b, batch=batches[0])
                for t in batches[1:]:
                    rho += decoder.normalized_expression(z, b, batch=t)
                rho /= len(batches)
            out[sl] = rho.float().cpu().numpy()
        return out
