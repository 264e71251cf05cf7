"""``--mode inference``: embeddings, batch-corrected expression and cell-type predictions.

Every input is checked before the first output is written (output folder writable,
checkpoint readable, target batch known, data matching the model), and each output file is
written to a temporary name and renamed, so a failed run leaves no partial files behind.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .config import config_hash
from .errors import InputDataError
from .h5ad import write_h5ad_file
from .pipeline import (
    check_writable_dir,
    require,
    versions,
    write_atomic,
    write_json,
)
from .preprocessing import check_columns, read_h5ad, restrict_genes, zero_count_cells

log = logging.getLogger("scarkids.run")

LATENT_FILE = "latent_embeddings.npy"
EXPRESSION_FILE = "corrected_expression.h5ad"
PREDICTIONS_FILE = "cell_type_predictions.csv"
RUN_INFO_FILE = "run_info.json"


def run_inference(
    cfg: dict,
    *,
    config_path: str,
    checkpoint: str | None = None,
    data_path: str | None = None,
    output_dir: str | None = None,
) -> dict[str, Any]:
    """Run inference as configured; returns run_info (also written as ``run_info.json``)."""
    from .model import SCARKIDS, resolve_device

    inf, seed = cfg["inference"], cfg["training"]["seed"]
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[stage] = round(now - clock, 3)
        clock = now

    ckpt = Path(checkpoint or Path(cfg["training"]["checkpoint_dir"]) / "best_model.pt")
    path = data_path or require(cfg, "data.test_data_path", "for inference (or pass --data_path)")
    out_dir = check_writable_dir(
        output_dir or inf["output_dir"],
        "the output directory (--output_dir / inference.output_dir)",
    )
    device = resolve_device(inf["device"])
    model = SCARKIDS.load(ckpt, device=device)
    target, target_index = _target_batch(model, inf["default_target_batch"])
    log.info("scARKIDS inference | checkpoint %s (%r) | device %s", ckpt, model, device)

    adata = _read_query(cfg, model, path)
    lap("load")
    log.info("Data: %s: %d cells | target batch %r", path, adata.n_obs, target)

    latent = model.get_latent_representation(adata, batch_size=inf["batch_size"])
    lap("embed")
    refined = None
    if inf["use_ddpm_refinement"]:
        refined = model.refine_latent(
            adata,
            n_steps=inf["n_refinement_steps"],
            seed=seed,
            batch_size=inf["batch_size"],
            latent=latent,
        )
        lap("refine")
        log.info("Refined the latent with %d denoising steps", inf["n_refinement_steps"])
    predictions = model.predict_with_uncertainty(
        adata, confidence_threshold=inf["confidence_threshold"], latent=latent
    )
    predictions.index = adata.obs_names
    lap("predict")

    written = []
    embedding = refined if refined is not None else latent
    if inf["save_latent_embeddings"]:
        written.append(_write_npy(out_dir / LATENT_FILE, embedding.astype(np.float32)))
    if inf["save_cell_type_predictions"]:
        table = predictions[["predicted_label", "probability", "entropy", "top_label"]]
        table = table.rename_axis("cell_id").reset_index()
        written.append(
            write_atomic(out_dir / PREDICTIONS_FILE, lambda tmp: table.to_csv(tmp, index=False))
        )
    if inf["save_corrected_expression"]:
        chunks = model.iter_normalized_expression(
            adata,
            transform_batch=target_index,
            library_size=inf["library_size"],
            batch_size=min(inf["batch_size"], 1024),
            latent=refined if refined is not None else latent,  # no second encoder pass
        )
        out = _expression_adata(adata, model, latent, refined, predictions)
        out.uns["scarkids"] = {
            "target_batch": target,
            "target_batch_index": target_index,
            "library_size": inf["library_size"],
            "refined": refined is not None,
            "checkpoint": str(ckpt),
            "version": versions()["scarkids"],
        }
        written.append(_write_expression_h5ad(out_dir / EXPRESSION_FILE, out, chunks))
        lap("expression")

    info = {
        "checkpoint": str(ckpt),
        "checkpoint_config_hash": model.extra.get("config_hash"),
        "config": str(config_path),
        "config_hash": config_hash(cfg),
        "seed": seed,
        "data": str(path),
        "n_cells": int(adata.n_obs),
        "n_genes": len(model.registry.gene_names),
        "latent_dim": int(latent.shape[1]),
        "target_batch": target,
        "target_batch_index": target_index,
        "refinement": {
            "used": refined is not None,
            "n_steps": inf["n_refinement_steps"] if refined is not None else None,
        },
        "device": str(device),
        "versions": versions(),
        "timings_s": timings,
        "outputs": [p.name for p in written],
    }
    write_json(out_dir / RUN_INFO_FILE, info)
    log.info("Wrote %s to %s", ", ".join(info["outputs"] + [RUN_INFO_FILE]), out_dir)
    return info


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
    data, reg = cfg["data"], model.registry
    adata = read_h5ad(path, what="data file")
    batch_key = data["batch_key"]
    if batch_key not in adata.obs.columns and reg.batch_key in adata.obs.columns:
        batch_key = reg.batch_key  # the checkpoint's column, when the config names another
    check_columns(adata, path, batch_key=batch_key, labels_key=None)
    adata = restrict_genes(adata, reg.gene_names, path)
    adata = zero_count_cells(
        adata, path, layer=data["counts_layer"], mode=data["zero_count_cells"], drop=False
    )
    type(model).setup_anndata(
        adata,
        batch_key=batch_key,
        labels_key=None,
        layer=data["counts_layer"],
        unlabeled_category=data["unlabeled_category"],
    )
    model._encode(adata, labels="ignore", source=str(path))  # unseen batches, gene overlap
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
        write_h5ad_file(out, tmp)
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
    out = ad.AnnData(
        obs=obs,
        var=pd.DataFrame(index=pd.Index(model.registry.gene_names, name="gene")),
    )
    out.obsm["X_scarkids"] = latent.astype(np.float32)
    if refined is not None:
        out.obsm["X_scarkids_refined"] = refined.astype(np.float32)
    return out
