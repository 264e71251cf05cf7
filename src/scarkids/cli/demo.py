"""``scarkids demo``: simulate data with batch effects, train, run inference, draw a UMAP.

The demo goes through the same code as ``train`` and ``inference`` (it writes a config file
and runs both from it), so a working demo means a working installation.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np

from scarkids.cli.common import read_config, write_atomic, write_h5ad
from scarkids.cli.infer import run_inference
from scarkids.cli.train import run_train
from scarkids.config.load import dump_config, resolve_config
from scarkids.constants import BEST_CHECKPOINT, LATENT_FILE, LATENT_KEY
from scarkids.data.simulate import BUILTIN
from scarkids.pl.plots import plot_umap

log = logging.getLogger("scarkids.run")

#: the demo's UMAPs: the scARKIDS latent, and the log-normalised PCA before integration
UMAP_FILE, UMAP_BEFORE_FILE = "umap.png", "umap_unintegrated.png"

DEMO_GENES, DEMO_BATCHES, DEMO_TYPES, DEMO_BATCH_EFFECT = (
    BUILTIN["n_genes"],
    BUILTIN["n_batches"],
    BUILTIN["n_cell_types"],
    BUILTIN["batch_effect"],
)


def run_demo(
    output_dir: str = "demo_output",
    *,
    n_cells: int = 3000,
    epochs: int = 30,
    seed: int = 0,
    device: str = "auto",
    fresh: bool = False,
) -> dict[str, Path]:
    """Write ``data/demo.h5ad``, ``config.yaml``, checkpoints, logs, results, ``umap.png``
    and ``umap_unintegrated.png`` under ``output_dir``; returns the main paths."""
    from scarkids.data.simulate import simulate

    out = Path(output_dir)
    data_path = out / "data" / "demo.h5ad"
    log.info(
        "Simulating %d cells x %d genes: %d batches, %d cell types, batch effect %.1f",
        n_cells,
        DEMO_GENES,
        DEMO_BATCHES,
        DEMO_TYPES,
        DEMO_BATCH_EFFECT,
    )
    adata = simulate(
        n_cells,
        DEMO_GENES,
        n_batches=DEMO_BATCHES,
        n_cell_types=DEMO_TYPES,
        batch_effect=DEMO_BATCH_EFFECT,
        seed=seed,
    )
    write_h5ad(adata, data_path)

    raw = {
        "global": {"n_genes": None, "supervised": True},
        "data": {
            "train_data_path": str(data_path),
            "val_data_path": None,
            "test_data_path": str(data_path),
        },
        "training": {
            "n_epochs": epochs,
            "checkpoint_dir": str(out / "checkpoints"),
            "log_dir": str(out / "logs"),
            "device": device,
            "seed": seed,
        },
        "inference": {"output_dir": str(out / "results"), "device": device},
    }
    config_path = out / "config.yaml"
    text = "# scarkids demo config (written by `scarkids demo`)\n" + dump_config(
        resolve_config(raw, source="demo")
    )
    write_atomic(config_path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    cfg = read_config(config_path)

    run_train(cfg, config_path=str(config_path), fresh=fresh, name="demo")
    run_inference(cfg, config_path=str(config_path))
    results = out / "results"
    latent = np.load(results / LATENT_FILE)
    umap, umap_pca = plot_integration_umap(adata, latent, out, seed=seed)
    paths = {
        "data": data_path,
        "config": config_path,
        "checkpoint": out / "checkpoints" / BEST_CHECKPOINT,
        "log": out / "logs" / "training.log",
        "results": results,
        "umap": umap,
        "umap_pca": umap_pca,
    }
    return paths


def plot_integration_umap(
    adata,
    latent: np.ndarray,
    out_dir: str | Path,
    *,
    batch_key: str = "batch",
    labels_key: str = "cell_type",
    seed: int = 0,
) -> tuple[Path, Path]:
    """UMAPs of the scARKIDS latent (``umap.png``) and, before integration, of the
    log-normalised PCA (``umap_unintegrated.png``) in ``out_dir``, each coloured by batch and
    by cell type (:func:`scarkids.pl.plot_umap`). ``adata`` holds raw counts and is not
    modified. Returns the two paths, the latent's first."""
    import anndata as ad
    import scanpy as sc

    pre = ad.AnnData(adata.X.copy(), obs=adata.obs[[batch_key, labels_key]].copy())
    post = ad.AnnData(np.zeros((adata.n_obs, 0), np.float32), obs=pre.obs.copy())
    post.obsm[LATENT_KEY] = np.asarray(latent, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.pp.normalize_total(pre, target_sum=1e4)
        sc.pp.log1p(pre)
        sc.pp.pca(pre, n_comps=min(30, pre.n_vars - 1, pre.n_obs - 1), random_state=seed)
    color = (batch_key, labels_key)
    out_dir = Path(out_dir)
    after = plot_umap(
        post, embedding_key=LATENT_KEY, color=color, path=out_dir / UMAP_FILE, seed=seed
    )
    before = plot_umap(
        pre, embedding_key="X_pca", color=color, path=out_dir / UMAP_BEFORE_FILE, seed=seed
    )
    return after, before
