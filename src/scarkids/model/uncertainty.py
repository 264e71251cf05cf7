"""Probabilities that mean what they say, and cells that no cell type of the model explains.

A mixin of :class:`scarkids.model.SCARKIDS`:

- **temperature scaling**: after training with labels, one temperature ``T`` for the
  classifier's logits, fitted on the validation cells by minimising their negative
  log-likelihood (Guo et al. 2017); every probability the model reports uses it.
- **novelty**: ``-log p(z0)`` with ``p(z0) = sum_c pi_c p_psi(z0 | c)``, the prior's density
  of a cell's code under all its cell types; for the diffusion prior each
  ``-log p_psi(z0 | c)`` is its variational bound averaged over ``n_draws`` (t, eps) draws.
  A cell whose novelty exceeds the ``novelty_quantile`` of the validation cells' (default:
  99%) is a candidate for a cell type the model never saw.

Both are fitted on the validation cells of a training run in which every parameter trains
(a query session that freezes the reference keeps the reference's), and stored in the
checkpoint (``calibration``).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F

from scarkids._docs import doc_params
from scarkids.constants import LABEL_OFFSET
from scarkids.data.store import DeviceMatrix
from scarkids.errors import InputDataError

logger = logging.getLogger(__name__)

#: validation cells whose novelty is kept (a random subset beyond this many)
MAX_REFERENCE_CELLS = 20_000
#: ``calibration`` key: batch name -> 10th percentile of its cells' novelty (nats)
BATCH_NOVELTY_KEY = "batch_novelty_q10"
#: largest :meth:`ModelUncertainty.batch_shift` at which a batch keeps the reference's
#: calibration (the low-probability rule); past it the batch's codes sit off the reference's
ALIGNED_SHIFT = 1.0
DEFAULT_DRAWS = 32


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature ``T`` minimising ``NLL(softmax(logits / T), labels)``, with a standard
    normal prior on ``log T``.

    The prior (``0.5 (log T)^2`` added to the summed NLL, i.e. worth one cell) does not move
    ``T`` where the validation cells say something, but where every validation cell is
    classified right with a wide margin the NLL falls towards 0 for ever smaller ``T``: the
    plain fit then sharpens the probabilities to exactly 1 on no evidence (every probability
    rounds to 1.0 in float32, so that 1 - max probability ranks nothing;
    docs/benchmarks/uncertainty.md), and the prior keeps ``T`` near 1 instead.

    Parameters
    ----------
    logits
        ``(n, C)`` classifier logits.
    labels
        ``(n,)`` label indices in ``0..C-1``.

    Returns
    -------
    float
        ``T`` in ``[exp(-4), exp(4)]`` (1 means the probabilities were already calibrated).
    """
    from scipy.optimize import minimize_scalar

    logits_t = torch.as_tensor(logits, dtype=torch.float64)
    labels_t = torch.as_tensor(labels, dtype=torch.long)
    n = max(1, labels_t.numel())

    def objective(log_t: float) -> float:
        nll = F.cross_entropy(logits_t / np.exp(log_t), labels_t, reduction="sum")
        return float(nll + 0.5 * log_t**2) / n

    best = minimize_scalar(objective, bounds=(-4.0, 4.0), method="bounded")
    return float(np.exp(best.x))


def check_quantile(value, where: str = "novelty_quantile") -> float | None:
    """``value`` as a float strictly between 0 and 1 (or ``None``), else a clear error."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise InputDataError(
            f"{where} must be a number strictly between 0 and 1 (e.g. 0.99), got {value!r}"
        )
    return float(value)


@doc_params
class ModelUncertainty:
    """Temperature scaling and the prior's novelty score (see :class:`SCARKIDS`)."""

    @property
    def temperature(self) -> float:
        """The classifier's temperature (1.0 until fitted)."""
        return float(self.calibration.get("temperature", 1.0))

    def _novelty_draws(self, n_draws: int, seed: int) -> list[tuple[int, float, torch.Tensor]]:
        """About ``n_draws`` (step, weight, noise) draws shared by every cell: ``n_draws / 2``
        stratified steps (one per equal-mass stratum of ``p(t)``, proportional to the
        bound's weights when the model samples them so), each with a noise vector and its
        negative (antithetic pairs). Common draws make the estimate's noise nearly the same
        for all cells, so that it barely reorders them; the antithetic pairs cancel most of
        what remains (``benchmarks/novelty_noise.py`` measures the noise against the spread
        over cells; docs/benchmarks/uncertainty.md)."""
        prior = self.module.prior
        gen = torch.Generator().manual_seed(seed)
        n_steps = max(1, (n_draws + 1) // 2)
        w = prior.vlb_weight.detach().double().cpu()
        p = w / w.sum() if self.module.importance_sampling else torch.full_like(w, 1 / w.numel())
        cdf = torch.cumsum(p, 0)
        u = torch.arange(n_steps, dtype=torch.float64)
        u = (u + torch.rand(n_steps, generator=gen, dtype=torch.float64)) / n_steps
        idx = torch.searchsorted(cdf, u.clamp(max=float(cdf[-1]) - 1e-12))
        idx = idx.clamp(max=w.numel() - 1).tolist()
        eps = torch.randn((n_steps, self.module.n_latent), generator=gen).to(self.device)
        draws = []
        for k, i in enumerate(idx):
            draws += [(i + 1, float(w[i] / p[i]), eps[k]), (i + 1, float(w[i] / p[i]), -eps[k])]
        return draws

    @torch.no_grad()
    def _label_nll(self, z: torch.Tensor, draws) -> tuple[torch.Tensor, torch.Tensor]:
        """``(n, L)`` estimates of ``-log p(z0 | c)`` for codes ``z`` (n, d) under each of
        the ``L`` labels in use, and those labels' indices ``(L,)``."""
        module, prior = self.module, self.module.prior
        used = torch.nonzero(module.labels_in_use()).squeeze(1)
        labels = used + LABEL_OFFSET
        n = z.shape[0]
        nll = torch.zeros((n, used.shape[0]), device=z.device)
        for step, weight, eps in draws:
            t = torch.full((n,), step, device=z.device, dtype=torch.long)
            scale = torch.full((n,), weight, device=z.device)
            nll += prior.negative_bound(z, labels, t, scale, eps.expand(n, -1), every_label=True)[
                "nll"
            ]
        return nll / len(draws), used

    @torch.no_grad()
    def _novelty_of(self, z: torch.Tensor, draws) -> torch.Tensor:
        """``(n,)`` novelty of codes ``z`` (n, d) on the model's device."""
        nll, used = self._label_nll(z, draws)
        log_pi = self.module.log_label_prior[used]
        log_pi = log_pi - torch.logsumexp(log_pi, 0)
        return -torch.logsumexp(log_pi - nll, 1)

    def novelty(
        self,
        adata=None,
        *,
        latent: np.ndarray | None = None,
        n_draws: int = DEFAULT_DRAWS,
        seed: int = 0,
        batch_size: int = 4096,
    ) -> np.ndarray:
        """Per cell ``-log p(z0)`` (nats) under the prior's mixture of cell types.

        ``p(z0) = sum_c pi_c p(z0 | c)`` over the labels in use, at the encoder mean. Higher
        means less like any cell type the model knows. For the diffusion prior each
        ``-log p(z0 | c)`` is its variational bound (an upper bound) averaged over
        ``n_draws`` draws of the step and the noise, the same draws for every label; the
        gaussian and mixture priors are exact.

        Parameters
        ----------
        adata
            {param_adata}
        latent
            ``(n_cells, n_latent)`` codes from :meth:`get_latent_representation`; ``adata``
            is then not read.
        n_draws
            (t, eps) draws averaged per cell (diffusion prior); the estimate's own noise falls
            as ``1 / sqrt(n_draws)`` (``tests/test_uncertainty.py`` measures it at the
            default).
        seed
            Seed of the draws: the same seed gives the same scores.
        batch_size
            Cells scored at a time (memory: ``batch_size * n_labels`` rows of the noise
            network).

        Returns
        -------
        numpy.ndarray
            ``(n_cells,)`` float32, nats.
        """
        if n_draws < 1:
            raise InputDataError(f"n_draws must be at least 1, got {n_draws}")
        self.module.eval()
        z = self.get_latent_representation(adata) if latent is None else latent
        if self.module.prior_type == "diffusion":
            draws = self._novelty_draws(n_draws, seed)
        else:  # gaussian and mixture are exact: one placeholder draw
            draws = [(1, 1.0, torch.zeros(self.module.n_latent, device=self.device))]
        out = np.empty(z.shape[0], dtype=np.float32)
        for start in range(0, z.shape[0], batch_size):
            zt = torch.as_tensor(z[start : start + batch_size], device=self.device)
            out[start : start + zt.shape[0]] = self._novelty_of(zt, draws).cpu().numpy()
        return out

    def batch_shift(self, batch: str) -> float | None:
        """How far a batch's codes sit from the reference's, seen through the novelty.

        ``(q10_b - q10_ref) / (median_ref - q10_ref)``: the shift of the batch's 10th
        percentile of novelty against the reference cells', in units of the reference's
        lower half-spread. The lower tail is that of the batch's known cells even when it
        holds new cell types (they score high, or mix in): a query that maps well onto the
        reference scores near 0 (a reference built with ``encode_batch=True`` and a query
        session), one whose every cell carries its batch effect (through a reference that
        does not encode the batch) well above :data:`ALIGNED_SHIFT`
        (docs/benchmarks/uncertainty.md).

        Parameters
        ----------
        batch
            Batch name.

        Returns
        -------
        float or None
            The shift, or ``None`` where the model has no reference novelty or no session has
            calibrated the batch (older checkpoints: 0 for every batch).
        """
        ref = self.calibration.get("validation_novelty")
        if not ref:
            return None
        stats = self.calibration.get(BATCH_NOVELTY_KEY)
        if stats is None:  # saved before batches were calibrated: one rule for all
            return 0.0
        if batch not in stats:
            return None
        q10, q50 = np.quantile(np.asarray(ref, dtype=np.float64), [0.1, 0.5])
        return float((stats[batch] - q10) / max(q50 - q10, 1e-6))

    def novelty_threshold(
        self, quantile: float | None = 0.99, batch: str | None = None
    ) -> float | None:
        """The novelty above which a cell is flagged.

        Without ``batch``: this quantile of the reference cells' novelty (up to
        :data:`MAX_REFERENCE_CELLS` cells of the last session in which the encoder and the
        prior trained). With ``batch``: for a batch whose :meth:`batch_shift` is at most
        :data:`ALIGNED_SHIFT` (its codes sit on the reference's), that threshold raised by
        the shift of the batch's 10th percentile (in nats; never lowered). A batch beyond it
        (every cell carries its batch effect, as a query through a reference that does not
        encode the batch) has no threshold: the reference's does not describe its known
        cells (on simulated data their flagged share then swung widely with the seed,
        whatever the shift or rescaling tried), so the call stays off there.

        Parameters
        ----------
        quantile
            Share of known (reference) cells below the threshold, strictly between 0 and 1;
            ``None`` disables the novelty rule.
        batch
            Batch name, or ``None`` for the reference threshold.

        Returns
        -------
        float or None
            The threshold (nats), or ``None`` when ``quantile`` is ``None``, the model has
            no reference novelty (saved before it was recorded, or trained without
            validation cells), or ``batch`` was never calibrated (no session trained on
            its cells since the reference) or sits off the reference.
        """
        quantile = check_quantile(quantile)
        ref = self.calibration.get("validation_novelty")
        if quantile is None or not ref:
            return None
        ref = np.asarray(ref, dtype=np.float64)
        threshold = float(np.quantile(ref, quantile))
        if batch is None:
            return threshold
        shift = self.batch_shift(batch)
        if shift is None or shift > ALIGNED_SHIFT:
            return None
        q10, q50 = np.quantile(ref, [0.1, 0.5])
        return threshold + max(0.0, shift) * float(max(q50 - q10, 1e-6))

    def _batch_rules(
        self, adata, quantile: float | None, confidence_threshold: float | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per cell of ``adata``: its batch code, its batch's novelty threshold (``inf`` where
        that rule is off) and whether the low-probability rule applies
        (``confidence_threshold`` set and the batch within :data:`ALIGNED_SHIFT` of the
        reference, or a model without reference novelty); says in the log which batches had
        the calls switched off, and why."""
        _, batch, _ = self._encode(self.adata if adata is None else adata, counts=False)
        n = batch.shape[0]
        if not self.calibration.get("validation_novelty"):  # the probability alone
            return batch, np.full(n, np.inf), np.full(n, confidence_threshold is not None)
        names = self.registry.batch_categories
        thresholds = np.full(len(names), np.inf)
        probability = np.zeros(len(names), dtype=bool)
        for code in np.unique(batch):
            name, shift = names[code], self.batch_shift(names[code])
            t = self.novelty_threshold(quantile, batch=name)
            if t is not None:
                thresholds[code] = t
            probability[code] = (
                confidence_threshold is not None and shift is not None and shift <= ALIGNED_SHIFT
            )
            if shift is None:
                logger.info(
                    "Batch %r: no session trained on its cells since the reference, so the "
                    "reference's thresholds are not known to hold for it: its cells are not "
                    "called unknown; top_label is the prediction",
                    name,
                )
            elif shift > ALIGNED_SHIFT:
                logger.info(
                    "Batch %r sits off the reference's codes (novelty shift %.2f; up to %.1f "
                    "keeps the reference's calibration), so the reference's thresholds are not "
                    "known to hold for it: its cells are not called unknown; top_label is the "
                    "prediction and the novelty column still ranks them",
                    name,
                    shift,
                    ALIGNED_SHIFT,
                )
        return batch, thresholds[batch], probability[batch]

    def _calibrate(self, data, *, fit_reference: bool, seed: int) -> None:
        """After training: the temperature (with labels) and the validation novelty (when
        the encoder and prior trained) from the validation cells of ``data``."""
        val = data.val_index
        if val.numel() == 0 or not isinstance(data.X, DeviceMatrix):
            return  # no validation cells, or an on-disk store whose rows are not at hand
        self.module.eval()
        zs, library = [], []
        with torch.no_grad():
            for start in range(0, val.numel(), 4096):
                idx = val[start : start + 4096]
                x, _ = data.X.rows_and_nonzeros(idx)
                zs.append(self.module.inference(x, data.batch[idx], sample=False)["z"])
                library.append(x.sum(1))
        z = torch.cat(zs)
        labels = data.labels[val]
        if self.registry.labels_are_clusters:
            # library sizes per (cluster, batch) for generate, from the validation cells'
            # clusters: unsupervised training has no labels to fit them on beforehand
            with torch.no_grad():
                log_p = self.module.label_log_probs(z, self.temperature)
                log_p[:, ~self.module.labels_in_use()] = -torch.inf
            library = torch.cat(library).cpu().numpy()
            val_batch = data.batch[val].cpu().numpy()
            self._update_type_library_sizes(library, val_batch, log_p.argmax(1).cpu().numpy())
            if self.registry.cluster_groups:  # and per (merged cluster, batch)
                clusters = self._label_probs(latent=z.cpu().numpy()).argmax(1)
                self._update_type_library_sizes(library, val_batch, clusters, self.label_names)
        if data.label_mode != "unlabelled" and not self.registry.labels_are_clusters:
            known = labels >= 0
            if int(known.sum()) >= 20:
                with torch.no_grad():
                    logits = self.module.classifier_logits(z[known]).double().cpu().numpy()
                self.calibration["temperature"] = fit_temperature(
                    logits, labels[known].cpu().numpy()
                )
                logger.info(
                    "classifier temperature %.3f (fitted on %d validation cells)",
                    self.temperature,
                    int(known.sum()),
                )
        self._calibrate_novelty(data, fit_reference=fit_reference, seed=seed)

    @torch.no_grad()
    def _calibrate_novelty(self, data, *, fit_reference: bool, seed: int) -> None:
        """The reference cells' novelty (a session that trained the encoder and prior) and
        each batch's 10th percentile of novelty (every session: a frozen query session adds
        its batches'), from up to :data:`MAX_REFERENCE_CELLS` of the session's cells, training
        and validation alike: the validation cells alone are too few for a 99th
        percentile on small data, where theirs sits well below that of all the reference
        cells (docs/benchmarks/uncertainty.md)."""
        n = data.batch.shape[0]
        rng = np.random.default_rng(seed)
        keep = np.arange(n)
        if n > MAX_REFERENCE_CELLS:
            keep = np.sort(rng.choice(n, MAX_REFERENCE_CELLS, replace=False))
        keep_t = torch.as_tensor(keep, device=data.batch.device)
        zs = []
        for start in range(0, keep.size, 4096):
            idx = keep_t[start : start + 4096]
            x, _ = data.X.rows_and_nonzeros(idx)
            zs.append(self.module.inference(x, data.batch[idx], sample=False)["z"].cpu())
        scores = self.novelty(latent=torch.cat(zs).numpy())
        batch = data.batch[keep_t].cpu().numpy()
        names = self.registry.batch_categories
        stats = {names[b]: float(np.quantile(scores[batch == b], 0.1)) for b in np.unique(batch)}
        if fit_reference:
            self.calibration["validation_novelty"] = np.sort(scores).astype(float).tolist()
            self.calibration[BATCH_NOVELTY_KEY] = stats
        elif self.calibration.get("validation_novelty"):
            self.calibration.setdefault(BATCH_NOVELTY_KEY, {}).update(stats)
