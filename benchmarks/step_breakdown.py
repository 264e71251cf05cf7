"""Where a CPU training step goes: the plain VAE part against the whole scARKIDS step.

    python benchmarks/step_breakdown.py [--threads 2] [--batch_size 128] [--cells 10000]

Times one optimizer step (minibatch gather, loss, backward, clipping, fused AdamW) of
three losses on the speed benchmark's simulated counts (2000 genes; the file written by
speed.py, or simulated here): "vae" is scARKIDS's encoder, decoder and fused ZINB
likelihood with a standard-normal prior (what scVI computes per step); "supervised" and
"unsupervised" are the real scARKIDS loss (diffusion prior bound, DDPM loss, classifier;
unlabelled cells scored against every label). Each (variant, batch size) runs in fresh
processes (timings in one long process drift with heap state on this VM); the table shows
the fastest of ``--repeats`` processes, each the fastest of 5 rounds of 60 steps, at the
given batch size and at batch 8 (the cost that does not scale with the batch:
weight-sized products, Adam, clipping, per-op dispatch).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import scipy.sparse as sp
import torch

from scarkids.data.store import DeviceMatrix
from scarkids.distributions.counts import softmax_count_log_prob_sum
from scarkids.module.vae import SCARKIDSModule


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


def time_step(variant: str, X, batch, labels, batch_size: int) -> float:
    torch.manual_seed(0)
    module = SCARKIDSModule(X.shape[1], int(batch.max()) + 1, int(labels.max()) + 1)
    module.train()
    store = DeviceMatrix(X, torch.device("cpu"))
    if variant == "vae":
        params = [*module.encoder.parameters(), *module.decoder.parameters()]
    else:
        params = list(module.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-6, fused=True)
    perm = torch.randperm(X.shape[0])
    span = X.shape[0] - batch_size

    def step(i: int) -> None:
        start = (i * batch_size) % span
        idx = perm[start : start + batch_size]
        x, nonzero = store.rows_and_nonzeros(idx)
        if variant == "vae":
            loss = vae_loss(module, x, batch[idx], nonzero)
        else:
            mode = "labelled" if variant == "supervised" else "unlabelled"
            lab = labels[idx] if mode == "labelled" else torch.full_like(labels[idx], -1)
            loss = module.loss(x, batch[idx], lab, label_mode=mode, nonzero=nonzero).loss
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
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--cells", type=int, default=10_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    if args.worker:
        X, batch, labels = counts(args.cells)
        print(time_step(args.worker, X, batch, labels, args.batch_size))
        return

    def best(variant: str, batch_size: int) -> float:
        cmd = [sys.executable, __file__, "--worker", variant, "--batch_size", str(batch_size)]
        cmd += ["--threads", str(args.threads), "--cells", str(args.cells)]
        runs = [subprocess.run(cmd, capture_output=True, text=True, check=True)
                for _ in range(args.repeats)]  # fmt: skip
        return min(float(r.stdout.split()[-1]) for r in runs)

    print(f"| loss | ms/step at batch {args.batch_size} | cells/s | ms/step at batch 8 |")
    print("|---|---|---|---|")
    for variant in ("vae", "supervised", "unsupervised"):
        full, small = best(variant, args.batch_size), best(variant, 8)
        print(
            f"| {variant} | {full * 1e3:.2f} | {args.batch_size / full:,.0f} | {small * 1e3:.2f} |",
            flush=True,
        )
    print(f"\n{args.threads} threads, {args.cells:,} cells x 2000 genes (speed.py's data), "
          f"fastest of {args.repeats} processes")  # fmt: skip


if __name__ == "__main__":
    main()
