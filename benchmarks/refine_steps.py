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
refinement. Writes benchmarks/results/refine_steps_<dataset>.md.
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
from harness import (
    RESULTS,
    SCORES,
    dataset_arguments,
    git_state,
    log,
    open_dataset,
    score,
    train_scarkids,
)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    dataset_arguments(p)
    p.add_argument("--n_steps", default="20,100", help="steps the codes are noised to")
    p.add_argument("--sampling_steps", default="5,10,25", help="strided sampler's steps")
    args = p.parse_args()
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
            rows[name].update({"refine s": round(seconds, 2), "cells/s": round(len(z) / seconds)})
            log(f"  {name}: {seconds:.2f} s")
    log("scoring ...")
    table = score(adata, embeddings, args.seed)[SCORES]
    out = pd.DataFrame.from_dict(rows, orient="index").join(table.round(4))
    for n in out["noised to step"].unique()[1:]:
        same = out["noised to step"] == n
        full = out.loc[same & (out["sampler"] == "full chain"), "Total"].iloc[0]
        out.loc[same, "Total − full chain"] = (out.loc[same, "Total"] - full).round(4)
    out.index.name = "refinement"
    text = (
        f"Command: `python benchmarks/refine_steps.py --dataset {args.dataset} --n_steps "
        f"{args.n_steps} --sampling_steps {args.sampling_steps} --seed {args.seed}` "
        f"({adata.n_obs:,} cells, {adata.n_vars} HVGs, scARKIDS-sup defaults, "
        f"{args.threads} CPU threads)  \nCode: {git_state()}\n\n{out.to_markdown()}\n"
    )
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"refine_steps_{args.dataset}.md").write_text(text)


if __name__ == "__main__":
    main()
