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

log = logging.getLogger("scarkids.run")

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
    """Write ``data/demo.h5ad``, ``config.yaml``, checkpoints, logs, results and ``umap.png``
    under ``output_dir``; returns the main paths."""
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
    umap = plot_integration_umap(adata, latent, out / "umap.png", seed=seed)
    paths = {
        "data": data_path,
        "config": config_path,
        "checkpoint": out / "checkpoints" / BEST_CHECKPOINT,
        "log": out / "logs" / "training.log",
        "results": results,
        "umap": umap,
    }
    return paths


def plot_integration_umap(
    adata,
    latent: np.ndarray,
    path: str | Path,
    *,
    batch_key: str = "batch",
    labels_key: str = "cell_type",
    seed: int = 0,
) -> Path:
    """Four UMAP panels: log-normalised PCA and the scARKIDS latent, each coloured by batch
    and by cell type. ``adata`` holds raw counts and is not modified."""
    import anndata as ad
    import scanpy as sc
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pre = ad.AnnData(adata.X.copy(), obs=adata.obs[[batch_key, labels_key]].copy())
    post = ad.AnnData(np.zeros((adata.n_obs, 0), np.float32), obs=pre.obs.copy())
    post.obsm[LATENT_KEY] = np.asarray(latent, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.pp.normalize_total(pre, target_sum=1e4)
        sc.pp.log1p(pre)
        sc.pp.pca(pre, n_comps=min(30, pre.n_vars - 1, pre.n_obs - 1), random_state=seed)
        sc.pp.neighbors(pre, use_rep="X_pca", random_state=seed)
        sc.tl.umap(pre, random_state=seed)
        sc.pp.neighbors(post, use_rep=LATENT_KEY, random_state=seed)
        sc.tl.umap(post, random_state=seed)

    fig = Figure(figsize=(12, 10), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2)
    order = np.random.default_rng(seed).permutation(adata.n_obs)  # no group drawn on top
    size = float(np.clip(12000 / max(adata.n_obs, 1), 0.5, 20))
    rows = (("Unintegrated (log-normalised PCA)", pre), ("scARKIDS latent", post))
    for r, (title, data) in enumerate(rows):
        coords = np.asarray(data.obsm["X_umap"])[order]
        for c, key in enumerate((batch_key, labels_key)):
            ax = axes[r, c]
            values = data.obs[key].astype(str).to_numpy()[order]
            names = sorted(set(values))
            colors = [f"C{names.index(v) % 10}" for v in values]
            ax.scatter(coords[:, 0], coords[:, 1], s=size, c=colors, linewidths=0, rasterized=True)
            for i, name in enumerate(names):
                ax.scatter([], [], s=20, color=f"C{i % 10}", label=name)
            ax.set_title(f"{title}: {key}")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel("UMAP1")
            ax.set_ylabel("UMAP2")
            ax.legend(fontsize=7, frameon=False, loc="best")
    return write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
