"""``--mode inference``: embeddings, batch-corrected expression and cell-type predictions.

Every input is checked before the first output is written (output folder writable,
checkpoint readable, target batch known, data matching the model), and each output file is
written to a temporary name and renamed, so a failed run leaves no partial files behind.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scarkids.cli import report
from scarkids.cli.common import check_writable_dir, require, versions, write_atomic, write_json
from scarkids.cli.prepare import (
    check_columns,
    config_key,
    read_h5ad,
    restrict_genes,
    zero_count_cells,
)
from scarkids.config.load import config_hash
from scarkids.config.translate import (
    de_kwargs,
    expression_kwargs,
    latent_kwargs,
    load_kwargs,
    predict_kwargs,
    refine_kwargs,
    setup_kwargs,
)
from scarkids.constants import (
    BEST_CHECKPOINT,
    DE_FILE,  # noqa: F401 (the file names, re-exported)
    EXPRESSION_FILE,
    LATENT_FILE,
    LATENT_KEY,
    PREDICTIONS_FILE,
    REFINED_KEY,
    RUN_INFO_FILE,
)
from scarkids.data.files import write_h5ad
from scarkids.errors import InputDataError
from scarkids.pl.plots import warm_umap

log = logging.getLogger("scarkids.run")


def run_inference(
    cfg: dict,
    *,
    config_path: str,
    checkpoint: str | None = None,
    data_path: str | None = None,
    output_dir: str | None = None,
) -> dict[str, Any]:
    """Run inference as configured; returns run_info (also written as ``run_info.json``).

    Steps: open (checkpoint, data, output folder: every check before any output), compute
    (embedding, optional refinement, predictions), write the outputs, write run_info."""
    timer = _Timer()
    with report.captured_warnings() as warned:
        run = _open(cfg, checkpoint, data_path, output_dir)
        timer.lap("load")
        if report.enabled(cfg):  # the inputs are good: UMAP's compilation overlaps the rest
            warm_umap()
        outputs = _compute(cfg, run, timer)
        written = _write_outputs(cfg, run, outputs, timer)
        info = _run_info(cfg, config_path, run, outputs, written, timer.timings)
        info["warnings"] = list(warned)
        write_json(run.out_dir / RUN_INFO_FILE, info)
        log.info("Wrote %s to %s", ", ".join(info["outputs"] + [RUN_INFO_FILE]), run.out_dir)
    if report.enabled(cfg):  # after the outputs it describes
        _write_report(cfg, run, outputs, info)
    return info


def _write_report(cfg, run: _Run, outputs: dict, info: dict) -> None:
    """``report.html`` in the output folder; a failure is a warning, never the run's."""
    refined = outputs["refined"]
    adata = run.adata
    layer = cfg["data"]["counts_layer"]
    counts = None
    if not getattr(adata, "isbacked", False):
        counts = adata.layers[layer] if layer and layer in adata.layers else adata.X
    try:
        report.inference_report(
            cfg,
            info,
            run.out_dir,
            model=run.model,
            obs=adata.obs,
            latent=refined if refined is not None else outputs["latent"],
            predictions=outputs["predictions"],
            counts=counts,
        )
    except Exception as e:  # the report describes the run; it is not part of its result
        log.warning("report.html not written (%s: %s)", type(e).__name__, e)


class _Timer:
    """Seconds spent in each stage, for run_info.json."""

    def __init__(self):
        self.timings: dict[str, float] = {}
        self.clock = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.timings[stage] = round(now - self.clock, 3)
        self.clock = now


@dataclass
class _Run:
    model: Any
    adata: Any
    checkpoint: Path
    data_path: str
    out_dir: Path
    device: Any
    target: str
    target_index: int


def _open(cfg, checkpoint, data_path, output_dir) -> _Run:
    from scarkids.compute.device import resolve_device
    from scarkids.model.scarkids import SCARKIDS

    ckpt = Path(checkpoint or Path(cfg["training"]["checkpoint_dir"]) / BEST_CHECKPOINT)
    path = data_path or require(cfg, "data.test_data_path", "for inference (or pass --data_path)")
    out_dir = check_writable_dir(
        output_dir or cfg["inference"]["output_dir"],
        "the output directory (--output_dir / inference.output_dir)",
    )
    device = resolve_device(load_kwargs(cfg)["device"])
    with config_key("training.checkpoint_dir") if checkpoint is None else nullcontext():
        model = SCARKIDS.load(ckpt, device=device)
    target, target_index = _target_batch(model, expression_kwargs(cfg)["transform_batch"])
    log.info("scARKIDS inference | checkpoint %s (%r) | device %s", ckpt, model, device)
    adata = _read_query(cfg, model, path)
    de = de_kwargs(cfg)
    if de is not None and de["groupby"] not in adata.obs:
        raise InputDataError(
            f"inference.differential_expression.groupby: {de['groupby']!r} is not a column of "
            f"obs in {path}; columns: {', '.join(map(str, list(adata.obs.columns)[:12]))}"
        )
    log.info("Data: %s: %d cells | target batch %r", path, adata.n_obs, target)
    return _Run(model, adata, ckpt, path, out_dir, device, target, target_index)


def _compute(cfg, run: _Run, timer: _Timer) -> dict[str, Any]:
    """The latent, the refined latent (or None) and the prediction table."""
    model, adata = run.model, run.adata
    latent = model.get_latent_representation(adata, **latent_kwargs(cfg))
    timer.lap("embed")
    refined, refine = None, refine_kwargs(cfg)
    if refine is not None:
        with config_key(_refinement_key(model)):
            refined = model.refine_latent(adata, latent=latent, **refine)
        timer.lap("refine")
        sampling = refine["n_sampling_steps"]
        log.info(
            "Refined the latent with %d denoising steps%s",
            refine["n_steps"],
            "" if sampling is None else f" (strided sampler: {sampling} reverse steps)",
        )
    predict = predict_kwargs(cfg)
    predictions = model.predict_with_uncertainty(adata, latent=latent, **predict)
    quantile = predict["novelty_quantile"]
    if quantile is not None and model.novelty_threshold(quantile) is None:
        log.info("The checkpoint has no validation novelty: cells are flagged by probability only")
    predictions.index = adata.obs_names
    timer.lap("predict")
    de, de_args = None, de_kwargs(cfg)
    if de_args is not None:
        de = model.differential_expression(adata, **de_args)
        called = int(de[f"is_de_fdr_{de_args['fdr_target']}"].sum())
        log.info(
            "Differential expression by %r: %d comparison(s), %d gene calls at FDR %s",
            de_args["groupby"],
            de["comparison"].nunique(),
            called,
            de_args["fdr_target"],
        )
        timer.lap("differential_expression")
    return {"latent": latent, "refined": refined, "predictions": predictions, "de": de}


def _write_outputs(cfg, run: _Run, outputs: dict, timer: _Timer) -> list[Path]:
    """The three result files (each written atomically), as the config asks."""
    inf, model, out_dir = cfg["inference"], run.model, run.out_dir
    latent, refined, predictions = outputs["latent"], outputs["refined"], outputs["predictions"]
    written = []
    embedding = refined if refined is not None else latent
    if inf["save_latent_embeddings"]:
        written.append(_write_npy(out_dir / LATENT_FILE, embedding.astype(np.float32)))
    if inf["save_cell_type_predictions"]:
        table = predictions[
            [
                "predicted_label",
                "probability",
                "entropy",
                "top_label",
                "novelty",
                "unknown",
                "unknown_reason",
            ]
        ]
        table = table.rename_axis("cell_id").reset_index()
        written.append(
            write_atomic(out_dir / PREDICTIONS_FILE, lambda tmp: table.to_csv(tmp, index=False))
        )
    if inf["save_corrected_expression"]:
        expression = {**expression_kwargs(cfg), "transform_batch": run.target_index}
        chunks = model.iter_normalized_expression(
            run.adata,
            **expression,
            latent=embedding,  # no second encoder pass
        )
        out = _expression_adata(run.adata, model, latent, refined, predictions)
        out.uns["scarkids"] = {
            "target_batch": run.target,
            "target_batch_index": run.target_index,
            "library_size": expression["library_size"],
            "source": expression["source"],
            "refined": refined is not None,
            "checkpoint": str(run.checkpoint),
            "version": versions()["scarkids"],
        }
        written.append(_write_expression_h5ad(out_dir / EXPRESSION_FILE, out, chunks))
        timer.lap("expression")
    if outputs.get("de") is not None:
        de = outputs["de"]
        written.append(write_atomic(out_dir / DE_FILE, lambda tmp: de.to_csv(tmp)))
    return written


def _refinement_key(model) -> str:
    """The config key behind a refinement the model refuses: the switch itself for a model
    without the diffusion prior, else the number of steps (more than the model has)."""
    if model.module.prior_type != "diffusion":
        return "inference.use_ddpm_refinement"
    return "inference.n_refinement_steps"


def _run_info(cfg, config_path, run: _Run, outputs, written, timings) -> dict[str, Any]:
    refine = refine_kwargs(cfg) if outputs["refined"] is not None else None
    return {
        "checkpoint": str(run.checkpoint),
        "checkpoint_config_hash": run.model.extra.get("config_hash"),
        "config": str(config_path),
        "config_hash": config_hash(cfg),
        "seed": cfg["training"]["seed"],
        "data": str(run.data_path),
        "n_cells": int(run.adata.n_obs),
        "n_genes": len(run.model.registry.gene_names),
        "latent_dim": int(outputs["latent"].shape[1]),
        "target_batch": run.target,
        "target_batch_index": run.target_index,
        "refinement": {
            "used": refine is not None,
            "n_steps": refine["n_steps"] if refine is not None else None,
            "n_sampling_steps": refine["n_sampling_steps"] if refine is not None else None,
        },
        "device": str(run.device),
        "versions": versions(),
        "timings_s": timings,
        "outputs": [p.name for p in written],
    }


def _target_batch(model, value) -> tuple[str, int]:
    """``inference.default_target_batch`` (index or name) as (name, index) of the model."""
    known = model.registry.batch_categories
    shown = ", ".join(map(repr, known[:10])) + (" ..." if len(known) > 10 else "")
    if isinstance(value, int):
        if not 0 <= value < len(known):
            raise InputDataError(
                f"inference.default_target_batch: index {value} is out of range; the model "
                f"knows {len(known)} batches (0..{len(known) - 1}): {shown}"
            )
        return known[value], value
    if value not in known:
        raise InputDataError(
            f"inference.default_target_batch: {value!r} is not a batch of the model; known: {shown}"
        )
    return value, known.index(value)


def _read_query(cfg, model, path: str):
    """The data file, restricted to the model's genes, set up and checked against the model."""
    setup, reg = {**setup_kwargs(cfg), "labels_key": None}, model.registry
    adata = read_h5ad(path, what="data file")
    if setup["batch_key"] not in adata.obs.columns and reg.batch_key in adata.obs.columns:
        setup["batch_key"] = reg.batch_key  # the checkpoint's column, when the config names another
    check_columns(adata, path, batch_key=setup["batch_key"], labels_key=None)
    adata = restrict_genes(adata, reg.gene_names, path)
    adata = zero_count_cells(
        adata, path, layer=setup["layer"], mode=cfg["data"]["zero_count_cells"], drop=False
    )
    type(model).setup_anndata(adata, **setup)
    model.check_query(adata, source=str(path))  # unseen batches, gene overlap
    return adata


def _write_npy(path: Path, array: np.ndarray) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would append .npy to a name
            np.save(f, array)

    return write_atomic(path, write)


def _write_expression_h5ad(path: Path, out, chunks) -> Path:
    """``out`` (an AnnData without X) with X (cells x genes, float32) written chunk by chunk
    from ``chunks`` (``(cell slice, array)`` pairs): memory holds one chunk, not the matrix."""
    import h5py

    shape = (out.n_obs, out.n_vars)

    def write(tmp: str) -> None:
        write_h5ad(out, tmp, atomic=False)
        with h5py.File(tmp, "a") as f:
            rows = max(1, min(shape[0], (1 << 20) // max(shape[1], 1)))  # ~4 MiB chunks
            X = f.create_dataset("X", shape=shape, dtype="float32", chunks=(rows, shape[1]))
            X.attrs["encoding-type"] = "array"
            X.attrs["encoding-version"] = "0.2.0"
            for sl, chunk in chunks:
                X[sl] = chunk

    return write_atomic(path, write)


def _expression_adata(adata, model, latent, refined, predictions):
    import anndata as ad

    obs = adata.obs.copy()
    obs["predicted_label"] = predictions["predicted_label"].astype(str).to_numpy()
    obs["prediction_probability"] = predictions["probability"].to_numpy(dtype=np.float32)
    obs["prediction_entropy"] = predictions["entropy"].to_numpy(dtype=np.float32)
    obs["novelty"] = predictions["novelty"].to_numpy(dtype=np.float32)
    obs["unknown"] = predictions["unknown"].to_numpy(dtype=bool)
    out = ad.AnnData(
        obs=obs,
        var=pd.DataFrame(index=pd.Index(model.registry.gene_names, name="gene")),
    )
    out.obsm[LATENT_KEY] = latent.astype(np.float32)
    if refined is not None:
        out.obsm[REFINED_KEY] = refined.astype(np.float32)
    return out
