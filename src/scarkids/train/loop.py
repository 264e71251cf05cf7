"""The training loop: AdamW, KL warm-up, early stopping, best-epoch restore, resumable state.

Data stay on the device; each epoch shuffles an index tensor there and gathers minibatches
from it. Metrics are summed into device tensors and read once per epoch, so the inner step
never synchronises with the host (except the CSR row gather, which needs one size).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math

import torch
from tqdm.auto import tqdm

from scarkids.compute import distributed
from scarkids.compute.distributed import all_reduce_sum
from scarkids.compute.memory import release_freed_memory, releasing_memory
from scarkids.errors import TrainingError
from scarkids.labels.clustering import align_labels, initial_clusters
from scarkids.module.vae import SCARKIDSModule
from scarkids.train.state import (
    EpochCallback,
    TrainingData,
    TrainingSettings,
    TrainingState,
    default_batch_size,
    get_rng_state,
    set_rng_state,
)

logger = logging.getLogger(__name__)

METRICS = (
    "loss",
    "reconstruction",
    "vae_kl",
    "diffusion_kl",
    "classification",
    "ddpm_loss",
    "elbo",
    "accuracy",
)


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
        self.sums = torch.zeros(9, device=device, dtype=torch.float64)
        self.label_mass: torch.Tensor | None = None

    def add(self, out, total_loss: torch.Tensor) -> None:
        mass = out.label_mass.detach().double()
        self.label_mass = mass if self.label_mass is None else self.label_mass + mass
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
                out.prior_simple.detach().sum().double(),
            ]
        )

    def read_label_mass(self) -> torch.Tensor | None:
        """``(C,)`` summed label weights (every rank's, in a distributed run)."""
        return None if self.label_mass is None else all_reduce_sum(self.label_mass)

    def read(self, classification_weight: float) -> dict[str, float]:
        """Per-cell means over everything added (on every rank, in a distributed run)."""
        loss_sum, rec, kl, dkl, clf, n_lab, n_cor, n, ddpm = all_reduce_sum(self.sums).tolist()
        n = max(n, 1.0)
        out = {
            "reconstruction": rec / n,
            "vae_kl": kl / n,
            "diffusion_kl": dkl / n,
            "classification": clf / max(n_lab, 1.0),
            "elbo": -(rec + kl) / n,
            "accuracy": n_cor / n_lab if n_lab > 0 else float("nan"),
        }
        # the loss optimised: reconstruction + kl_weight * VAE KL + classification_weight *
        # classifier loss, plus the noise net's DDPM loss ("split" prior training)
        out["loss"] = loss_sum / n
        out["ddpm_loss"] = ddpm / n
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
def latent_means(module: SCARKIDSModule, data: TrainingData, chunk: int = 4096) -> torch.Tensor:
    """``(n_cells, n_latent)`` latent means of every cell of ``data``, encoded ``chunk``
    cells at a time in evaluation mode (the module's mode is given back)."""
    was_training = module.training
    module.eval()
    n = data.batch.shape[0]
    z = torch.empty(n, module.n_latent, device=data.batch.device)
    for s in releasing_memory(range(0, n, chunk)):
        e = min(s + chunk, n)
        z[s:e] = module.inference(data.X.row_block(s, e), data.batch[s:e], sample=False)["z"]
    module.train(was_training)
    return z


@torch.no_grad()
def cluster_latent(
    module: SCARKIDSModule,
    data: TrainingData,
    n_clusters: int,
    seed: int,
    chunk: int = 4096,
    fit_cells: int = 20_000,
    align: bool = False,
    per_community: int = 1,
) -> torch.Tensor:
    """Initial cluster labels (n_cells,) of every cell's latent mean, at most ``n_clusters``
    distinct ones (:func:`scarkids.labels.clustering.initial_clusters`, at most
    ``per_community`` per Leiden community); -1 never occurs.
    With ``align`` the clusters are renumbered to match the classifier's current labels
    (:func:`scarkids.labels.clustering.align_labels`)."""
    was_training = module.training
    module.eval()
    z = latent_means(module, data, chunk)
    labels = initial_clusters(
        z.cpu().numpy(), n_clusters, seed, fit_cells=fit_cells, per_community=per_community
    )
    if align:  # keep each cluster's index where the classifier already puts its cells
        before = module.label_log_probs(z).argmax(-1).cpu().numpy()
        labels = align_labels(labels, before, module.n_labels)
    module.train(was_training)
    return torch.as_tensor(labels, dtype=torch.long, device=data.batch.device)


def _epoch_labels(module, data, settings, state, epoch: int, steps_per_epoch: int):
    """The labels (and their mode) an epoch trains on.

    Unsupervised runs (no labelled cell) cluster the latent means twice: at
    ``cluster_init_epoch`` (default: once the latent has had ~600 steps to organise, at most
    a quarter of the epochs in) and again at ``cluster_refresh`` of the epochs, from the
    organised latent. For ``cluster_pretrain_epochs`` after each clustering those clusters
    act as labels, so that q(c|z0) and p(z0|c) agree on a partition; c is latent otherwise
    (with ``cluster_hold``, the refreshed clusters stay the labels to the end).
    """
    if data.label_mode != "unlabelled" or settings.cluster_init_epoch is None:
        return data.labels, data.label_mode
    init = settings.cluster_init_epoch
    if init == "auto":
        init = int(min(max(math.ceil(600 / steps_per_epoch), 3), settings.max_epochs // 4))

    def cluster(seed: int) -> torch.Tensor:
        # aligned to the classifier: a trained model's clusters keep their indices
        return cluster_latent(
            module,
            data,
            module.n_labels,
            seed,
            align=True,
            per_community=settings.components_per_community,
        )

    if epoch == init and state.pseudo_labels is None:
        state.pseudo_labels = cluster(settings.seed)
        state.cluster_init_epoch = epoch
    refresh = None
    if settings.cluster_refresh is not None:
        refresh = int(settings.cluster_refresh * settings.max_epochs)
    if (
        refresh is not None
        and epoch == refresh
        and state.cluster_init_epoch is not None
        and refresh >= state.cluster_init_epoch + settings.cluster_pretrain_epochs
        and state.cluster_refresh_epoch is None
    ):
        state.pseudo_labels = cluster(settings.seed + 1)
        state.cluster_refresh_epoch = epoch
    if state.pseudo_labels is None:
        return data.labels, data.label_mode
    last = state.cluster_refresh_epoch
    held = last is not None and settings.cluster_hold
    last = state.cluster_init_epoch if last is None else last
    if held or epoch < last + settings.cluster_pretrain_epochs:
        return state.pseudo_labels.to(data.labels.device), "labelled"
    return data.labels, data.label_mode


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
    in a distributed run, see :mod:`scarkids.compute.distributed`).
    The module ends with the weights of the best validation epoch.
    """
    device = data.train_index.device
    if settings.batch_size is None:  # automatic: resolved for this device and these cells
        n_cells = int(data.train_index.numel() + data.val_index.numel())
        settings = dataclasses.replace(
            settings, batch_size=default_batch_size(n_cells, device.type)
        )
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
    """The epochs of :func:`train_module`: run an epoch, validate, select, stop."""
    state = state or TrainingState()
    # Subnormal floats (from zero-initialised layers and Adam moments) slow CPU kernels
    # by more than an order of magnitude; flushing them changes no result that matters.
    torch.set_flush_denormal(True)
    run = _Run(module, data, settings, state, trainable, grad_masks)
    bar = tqdm(
        total=settings.max_epochs,
        initial=state.epoch,
        desc=settings.name,
        unit="epoch",
        disable=not settings.progress_bar or run.rank != 0,
        dynamic_ncols=True,
    )
    module.train()
    retries = settings.nan_retries
    while state.epoch < settings.max_epochs and not state.stopped_early:
        metrics = run.epoch()
        if not metrics.pop("_finite"):
            if retries <= 0 or state.best_state is None:
                bar.close()
                raise TrainingError(
                    f"{settings.name}: the loss became NaN/inf at epoch {state.epoch + 1}; "
                    "lower learning_rate= of SCARKIDS.train or check the input counts"
                )
            retries -= 1
            run.restart_from_best()
            continue
        is_best = _select(module, state, settings, metrics)
        state.stopped_early = _stops_early(state, settings, data)
        state.optimizer_state = run.optimizer.state_dict()
        state.rng_state = get_rng_state()
        bar.update(1)
        bar.set_postfix(
            loss=f"{metrics['train_loss']:.1f}",
            **({"val": f"{metrics['val_loss']:.1f}"} if "val_loss" in metrics else {}),
        )
        if on_epoch_end is not None and run.rank == 0:  # files and logs: rank 0 only
            on_epoch_end(state, metrics, is_best)
    bar.close()
    if settings.early_stopping and state.best_state is not None:
        module.load_state_dict(state.best_state)
    module.eval()
    return state


class _Run:
    """One training run's optimiser, loss runner (DDP-wrapped under torchrun) and batches."""

    def __init__(self, module, data, settings, state, trainable, grad_masks):
        self.module, self.data, self.settings, self.state = module, data, settings, state
        self.grad_masks = grad_masks
        self.params = (
            trainable
            if trainable is not None
            else [p for p in module.parameters() if p.requires_grad]
        )
        masked = {id(p) for p in (grad_masks or {})}
        # decoupled weight decay would shrink the frozen rows of a masked parameter: none there
        groups = [
            {"params": [p for p in self.params if id(p) not in masked]},
            {"params": [p for p in self.params if id(p) in masked], "weight_decay": 0.0},
        ]
        self.groups = [g for g in groups if g["params"]]
        self.optimizer = self.make_optimizer(settings.learning_rate * state.lr_scale)
        if state.optimizer_state is not None:
            self.optimizer.load_state_dict(state.optimizer_state)
        if state.rng_state is not None:
            set_rng_state(state.rng_state)
        self.world, self.rank = distributed.world_size(), distributed.rank()
        n_train = data.train_index.shape[0]
        self.bounds = _batches(n_train, settings.batch_size, min_size=max(2, 2 * self.world))
        self.runner: torch.nn.Module = _LossRunner(module)
        if distributed.is_initialized():  # torchrun, also with one process (--devices 1)
            device = data.train_index.device
            self.runner = torch.nn.parallel.DistributedDataParallel(
                self.runner, device_ids=[device.index] if device.type == "cuda" else None
            )
            if state.epoch == 0:  # each rank its own noise stream (the weights are rank 0's)
                torch.manual_seed(settings.seed * 1009 + self.rank)

    def make_optimizer(self, lr: float) -> torch.optim.AdamW:
        # the fused kernel: one pass over all parameters instead of one op per tensor
        return torch.optim.AdamW(
            self.groups,
            lr=lr,
            weight_decay=self.settings.weight_decay,
            fused=_fused_ok(self.params),
        )

    def epoch(self) -> dict[str, float]:
        """Train one epoch and validate: the epoch's metrics (``_finite``: all finite)."""
        settings, state, data = self.settings, self.state, self.data
        epoch = state.epoch
        for group in self.optimizer.param_groups:
            group["lr"] = settings.learning_rate * state.lr_scale * _lr_factor(settings, epoch)
        kl_weight = (
            min(1.0, (epoch + 1) / settings.kl_warmup_epochs) if settings.kl_warmup_epochs else 1.0
        )
        labels, label_mode = _epoch_labels(
            self.module, data, settings, state, epoch, len(self.bounds)
        )
        acc = self.steps(labels, label_mode, kl_weight)
        data.X.end_epoch()
        train_metrics = acc.read(settings.classification_weight)
        if settings.learn_cluster_prior and state.pseudo_labels is not None:
            # unsupervised: pi follows the clusters' mass, surplus clusters switch off
            self.module.set_label_prior(acc.read_label_mass(), settings.min_cluster_fraction)
        metrics = {f"train_{k}": v for k, v in train_metrics.items() if not k.startswith("_")}
        finite = train_metrics["_finite"]
        if data.val_index.numel() > 0:
            val = evaluate_loss(self.module, data, data.val_index, settings)
            finite = finite and val["_finite"]
            metrics.update({f"val_{k}": v for k, v in val.items() if not k.startswith("_")})
        release_freed_memory()
        metrics["learning_rate"] = self.optimizer.param_groups[0]["lr"]
        metrics["kl_weight"] = kl_weight
        metrics["_finite"] = finite
        return metrics

    def steps(self, labels: torch.Tensor, label_mode: str, kl_weight: float) -> _Accumulator:
        """One pass over the shuffled training cells; the summed terms, on the device."""
        settings, data, world = self.settings, self.data, self.world
        shuffle = None
        if world > 1:  # the same permutation on every rank; each takes a share of a batch
            shuffle = torch.Generator().manual_seed(settings.seed * 100_003 + self.state.epoch)
        perm = data.X.shuffle(data.train_index, shuffle)
        acc = _Accumulator(perm.device)
        for start, end in self.bounds:
            idx = perm[start:end]
            if world > 1:
                idx = idx.tensor_split(world)[self.rank]
            x, nonzero = data.X.rows_and_nonzeros(idx)
            out = self.runner(
                x,
                data.batch[idx],
                labels[idx],
                label_mode=label_mode,
                kl_weight=kl_weight,
                classification_weight=settings.classification_weight,
                nonzero=nonzero,
            )
            self.optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            if self.grad_masks:
                for p, mask in self.grad_masks.items():
                    if p.grad is not None:
                        p.grad.mul_(mask)
            if settings.grad_clip_norm:
                torch.nn.utils.clip_grad_norm_(self.params, settings.grad_clip_norm)
            self.optimizer.step()
            acc.add(out, out.loss * idx.shape[0])
        return acc

    def restart_from_best(self) -> None:
        """After a non-finite epoch: back to the best weights, half the learning rate."""
        state = self.state
        state.lr_scale *= 0.5
        logger.warning(
            "%s: non-finite loss at epoch %d; restarting from the best epoch with lr x%.3g",
            self.settings.name,
            state.epoch + 1,
            state.lr_scale,
        )
        self.module.load_state_dict(state.best_state)
        self.optimizer = self.make_optimizer(self.settings.learning_rate * state.lr_scale)


def _select(module, state: TrainingState, settings: TrainingSettings, metrics: dict) -> bool:
    """Record the epoch; keep its weights when it is the selected one (returned).

    With early stopping the selected model is the best validation epoch; without it, the
    last one: integration, as ``benchmarks/integration.py`` scores it, keeps improving after
    the validation ELBO has turned (docs/benchmarks/integration.md scores the last epoch)."""
    monitored = metrics["val_loss"] if "val_loss" in metrics else metrics["train_loss"]
    for k, v in metrics.items():
        state.history.setdefault(k, []).append(v)
    epoch = state.epoch
    state.epoch = epoch + 1
    is_best = monitored < state.best_loss or not settings.early_stopping
    if is_best:
        state.best_loss, state.best_epoch, state.epochs_since_best = monitored, epoch, 0
        state.best_state = copy.deepcopy(module.state_dict())
    else:
        state.epochs_since_best += 1
    return is_best


def _stops_early(state: TrainingState, settings: TrainingSettings, data) -> bool:
    """Early stopping: patience exhausted, once warm-up (and cluster pre-training) is over."""
    if not settings.early_stopping:
        return False
    past_warmup = state.epoch >= settings.kl_warmup_epochs
    if data.label_mode == "unlabelled" and settings.cluster_init_epoch is not None:
        past_warmup = (
            past_warmup
            and state.cluster_init_epoch is not None
            and (state.epoch >= state.cluster_init_epoch + settings.cluster_pretrain_epochs)
        )
    return past_warmup and state.epochs_since_best >= settings.early_stopping_patience
