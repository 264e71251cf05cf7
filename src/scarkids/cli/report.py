"""``report.html`` of the command-line runs, and ``scarkids report RUN_DIR``.

A training run writes the report into its checkpoint folder, an inference run into its
output folder, each after the files it describes; ``scarkids report RUN_DIR`` rebuilds it
from a finished run's files (so an old run gets one too). The page itself is laid out by
:mod:`scarkids.pl.report`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scarkids.cli.common import RUN_LOGGER, versions
from scarkids.compute import distributed
from scarkids.constants import (
    BEST_CHECKPOINT,
    DE_FILE,
    EXPRESSION_FILE,
    LAST_CHECKPOINT,
    LATENT_FILE,
    LATENT_KEY,
    PREDICTIONS_FILE,
    RUN_INFO_FILE,
)
from scarkids.errors import InputDataError
from scarkids.pl.report import REPORT_FILE, ReportContent, subsample, subset_rows, write_report

log = logging.getLogger("scarkids.run")

#: what each output file holds, for the report's last section
OUTPUT_FILES = {
    LATENT_FILE: "cells x latent_dim float32 embedding, in the input's cell order",
    EXPRESSION_FILE: "expression decoded for the target batch, obs with the predictions, "
    f"obsm[{LATENT_KEY!r}]",
    PREDICTIONS_FILE: "cell id, predicted label, probability, entropy, top label, novelty, "
    "unknown and its reason",
    DE_FILE: "differential expression of the groups of inference.differential_expression",
    RUN_INFO_FILE: "checkpoint, config hash, seed, versions, timings, warnings",
    BEST_CHECKPOINT: "the model kept (best validation epoch, or the last one)",
    LAST_CHECKPOINT: "the last epoch with the optimizer and RNG state (resumes a run)",
    REPORT_FILE: "this page",
}
#: cells of the inference data the quick integration metrics use
METRIC_CELLS = 3000


@contextlib.contextmanager
def captured_warnings() -> Iterator[list[str]]:
    """The run's WARNING (and worse) log messages, collected while the block runs."""
    messages: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = _Collect(level=logging.WARNING)
    logger = logging.getLogger(RUN_LOGGER)
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)


def enabled(cfg: dict) -> bool:
    """Whether this process writes the report (``report.enabled``; rank 0 of a DDP run)."""
    return bool(cfg.get("report", {}).get("enabled", True)) and distributed.is_main_process()


def _write(path: Path, content: ReportContent) -> Path:
    started = time.perf_counter()
    written = write_report(path, content)
    log.info("Report: %s (%.1f s)", written, time.perf_counter() - started)
    return written


# --------------------------------------------------------------------------- training


def training_report(
    cfg: dict,
    model,
    adata,
    *,
    out_dir: Path,
    session: str,
    metrics: dict | None,
    warnings: list[str],
    seconds: float | None,
    device: Any,
    data_path: str,
    metrics_role: str = "validation",
) -> Path:
    """``report.html`` of a training session in ``out_dir`` (its checkpoint folder)."""
    tr, inf, data = cfg["training"], cfg["inference"], cfg["data"]
    mode = "supervised" if cfg["global"]["supervised"] else "unsupervised"
    header = [
        ("data", data_path),
        ("genes", f"{len(model.registry.gene_names):,}"),
        ("mode", f"train ({mode}), session {session}"),
        ("config hash", str((model.extra or {}).get("config_hash") or "")),
        ("seed", str(tr["seed"])),
        ("device", str(device)),
        ("epochs", f"{len(model.history.get('train_loss', []))}"),
        ("training wall time", f"{seconds:.1f} s" if seconds is not None else "not recorded"),
        ("versions", _versions((model.extra or {}).get("versions") or versions())),
    ]
    content = ReportContent(
        title=f"scARKIDS training report: {session}",
        header=header,
        history=model.history,
        best_epoch=(model.extra or {}).get("best_epoch"),
        metrics=metrics,
        metrics_note=f"After training, on up to 3,000 {metrics_role} cells (seed {tr['seed']}).",
        batch_key=data["batch_key"],
        confidence_threshold=inf["confidence_threshold"],
        warnings=warnings,
        outputs=_listing(out_dir),
        max_cells=cfg["report"]["max_cells"],
        seed=tr["seed"],
        unlabeled_category=data["unlabeled_category"],
    )
    if adata is not None:
        _add_cells(content, model, adata, cfg)
    return _write(out_dir / REPORT_FILE, content)


def _add_cells(content: ReportContent, model, adata, cfg: dict) -> None:
    """Embed and predict a seeded subsample of ``adata`` for the report's figures."""
    inf, data = cfg["inference"], cfg["data"]
    cells = subsample(adata.n_obs, content.max_cells, content.seed)
    sub = adata if len(cells) == adata.n_obs else subset_rows(adata, cells)
    latent = model.get_latent_representation(sub)
    predictions = model.predict_with_uncertainty(
        sub,
        latent=latent,
        confidence_threshold=inf["confidence_threshold"],
        novelty_quantile=inf["novelty_quantile"],
        warn_share=None,
    )
    label_key = data["cell_type_key"] if data["cell_type_key"] in sub.obs.columns else None
    content.obs = _obs(sub.obs, content.batch_key, label_key, predictions)
    content.label_key, content.latent = label_key, latent
    layer = model.registry.layer
    if not getattr(sub, "isbacked", False):
        content.counts = sub.layers[layer] if layer and layer in sub.layers else sub.X
    if len(cells) < adata.n_obs:
        content.n_cells = adata.n_obs


def _obs(obs: pd.DataFrame, batch_key: str, label_key: str | None, predictions) -> pd.DataFrame:
    keep = [k for k in (batch_key, label_key) if k and k in obs.columns]
    out = obs[keep].copy()
    for col in ("predicted_label", "probability", "unknown", "unknown_reason"):
        out[col] = predictions[col].to_numpy()
    return out


def _versions(v: dict) -> str:
    return ", ".join(f"{k} {val}" for k, val in v.items())


def _listing(folder: Path) -> list[tuple[str, str]]:
    out = []
    for path in sorted(Path(folder).iterdir()) if Path(folder).is_dir() else []:
        if path.name.startswith(".") or not path.is_file():
            continue
        what = OUTPUT_FILES.get(path.name)
        if what is None and path.name.startswith("checkpoint_epoch_"):
            what = "a periodic checkpoint (training.checkpoint_interval)"
        if what is None and path.suffix == ".pt":
            what = "a model checkpoint"
        if what is None:  # not a file the runs write
            continue
        size = path.stat().st_size
        out.append((path.name, f"{what} ({size / 2**20:.1f} MiB)"))
    if not any(name == REPORT_FILE for name, _ in out):
        out.append((REPORT_FILE, OUTPUT_FILES[REPORT_FILE]))
    return out


# --------------------------------------------------------------------------- inference


def inference_report(
    cfg: dict, info: dict, out_dir: Path, *, model, obs, latent, predictions, counts
) -> Path:
    """``report.html`` of an inference run in ``out_dir``, from its outputs and run_info.

    ``obs`` (the data's obs), ``latent`` (the embedding written) and ``predictions`` hold one
    row per cell; ``counts`` (or None) the raw counts of the same cells."""
    data, inf = cfg["data"], cfg["inference"]
    batch_key = data["batch_key"] if data["batch_key"] in obs.columns else model.registry.batch_key
    label_key = data["cell_type_key"] if data["cell_type_key"] in obs.columns else None
    timings = info.get("timings_s") or {}
    header = [
        ("data", str(info.get("data"))),
        ("genes", f"{info.get('n_genes', len(model.registry.gene_names)):,}"),
        ("mode", "inference"),
        (
            "checkpoint",
            f"{info.get('checkpoint')} (config hash {info.get('checkpoint_config_hash')})",
        ),
        ("config hash", str(info.get("config_hash"))),
        ("seed", str(info.get("seed"))),
        ("device", str(info.get("device"))),
        ("target batch", str(info.get("target_batch"))),
        ("refinement", json.dumps(info.get("refinement"))),
        ("wall times", ", ".join(f"{k} {v:.1f} s" for k, v in timings.items())),
        ("versions", _versions(info.get("versions") or {})),
    ]
    content = ReportContent(
        title=f"scARKIDS inference report: {Path(str(info.get('data'))).name}",
        header=header,
        history=model.history,
        best_epoch=(model.extra or {}).get("best_epoch"),
        metrics=_quick_metrics(latent, obs, batch_key, label_key, cfg, info.get("seed") or 0),
        metrics_note=f"On up to {METRIC_CELLS:,} of these cells (seed {info.get('seed')}); "
        "the training curves are those of the checkpoint.",
        obs=_obs(obs, batch_key, label_key, predictions),
        batch_key=batch_key,
        label_key=label_key,
        latent=np.asarray(latent),
        counts=counts,
        confidence_threshold=inf["confidence_threshold"],
        warnings=list(info.get("warnings") or []),
        outputs=_listing(out_dir),
        max_cells=cfg["report"]["max_cells"],
        seed=int(info.get("seed") or 0),
        unlabeled_category=data["unlabeled_category"],
    )
    return _write(out_dir / REPORT_FILE, content)


def _quick_metrics(latent, obs, batch_key, label_key, cfg, seed: int) -> dict | None:
    from scarkids.metrics.quick import quick_metrics

    try:
        cells = subsample(len(obs), METRIC_CELLS, seed)
        labels = obs[label_key].to_numpy()[cells] if label_key else None
        return quick_metrics(
            np.asarray(latent)[cells],
            obs[batch_key].to_numpy()[cells],
            labels,
            seed=seed,
            unlabeled_category=cfg["data"]["unlabeled_category"],
        )
    except Exception as e:  # metrics are a report, not part of the result
        log.warning("Report: metrics not computed (%s: %s)", type(e).__name__, e)
        return None


# --------------------------------------------------------------------------- rebuild


def rebuild(run_dir, *, max_cells: int | None = None) -> Path:
    """``scarkids report RUN_DIR``: the report of a finished run, from its files.

    An inference folder (``run_info.json``) is read from its outputs, its checkpoint and,
    when the file is still there, its data (for the uncorrected UMAP); a checkpoint folder
    (``best_model.pt``) from the model, the training data named in its config (when found)
    and ``training.log`` (metrics, warnings).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputDataError(f"{run_dir}: not a folder; give a run's output or checkpoint folder")
    if (run_dir / RUN_INFO_FILE).exists():
        return _rebuild_inference(run_dir, max_cells)
    if (run_dir / BEST_CHECKPOINT).exists():
        return _rebuild_training(run_dir, max_cells)
    raise InputDataError(
        f"{run_dir}: neither an inference output folder ({RUN_INFO_FILE}) nor a checkpoint "
        f"folder ({BEST_CHECKPOINT}); give the folder of a finished run"
    )


def _config_of(model, max_cells: int | None) -> dict:
    from scarkids.config.load import resolve_config

    saved = (model.extra or {}).get("config")
    cfg = resolve_config({}) if not isinstance(saved, dict) else _resolved(saved)
    if max_cells is not None:
        cfg["report"]["max_cells"] = max_cells
    return cfg


def _resolved(saved: dict) -> dict:
    """A saved config with every current key (a run from before a key existed lacks it)."""
    from scarkids.config.load import resolve_config

    base = resolve_config({})
    for name, section in base.items():
        if isinstance(saved.get(name), dict):
            section.update(saved[name])
    return base


def _rebuild_inference(run_dir: Path, max_cells: int | None) -> Path:
    import anndata as ad

    from scarkids.model.scarkids import SCARKIDS

    info = json.loads((run_dir / RUN_INFO_FILE).read_text(encoding="utf-8"))
    ckpt = Path(str(info.get("checkpoint")))
    if not ckpt.exists():
        raise InputDataError(
            f"{run_dir / RUN_INFO_FILE}: its checkpoint {ckpt} is not found; run the report "
            "from the folder the run was started in"
        )
    model = SCARKIDS.load(ckpt, device="cpu")
    cfg = _config_of(model, max_cells)
    predictions = pd.read_csv(run_dir / PREDICTIONS_FILE, index_col="cell_id")
    if (run_dir / EXPRESSION_FILE).exists():
        expression = ad.read_h5ad(run_dir / EXPRESSION_FILE, backed="r")
        obs = expression.obs.copy()
        expression.file.close()
    else:
        obs = pd.DataFrame(index=predictions.index)
    latent = np.load(run_dir / LATENT_FILE)
    counts = _counts_of(info.get("data"), obs, model)
    return inference_report(
        cfg,
        info,
        run_dir,
        model=model,
        obs=obs,
        latent=latent,
        predictions=predictions,
        counts=counts,
    )


def _counts_of(path, obs: pd.DataFrame, model):
    """The raw counts of the run's data file for the cells of ``obs``, or None."""
    if not path or not Path(str(path)).exists() or str(path).startswith("builtin:"):
        return None
    import anndata as ad

    try:
        adata = ad.read_h5ad(str(path))
        adata = adata[adata.obs_names.isin(obs.index)]
        adata = adata[obs.index]
        layer = model.registry.layer
        return adata.layers[layer] if layer and layer in adata.layers else adata.X
    except Exception as e:  # the uncorrected UMAP is a bonus
        log.warning("Report: the counts of %s not read (%s: %s)", path, type(e).__name__, e)
        return None


def _rebuild_training(run_dir: Path, max_cells: int | None) -> Path:
    from scarkids.cli.inputs import read_training_file
    from scarkids.model.scarkids import SCARKIDS

    model = SCARKIDS.load(run_dir / BEST_CHECKPOINT, device="cpu")
    cfg = _config_of(model, max_cells)
    extra = model.extra or {}
    path = cfg["data"]["train_data_path"]
    adata = None
    if path and (path.startswith("builtin:") or Path(path).exists()):
        labels_key = model.registry.labels_key
        adata, _ = read_training_file(
            cfg, path, "train data file", labels_key, model.registry.gene_names
        )
    log_path = _log_file(cfg, run_dir)
    metrics, warnings = _from_log(log_path)
    return training_report(
        cfg,
        model,
        adata,
        out_dir=run_dir,
        session=str(extra.get("session") or run_dir.name),
        metrics=metrics,
        warnings=warnings,
        seconds=_training_seconds(log_path),
        device=cfg["training"]["device"],
        data_path=str(path),
    )


def _log_file(cfg: dict, run_dir: Path) -> Path | None:
    name = "training.log"
    for folder in (Path(cfg["training"]["log_dir"]), run_dir.parent / "logs", run_dir):
        if (folder / name).exists():
            return folder / name
    return None


_METRIC_LABELS = {
    "batch silhouette": "batch_silhouette",
    "cell-type silhouette": "celltype_silhouette",
    "cLISI": "cLISI",
    "bLISI": "bLISI",
}


def _from_log(path: Path | None) -> tuple[dict | None, list[str]]:
    """The last ``Validation metrics:`` line's values and every WARNING of ``training.log``."""
    if path is None:
        return None, ["training.log not found: no metrics and no warnings of the run shown"]
    metrics, warnings = None, []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if " | WARNING | " in line or " | ERROR | " in line:
            warnings.append(line.split(" | ", 2)[-1])
        elif "Validation metrics: " in line:
            metrics = {}
            for label, key in _METRIC_LABELS.items():
                found = re.search(rf"(?:^|[:|] ){re.escape(label)} (-?[0-9.eE+-]+)", line)
                if found:
                    metrics[key] = float(found.group(1))
    return metrics, warnings


def _training_seconds(path: Path | None) -> float | None:
    if path is None:
        return None
    seconds = None
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        found = re.search(r"(?:Final model|Best epoch).* \| ([0-9.]+) s$", line)
        if found:
            seconds = float(found.group(1))
    return seconds
