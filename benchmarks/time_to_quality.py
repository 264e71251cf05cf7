"""Time to quality: how long scARKIDS trains before its scIB Total on kang_ifnb_labeled
reaches what scVI reaches after scVI's default training, on the same machine.

    python benchmarks/time_to_quality.py [--dataset kang] [--threads 2]

Same preprocessing as benchmarks/integration.py (2000 seurat_v3 HVGs, rounded counts, seed).
scVI trains with its defaults (epochs from its size heuristic) and is scored once. scARKIDS
(unsupervised, the peer of scVI) trains its default epoch budget; at epochs 2, 4, 8, ... it is
scored with the same metrics while the clock is paused. Reports the first checkpoint whose
Total is at least scVI's, the training time to get there, and the ratio to scVI's time.
Writes benchmarks/results/time_to_quality_<dataset>.md.
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
from harness import N_LATENT, RESULTS, dataset_arguments, open_dataset, score


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    dataset_arguments(p)
    args = p.parse_args()
    adata = open_dataset(args)
    if adata is None:
        return

    import scvi

    scvi.settings.seed = args.seed
    a = adata.copy()
    scvi.model.SCVI.setup_anndata(a, layer="counts", batch_key="batch")
    peer = scvi.model.SCVI(a)
    t = time.perf_counter()
    peer.train(enable_progress_bar=False)
    scvi_s = time.perf_counter() - t
    scvi_epochs = len(peer.history["elbo_train"])
    scvi_total = float(score(adata, {"scVI": peer.get_latent_representation()}, args.seed)
                       .loc["scVI", "Total"])  # fmt: skip
    print(f"scVI: {scvi_epochs} epochs, {scvi_s:.0f} s, Total {scvi_total:.3f}", flush=True)

    from scarkids import SCARKIDS

    b = adata.copy()
    SCARKIDS.setup_anndata(b, batch_key="batch", layer="counts")
    n_labels = adata.obs["cell_type"].nunique()
    model = SCARKIDS(b, n_latent=N_LATENT, n_labels=n_labels, seed=args.seed)
    rows: list[dict] = []
    clock = {"train": 0.0, "since": time.perf_counter()}
    checkpoints = {2**k for k in range(1, 12)}

    def on_epoch_end(state, metrics, is_best):
        clock["train"] += time.perf_counter() - clock["since"]
        if state.epoch in checkpoints:
            z = model.get_latent_representation()
            model.module.train()
            total = float(score(adata, {"scARKIDS": z}, args.seed).loc["scARKIDS", "Total"])
            rows.append({"epoch": state.epoch, "train_s": clock["train"], "Total": total})
            print(rows[-1], flush=True)
        clock["since"] = time.perf_counter()

    model.train(seed=args.seed, progress_bar=False, on_epoch_end=on_epoch_end)
    clock["train"] += time.perf_counter() - clock["since"]
    z = model.get_latent_representation()
    final = float(score(adata, {"scARKIDS": z}, args.seed).loc["scARKIDS", "Total"])
    epochs = len(model.history["train_loss"])
    if epochs not in checkpoints:
        rows.append({"epoch": epochs, "train_s": clock["train"], "Total": final})
    table = pd.DataFrame(rows).astype({"epoch": str})
    reached = table[table["Total"] >= scvi_total]
    lines = [
        f"Command: `python benchmarks/time_to_quality.py --dataset {args.dataset} "
        f"--threads {args.threads}` ({adata.n_obs:,} cells, {adata.n_vars} HVGs)",
        "",
        f"scVI (defaults, {scvi_epochs} epochs): {scvi_s:.0f} s, scIB Total {scvi_total:.3f}",
        "",
        "scARKIDS unsupervised, training time (scoring excluded) at each checkpoint:",
        "",
        table.to_markdown(index=False, floatfmt=".3f"),
        "",
    ]
    if len(reached):
        first = reached.iloc[0]
        lines.append(
            f"Reaches scVI's Total at epoch {int(first['epoch'])} after {first['train_s']:.0f} s: "
            f"{first['train_s'] / scvi_s:.2f} of scVI's training time "
            f"(final: {final:.3f} after {clock['train']:.0f} s, "
            f"{clock['train'] / scvi_s:.2f} of scVI's time)."
        )
    else:
        lines.append(f"Does not reach scVI's Total (final {final:.3f}).")
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"time_to_quality_{args.dataset}.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
