"""Where a CPU training step goes: the plain VAE part against the whole scARKIDS step.

    python benchmarks/step_breakdown.py [--threads 2] [--batch_size 128] [--cells 10000]
    python benchmarks/step_breakdown.py --priors diffusion,gaussian,mixture

Times one optimizer step (minibatch gather, loss, backward, clipping, fused AdamW) of
three losses on the speed benchmark's simulated counts (2000 genes; the file written by
speed.py, or simulated here): "vae" is scARKIDS's encoder, decoder and fused ZINB
likelihood with a standard-normal prior (what scVI computes per step); "supervised" and
"unsupervised" are the real scARKIDS loss (diffusion prior bound, DDPM loss, classifier;
unlabelled cells scored against every label). Each (variant, batch size) runs in fresh
processes (timings in one long process drift with heap state on this VM); the table shows
the fastest of ``--repeats`` processes, each the fastest of 5 rounds of 60 steps, at the
given batch size and at batch 8 (the cost that does not scale with the batch:
weight-sized products, Adam, clipping, per-op dispatch). With ``--priors``, the two real
losses run once per prior (``SCARKIDSModule(prior=...)``), and a column gives the memory a
step's forward pass keeps for its backward (the tensors autograd saves, at the given batch
size, MiB): what each prior costs per step. Writes
benchmarks/results/step_breakdown_cpu_priors.md.
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--cells", type=int, default=10_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--priors", help="e.g. diffusion,gaussian,mixture: the losses per prior")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    if args.worker:
        X, batch, labels = counts(args.cells)
        print(*time_step(args.worker, X, batch, labels, args.batch_size))
        return

    def best(variant: str, batch_size: int) -> tuple[float, float]:
        cmd = [sys.executable, __file__, "--worker", variant, "--batch_size", str(batch_size)]
        cmd += ["--threads", str(args.threads), "--cells", str(args.cells)]
        runs = [subprocess.run(cmd, capture_output=True, text=True, check=True)
                for _ in range(args.repeats)]  # fmt: skip
        out = [tuple(float(v) for v in r.stdout.split()[-2:]) for r in runs]
        return min(o[0] for o in out), out[0][1]

    variants = ["vae", "supervised", "unsupervised"]
    if args.priors:
        variants = ["vae"] + [
            f"{mode}:{prior}" for prior in args.priors.split(",") for mode in variants[1:]
        ]
    lines = [
        f"| loss | ms/step at batch {args.batch_size} | cells/s | ms/step at batch 8 "
        f"| MiB saved for backward at batch {args.batch_size} |",
        "|---|---|---|---|---|",
    ]
    for variant in variants:
        (full, mib), (small, _) = best(variant, args.batch_size), best(variant, 8)
        lines.append(
            f"| {variant.replace(':', ', ')} | {full * 1e3:.2f} | {args.batch_size / full:,.0f} "
            f"| {small * 1e3:.2f} | {mib:.1f} |"
        )
        print(lines[-1], flush=True)
    command = " ".join(["python benchmarks/step_breakdown.py", *sys.argv[1:]])
    lines += [
        "",
        f"Command: `{command}`; {args.threads} threads, {args.cells:,} cells x 2000 genes "
        f"(speed.py's data), fastest of {args.repeats} processes",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.priors:  # the table without priors is kept, with its notes, by hand
        out = Path(__file__).resolve().parent / "results" / "step_breakdown_cpu_priors.md"
        out.write_text(text)


if __name__ == "__main__":
    main()
