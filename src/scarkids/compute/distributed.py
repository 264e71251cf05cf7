"""Multi-process training with PyTorch distributed (torchrun / DistributedDataParallel).

A run started by ``torchrun --nproc_per_node N -m scarkids train ...`` (or ``scarkids train
--devices N``, which calls torchrun's launcher) has ``WORLD_SIZE``, ``RANK`` and
``LOCAL_RANK`` in its environment. :func:`setup` then joins the process group (NCCL on GPUs,
gloo on CPUs); every rank holds the data, all ranks draw the same seeded permutation each
epoch and each rank trains on its share of every minibatch, so the all-reduced gradient is
the gradient of the whole (effective) minibatch. Metrics are summed across ranks before they
are read, so every rank takes the same early-stopping and checkpoint decisions; only rank 0
writes files and logs.
"""

from __future__ import annotations

import logging
import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def is_main_process() -> bool:
    """True on rank 0, and in every run that is not distributed."""
    if is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def launched_by_torchrun() -> bool:
    """torchrun sets these for every process it starts (also for a single one)."""
    return "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def setup(device: str = "auto") -> str:
    """Join the process group when launched by torchrun; returns the device to train on.

    ``device`` "auto"/"cuda" on a GPU machine maps to this rank's GPU (``LOCAL_RANK``).
    Without torchrun's environment this does nothing and returns ``device``.
    """
    if not launched_by_torchrun():
        return device
    use_cuda = device in ("auto", "cuda") and torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
        if dist.get_rank() == 0:
            logging.getLogger("scarkids.run").info(
                "Distributed training (DDP): %d process(es), backend %s",
                dist.get_world_size(),
                backend,
            )
    return f"cuda:{local_rank}" if use_cuda else "cpu"


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (no-op outside a distributed run)."""
    if world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def launch(n_processes: int, argv: list[str]) -> int:
    """Run ``python -m scarkids <argv>`` in ``n_processes`` processes via torchrun's launcher
    (single node; for several nodes call ``torchrun`` itself, see the README)."""
    from torch.distributed.run import get_args_parser, run

    args = get_args_parser().parse_args(
        ["--standalone", f"--nproc_per_node={n_processes}", "-m", "scarkids", *argv]
    )
    try:
        run(args)
    except Exception as e:  # torchrun reports a failed child as ChildFailedError
        print(f"error: distributed run failed: {e}", file=sys.stderr)
        return 1
    return 0
