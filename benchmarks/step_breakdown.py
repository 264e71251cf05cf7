"""Where a CPU training step goes: the plain VAE part against the whole scARKIDS step.

    python benchmarks/step_breakdown.py [--threads 2] [--batch_size 128] [--cells 10000]
    python benchmarks/step_breakdown.py --priors diffusion,gaussian,mixture

Times one optimizer step (minibatch gather, loss, backward, clipping, fused AdamW) of
three losses on the speed benchmark's simulated counts (2000 genes; the file written by
speed.py, or simulated here): "vae" is scARKIDS's encoder, decoder and fused ZINB
likelihood with a standard-normal prior (what scVI computes per step); "supervised" and
"unsupervised" are the real scARKIDS loss (diffusion prior bound, DDPM loss, classifier;
unlabelled cells scored against every label). Each (variant, batch size) runs in
``--repeats`` fresh processes (timings in one long process drift with heap state on this
VM), each timing the fastest of 5 rounds of 60 steps, at the given batch size and at batch 8
(the cost that does not scale with the batch: weight-sized products, Adam, clipping, per-op
dispatch); a column gives the memory a step's forward pass keeps for its backward (the
tensors autograd saves, at the given batch size, MiB). With ``--priors``, the two real
losses run once per prior (``SCARKIDSModule(prior=...)``): what each prior costs per step.

Every process is a row of ``benchmarks/results/step_breakdown/runs.jsonl`` (a rerun at the
same commit replaces its rows), and ``benchmarks/results/step_breakdown.md`` is rebuilt from
all rows: per cells, threads, batch size, machine and commit, the median over the recorded
processes (``--table`` only rebuilds it).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import harness
import scipy.sparse as sp
import torch

from scarkids.data.store import DeviceMatrix
from scarkids.distributions.counts import softmax_count_log_prob_sum
from scarkids.module.vae import SCARKIDSModule

RUNS = harness.runs_file("step_breakdown")
TABLE = harness.RESULTS / "step_breakdown.md"
KEY = ("variant", "batch_size", "main_batch_size", "cells", "threads", "commit", "repeat")


def counts(n_cells: int):
    import anndata as ad

    from scarkids.data.simulate import simulate

    path = Path(f"/tmp/scarkids_speed_{n_cells}x2000_s0.h5ad")  # written by speed.py
    kwargs = dict(n_batches=4, n_cell_types=8, library_size=1500.0)
    adata = ad.read_h5ad(path) if path.exists() else simulate(n_cells, 2000, **kwargs)
    codes = lambda key: torch.tensor(adata.obs[key].cat.codes.to_numpy(), dtype=torch.long)  # noqa: E731
    return sp.csr_matrix(adata.X), codes("batch"), codes("cell_type")


def vae_loss(module: SCARKIDSModule, x, batch, nonzero) -> torch.Tensor:
    inf = module.inference(x, batch)
    gen = module.decoder.parameters_of(inf["z"], batch)
    reconstruction = -softmax_count_log_prob_sum(
        x, gen["logits"], inf["log_library"], gen["log_theta"], gen["dropout_logits"], nonzero
    )
    mean, std = inf["qz_mean"], inf["qz_std"]
    kl = 0.5 * (mean**2 + std**2 - 1).sum(-1) - std.log().sum(-1)
    return (reconstruction + kl).mean()


def saved_mib(loss_of, module) -> float:
    """MiB of the distinct tensors autograd saves for the backward of ``loss_of()``, the
    module's parameters left out (they live anyway)."""
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    seen: dict[tuple, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[(storage.data_ptr(), storage.nbytes())] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss_of()
    return sum(seen.values()) / 2**20


def time_step(variant: str, X, batch, labels, batch_size: int) -> tuple[float, float]:
    """(seconds per step, MiB saved for the backward) of ``variant`` (``vae``, or
    ``supervised`` / ``unsupervised`` with an optional ``:prior``)."""
    variant, _, prior = variant.partition(":")
    torch.manual_seed(0)
    module = SCARKIDSModule(
        X.shape[1], int(batch.max()) + 1, int(labels.max()) + 1, prior=prior or "diffusion"
    )
    module.train()
    store = DeviceMatrix(X, torch.device("cpu"))
    if variant == "vae":
        params = [*module.encoder.parameters(), *module.decoder.parameters()]
    else:
        params = list(module.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-6, fused=True)
    perm = torch.randperm(X.shape[0])
    span = X.shape[0] - batch_size

    def loss_at(i: int) -> torch.Tensor:
        start = (i * batch_size) % span
        idx = perm[start : start + batch_size]
        x, nonzero = store.rows_and_nonzeros(idx)
        if variant == "vae":
            return vae_loss(module, x, batch[idx], nonzero)
        mode = "labelled" if variant == "supervised" else "unlabelled"
        lab = labels[idx] if mode == "labelled" else torch.full_like(labels[idx], -1)
        return module.loss(x, batch[idx], lab, label_mode=mode, nonzero=nonzero).loss

    def step(i: int) -> None:
        loss = loss_at(i)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        optimizer.step()

    for i in range(20):
        step(i)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for i in range(60):
            step(i)
        best = min(best, (time.perf_counter() - t) / 60)
    return best, saved_mib(lambda: loss_at(0), module)


def write_table() -> Path:
    """step_breakdown.md from every recorded process: per cells, threads, batch size,
    machine and commit, each loss's median over its processes."""
    rows = harness.read_runs(RUNS)
    lines = [
        "# Where a CPU training step goes (`python benchmarks/step_breakdown.py`)",
        "",
        '"vae": scARKIDS\'s encoder, decoder and fused ZINB likelihood with a standard-normal '
        'prior (the work scVI does per step); "supervised" / "unsupervised": the whole '
        "scARKIDS loss (with the prior named after the comma). One optimizer step on the "
        "speed benchmark's simulated counts (2000 genes); each value the median over the "
        "recorded processes (runs) of the fastest of 5 rounds of 60 steps in each.",
    ]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        key = (r["cells"], r["threads"], r["main_batch_size"], r.get("machine"))
        key += (harness.code_label(r),)
        groups.setdefault(key, []).append(r)
    for (cells, threads, batch, _, commit), runs in groups.items():
        lines += ["", f"## {cells:,} cells, {threads} threads, batch {batch}, code {commit}", ""]
        head = ["loss", f"ms/step at batch {batch}", "cells/s", "ms/step at batch 8"]
        head += [f"MiB saved for backward at batch {batch}", "runs"]
        body = []
        for variant in dict.fromkeys(r["variant"] for r in runs):
            main = [r for r in runs if r["variant"] == variant and r["batch_size"] == batch]
            small = [r for r in runs if r["variant"] == variant and r["batch_size"] == 8]
            ms = [harness.median(r["s_per_step"] for r in x) * 1e3 for x in (main, small)]
            body.append([
                variant.replace(":", ", "), f"{ms[0]:.2f}",
                f"{harness.median(r['cells_per_s'] for r in main):,.0f}", f"{ms[1]:.2f}",
                harness.fmt(harness.median(r.get("mib_saved") for r in main), 1).replace("—", "-"),
                str(len(main)),
            ])  # fmt: skip
        lines += harness.md_table(head, body)
        lines += ["", *harness.runs_section(runs)]
    return harness.write_table(TABLE, lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--cells", type=int, default=10_000)
    p.add_argument("--repeats", type=int, default=3, help="fresh processes per row, each recorded")
    p.add_argument("--priors", help="e.g. diffusion,gaussian,mixture: the losses per prior")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    harness.table_option(p)
    args = p.parse_args()
    if args.table:
        print(write_table().read_text())
        return
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    if args.worker:
        X, batch, labels = counts(args.cells)
        print(*time_step(args.worker, X, batch, labels, args.batch_size))
        return

    variants = ["vae", "supervised", "unsupervised"]
    if args.priors:
        variants = ["vae"] + [
            f"{mode}:{prior}" for prior in args.priors.split(",") for mode in variants[1:]
        ]
    prov = harness.provenance(args.threads)
    for variant in variants:
        for batch_size in (args.batch_size, 8):
            cmd = [sys.executable, __file__, "--worker", variant, "--batch_size", str(batch_size)]
            cmd += ["--threads", str(args.threads), "--cells", str(args.cells)]
            for repeat in range(args.repeats):
                run = subprocess.run(cmd, capture_output=True, text=True, check=True)
                seconds, mib = (float(v) for v in run.stdout.split()[-2:])
                row = dict(variant=variant, batch_size=batch_size, cells=args.cells,
                           threads=args.threads, main_batch_size=args.batch_size,
                           repeat=repeat, s_per_step=seconds, cells_per_s=batch_size / seconds,
                           mib_saved=mib, **prov)  # fmt: skip
                harness.record_run(RUNS, row, KEY)
                print(variant, batch_size, f"{seconds * 1e3:.2f} ms/step", flush=True)
    print(write_table().read_text())


if __name__ == "__main__":
    main()
