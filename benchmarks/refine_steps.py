"""Refinement with fewer reverse steps: what the strided sampler costs in scIB scores.

    python benchmarks/refine_steps.py [--dataset kang] [--n_steps 20,100]
        [--sampling_steps 5,10,25] [--seed 0] [--threads 2]

Same preprocessing and scoring as benchmarks/integration.py. scARKIDS supervised trains
once (defaults); its latent is refined (SDEdit: noised to step n, denoised by the prior of
each cell's predicted type) for each n in ``--n_steps``, with the full ancestral chain (n
reverse steps), the same chain with a second noise seed (how much two full-chain
refinements differ: the yardstick for the strided sampler's differences) and the strided
sampler (``refine_latent(n_sampling_steps=K)``) for each K < n in ``--sampling_steps``.
Every embedding is scored with the same scIB harness; wall time and cells/s of each
refinement.

Every (dataset, seed, refinement) is a row of ``benchmarks/results/refine_steps/runs.jsonl``
(a rerun replaces its row), and ``benchmarks/results/refine_steps.md`` is rebuilt from all
rows, one table per dataset and seed (``--table`` only rebuilds it).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import harness
from harness import SCORES, dataset_arguments, log, open_dataset, score, train_scarkids

RUNS = harness.runs_file("refine_steps")
TABLE = harness.RESULTS / "refine_steps.md"
KEY = ("dataset", "seed", "refinement")


def write_table() -> Path:
    """refine_steps.md: one table per dataset and seed from every recorded row; "Total −
    full chain" against the full chain noised to the same step (Totals rounded to 4
    digits first)."""
    rows = harness.read_runs(RUNS)
    lines = [
        "# Refinement with fewer reverse steps (`python benchmarks/refine_steps.py`)",
        "",
        "One supervised scARKIDS model (defaults) per dataset; its latent refined to step n by "
        "the full chain, by the full chain with a second noise seed and by the strided sampler "
        "(`refine_latent(n_sampling_steps=K)`); scIB scores as integration.py computes them.",
    ]
    head = ["refinement", "noised to step", "reverse steps", "sampler", "refine s", "cells/s"]
    head += [*SCORES, "Total − full chain"]
    for name in dict.fromkeys(r["dataset"] for r in rows):
        for seed in sorted({r["seed"] for r in rows if r["dataset"] == name}):
            got = [r for r in rows if (r["dataset"], r["seed"]) == (name, seed)]
            full = {r["noised to step"]: round(r["Total"], 4) for r in got
                    if r["sampler"] == "full chain"}  # fmt: skip
            body = []
            for r in got:
                base = full.get(r["noised to step"]) if r["noised to step"] else None
                diff = "-" if base is None else f"{round(r['Total'], 4) - base:.4f}"
                body.append([r["refinement"], str(r["noised to step"]), str(r["reverse steps"]),
                             r["sampler"], harness.fmt(r["refine s"], 2).replace("—", "-"),
                             harness.fmt(r["cells/s"], 0).replace("—", "-"),
                             *(f"{r[c]:.4f}" for c in SCORES), diff])  # fmt: skip
            r = got[0]
            lines += ["", f"## {name}, seed {seed}", ""]
            lines += [f"{r['n_obs']:,} cells, {r['n_vars']} HVGs, {r['threads']} CPU threads.", ""]
            lines += [*harness.md_table(head, body), "", *harness.runs_section(got)]
    return harness.write_table(TABLE, lines)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    dataset_arguments(p)
    p.add_argument("--n_steps", default="20,100", help="steps the codes are noised to")
    p.add_argument("--sampling_steps", default="5,10,25", help="strided sampler's steps")
    harness.table_option(p)
    args = p.parse_args()
    if args.table:
        print(write_table().read_text())
        return
    adata = open_dataset(args)
    if adata is None:
        return
    n_labels = adata.obs["cell_type"].nunique()
    log(f"{args.dataset}: {adata.n_obs:,} cells; training scARKIDS-sup ...")
    model, a = train_scarkids(adata, "cell_type", n_labels, args.seed, quick=False)
    z = model.get_latent_representation(a)
    embeddings = {"not refined": z}
    rows = {"not refined": {"noised to step": 0, "reverse steps": 0, "sampler": "-"}}
    for n in (int(s) for s in args.n_steps.split(",")):
        runs = [(n, args.seed, "full chain"), (n, args.seed + 1, "full chain, 2nd noise seed")]
        runs += [(k, args.seed, "strided") for k in map(int, args.sampling_steps.split(","))]
        for k, seed, kind in runs:
            if k > n:
                continue
            name = f"n={n}, {k} steps ({kind})"
            t = time.perf_counter()
            embeddings[name] = model.refine_latent(
                latent=z, n_steps=n, n_sampling_steps=k, seed=seed
            )
            seconds = time.perf_counter() - t
            rows[name] = {"noised to step": n, "reverse steps": k, "sampler": kind}
            rows[name].update({"refine s": seconds, "cells/s": len(z) / seconds})
            log(f"  {name}: {seconds:.2f} s")
    log("scoring ...")
    table = score(adata, embeddings, args.seed)[SCORES]
    prov = harness.provenance(args.threads)
    facts = dict(dataset=args.dataset, seed=args.seed, n_obs=adata.n_obs, n_vars=adata.n_vars,
                 threads=args.threads)  # fmt: skip
    for name, row in rows.items():
        row = dict(facts, refinement=name, **row, **{c: float(table.loc[name, c]) for c in SCORES})
        harness.record_run(RUNS, {**row, **prov}, KEY)
    print(write_table().read_text())


if __name__ == "__main__":
    main()
