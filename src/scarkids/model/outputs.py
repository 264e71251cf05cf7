"""The model's outputs: latent codes, corrected expression, predictions, refinement.

A mixin of :class:`scarkids.model.SCARKIDS`, kept apart so that each file stays readable;
it uses the model's ``module``, ``registry``, ``device``, ``adata`` and ``_chunks``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from scarkids._docs import doc_params
from scarkids.constants import LABEL_OFFSET
from scarkids.errors import InputDataError
from scarkids.labels import space
from scarkids.labels.clustering import merge_labels
from scarkids.labels.unknown import UNKNOWN_WARN_SHARE, unknown_summary

logger = logging.getLogger(__name__)

#: cells per chunk of the sparse CPU encoder (larger chunks fall out of the caches)
CSR_CHUNK = 1024


@doc_params
class ModelOutputs:
    """Everything a trained model computes for an AnnData (see :class:`SCARKIDS`)."""

    @torch.no_grad()
    def get_latent_representation(
        self,
        adata=None,
        *,
        give_mean: bool = True,
        batch_size: int = 4096,
        key_added: str | None = None,
    ) -> np.ndarray:
        """Latent codes ``(n_cells, n_latent)`` float32: the encoder mean (or a sample).

        Parameters
        ----------
        adata
            {param_adata}
        give_mean
            Return the mean of ``q(z0 | x)``; ``False`` draws one sample from it instead
            (with torch's global random number generator).
        batch_size
            Cells encoded at a time.
        key_added
            When given, the codes are also stored in ``adata.obsm[key_added]`` (of the model's
            AnnData when ``adata`` is ``None``); ``None`` stores nothing.

        Returns
        -------
        numpy.ndarray
            ``(n_cells, n_latent)`` float32, one row per cell of ``adata`` in its order.
        """
        self.module.eval()
        z = np.empty((self._n_obs(adata), self.module.n_latent), dtype=np.float32)
        for sl, mean, std in self._encoded(adata, batch_size):
            if not give_mean:
                mean = mean + std * torch.randn(mean.shape, device=mean.device)
            z[sl] = mean.float().cpu().numpy()
        if key_added is not None:
            (self.adata if adata is None else adata).obsm[key_added] = z
        return z

    def _n_obs(self, adata) -> int:
        return (self.adata if adata is None else adata).n_obs

    @torch.no_grad()
    def _encoded(
        self, adata, batch_size: int
    ) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor]]:
        """``(cell slice, mean, std)`` of ``q(z0 | x)`` chunk by chunk. On a CPU the counts
        stay sparse (:meth:`~scarkids.nn.Encoder.forward_csr`); elsewhere they are made
        dense on the device."""
        if self.device.type != "cpu":
            for sl, x, b in self._chunks(adata, batch_size):
                inf = self.module.inference(x, b, sample=False)
                yield sl, inf["qz_mean"], inf["qz_std"]
            return
        adata = self.adata if adata is None else adata
        X, batch, _ = self._encode(adata, labels="ignore")
        encoder, n_genes = self.module.encoder, len(self.registry.gene_names)
        weight_t = encoder.body.first.weight.t().contiguous()  # once, not per chunk
        step = min(batch_size, CSR_CHUNK)  # small chunks stay in the caches
        for start in range(0, adata.n_obs, step):
            sl = slice(start, min(start + step, adata.n_obs))
            if isinstance(X, sp.csr_matrix):  # views of the rows' arrays, no copy
                lo, hi = X.indptr[sl.start], X.indptr[sl.stop]
                indptr, indices, data = (
                    X.indptr[sl.start : sl.stop + 1] - lo,
                    X.indices[lo:hi],
                    X.data[lo:hi],
                )
            else:
                c = X[sl]
                indptr, indices, data = c.indptr, c.indices, c.data
            index = np.int64 if data.size >= 2**31 else np.int32
            values = encoder.transform_csr(indptr, data)
            crow = torch.as_tensor(indptr.astype(index, copy=False))
            col = torch.as_tensor(indices.astype(index, copy=False))
            b = torch.as_tensor(batch[sl])
            yield sl, *encoder.forward_csr(crow, col, values, n_genes, b, weight_t)

    def _batch_indices(self, transform_batch) -> list[int] | None:
        if transform_batch is None:
            return None
        items = transform_batch if isinstance(transform_batch, (list, tuple)) else [transform_batch]
        out = []
        for item in items:
            if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
                if not 0 <= item < len(self.registry.batch_categories):
                    raise InputDataError(
                        f"target batch index {item} is out of range: the model knows "
                        f"{len(self.registry.batch_categories)} batches (0..{len(self.registry.batch_categories) - 1})"
                    )
                out.append(int(item))
            elif str(item) in self.registry.batch_categories:
                out.append(self.registry.batch_categories.index(str(item)))
            else:
                raise InputDataError(
                    f"target batch {item!r} is not a batch of the model; known: "
                    f"{', '.join(map(repr, self.registry.batch_categories[:10]))}"
                )
        return out

    @torch.no_grad()
    def iter_normalized_expression(
        self,
        adata=None,
        *,
        transform_batch: int | str | Sequence[int | str] | None = None,
        library_size: float = 1e4,
        batch_size: int = 1024,
        latent: np.ndarray | None = None,
        source: str = "decoded",
    ) -> Iterator[tuple[slice, np.ndarray]]:
        """Yield ``(cell slice, float32 chunk)`` of :meth:`get_normalized_expression`.

        Parameters
        ----------
        adata
            {param_adata}
        transform_batch
            ``None`` decodes each cell with its own batch; a batch name or index decodes every
            cell as if measured in that batch; a list averages over those batches.
        library_size
            Total the decoded expression of each cell sums to.
        batch_size
            Cells per chunk.
        latent
            ``(n_cells, n_latent)`` float32 codes to decode instead of the encoder means, for
            example from :meth:`get_latent_representation`; with ``source="decoded"`` the
            counts are then not read, only the batches. ``None`` encodes the cells.
        source
            ``"decoded"`` or ``"counts"``, as in :meth:`get_normalized_expression`.

        Yields
        ------
        tuple of (slice, numpy.ndarray)
            The chunk's rows of ``adata`` and their ``(n_chunk_cells, n_genes)`` float32
            expression, genes in the model's order.
        """
        targets = self._batch_indices(transform_batch)
        chunks = self._expression_chunks(source, adata, targets, library_size, batch_size, latent)
        for sl, rho in chunks:
            yield sl, rho.float().cpu().numpy()

    def _expression_chunks(
        self, source: str, adata, targets, library_size, batch_size, latent=None, out=None
    ) -> Iterator[tuple[slice, torch.Tensor]]:
        if source == "decoded":
            return self._decoded(adata, targets, library_size, batch_size, latent, out=out)
        if source == "counts":
            return self._rescaled_counts(adata, targets, library_size, batch_size, latent)
        raise InputDataError(f"source must be 'decoded' or 'counts', got {source!r}")

    @torch.no_grad()
    def _rescaled_counts(
        self, adata, targets, library_size: float, batch_size: int, latent=None
    ) -> Iterator[tuple[slice, torch.Tensor]]:
        """``(cell slice, expression)`` chunks of ``source="counts"``: each cell's counts over
        its total, times ``rho(z0, target) / rho(z0, own batch)`` gene by gene, rows scaled to
        ``library_size`` (a cell without counts stays zero)."""
        self.module.eval()
        adata_ = self.adata if adata is None else adata
        if latent is None and targets is not None:  # the own batch needs no codes
            latent = self.get_latent_representation(adata_)
        decoder = self.module.decoder
        for sl, x, b in self._chunks(adata_, batch_size):
            expr = x / x.sum(1, keepdim=True).clamp_min(1.0)
            if targets is not None:
                z = torch.as_tensor(latent[sl], device=self.device)
                own = decoder.normalized_expression(z, b)
                shift = sum(decoder.normalized_expression(z, b, batch=t) for t in targets)
                expr = expr * shift / (len(targets) * own.clamp_min(1e-30))
            total = expr.sum(1, keepdim=True)
            yield sl, torch.where(total > 0, expr * (library_size / total.clamp_min(1e-30)), expr)

    @torch.no_grad()
    def _decoded(
        self,
        adata,
        targets: list[int] | None,
        library_size: float,
        batch_size: int,
        latent: np.ndarray | None = None,
        out: np.ndarray | None = None,
    ) -> Iterator[tuple[slice, torch.Tensor]]:
        """``(cell slice, expression)`` chunks of :meth:`iter_normalized_expression`. With
        ``out`` (``(n_cells, n_genes)`` float32, on a CPU) each chunk is computed in its rows
        of ``out``: no temporary and no copy of the ``(cells, genes)`` result."""
        self.module.eval()
        if latent is None:  # encoded first (sparse on CPUs); then only the batches are read
            latent = self.get_latent_representation(adata)
        decoder = self.module.decoder
        into = out is not None and self.device.type == "cpu"
        share = library_size / (1 if targets is None else len(targets))
        scratch = None  # the second and later target batches of an average
        for sl, _, b in self._chunks(adata, batch_size, counts=False):
            z = torch.as_tensor(latent[sl], device=self.device)
            dest = torch.from_numpy(out[sl]) if into else None
            if targets is None:
                yield sl, decoder.normalized_expression(z, b, out=dest, total=share)
                continue
            rho = decoder.normalized_expression(z, b, batch=targets[0], out=dest, total=share)
            for t in targets[1:]:
                if into and (scratch is None or scratch.shape[0] < z.shape[0]):
                    scratch = torch.empty((z.shape[0], rho.shape[1]))
                part = None if scratch is None else scratch[: z.shape[0]]
                rho += decoder.normalized_expression(z, b, batch=t, out=part, total=share)
            yield sl, rho

    def get_normalized_expression(
        self,
        adata=None,
        *,
        transform_batch: int | str | Sequence[int | str] | None = None,
        library_size: float = 1e4,
        batch_size: int = 1024,
        return_numpy: bool = False,
        source: str = "decoded",
    ) -> pd.DataFrame | np.ndarray:
        """Batch-corrected expression, cells x genes (float32): decoded, or each cell's own
        counts with the batch effect divided out.

        - ``source="decoded"`` (default): ``library_size * rho(z0, b)``, the decoder's
          expression at the encoder mean, as scvi-tools' method of the same name. It is
          smooth: each cell's expression is what its code predicts, so it is close to its
          cell type's average, and near-silent genes differ between types as consistently as
          real markers (rank tests such as Wilcoxon then put them first).
        - ``source="counts"``: each cell's measured counts over their total, times the
          decoded batch effect gene by gene, ``rho(z0, target) / rho(z0, own batch)``, rows
          scaled to ``library_size``. The cell keeps its own profile (its zeros and its
          cell-to-cell variation); only what the model learned of the batch is removed.
          With ``transform_batch=None`` this is the cell's counts per ``library_size``.
          Marker genes found on it agree with those of the uncorrected data
          (``benchmarks/corrected_expression.py``); the batch is removed less completely
          than from the decoded expression, where it also leaves with the counting noise.

        Parameters
        ----------
        adata
            {param_adata}
        transform_batch
            ``None`` decodes each cell with its own batch; a batch name or index decodes every
            cell as if measured in that batch (batch correction); a list averages over those
            batches. An unknown name or an index out of range raises
            :class:`~scarkids.errors.InputDataError`.
        library_size
            Total the decoded expression of each cell sums to (``rho`` sums to 1 per cell).
        batch_size
            Cells decoded at a time.
        return_numpy
            Return a plain array instead of a DataFrame.
        source
            ``"decoded"`` or ``"counts"`` (see above); ``"counts"`` reads the counts.

        Returns
        -------
        pandas.DataFrame or numpy.ndarray
            ``(n_cells, n_genes)`` float32; the DataFrame has ``adata.obs_names`` as index and
            the model's gene names as columns.
        """
        adata_ = self.adata if adata is None else adata
        targets = self._batch_indices(transform_batch)
        out = np.empty((adata_.n_obs, len(self.registry.gene_names)), dtype=np.float32)
        # decoded on a CPU: each chunk is computed in its rows of out
        in_place = self.device.type == "cpu" and source == "decoded"
        for sl, rho in self._expression_chunks(
            source, adata_, targets, library_size, batch_size, out=out if in_place else None
        ):
            if not in_place:
                out[sl] = rho.float().cpu().numpy()
        if return_numpy:
            return out
        return pd.DataFrame(out, index=adata_.obs_names, columns=self.registry.gene_names)

    @torch.no_grad()
    def _label_probs(
        self,
        adata=None,
        batch_size: int = 4096,
        latent: np.ndarray | None = None,
        in_use_only: bool = True,
    ) -> np.ndarray:
        self.module.eval()
        if latent is None:
            latent = self.get_latent_representation(adata, batch_size=batch_size)
        z = torch.as_tensor(latent, device=self.device)
        probs = self.module.label_log_probs(z, self.temperature).exp()
        groups = self._cluster_components() if in_use_only else None
        if groups is not None:  # an unsupervised model's clusters: sums of components
            probs = torch.stack([probs[:, g].sum(1) for g in groups], 1)
            probs = probs / probs.sum(1, keepdim=True)
        elif in_use_only and self.registry.labels_are_clusters:  # only the clusters in use
            probs = probs[:, self.module.labels_in_use()]
            probs = probs / probs.sum(1, keepdim=True)
        return probs.cpu().numpy()

    def _cluster_components(self) -> list[list[int]] | None:
        """Per reported cluster of an unsupervised model, its components' label codes;
        ``None`` when every component is a cluster (or the labels are cell types)."""
        r = self.registry
        return space.cluster_components(
            r.label_categories, r.cluster_groups if r.labels_are_clusters else None
        )

    @property
    def label_names(self) -> list[str]:
        """Names of the labels that predictions use.

        The cell types, or for an unsupervised model its clusters: ``cluster_0``,
        ``cluster_1``, ... by decreasing size, each a group of mixture components
        (``SCARKIDS(cluster_factor=...)``), or, for a model whose every component is a
        cluster, the components in use (those whose mixing proportion fell below 0.1% are
        switched off)."""
        r = self.registry
        used = self.module.labels_in_use().cpu().numpy()
        return space.label_names(r.label_categories, r.labels_are_clusters, r.cluster_groups, used)

    def _label_codes(self, names: np.ndarray, z) -> np.ndarray:
        """Component codes ``(n,)`` of label names ``(n,)``: a cell type's code, or for a
        cluster of components (:attr:`label_names`) its component most probable at the
        cell's code in ``z`` ``(n, n_latent)``."""
        codes = space.label_codes(names, self.registry.label_categories)
        groups = self._cluster_components()
        if groups is not None:
            cluster = space.label_codes(names, self.label_names)
            if (cluster >= 0).any():
                probs = self._label_probs(latent=z, in_use_only=False)
                codes = space.most_probable_components(codes, cluster, groups, probs)
        if (codes < 0).any():
            raise InputDataError("refine_latent: labels contain names the model does not know")
        return codes

    def _merged(self, probs: np.ndarray, max_clusters: int | None):
        """``probs`` of the labels in use, and their names, merged into at most
        ``max_clusters`` groups (named ``"a+b"``) when given."""
        return merge_labels(probs, self.label_names, max_clusters)

    def predict(
        self,
        adata=None,
        *,
        soft: bool = False,
        max_clusters: int | None = None,
        batch_size: int = 4096,
    ) -> np.ndarray | pd.DataFrame:
        """Cell-type predictions: names ``(n_cells,)``, or with ``soft`` a DataFrame of
        probabilities (cells x cell types).

        The labels are :attr:`label_names`: the cell types, or for an unsupervised model its
        clusters (at most ``n_labels``: the mixture components in use, merged after
        training, see ``SCARKIDS(cluster_factor=...)``). With ``max_clusters``, an
        unsupervised model's clusters are merged further into at most that many groups, the
        pair the posterior confuses most first (the entropy criterion of Baudry et al.,
        2010; :func:`scarkids.labels.clustering.merge_clusters`), and a group is named after
        its clusters joined by ``+`` (``"cluster_3+cluster_7"``).

        Parameters
        ----------
        adata
            {param_adata}
        soft
            Return the probabilities ``q(c | z0)`` instead of the most probable label.
        max_clusters
            Unsupervised models only: merge the clusters into at most this many groups (at
            least 1). These merges are decided on at most 50,000 of the cells, so they
            depend on ``adata`` (unlike the model's own clusters, fixed at training); to
            name the same groups on new cells, pass them together. ``None`` keeps the
            model's clusters.
        batch_size
            Cells encoded at a time.

        Returns
        -------
        numpy.ndarray or pandas.DataFrame
            Without ``soft``, ``(n_cells,)`` label names (object dtype); with it, a
            ``(n_cells, n_labels)`` DataFrame indexed by ``adata.obs_names`` with one column
            per label (or group).
        """
        space.check_max_clusters(max_clusters, self.registry.labels_are_clusters, "predict")
        adata_ = self.adata if adata is None else adata
        probs, names = self._merged(self._label_probs(adata_, batch_size), max_clusters)
        if soft:
            return pd.DataFrame(probs, index=adata_.obs_names, columns=list(names))
        return names[probs.argmax(1)]

    def predict_with_uncertainty(
        self,
        adata=None,
        *,
        confidence_threshold: float | None = 0.5,
        novelty_quantile: float | None = 0.99,
        unknown_label: str = "unknown",
        latent: np.ndarray | None = None,
        max_clusters: int | None = None,
        warn_share: float | None = UNKNOWN_WARN_SHARE,
    ) -> pd.DataFrame:
        """Per cell: the label, its calibrated probability, the prior's novelty, and whether
        the cell is ``unknown`` (improbable under every cell type, or not confidently any).

        Each batch is held to what is known to hold for it:

        - **novelty**: a cell is ``unknown`` when its novelty (:meth:`novelty`) exceeds its
          batch's threshold (:meth:`novelty_threshold`): the ``novelty_quantile`` of the
          reference cells' novelty (about 1% of known cells at 0.99), raised by the
          batch's shift (:meth:`batch_shift`), so that a query whose every cell carries its
          batch effect is not called new wholesale. A batch that no session has calibrated
          gets no novelty call.
        - **probability**: a cell is ``unknown`` when its top probability is below
          ``confidence_threshold``, in batches whose codes sit within
          :data:`~scarkids.model.uncertainty.ALIGNED_SHIFT` of the reference's (where the
          temperature fitted on the reference holds). On a query far off the reference (a
          stimulated batch through a reference that does not encode the batch) the
          temperature no longer holds and the rule would mostly hide right answers, so it
          is off there and the log says so (docs/benchmarks/uncertainty.md).

        ``top_label`` is the prediction whatever the call; the log counts the ``unknown``
        cells by rule and warns about each batch that is mostly ``unknown``
        (:func:`~scarkids.labels.unknown.unknown_summary`). The probabilities are
        temperature-scaled (:attr:`temperature`).

        Parameters
        ----------
        adata
            {param_adata}
        confidence_threshold
            Smallest top probability of a cell that is not ``unknown`` (in the batches
            where the rule applies, see above); ``None`` leaves the probability out.
        novelty_quantile
            Quantile of the reference cells' novelty (before the batch's shift) above which
            a cell is ``unknown``, strictly between 0 and 1; ``None`` (or a model without
            reference novelty) leaves the novelty out of the call.
        unknown_label
            ``predicted_label`` of the ``unknown`` cells.
        latent
            ``(n_cells, n_latent)`` codes from :meth:`get_latent_representation`, which saves
            encoding the cells again; ``None`` encodes them (4096 cells at a time).
        max_clusters
            Unsupervised models only: labels are the model's clusters merged further into
            at most this many groups, as in :meth:`predict`; probability and entropy are the
            groups'. The novelty does not depend on it.
        warn_share
            Log a warning for each batch with more than this share of its cells ``unknown``
            (:func:`~scarkids.labels.unknown.unknown_summary`); ``None``: no warning.

        Returns
        -------
        pandas.DataFrame
            Indexed by ``adata.obs_names``, with columns ``predicted_label``, ``top_label``,
            ``probability`` (of the top label), ``entropy`` (of ``q(c | z0)``, nats),
            ``novelty`` (nats), ``unknown`` (bool) and ``unknown_reason`` (``"novelty"``,
            ``"low probability"``, both joined by ``" and "``, or ``""``).
        """
        space.check_max_clusters(
            max_clusters, self.registry.labels_are_clusters, "predict_with_uncertainty"
        )
        if confidence_threshold is not None and not 0 <= confidence_threshold <= 1:
            raise InputDataError(
                f"confidence_threshold must be between 0 and 1 or None, got {confidence_threshold!r}"
            )
        adata_ = self.adata if adata is None else adata
        batch, thresholds, probability_rule = self._batch_rules(
            adata_, novelty_quantile, confidence_threshold
        )
        if latent is None:
            latent = self.get_latent_representation(adata_)
        probs, names = self._merged(self._label_probs(latent=latent), max_clusters)
        top = probs.argmax(1)
        p = probs[np.arange(len(top)), top]
        entropy = -(probs * np.log(np.clip(probs, 1e-12, None))).sum(1)
        novelty = self.novelty(latent=latent)  # the draws the threshold was set with
        novel = novelty > thresholds
        improbable = np.zeros_like(novel)
        if confidence_threshold is not None:
            improbable = probability_rule & (p < confidence_threshold)
        unknown = novel | improbable
        reason = np.where(novel, "novelty", "")
        reason = np.where(
            improbable, np.char.add(np.where(novel, "novelty and ", ""), "low probability"), reason
        )
        table = pd.DataFrame(
            {
                "predicted_label": np.where(unknown, unknown_label, names[top]),
                "top_label": names[top],
                "probability": p,
                "entropy": entropy,
                "novelty": novelty,
                "unknown": unknown,
                "unknown_reason": reason.astype(object),
            },
            index=adata_.obs_names,
        )
        if warn_share is not None:
            batches = np.asarray(self.registry.batch_categories, dtype=object)[batch]
            unknown_summary(table, batches, warn_share=warn_share)
        return table

    @torch.no_grad()
    def refine_latent(
        self,
        adata=None,
        *,
        n_steps: int = 100,
        labels: np.ndarray | Sequence[str] | None = None,
        seed: int = 0,
        batch_size: int = 4096,
        latent: np.ndarray | None = None,
        n_sampling_steps: int | None = None,
    ) -> np.ndarray:
        """DDPM (SDEdit) refinement: noise each encoder mean to step ``n_steps`` and denoise
        with ``p_psi(z | c)``, c = the given labels (names) or the predicted ones.
        ``latent`` (from :meth:`get_latent_representation`) saves encoding the cells again.

        Parameters
        ----------
        adata
            {param_adata}
        n_steps
            Diffusion step the codes are noised to, from 1 to the model's number of
            diffusion steps (otherwise :class:`~scarkids.errors.InputDataError`); more steps
            move the codes further towards the prior of their label.
        labels
            One label name per cell to condition on; a name the model does not know raises
            :class:`~scarkids.errors.InputDataError`. ``None`` uses the most probable label of
            ``q(c | z0)`` over all the model's labels.
        seed
            Seed of the noise (a :class:`torch.Generator` on the model's device). The
            same seed gives the same codes whatever ``batch_size``.
        batch_size
            Cells encoded, and cells the noise network runs on, at a time (every cell's
            code stays on the device through the chain: ``n_cells x n_latent`` floats).
        latent
            ``(n_cells, n_latent)`` float32 codes from :meth:`get_latent_representation`;
            ``adata`` is then not read. ``None`` encodes the cells of ``adata``.
        n_sampling_steps
            Reverse steps from ``n_steps`` back to 0. ``None`` (or ``n_steps``): all of
            them, the ancestral chain. Fewer: the strided ancestral sampler (DDIM, eta = 1)
            over that many evenly spaced steps, about ``n_steps / n_sampling_steps`` times
            faster; its effect on the scIB scores is measured by
            ``benchmarks/refine_steps.py``. Between 1 and ``n_steps``, otherwise
            :class:`~scarkids.errors.InputDataError`.

        Returns
        -------
        numpy.ndarray
            The refined codes, ``(n_cells, n_latent)`` float32.
        """
        if self.module.prior_type != "diffusion":
            raise InputDataError(
                f"refinement needs the diffusion prior; this model's prior is "
                f"{self.module.prior_type!r} (SCARKIDS(prior=...)): use its latent without "
                "refine_latent"
            )
        if not 1 <= n_steps <= self.module.prior.n_steps:
            raise InputDataError(
                f"n_steps must be between 1 and the model's n_diffusion_steps ({self.module.prior.n_steps}), got {n_steps}"
            )
        if n_sampling_steps is not None and not 1 <= n_sampling_steps <= n_steps:
            raise InputDataError(
                f"n_sampling_steps must be between 1 and n_steps ({n_steps}), got {n_sampling_steps}"
            )
        z = (
            self.get_latent_representation(adata, batch_size=batch_size)
            if latent is None
            else latent
        )
        if labels is None:
            codes = self._label_probs(latent=z, in_use_only=False).argmax(1)
        else:
            codes = self._label_codes(np.asarray(labels).astype(str), z)
        gen = torch.Generator(device=self.device).manual_seed(seed)
        # every cell's chain at once, the noise network in chunks of batch_size: each
        # step's noise is one draw for all cells, so batch_size does not change the result
        refined = self.module.prior.refine(
            torch.as_tensor(np.asarray(z, dtype=np.float32), device=self.device),
            torch.as_tensor(codes + LABEL_OFFSET, device=self.device),
            n_steps,
            n_sampling_steps=n_sampling_steps,
            generator=gen,
            chunk_size=batch_size,
        )
        return refined.cpu().numpy()
