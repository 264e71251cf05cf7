"""Training and inference speed of scARKIDS against scVI, measured side by side.

    python benchmarks/speed.py [--sizes 10000,100000] [--epochs 2] [--device cpu|cuda]
    python benchmarks/speed.py --sizes 1000000 --epochs 1 --methods scarkids-unsup   # 1M, RSS
    python benchmarks/speed.py --device cuda --sizes 1000000 --epochs 1 --scvi_max_steps 2000 \
        --methods scvi,scvi@1024,scarkids-unsup,scarkids-unsup@16384/3,scarkids-sup@16384/3
    python benchmarks/speed.py --table        # only rebuild benchmarks/results/speed.md

All methods see the same counts (2000 genes), 90% of cells for training (the other 10%
validated after every epoch, by scVI as by scARKIDS), 128 hidden units, 10 latent
dimensions, no early stopping; batch size and epochs are ``--batch_size`` and ``--epochs``
unless a method names its own: ``METHOD[+bf16][@BATCH][/EPOCHS]`` (``+bf16``: scARKIDS with
mixed precision; ``auto`` as BATCH or EPOCHS, scARKIDS only: ``train()``'s own default, so
``scarkids-unsup@auto/auto`` is one ``train()`` with every default).

Training is timed the same way for both peers, over whole epochs: train cells/s = training
cells x epochs / the time from the first epoch's start to the last epoch's end (scVI: a
Lightning callback; scARKIDS: the start of each epoch of its training loop and its
``on_epoch_end``; the device synchronised at each mark), so that the set-up inside
``train()`` (scVI's trainer and data splitter, scARKIDS's device store and k-means
initialisation) and the loading of the data are left out for both; the whole ``train()``
call is reported beside it. "Steady epoch" is the median time between the ends of epochs
after the first. One exception: ``--scvi_max_steps N`` stops scVI after N optimizer steps
(for the 1M-cell GPU run at batch 128, where one scVI epoch takes minutes of a lent GPU);
its cells/s then count those steps' cells, from the first epoch's start to the stop.

On a CPU each (method, size) runs in its own process, so that peak RSS is that run's alone;
on a GPU one process per peer (scVI, scARKIDS) reads the data once and trains its methods
one after the other (peak GPU memory is then reported per method). The simulated counts are
written to /tmp once per size (drawn on the GPU with ``--device cuda``). Inference
(embedding, corrected expression, 100 refinement steps, and the same refinement with the
strided sampler's 25 reverse steps) is timed for the first method of each process.

Every process's result for a method is a row of ``benchmarks/results/speed/runs.jsonl``
(``--repeats`` processes: one row each; a rerun at the same commit replaces its rows), and
``benchmarks/results/speed.md`` is rebuilt from all rows: per device, size, machine, timing
and commit, the median over the recorded runs of each method, and its ratio to the median of
the first scVI method (``--table`` only rebuilds it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import harness
import numpy as np

RUNS = harness.runs_file("speed")
TABLE = harness.RESULTS / "speed.md"
KEY = ("device", "n_cells", "method", "batch_size", "epochs", "max_steps", "commit", "repeat")
#: how a row's train cells/s was timed: over whole epochs (set-up excluded), or (rows
#: recorded before that) over the whole train() call, the fastest of the run's processes
TIMING = {
    "epochs": "train cells/s over whole epochs, from the first epoch's start to the last "
    "epoch's end (set-up inside `train()` and data loading excluded for every method; both "
    "peers validate after every epoch); whole call: over the whole `train()` call; medians "
    "over the recorded runs (processes)",
    "call": "train cells/s over the whole `train()` call (set-up included; scVI without "
    "validation, scARKIDS validating every epoch); recorded before speed.py timed whole "
    "epochs, as the fastest of the run's processes (the others were not recorded)",
}


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


STRIDED_STEPS = 25  # the strided refinement's reverse steps (of 100)
SIMULATION = dict(n_batches=4, n_cell_types=8, library_size=1500.0)


def data_file(n_cells: int, n_genes: int, seed: int) -> Path:
    """The simulated counts for a size, written once (chunk by chunk) and then reused."""
    from scarkids.data.simulate import write_simulated_h5ad

    path = Path(f"/tmp/scarkids_speed_{n_cells}x{n_genes}_s{seed}.h5ad")
    if not path.exists():
        import anndata as ad

        if hasattr(ad.settings, "allow_write_nullable_strings"):  # pandas 3 string columns
            ad.settings.allow_write_nullable_strings = True
        tmp = path.with_suffix(".partial.h5ad")
        write_simulated_h5ad(tmp, n_cells, n_genes, seed=seed, **SIMULATION)
        tmp.rename(path)
    return path


def parse_method(spec: str, batch_size: int, epochs: int) -> tuple[str, int | None, int | None]:
    """``METHOD[+OPTION][@BATCH][/EPOCHS]`` -> (method, batch size, epochs); ``auto`` for
    either is ``None``: scARKIDS's own default (``default_batch_size``, ``default_max_epochs``)."""
    spec, _, e = spec.partition("/")
    name, _, b = spec.partition("@")

    def value(text: str, default: int) -> int | None:
        return None if text == "auto" else int(text) if text else default

    if name.startswith("scvi") and "auto" in (b, e):
        raise SystemExit(f"{spec}: 'auto' is scARKIDS's own default; give scVI a number")
    return name, value(b, batch_size), value(e, epochs)


def worker(specs: list[str], n_cells: int, args) -> list[dict]:
    # Libraries a method loads lazily are loaded untimed, as scVI's are by `import scvi`:
    # torch._dynamo (which `import scvi` loads) for both, scikit-learn (~1 s) for scARKIDS's
    # k-means initialisation.
    import anndata as ad
    import sklearn.cluster  # noqa: F401
    import torch
    import torch._dynamo  # noqa: F401

    device = args.device
    torch.set_num_threads(args.threads)
    t = time.perf_counter()
    if device == "cpu":
        adata = ad.read_h5ad(data_file(n_cells, 2000, seed=0))  # in memory
    else:  # drawn on the GPU, the same counts in every process (seeded torch generator)
        from scarkids.data.simulate import simulate

        adata = simulate(n_cells, 2000, chunk_size=100_000, device=device, **SIMULATION)
    data_s = time.perf_counter() - t
    n_train = int(round(0.9 * n_cells))
    rows = []
    for i, spec in enumerate(specs):
        method, batch_size, epochs = parse_method(spec, args.batch_size, args.epochs)
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        inference = i == 0 and args.inference == "first"
        out = run_method(method, adata, batch_size, epochs, device, inference=inference, args=args)
        if batch_size is None or epochs is None:  # every default of train(): as it chose them
            from scarkids.train import default_batch_size, default_max_epochs

            if batch_size is None:
                batch_size = default_batch_size(n_cells, torch.device(device).type)
            epochs = default_max_epochs(n_cells) if epochs is None else epochs
        cells = n_train * epochs
        if "steps" in out:  # scVI stopped at --scvi_max_steps
            cells = min(cells, out["steps"] * batch_size)
        out.update(method=spec, n_cells=n_cells, epochs=epochs, batch_size=batch_size)
        out["data_s"] = data_s  # reading (CPU) or drawing (GPU) the counts, untimed
        out["train_cells_per_s"] = cells / out["epochs_s"]
        out["call_cells_per_s"] = cells / out["train_s"]
        if "epoch_s" in out:
            out["epoch_cells_per_s"] = n_train / out["epoch_s"]
        for key in ("embed", "expression"):
            if f"{key}_s" in out:
                out[f"{key}_cells_per_s"] = n_cells / out[f"{key}_s"]
        out["peak_rss_gib"] = peak_rss_gib()
        if device == "cuda":
            out["gpu_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        print(json.dumps(out), flush=True)
        rows.append(out)
    return rows


class EpochClock:
    """The start and end times of each training epoch (the device synchronised first), and
    what they give: set-up before the first epoch, the epochs' span, the steady epoch."""

    def __init__(self, device: str):
        self.sync = torch_sync(device)
        self.starts: list[float] = []
        self.ends: list[float] = []
        self.stopped: float | None = None  # the end of training (Lightning's on_train_end)

    def start(self) -> None:
        self.sync()
        self.starts.append(time.perf_counter())

    def end(self) -> None:
        self.sync()
        self.ends.append(time.perf_counter())

    def timings(self, called: float, returned: float, last_end: float | None = None) -> dict:
        """``train_s`` (the whole call), ``setup_s``, ``epochs_s`` (first epoch's start to
        ``last_end``, by default the last epoch's end) and, after two epochs or more,
        ``epoch_s`` (the median time between the ends of epochs after the first)."""
        last = self.ends[-1] if last_end is None else last_end
        out = {"train_s": returned - called, "setup_s": self.starts[0] - called}
        out["epochs_s"] = last - self.starts[0]
        if len(self.ends) >= 2:  # an epoch after the first (set-up, k-means): steady state
            out["epoch_s"] = float(np.median(np.diff(self.ends)))
        return out


def scvi_clock(clock: EpochClock):
    """A Lightning callback feeding ``clock``: epoch starts, epoch ends (after validation),
    and the end of training (after the last epoch's own end-of-epoch work)."""
    from lightning.pytorch.callbacks import Callback

    class Clock(Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            clock.start()

        def on_train_epoch_end(self, trainer, pl_module):
            clock.end()

        def on_train_end(self, trainer, pl_module):
            clock.sync()
            clock.stopped = time.perf_counter()

    return Clock()


@contextmanager
def scarkids_clock(clock: EpochClock):
    """Marks the start of each epoch of scARKIDS's training loop on ``clock`` (the ends come
    from ``train(on_epoch_end=...)``), for the duration of the block."""
    from scarkids.train import loop

    original = loop._Run.epoch

    def epoch(self):
        clock.start()
        return original(self)

    loop._Run.epoch = epoch
    try:
        yield
    finally:
        loop._Run.epoch = original


def run_scvi(adata, batch_size, epochs, device, *, inference, args) -> dict:
    import scvi

    out: dict = {}
    scvi.settings.seed = 0
    scvi.settings.dl_num_workers = 0
    scvi.model.SCVI.setup_anndata(adata, batch_key="batch")
    model = scvi.model.SCVI(adata, n_hidden=128, n_latent=10, n_layers=1)
    extra = {}
    if args.scvi_max_steps:  # the exception: capped optimizer steps (see the docstring)
        extra["max_steps"] = args.scvi_max_steps
        per_epoch = math.ceil(0.9 * adata.n_obs / batch_size)
        out["steps"] = min(args.scvi_max_steps, per_epoch * epochs)
    clock = EpochClock(device)
    t = time.perf_counter()
    model.train(
        max_epochs=epochs,
        batch_size=batch_size,
        train_size=0.9,
        early_stopping=False,
        check_val_every_n_epoch=1,  # validated every epoch, as scARKIDS is
        accelerator="gpu" if device == "cuda" else "cpu",
        devices=1,
        enable_progress_bar=False,
        callbacks=[scvi_clock(clock)],
        **extra,
    )
    out.update(clock.timings(t, time.perf_counter(), last_end=clock.stopped))
    if inference:
        t = time.perf_counter()
        model.get_latent_representation(batch_size=4096)
        out["embed_s"] = time.perf_counter() - t
        t = time.perf_counter()
        model.get_normalized_expression(
            transform_batch=sorted(adata.obs["batch"].astype(str).unique())[0],
            library_size=1e4,
            batch_size=4096,
            return_numpy=True,
        )
        out["expression_s"] = time.perf_counter() - t
    return out


def run_method(method, adata, batch_size, epochs, device, *, inference, args) -> dict:
    if method == "scvi":
        return run_scvi(adata, batch_size, epochs, device, inference=inference, args=args)
    from scarkids import SCARKIDS

    # scarkids-unsup is scVI's peer (no labels); scarkids-sup also trains the classifier;
    # a "+bf16" suffix trains with mixed_precision (bfloat16 genes-wide layers)
    base_method, _, option = method.partition("+")
    labels_key = "cell_type" if base_method == "scarkids-sup" else None
    SCARKIDS.setup_anndata(adata, batch_key="batch", labels_key=labels_key)
    model = SCARKIDS(adata, n_latent=10, seed=0)
    clock = EpochClock(device)  # an epoch's metrics are read on the host: the GPU is done
    t = time.perf_counter()
    with scarkids_clock(clock):
        model.train(
            epochs,
            batch_size=batch_size,
            validation_fraction=0.1,
            early_stopping=False,
            device=device,
            progress_bar=False,
            mixed_precision=option == "bf16",
            on_epoch_end=lambda *_: clock.end(),
        )
    clock.sync()
    out = clock.timings(t, time.perf_counter())
    out["final_train_loss"] = model.history["train_loss"][-1]
    if not inference:
        return out
    t = time.perf_counter()
    z = model.get_latent_representation(batch_size=4096)
    out["embed_s"] = time.perf_counter() - t
    t = time.perf_counter()  # the whole call, encoding included, as scVI's
    model.get_normalized_expression(transform_batch=0, return_numpy=True)
    out["expression_s"] = time.perf_counter() - t
    n_ref = min(adata.n_obs, 100_000)
    t = time.perf_counter()
    model.refine_latent(latent=z[:n_ref], n_steps=100)  # the latent is computed above
    out["refine_cells_per_s"] = n_ref / (time.perf_counter() - t)
    t = time.perf_counter()  # the strided sampler: noised to step 100, 25 reverse steps
    model.refine_latent(latent=z[:n_ref], n_steps=100, n_sampling_steps=STRIDED_STEPS)
    out["refine_strided_cells_per_s"] = n_ref / (time.perf_counter() - t)
    return out


def torch_sync(device: str):
    import torch

    return torch.cuda.synchronize if device == "cuda" else lambda: None


def run_worker(specs: list[str], n_cells: int, args) -> list[dict]:
    """Run ``specs`` in one fresh process; a method that failed gets an error row."""
    cmd = [sys.executable, __file__, "--worker", ",".join(specs), "--sizes", str(n_cells)]
    for key in ("epochs", "batch_size", "device", "threads", "scvi_max_steps", "inference"):
        cmd += [f"--{key}", str(getattr(args, key))]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0:
        print("\n".join(proc.stderr.strip().splitlines()[-20:]), file=sys.stderr, flush=True)
        error = proc.stderr.strip().splitlines()[-1:]
        rows += [{"method": s, "n_cells": n_cells, "error": error} for s in specs[len(rows) :]]
    return rows


# ------------------------------------------------------------------------- tables
def _cells(values: list, digits: int = 0) -> str:
    """The median of the recorded values, with their range when there are several."""
    v = [x for x in values if x is not None]
    if not v:
        return "-"
    med = f"{harness.median(v):,.{digits}f}"
    return med if len(v) == 1 else f"{med} ({min(v):,.{digits}f}-{max(v):,.{digits}f})"


def _epochs(r: dict) -> str:
    per_epoch = math.ceil(0.9 * r["n_cells"] / r["batch_size"])
    if r.get("steps") and r["steps"] < per_epoch * r["epochs"]:
        return f"{r['steps']} steps"
    return str(r["epochs"])


def section(runs: list[dict], gpu: bool) -> list[str]:
    """One device, size, machine, timing and commit: a row per method, medians over runs."""
    cols = ["epoch_cells_per_s", "embed_cells_per_s", "expression_cells_per_s"]
    cols += ["refine_cells_per_s", "refine_strided_cells_per_s"]
    head = ["method", "batch", "epochs", "runs", "train cells/s", "ratio vs scVI"]
    head += ["whole call cells/s", "steady epoch cells/s", "embed cells/s"]
    head += ["corrected expr. cells/s", "refine (100 steps) cells/s"]
    head += [f"refine (100 -> {STRIDED_STEPS} strided) cells/s", "peak RSS GiB"]
    head += ["peak GPU GiB"] if gpu else []
    methods = list(dict.fromkeys(r["method"] for r in runs))
    ok = {m: [r for r in runs if r["method"] == m and "error" not in r] for m in methods}
    scvi = [m for m in methods if m.startswith("scvi") and ok[m]]
    base = harness.median(r["train_cells_per_s"] for r in ok[scvi[0]]) if scvi else None
    body = []
    for m in methods:
        got = ok[m]
        if not got:
            errors = {str(r["error"]) for r in runs if r["method"] == m}
            row = [m, "-", "-", "-", "-", "error: " + "; ".join(sorted(errors))]
            body.append(row + [""] * (len(head) - len(row)))
            continue
        speed = harness.median(r["train_cells_per_s"] for r in got)
        row = [m, str(got[0]["batch_size"]), _epochs(got[0]), str(len(got))]
        row += [_cells([r["train_cells_per_s"] for r in got])]
        row += [f"{speed / base:.2f}" if base else "-"]
        row += [_cells([r.get("call_cells_per_s") for r in got])]
        row += [_cells([r.get(c) for r in got]) for c in cols]
        row += [_cells([r.get("peak_rss_gib") for r in got], 2)]
        row += [_cells([r.get("gpu_peak_gib") for r in got], 2)] if gpu else []
        body.append(row)
    return harness.md_table(head, body)


def write_table() -> Path:
    rows = harness.read_runs(RUNS)
    lines = [
        "# Training and inference speed against scVI (`python benchmarks/speed.py`)",
        "",
        "Simulated counts, 2000 genes, 90% of cells training; cells/s are medians over the "
        "recorded runs (processes) of a method, with their range; the ratio is the median "
        "train cells/s over the median of the first scVI method of the same section. "
        "Sections: device, size, machine, timing and commit (ratios only within one).",
    ]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        key = (r["device"], r["n_cells"], r.get("machine"), r["timing"], harness.code_label(r))
        groups.setdefault(key, []).append(r)
    for (device, n, _, timing, commit), runs in sorted(
        groups.items(), key=lambda kv: (kv[0][0], kv[0][1], min(r.get("date") or "" for r in kv[1]))
    ):
        lines += ["", f"## {device}, {n:,} cells, code {commit}", "", f"Timing: {TIMING[timing]}."]
        lines += ["", *section(runs, gpu=device == "cuda"), "", *harness.runs_section(runs)]
    return harness.write_table(TABLE, lines)


# --------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sizes", default="10000,100000")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--repeats", type=int, default=1, help="fresh processes per method, each recorded"
    )
    p.add_argument("--methods", default="scvi,scarkids-unsup,scarkids-sup")
    p.add_argument(
        "--scvi_max_steps", type=int, default=0, help="0: whole epochs (the exception: see above)"
    )
    p.add_argument("--inference", choices=["first", "none"], default="first")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    harness.table_option(p)
    return p.parse_args(argv)


def record(rows: list[dict], repeat: int, args, prov: dict) -> None:
    """Record one process's rows (a failed method's too, with its error)."""
    for row in rows:
        name, batch_size, epochs = parse_method(row["method"], args.batch_size, args.epochs)
        row.setdefault("batch_size", batch_size)
        row.setdefault("epochs", epochs)
        row.update(device=args.device, repeat=repeat, timing="epochs")
        row["max_steps"] = args.scvi_max_steps if name == "scvi" else 0
        harness.record_run(RUNS, {**row, **prov}, KEY)


def main(argv=None) -> None:
    args = parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.worker:
        worker(args.worker.split(","), sizes[0], args)
        return
    if args.table:
        print(write_table().read_text())
        return
    specs = args.methods.split(",")
    if args.device == "cpu":  # one process per method: peak RSS is its own
        groups = [[s] for s in specs]
    else:  # one process per peer reads the data once
        groups = [
            g for g in ([s for s in specs if s.startswith(p)] for p in ("scvi", "scark")) if g
        ]
    prov = harness.provenance(args.threads, args.device)
    prov["commit"] = os.environ.get("SCARKIDS_CODE") or prov["commit"]  # a copy without git
    for n in sizes:
        if args.device == "cpu":
            data_file(n, 2000, seed=0)  # written before any timed run
        for group in groups:
            for repeat in range(args.repeats):  # every process recorded; tables take medians
                record(run_worker(group, n, args), repeat, args, prov)
    print(write_table().read_text())


if __name__ == "__main__":
    main()
