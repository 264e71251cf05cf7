"""Integration quality against batch size: what large (GPU-sized) batches cost in scIB Total.

    python benchmarks/batch_size_quality.py [--dataset kang] [--batch_sizes 128,1024,4096]

Same preprocessing and scoring as benchmarks/integration.py. scARKIDS unsupervised (scVI's
peer) trains once per batch size with the default epoch budget, at the default learning
rate (1e-3) and at the learning rate scaled by sqrt(batch / 128) (the usual rule for Adam).
Larger batches mean fewer optimizer steps per epoch; on a GPU they are what makes an epoch
fast (benchmarks/README.md). Writes benchmarks/results/batch_size_quality_<dataset>.md.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from integration import N_LATENT, dataset_arguments, git_state, open_dataset, score  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    dataset_arguments(p)
    p.add_argument("--batch_sizes", default="128,1024,4096")
    args = p.parse_args()
    adata = open_dataset(args)
    if adata is None:
        return
    from scarkids import SCARKIDS

    n_labels = adata.obs["cell_type"].nunique()
    rows = []
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        scales = [1.0] if batch_size == 128 else [1.0, math.sqrt(batch_size / 128)]
        for lr_scale in scales:
            b = adata.copy()
            SCARKIDS.setup_anndata(b, batch_key="batch", layer="counts")
            model = SCARKIDS(b, n_latent=N_LATENT, n_labels=n_labels, seed=args.seed)
            t = time.perf_counter()
            model.train(
                batch_size=batch_size,
                learning_rate=1e-3 * lr_scale,
                seed=args.seed,
                progress_bar=False,
            )
            train_s = time.perf_counter() - t
            z = model.get_latent_representation()
            total = float(score(adata, {"m": z}, args.seed).loc["m", "Total"])
            epochs = len(model.history["train_loss"])
            steps = epochs * math.ceil(0.9 * adata.n_obs / batch_size)
            rows.append({
                "batch size": batch_size, "learning rate": f"{1e-3 * lr_scale:.2g}",
                "epochs": epochs, "optimizer steps": steps, "train s (CPU)": round(train_s),
                "scIB Total": round(total, 3),
            })  # fmt: skip
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows).to_markdown(index=False)
    text = (
        f"Command: `python benchmarks/batch_size_quality.py --dataset {args.dataset} "
        f"--batch_sizes {args.batch_sizes}` ({adata.n_obs:,} cells, {adata.n_vars} HVGs, "
        f"{args.threads} CPU threads)  \nCode: {git_state()}\n\n{table}\n"
    )
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"batch_size_quality_{args.dataset}.md").write_text(text)


if __name__ == "__main__":
    main()
