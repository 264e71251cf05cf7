"""New cells from the model: codes drawn from the prior of a cell type, decoded as a batch.

A mixin of :class:`scarkids.model.SCARKIDS`; it uses the model's ``module``, ``registry``,
``device``, ``library_sizes`` (the log-normal fit of the library sizes of each batch,
made when the model is trained on that batch) and ``library_sizes_by_type`` (the same fit
per cell type and batch: cell types differ in depth several-fold, and one fit per batch
gives every type the same depth; docs/benchmarks/generation.md measures the difference).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from scarkids.constants import LABEL_OFFSET, LATENT_KEY
from scarkids.distributions.counts import sample_counts
from scarkids.errors import InputDataError
from scarkids.labels import space

Names = str | Sequence[str] | None

#: fewest cells of a (cell type, batch) pair whose own log-normal fit is used
MIN_FIT_CELLS = 10
#: cells whose counts ``generate`` draws from one random generator
DRAW_BLOCK = 256


def _block_counts(g: dict, start: int, size: int, rng) -> np.ndarray:
    """Counts of rows ``start:start + size`` of the decoder's output ``g`` (a dispersion
    of shape ``(1, G)`` is shared by every row)."""

    def rows(x):
        return x if x is None or x.shape[0] == 1 else x[start : start + size]

    return sample_counts(
        rows(g["log_mu"]), rows(g["log_theta"]), rows(g.get("dropout_logits")), rng
    )


def library_fit(library: np.ndarray, batch: np.ndarray, names: Sequence[str]) -> dict:
    """Log-normal fit of the library sizes of each batch present.

    Parameters
    ----------
    library
        ``(n_cells,)`` total counts per cell.
    batch
        ``(n_cells,)`` batch codes (indices into ``names``).
    names
        The batch names.

    Returns
    -------
    dict
        ``{batch name: [mean of log library, sd of log library, number of cells]}`` for each
        batch with cells.
    """
    log_lib = np.log(np.clip(np.asarray(library, dtype=np.float64), 1.0, None))
    out = {}
    for code in np.unique(batch):
        v = log_lib[batch == code]
        out[str(names[code])] = [float(v.mean()), float(v.std()), int(v.size)]
    return out


def library_fit_by_type(
    library: np.ndarray,
    batch: np.ndarray,
    labels: np.ndarray,
    batch_names: Sequence[str],
    label_names: Sequence[str],
) -> dict:
    """Log-normal fit of the library sizes of each (cell type, batch) pair present.

    Parameters
    ----------
    library
        ``(n_cells,)`` total counts per cell.
    batch
        ``(n_cells,)`` batch codes (indices into ``batch_names``).
    labels
        ``(n_cells,)`` label codes (indices into ``label_names``); cells with a negative
        code (unlabelled) are left out.
    batch_names, label_names
        The batch and label names.

    Returns
    -------
    dict
        ``{label name: {batch name: [mean of log library, sd of log library, number of
        cells]}}`` for each pair with cells.
    """
    library, batch, labels = (np.asarray(a) for a in (library, batch, labels))
    known = labels >= 0
    out: dict = {}
    for t in np.unique(labels[known]):
        m = known & (labels == t)
        out[str(label_names[t])] = library_fit(library[m], batch[m], batch_names)
    return out


class ModelGeneration:
    """:meth:`generate` (see :class:`SCARKIDS`)."""

    def _requests(self, n_cells, cell_type, batch) -> list[tuple[int, int, int]]:
        """``[(label code, batch code, number of cells), ...]`` from generate's arguments
        (label codes index all the model's labels; only those in use can be asked for)."""
        types = self.label_names
        batches = self.registry.batch_categories

        def code(name, known: list[str], what: str) -> int:
            if str(name) not in known:
                shown = ", ".join(map(repr, known[:12])) + (" ..." if len(known) > 12 else "")
                raise InputDataError(f"{what} {name!r} is not one of the model's: {shown}")
            return known.index(str(name))

        def names(value, known: list[str]) -> list:
            if value is None:
                return list(known)
            return [value] if isinstance(value, str) else list(value)

        if isinstance(cell_type, Mapping):
            if n_cells is not None:
                raise InputDataError("give n_cells or a dict of counts per cell type, not both")
            pairs = []
            for key, n in cell_type.items():
                if isinstance(key, tuple):
                    if batch is not None:
                        raise InputDataError(
                            "cell_type is a dict per (type, batch): leave batch unset"
                        )
                    pairs.append((key[0], key[1], n))
                else:
                    pairs += [(key, b, n) for b in names(batch, batches)]
        else:
            if n_cells is None:
                raise InputDataError("n_cells is needed (cells per cell type and batch)")
            pairs = [
                (t, b, n_cells) for t in names(cell_type, types) for b in names(batch, batches)
            ]
        out = []
        for t, b, n in pairs:
            if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
                raise InputDataError(f"the number of cells must be a whole number >= 0, got {n!r}")
            label = self._type_code(types[code(t, types, "cell type")])
            out.append((label, code(b, batches, "batch"), int(n)))
        if sum(n for *_, n in out) == 0:
            raise InputDataError("nothing to generate: every requested count is 0")
        return out

    def _type_code(self, name: str) -> int:
        """The code of a name of :attr:`label_names`: its index in the model's labels, or
        for a cluster of components, the number of labels plus the cluster's index."""
        clustered = self._cluster_components() is not None
        return space.generation_code(
            name, self.registry.label_categories, self.label_names, clustered
        )

    def _code_name(self, code: int) -> str:
        """The name of a :meth:`_type_code`."""
        return space.generation_name(code, self.registry.label_categories, self.label_names)

    def _update_type_library_sizes(self, library, batch, labels, names=None) -> None:
        """Merge the (cell type, batch) log-normal fits of these cells into
        ``library_sizes_by_type`` (labels: codes into ``names``, by default the model's
        labels; < 0 unlabelled)."""
        fits = library_fit_by_type(
            library,
            batch,
            labels,
            self.registry.batch_categories,
            self.registry.label_categories if names is None else names,
        )
        for t, per_batch in fits.items():
            self.library_sizes_by_type.setdefault(t, {}).update(per_batch)

    def _library_params(self, t: int, b: int) -> tuple[float, float]:
        """Mean and sd of the log library size of label code ``t`` in batch code ``b``.

        The pair's own fit when it had at least :data:`MIN_FIT_CELLS` cells. Otherwise the
        type's fit in each batch ``b'`` it was seen in, moved by the depth difference of
        ``b`` and ``b'`` (over the cell types seen in both; the batches' own means where
        none is), averaged over those batches by cells. For a type without fits (or a
        model saved before they were kept), batch ``b``'s fit.
        """
        name = self.registry.batch_categories[b]
        batch_fit = self.library_sizes.get(name)
        if batch_fit is None:
            raise InputDataError(
                f"no library sizes recorded for batch {name!r} (the model was saved before "
                "they were, or never trained on that batch): pass library_size"
            )
        by_type = getattr(self, "library_sizes_by_type", {})

        def fits(per_batch: dict) -> dict:
            return {k: f for k, f in per_batch.items() if f[2] >= MIN_FIT_CELLS}

        own = fits(by_type.get(self._code_name(t), {}))
        if name in own:
            return own[name][0], own[name][1]
        if not own:
            return batch_fit[0], batch_fit[1]
        others = [fits(per_batch) for per_batch in by_type.values()]
        means, sds, weights = [], [], []
        for seen, f in own.items():
            # depth of batch `name` against batch `seen`, on the types measured in both
            shared = [(o[name], o[seen]) for o in others if name in o and seen in o]
            if shared:
                w = np.array([min(x[2], y[2]) for x, y in shared], dtype=float)
                delta = float(np.average([x[0] - y[0] for x, y in shared], weights=w))
            else:
                delta = batch_fit[0] - self.library_sizes.get(seen, f)[0]
            means.append(f[0] + delta)
            sds.append(f[1])
            weights.append(f[2])
        return float(np.average(means, weights=weights)), float(np.average(sds, weights=weights))

    def _library_draws(self, t: int, b: int, n: int, library_size, rng) -> np.ndarray:
        """``(n,)`` library sizes of label code ``t`` in batch code ``b``: ``library_size``
        repeated, or draws from :meth:`_library_params`' log-normal."""
        if library_size is not None:
            if not np.isfinite(library_size) or library_size <= 0:
                raise InputDataError(f"library_size must be positive, got {library_size!r}")
            return np.full(n, float(library_size))
        mean, sd = self._library_params(t, b)
        return np.exp(rng.normal(mean, sd, n))

    @torch.no_grad()
    def _draw_codes(self, label: int, n: int, n_steps, seed: tuple, batch_size: int):
        gen = torch.Generator(device=self.device)
        gen.manual_seed(int(np.random.SeedSequence(seed).generate_state(1)[0]))
        if n == 0:
            return torch.zeros((0, self.module.n_latent), device=self.device)
        groups = self._cluster_components()
        n_labels = len(self.registry.label_categories)
        if groups is not None and label >= n_labels:  # a cluster: its components by pi
            comps = torch.as_tensor(groups[label - n_labels], device=self.device)
            pi = self.module.log_label_prior[comps].exp()
            pick = torch.multinomial(pi / pi.sum(), n, replacement=True, generator=gen)
            lab = comps[pick] + LABEL_OFFSET
        else:
            lab = torch.full((n,), label + LABEL_OFFSET, device=self.device, dtype=torch.long)
        # one chain for all n codes, the network in chunks: batch_size does not change them
        return self.module.prior.sample(lab, n_steps=n_steps, generator=gen, chunk_size=batch_size)

    @torch.no_grad()
    def decode_counts(self, z, batch_index, log_library, rng) -> np.ndarray:
        """Counts drawn from the decoder's ZINB (or NB) at codes ``z`` in batches
        ``batch_index`` with log library sizes ``log_library``.

        Parameters
        ----------
        z
            ``(n, n_latent)`` codes (tensor or array).
        batch_index
            ``(n,)`` batch codes (tensor or array).
        log_library
            ``(n,)`` log total counts.
        rng
            :class:`numpy.random.Generator` of the draws.

        Returns
        -------
        numpy.ndarray
            ``(n, n_genes)`` float32 non-negative integer counts.
        """
        dev = self.device
        g = self.module.generative(
            torch.as_tensor(z, dtype=torch.float32, device=dev),
            torch.as_tensor(batch_index, dtype=torch.long, device=dev),
            torch.as_tensor(log_library, dtype=torch.float32, device=dev),
        )
        return sample_counts(g["log_mu"], g["log_theta"], g["dropout_logits"], rng)

    @torch.no_grad()
    def generate(
        self,
        n_cells: int | None = None,
        *,
        cell_type: Names | Mapping = None,
        batch: Names = None,
        library_size: float | None = None,
        n_steps: int | None = None,
        paired: bool = True,
        seed: int = 0,
        batch_size: int = 4096,
    ):
        """New cells: codes ``z0 ~ p(z0 | c)`` decoded to counts as batch ``b`` would measure.

        Each cell's counts are drawn from the decoder's ZINB (or NB) at its code, its batch
        and a library size (by default drawn from the log-normal fit of the observed
        library sizes of that cell type in that batch: cell types differ in depth). Work is done in chunks of ``batch_size`` cells on the
        model's device.

        Parameters
        ----------
        n_cells
            Cells per (cell type, batch) pair; leave it ``None`` when ``cell_type`` is a dict
            of counts.
        cell_type
            A cell type name (for an unsupervised model: a cluster of :attr:`label_names`), a
            list of them, ``None`` (every type), or a dict of counts: ``{type: n}`` (n cells
            of the type in each batch of ``batch``) or ``{(type, batch): n}``.
        batch
            A batch name, a list of them, or ``None`` (every batch of the model).
        library_size
            Total counts each cell's mean expression sums to; ``None`` draws one per cell
            from the log-normal fit of its cell type in its batch (where the pair had fewer
            than :data:`MIN_FIT_CELLS` cells: the type's fit in the batches it was seen in,
            moved by their depth difference to this batch; see :meth:`_library_params`).
        n_steps
            Reverse diffusion steps: ``None`` runs the full chain; fewer than the model's
            diffusion steps use the strided DDIM sampler (faster). Unused by the gaussian and
            mixture priors.
        paired
            Cells of one type share their codes across batches (the first n codes of the
            type), so that the batches' cells are counterfactual copies of one another:
            the same cells as each batch would have measured them. ``False`` draws the codes
            of each (type, batch) pair independently.
        seed
            Seed of the codes, library sizes and counts: the same seed gives the same cells.
        batch_size
            Cells decoded at a time (rounded down to a multiple of :data:`DRAW_BLOCK`, at
            least one), and cells the prior's network runs on at a time. It does not change
            the cells.

        Returns
        -------
        anndata.AnnData
            ``X``: CSR float32 integer counts, ``(n_cells, n_genes)``, genes in the model's
            order (``var_names``); ``obs``: the cell type (under the model's labels key, or
            ``cell_type``), the batch (under the model's batch key) and ``library_size``;
            ``obsm["X_scarkids"]``: the codes ``(n_cells, n_latent)`` float32.

        Raises
        ------
        InputDataError
            For an unknown cell type or batch, a negative or non-integer count, nothing to
            generate, a bad ``n_steps`` or ``library_size``, or a batch without recorded
            library sizes when ``library_size`` is ``None``.
        """
        import anndata as ad

        requests = self._requests(n_cells, cell_type, batch)
        n_prior_steps = getattr(self.module.prior, "n_steps", None)
        if n_steps is not None and n_prior_steps is not None:
            if not 1 <= n_steps <= n_prior_steps:
                raise InputDataError(
                    f"n_steps must be between 1 and the model's {n_prior_steps} diffusion "
                    f"steps, got {n_steps}"
                )
        self.module.eval()
        rng = np.random.default_rng([seed, 1])
        codes: dict = {}
        if paired:  # one draw per type, as long as its largest request
            for t in {t for t, _, _ in requests}:
                longest = max(n for t_, _, n in requests if t_ == t)
                codes[t] = self._draw_codes(t, longest, n_steps, [seed, t], batch_size)
        rows, zs, obs = [], [], []
        for t, b, n in requests:
            if n == 0:
                continue
            z_all = (
                codes[t][:n]
                if paired
                else self._draw_codes(t, n, n_steps, [seed, t, b + 1], batch_size)
            )
            lib = self._library_draws(t, b, n, library_size, rng)
            # decoded in chunks of whole draw blocks; each block's counts from its own
            # generator, so that batch_size does not change the cells
            chunk = max(DRAW_BLOCK, batch_size - batch_size % DRAW_BLOCK)
            for start in range(0, n, chunk):
                z = z_all[start : start + chunk]
                bi = torch.full((z.shape[0],), b, device=self.device, dtype=torch.long)
                log_l = torch.as_tensor(
                    np.log(lib[start : start + chunk]), dtype=torch.float32, device=self.device
                )
                g = self.module.generative(z.float(), bi, log_l)
                for k in range(0, z.shape[0], DRAW_BLOCK):
                    block = np.random.default_rng([seed, 2, t, b, (start + k) // DRAW_BLOCK])
                    rows.append(sp.csr_matrix(_block_counts(g, k, DRAW_BLOCK, block)))
            zs.append(z_all.float().cpu().numpy())
            obs.append(pd.DataFrame({"t": t, "b": b, "library_size": lib}))
        return self._generated_anndata(ad, rows, zs, obs, seed, n_steps)

    def _generated_anndata(self, ad, rows, zs, obs, seed, n_steps):
        frame = pd.concat(obs, ignore_index=True)
        codes = sorted(set(frame["t"]))
        types = np.empty(max(codes) + 1, dtype=object)
        types[codes] = [self._code_name(t) for t in codes]
        batches = np.asarray(self.registry.batch_categories, dtype=object)
        label_key = self.registry.labels_key or "cell_type"
        obs_df = pd.DataFrame(
            {
                label_key: pd.Categorical(types[frame["t"]], categories=self.label_names),
                self.registry.batch_key: pd.Categorical(
                    batches[frame["b"]], categories=list(batches)
                ),
                "library_size": frame["library_size"].to_numpy(np.float32),
            },
            index=[f"generated_{i}" for i in range(len(frame))],
        )
        out = ad.AnnData(
            X=sp.vstack(rows).tocsr().astype(np.float32),
            obs=obs_df,
            var=pd.DataFrame(index=list(self.registry.gene_names)),
        )
        out.obsm[LATENT_KEY] = np.concatenate(zs).astype(np.float32)
        out.uns["scarkids_generate"] = {
            "seed": seed,
            "prior": self.module.prior_type,
            "n_steps": -1 if n_steps is None else int(n_steps),
        }
        return out
