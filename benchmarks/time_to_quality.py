"""Time to quality: how long scARKIDS trains before its scIB Total on kang_ifnb_labeled
reaches what scVI reaches after scVI's default training, on the same machine.

    python benchmarks/time_to_quality.py [--dataset kang] [--threads 2]
    python benchmarks/time_to_quality.py --table

Same preprocessing as benchmarks/integration.py (2000 seurat_v3 HVGs, rounded counts, seed).
scVI trains with its defaults (epochs from its size heuristic) and is scored once. scARKIDS
(unsupervised, the peer of scVI) trains its default epoch budget; at epochs 2, 4, 8, ... it is
scored with the same metrics while the clock is paused. Reports the first checkpoint whose
Total is at least scVI's, the training time to get there, and the ratio to scVI's time.

Each model (scVI; scARKIDS at each checkpoint and at the end) is a row of
``benchmarks/results/time_to_quality/runs.jsonl`` (a rerun replaces the rows of its dataset
and seed), and ``benchmarks/results/time_to_quality.md`` is rebuilt from all rows
(``--table`` only rebuilds it).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import harness
from harness import N_LATENT, dataset_arguments, open_dataset, score

RUNS = harness.runs_file("time_to_quality")
TABLE = harness.RESULTS / "time_to_quality.md"
KEY = ("dataset", "seed", "method", "epoch")


def section(rows: list[dict]) -> list[str]:
    """One dataset and seed: scVI's time and Total, scARKIDS's checkpoints, when it reaches
    scVI's Total and at what share of scVI's time."""
    [peer] = [r for r in rows if r["method"] == "scVI"]
    final = [r for r in rows if r["method"] == "scARKIDS final"][-1]
    points = sorted((r for r in rows if r["method"] == "scARKIDS"), key=lambda r: r["epoch"])
    if final["epoch"] not in {r["epoch"] for r in points}:
        points.append(final)
    body = [[str(r["epoch"]), f"{r['train_s']:.3f}", f"{r['Total']:.3f}"] for r in points]
    lines = [
        f"{peer['n_obs']:,} cells, {peer['n_vars']} HVGs, {peer['threads']} threads.",
        "",
        f"scVI (defaults, {peer['epoch']} epochs): {peer['train_s']:.0f} s, scIB Total "
        f"{peer['Total']:.3f}",
        "",
        "scARKIDS unsupervised, training time (scoring excluded) at each checkpoint:",
        "",
        *harness.md_table(["epoch", "train_s", "Total"], body),
        "",
    ]
    reached = [r for r in points if r["Total"] >= peer["Total"]]
    if reached:
        first = reached[0]
        lines.append(
            f"Reaches scVI's Total at epoch {first['epoch']} after {first['train_s']:.0f} s: "
            f"{first['train_s'] / peer['train_s']:.2f} of scVI's training time "
            f"(final: {final['Total']:.3f} after {final['train_s']:.0f} s, "
            f"{final['train_s'] / peer['train_s']:.2f} of scVI's time)."
        )
    else:
        lines.append(f"Does not reach scVI's Total (final {final['Total']:.3f}).")
    return lines


def write_table() -> Path:
    """time_to_quality.md: one section per dataset and seed from every recorded row."""
    rows = harness.read_runs(RUNS)
    lines = ["# Time to quality (`python benchmarks/time_to_quality.py`)"]
    for name in dict.fromkeys(r["dataset"] for r in rows):
        for seed in sorted({r["seed"] for r in rows if r["dataset"] == name}):
            got = [r for r in rows if (r["dataset"], r["seed"]) == (name, seed)]
            lines += ["", f"## {name}, seed {seed}", "", *section(got)]
            lines += ["", *harness.runs_section(got)]
    return harness.write_table(TABLE, lines)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    dataset_arguments(p)
    harness.table_option(p)
    args = p.parse_args()
    if args.table:
        print(write_table().read_text())
        return
    adata = open_dataset(args)
    if adata is None:
        return
    prov = harness.provenance(args.threads)
    facts = dict(dataset=args.dataset, seed=args.seed, n_obs=adata.n_obs, n_vars=adata.n_vars,
                 threads=args.threads)  # fmt: skip
    harness.drop_runs(RUNS, dataset=args.dataset, seed=args.seed)  # this run replaces them

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
    row = dict(facts, method="scVI", epoch=scvi_epochs, train_s=scvi_s, Total=scvi_total)
    harness.record_run(RUNS, {**row, **prov}, KEY)

    from scarkids import SCARKIDS

    b = adata.copy()
    SCARKIDS.setup_anndata(b, batch_key="batch", layer="counts")
    n_labels = adata.obs["cell_type"].nunique()
    model = SCARKIDS(b, n_latent=N_LATENT, n_labels=n_labels, seed=args.seed)
    clock = {"train": 0.0, "since": time.perf_counter()}
    checkpoints = {2**k for k in range(1, 12)}

    def on_epoch_end(state, metrics, is_best):
        clock["train"] += time.perf_counter() - clock["since"]
        if state.epoch in checkpoints:
            z = model.get_latent_representation()
            model.module.train()
            total = float(score(adata, {"scARKIDS": z}, args.seed).loc["scARKIDS", "Total"])
            row = {"epoch": state.epoch, "train_s": clock["train"], "Total": total}
            print(row, flush=True)
            harness.record_run(RUNS, {**facts, "method": "scARKIDS", **row, **prov}, KEY)
        clock["since"] = time.perf_counter()

    model.train(seed=args.seed, progress_bar=False, on_epoch_end=on_epoch_end)
    clock["train"] += time.perf_counter() - clock["since"]
    z = model.get_latent_representation()
    final = float(score(adata, {"scARKIDS": z}, args.seed).loc["scARKIDS", "Total"])
    epochs = len(model.history["train_loss"])
    row = dict(facts, method="scARKIDS final", epoch=epochs, train_s=clock["train"], Total=final)
    harness.record_run(RUNS, {**row, **prov}, KEY)
    print(write_table().read_text())


if __name__ == "__main__":
    main()
