"""The training loop: AdamW, KL warm-up, early stopping, best-epoch restore, resumable state.

Data stay on the device; each epoch shuffles an index tensor there and gathers minibatches
from it. Metrics are summed into device tensors and read once per epoch, so the inner step
never synchronises with the host (except the CSR row gather, which needs one size).
"""

from __future__ import annotations

import copy
import ctypes
import functools
import logging
import math
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from . import distributed
from .distributed import all_reduce_sum
from .errors import TrainingError
from .module import SCARKIDSModule
from .training_state import (  # noqa: F401 (re-exported: scarkids.training.TrainingState)
    EpochCallback,
    TrainingData,
    TrainingSettings,
    TrainingState,
    get_rng_state,
    set_rng_state,
)

logger = logging.getLogger(__name__)

METRICS = ("loss", "reconstruction", "vae_kl", "diffusion_kl", "classification", "elbo", "accuracy")


def _batches(n: int, batch_size: int, min_size: int = 2) -> list[tuple[int, int]]:
    """Minibatch bounds; a trailing batch under ``min_size`` cells is dropped (BatchNorm
    needs two; in a distributed run every rank needs at least two)."""
    bounds = [(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < min_size:
        bounds.pop()
    return bounds


class _LossRunner(torch.nn.Module):
    """Puts ``module.loss`` behind ``forward``, where DistributedDataParallel hooks in."""

    def __init__(self, module: SCARKIDSModule):
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module.loss(*args, **kwargs)


class _Accumulator:
    """Sums per-cell terms on the device; :meth:`read` syncs once."""

    def __init__(self, device: torch.device):
        self.sums = torch.zeros(8, device=device, dtype=torch.float64)

    def add(self, out, total_loss: torch.Tensor) -> None:
        self.sums += torch.stack(
            [
                total_loss.detach().double(),
                out.reconstruction.detach().sum().double(),
                out.vae_kl.detach().sum().double(),
                out.diffusion_kl.detach().sum().double(),
                out.classification.detach().sum().double(),
                out.n_labelled.double(),
                out.n_correct.double(),
                torch.tensor(
                    float(out.reconstruction.shape[0]), device=self.sums.device, dtype=torch.float64
                ),
            ]
        )

    def read(self, classification_weight: float) -> dict[str, float]:
        """Per-cell means over everything added (on every rank, in a distributed run)."""
        loss_sum, rec, kl, dkl, clf, n_lab, n_cor, n = all_reduce_sum(self.sums).tolist()
        n = max(n, 1.0)
        out = {
            "reconstruction": rec / n,
            "vae_kl": kl / n,
            "diffusion_kl": dkl / n,
            "classification": clf / max(n_lab, 1.0),
            "elbo": -(rec + kl) / n,
            "accuracy": n_cor / n_lab if n_lab > 0 else float("nan"),
        }
        out["loss"] = (rec + kl + classification_weight * clf) / n
        out["_finite"] = math.isfinite(loss_sum)
        return out


@torch.no_grad()
def evaluate_loss(
    module: SCARKIDSModule,
    data: TrainingData,
    index: torch.Tensor,
    settings: TrainingSettings,
    *,
    seed: int = 0,
    chunk: int | None = None,
) -> dict[str, float]:
    """Validation terms with a fixed noise draw (the same every epoch, so epochs compare).

    Cells are scored in chunks of ``chunk`` (default: the training batch size, at least
    1024): the likelihood keeps ~15 (chunk x genes) temporaries, fewer than a training step
    of the same size, and on a GPU small chunks would leave it waiting on kernel launches.
    """
    chunk = chunk or max(1024, settings.batch_size)
    was_training = module.training
    module.eval()
    gen = torch.Generator(device=index.device).manual_seed(seed + distributed.rank())
    acc = _Accumulator(index.device)
    index = index.tensor_split(distributed.world_size())[distributed.rank()]
    for start, end in _batches(index.shape[0], chunk):
        idx = index[start:end]
        x, nonzero = data.X.rows_and_nonzeros(idx)
        out = module.loss(
            x,
            data.batch[idx],
            data.labels[idx],
            label_mode=data.label_mode,
            classification_weight=settings.classification_weight,
            generator=gen,
            nonzero=nonzero,
        )
        acc.add(out, out.loss * idx.shape[0])
    module.train(was_training)
    return acc.read(settings.classification_weight)


@torch.no_grad()
def cluster_latent(
    module: SCARKIDSModule,
    data: TrainingData,
    n_clusters: int,
    seed: int,
    chunk: int = 4096,
    fit_cells: int = 100_000,
) -> torch.Tensor:
    """k-means labels (n_cells,) of every cell's latent mean; -1 never occurs."""
    from sklearn.cluster import KMeans

    was_training = module.training
    module.eval()
    n = data.batch.shape[0]
    z = torch.empty(n, module.n_latent, device=data.batch.device)
    for s, e in releasing_memory(_batches(n, chunk)):
        z[s:e] = module.inference(data.X.row_block(s, e), data.batch[s:e], sample=False)["z"]
    module.train(was_training)
    z = z.cpu().numpy()
    # fewer cells than clusters: the surplus clusters simply start empty. Above
    # `fit_cells` the centres are fitted on a random subset (at 1M cells on 2 cores: 0.2 s
    # instead of 2.1 s) and every cell is then assigned to its nearest centre.
    fit = z
    if n > fit_cells:
        fit = z[np.random.default_rng(seed).choice(n, fit_cells, replace=False)]
    km = KMeans(n_clusters=min(n_clusters, n), n_init=4, random_state=seed).fit(fit)
    assigned = km.labels_ if fit is z else km.predict(z)
    return torch.as_tensor(assigned, dtype=torch.long, device=data.batch.device)


def _lr_factor(settings: TrainingSettings, epoch: int) -> float:
    if settings.lr_warmup_epochs and epoch < settings.lr_warmup_epochs:
        return (epoch + 1) / settings.lr_warmup_epochs
    e = epoch - settings.lr_warmup_epochs
    span = max(settings.max_epochs - settings.lr_warmup_epochs, 1)
    if settings.lr_scheduler == "cosine":
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(e / span, 1.0)))
    if settings.lr_scheduler == "step":
        return 0.1 ** (e // max(span // 3, 1))
    return 1.0


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc
    except (AttributeError, OSError):
        return None


def release_freed_memory() -> None:
    """Hand memory freed by the last phase back to the OS (glibc's ``malloc_trim``; a no-op
    elsewhere). Without it glibc keeps the large freed blocks of an epoch (minibatch and
    validation temporaries) and a million-cell run's peak RSS grows by ~0.5-1 GiB."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def releasing_memory(chunks: Iterable, every: int = 16) -> Iterator:
    """``chunks``, handing freed memory back to the OS after every ``every`` of them: in a
    chunked pass the chunk temporaries interleave with the kept outputs on the heap, and
    without this 1M cells' embedding grew RSS by ~2.5 GiB."""
    for i, chunk in enumerate(chunks):
        yield chunk
        if i % every == every - 1:
            release_freed_memory()


def _fused_ok(params: list[torch.nn.Parameter]) -> bool:
    return all(p.dtype == torch.float32 and p.device.type in ("cpu", "cuda") for p in params)


def train_module(
    module: SCARKIDSModule,
    data: TrainingData,
    settings: TrainingSettings,
    *,
    state: TrainingState | None = None,
    trainable: list[torch.nn.Parameter] | None = None,
    grad_masks: dict[torch.nn.Parameter, torch.Tensor] | None = None,
    on_epoch_end: EpochCallback | None = None,
) -> TrainingState:
    """Train ``module`` in place and return the final :class:`TrainingState`.

    ``state`` resumes a run (optimizer moments, RNG, history, early-stopping counters).
    ``trainable`` restricts the optimised parameters; ``grad_masks`` zeroes the gradient of
    parameter entries (scArches-style: only new batch rows learn). ``on_epoch_end(state,
    metrics, is_best)`` is called after every epoch (checkpointing, logging; on rank 0 only
    in a distributed run, see :mod:`scarkids.distributed`).
    The module ends with the weights of the best validation epoch.
    """
    device = data.train_index.device
    matmul_precision = torch.get_float32_matmul_precision()
    if device.type == "cuda":  # TF32 tensor cores for the remaining float32 products
        torch.set_float32_matmul_precision("high")
    module.set_mixed_precision(settings.mixed_precision)
    try:
        return _train(module, data, settings, state, trainable, grad_masks, on_epoch_end)
    finally:
        module.set_mixed_precision(False)
        torch.set_float32_matmul_precision(matmul_precision)


def _train(module, data, settings, state, trainable, grad_masks, on_epoch_end) -> TrainingState:
    state = state or TrainingState()
    # Subnormal floats (from zero-initialised layers and Adam moments) slow CPU kernels
    # by more than an order of magnitude; flushing them changes no result that matters.
    torch.set_flush_denormal(True)
    params = (
        trainable if trainable is not None else [p for p in module.parameters() if p.requires_grad]
    )
    masked = {id(p) for p in (grad_masks or {})}
    # decoupled weight decay would shrink the frozen rows of a masked parameter: none there
    groups = [
        {"params": [p for p in params if id(p) not in masked]},
        {"params": [p for p in params if id(p) in masked], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]

    def make_optimizer(lr: float) -> torch.optim.AdamW:
        # the fused kernel: one pass over all parameters instead of one op per tensor
        return torch.optim.AdamW(
            groups, lr=lr, weight_decay=settings.weight_decay, fused=_fused_ok(params)
        )

    optimizer = make_optimizer(settings.learning_rate)
    if state.optimizer_state is not None:
        optimizer.load_state_dict(state.optimizer_state)
    if state.rng_state is not None:
        set_rng_state(state.rng_state)
    has_val = data.val_index.numel() > 0
    n_train = data.train_index.shape[0]
    world, rank = distributed.world_size(), distributed.rank()
    bounds = _batches(n_train, settings.batch_size, min_size=max(2, 2 * world))
    retries = settings.nan_retries
    runner: torch.nn.Module = _LossRunner(module)
    if distributed.is_initialized():  # torchrun, also with one process (--devices 1)
        device = data.train_index.device
        runner = torch.nn.parallel.DistributedDataParallel(
            runner, device_ids=[device.index] if device.type == "cuda" else None
        )
        if state.epoch == 0:  # each rank its own noise stream (the weights are rank 0's)
            torch.manual_seed(settings.seed * 1009 + rank)

    bar = tqdm(
        total=settings.max_epochs,
        initial=state.epoch,
        desc=settings.name,
        unit="epoch",
        disable=not settings.progress_bar or rank != 0,
        dynamic_ncols=True,
    )
    module.train()
    while state.epoch < settings.max_epochs and not state.stopped_early:
        epoch = state.epoch
        for group in optimizer.param_groups:
            group["lr"] = settings.learning_rate * state.lr_scale * _lr_factor(settings, epoch)
        kl_weight = (
            min(1.0, (epoch + 1) / settings.kl_warmup_epochs) if settings.kl_warmup_epochs else 1.0
        )
        labels, label_mode = data.labels, data.label_mode
        init = settings.cluster_init_epoch
        if init == "auto":  # once the latent has had ~600 steps to organise
            init = int(min(max(math.ceil(600 / len(bounds)), 3), settings.max_epochs // 4))
        if data.label_mode == "unlabelled" and init is not None:
            if epoch == init and state.pseudo_labels is None:
                state.pseudo_labels = cluster_latent(module, data, module.n_labels, settings.seed)
                state.cluster_init_epoch = epoch
            if state.pseudo_labels is not None and epoch < init + settings.cluster_pretrain_epochs:
                labels, label_mode = state.pseudo_labels.to(labels.device), "labelled"
        shuffle = None
        if world > 1:  # the same permutation on every rank; each takes a share of a batch
            shuffle = torch.Generator().manual_seed(settings.seed * 100_003 + epoch)
        perm = data.X.shuffle(data.train_index, shuffle)
        acc = _Accumulator(perm.device)
        for start, end in bounds:
            idx = perm[start:end]
            if world > 1:
                idx = idx.tensor_split(world)[rank]
            x, nonzero = data.X.rows_and_nonzeros(idx)
            out = runner(
                x,
                data.batch[idx],
                labels[idx],
                label_mode=label_mode,
                kl_weight=kl_weight,
                classification_weight=settings.classification_weight,
                nonzero=nonzero,
            )
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            if grad_masks:
                for p, mask in grad_masks.items():
                    if p.grad is not None:
                        p.grad.mul_(mask)
            if settings.grad_clip_norm:
                torch.nn.utils.clip_grad_norm_(params, settings.grad_clip_norm)
            optimizer.step()
            acc.add(out, out.loss * idx.shape[0])
        data.X.end_epoch()
        train_metrics = acc.read(settings.classification_weight)
        metrics = {f"train_{k}": v for k, v in train_metrics.items() if not k.startswith("_")}
        finite = train_metrics["_finite"]
        if has_val:
            val = evaluate_loss(module, data, data.val_index, settings)
            finite = finite and val["_finite"]
            metrics.update({f"val_{k}": v for k, v in val.items() if not k.startswith("_")})
        release_freed_memory()
        if not finite:
            if retries <= 0 or state.best_state is None:
                bar.close()
                raise TrainingError(
                    f"{settings.name}: the loss became NaN/inf at epoch {epoch + 1}; lower "
                    "training.learning_rate or check the input counts"
                )
            retries -= 1
            state.lr_scale *= 0.5
            logger.warning(
                "%s: non-finite loss at epoch %d; restarting from the best epoch with lr x%.3g",
                settings.name,
                epoch + 1,
                state.lr_scale,
            )
            module.load_state_dict(state.best_state)
            optimizer = make_optimizer(settings.learning_rate * state.lr_scale)
            continue
        metrics["learning_rate"] = optimizer.param_groups[0]["lr"]
        metrics["kl_weight"] = kl_weight
        monitored = metrics["val_loss"] if has_val else metrics["train_loss"]
        for k, v in metrics.items():
            state.history.setdefault(k, []).append(v)
        state.epoch = epoch + 1
        # With early stopping the selected model is the best validation epoch; without it,
        # the last one: integration keeps improving after the validation ELBO has turned
        # (on panc8, 400 epochs: scIB total 0.844 vs 0.706 for the best-ELBO epoch).
        is_best = monitored < state.best_loss or not settings.early_stopping
        if is_best:
            state.best_loss, state.best_epoch, state.epochs_since_best = monitored, epoch, 0
            state.best_state = copy.deepcopy(module.state_dict())
        else:
            state.epochs_since_best += 1
        past_warmup = state.epoch >= settings.kl_warmup_epochs
        if data.label_mode == "unlabelled" and settings.cluster_init_epoch is not None:
            past_warmup = (
                past_warmup
                and state.cluster_init_epoch is not None
                and (state.epoch >= state.cluster_init_epoch + settings.cluster_pretrain_epochs)
            )
        if (
            settings.early_stopping
            and past_warmup
            and state.epochs_since_best >= settings.early_stopping_patience
        ):
            state.stopped_early = True
        state.optimizer_state = optimizer.state_dict()
        state.rng_state = get_rng_state()
        bar.update(1)
        bar.set_postfix(
            loss=f"{metrics['train_loss']:.1f}",
            **({"val": f"{metrics['val_loss']:.1f}"} if has_val else {}),
        )
        if on_epoch_end is not None and rank == 0:  # files and logs: rank 0 only
            on_epoch_end(state, metrics, is_best)
    bar.close()
    if settings.early_stopping and state.best_state is not None:
        module.load_state_dict(state.best_state)
    module.eval()
    return state
