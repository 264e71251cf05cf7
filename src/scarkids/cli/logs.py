"""The text of the training log: one line per epoch, and the metrics after training.

``grep "Epoch\\|Loss\\|KL" logs/training.log`` (the seed README's command) shows exactly the
per-epoch lines.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import numpy as np

log = logging.getLogger("scarkids.run")

#: (metrics key suffix, label) in the order they appear on an epoch line
_TRAIN_COLUMNS = (
    ("loss", "Loss"),
    ("reconstruction", "Reconstruction NLL"),
    ("vae_kl", "VAE KL"),
    ("diffusion_kl", "Diffusion KL"),
    ("classification", "Classifier loss"),
    ("ddpm_loss", "DDPM loss"),
    ("accuracy", "Accuracy"),
    ("elbo", "ELBO"),
)
_VAL_COLUMNS = (*_TRAIN_COLUMNS[:4], ("accuracy", "Accuracy"), ("elbo", "ELBO"))

#: (metrics key, label, which way is better); {n} is the number of batches
_METRIC_NAMES = (
    ("batch_silhouette", "batch silhouette", "1 = batches mixed"),
    ("celltype_silhouette", "cell-type silhouette", "higher = types apart"),
    ("cLISI", "cLISI", "1 = types pure"),
    ("bLISI", "bLISI", "{n} = batches mixed"),
)


def _num(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:.1f}"
    return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"


def epoch_line(epoch: int, n_epochs: int, metrics: Mapping[str, float], is_best: bool) -> str:
    """``Epoch 3/100 | Loss 1234.5 | Reconstruction NLL 1200.1 | ... | val ELBO -1204.3``.

    Metrics that are NaN (accuracy without labelled cells) are left out.
    """
    parts = [f"Epoch {epoch}/{n_epochs}"]
    for prefix, columns, tag in (("train_", _TRAIN_COLUMNS, ""), ("val_", _VAL_COLUMNS, "val ")):
        for key, label in columns:
            value = metrics.get(prefix + key)
            if value is not None and math.isfinite(value):
                parts.append(f"{tag}{label} {_num(value)}")
    if metrics.get("kl_weight", 1.0) < 1.0:
        parts.append(f"KL weight {metrics['kl_weight']:.2f}")
    if is_best:
        parts.append("best")
    return " | ".join(parts)


def log_validation_metrics(
    model, adata, data: Mapping, seed: int, *, role: str = "validation", max_cells: int = 3000
) -> dict[str, float]:
    """Integration metrics of the trained model's latent on (up to ``max_cells`` of) ``adata``.

    Logged as ``Validation metrics: batch silhouette 0.91 (1 = batches mixed) | cell-type
    silhouette 0.62 (higher = types apart) | ...``, each with the direction that is better;
    a failure is logged as a warning and never stops the run.
    """
    from scarkids.metrics.quick import quick_metrics

    try:
        cells = np.arange(adata.n_obs)
        if adata.n_obs > max_cells:
            rng = np.random.default_rng(seed)
            cells = np.sort(rng.choice(adata.n_obs, max_cells, replace=False))
        sub = adata[cells].copy()
        z = model.get_latent_representation(sub)
        key = data["cell_type_key"]
        labels = sub.obs[key].to_numpy() if key in sub.obs.columns else None
        metrics = quick_metrics(
            z,
            sub.obs[data["batch_key"]].to_numpy(),
            labels,
            seed=seed,
            unlabeled_category=data["unlabeled_category"],
        )
    except Exception as e:  # metrics are a report, not part of the result
        log.warning("Validation metrics not computed (%s: %s)", type(e).__name__, e)
        return {}
    n_batches = len(np.unique(sub.obs[data["batch_key"]].to_numpy()))
    shown = [
        f"{label} {metrics[k]:.3g} ({better.format(n=n_batches)})"
        for k, label, better in _METRIC_NAMES
        if k in metrics
    ]
    log.info("Validation metrics: %s (%d %s cells)", " | ".join(shown), len(cells), role)
    return metrics
