"""The training settings and their defaults, in plain Python (no torch: the config schema
and the command line's ``--help`` read them without loading torch)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


def default_learning_rate(batch_size: int) -> float:
    """AdamW learning rate when none is given: 1e-3 at batch 128, scaled by
    ``sqrt(batch_size / 128)``: larger GPU batches take fewer, less noisy steps, and a fixed
    1e-3 loses integration quality there (measured by ``benchmarks/batch_size_quality.py``;
    docs/benchmarks/speed.md, "Batch size and quality")."""
    return 1e-3 * math.sqrt(batch_size / 128)


#: the automatic batch size on a GPU: the largest of 128, 256, ... up to this
MAX_AUTO_BATCH = 4096
#: ... that still leaves this many optimisation steps per epoch
MIN_STEPS_PER_EPOCH = 200


def default_batch_size(n_cells: int, device_type: str = "cpu") -> int:
    """Cells per optimisation step when none is given.

    128 on CPUs (where a step's cost grows with its cells, so larger batches gain little).
    On GPUs, where a small step leaves the card idle, the largest of 128, 256, ..., 4096
    that still gives at least 200 steps per epoch over the (90% training) cells: 128 up to
    ~57k cells, 512 at 200k, 4096 from ~0.91M. Above 128, with the default epoch budget
    (at least 20 epochs), that is at least 4,000 steps in all (at 128: about 3,500 for
    small data), and :func:`default_learning_rate` scales the rate with it
    (quality against batch 128: ``benchmarks/batch_size_quality.py --simulate``).

    Parameters
    ----------
    n_cells
        Cells of the training AnnData (validation cells included).
    device_type
        ``"cpu"``, ``"cuda"`` or another torch device type (treated as an accelerator).

    Returns
    -------
    int
        The batch size.
    """
    if device_type == "cpu":
        return 128
    batch = 128
    while batch * 2 <= MAX_AUTO_BATCH and 0.9 * n_cells / (batch * 2) >= MIN_STEPS_PER_EPOCH:
        batch *= 2
    return batch


#: learning-rate schedules after the warm-up (``None``: constant)
LR_SCHEDULERS = ("cosine", "step")
#: what a later session that brings new batches trains (see :meth:`scarkids.SCARKIDS.train`)
FREEZE_MODES = ("new_batches", "decoder_batch", "none")

#: cell passes of the automatic epoch budget (:func:`default_max_epochs`)
CELL_PASSES = 5e5
#: the fewest and the most epochs of the automatic budget
AUTO_EPOCHS = (20, 400)


def default_max_epochs(n_cells: int) -> int:
    """Epochs when none are given: about 5e5 cell-passes (~4k steps of 128), 20 to 400."""
    low, high = AUTO_EPOCHS
    return int(min(max(round(CELL_PASSES / max(n_cells, 1)), low), high))


#: how a reason tells the user to choose the epochs, in the words of the Python API
#: (``max_epochs=``) or of the config file (``training.n_epochs``)
_CHOOSE_EPOCHS = {
    "api": "{low} to {high}; pass max_epochs to choose",
    "config": "{low} to {high} epochs; set training.n_epochs to choose",
}


@dataclass(frozen=True)
class TrainingBudget:
    """The epochs, batch size and learning rate of a training run, and why the automatic ones
    were chosen (see :func:`training_budget`).

    Parameters
    ----------
    max_epochs
        Epochs to train.
    batch_size
        Cells per optimisation step.
    learning_rate
        AdamW learning rate.
    reasons
        For each value chosen automatically (``"max_epochs"``, ``"batch_size"``), the words
        the log prints in parentheses after it; a value that was given has none.
    """

    max_epochs: int
    batch_size: int
    learning_rate: float
    reasons: dict[str, str] = field(default_factory=dict)


def training_budget(
    max_epochs: int | None,
    batch_size: int | None,
    learning_rate: float | None,
    n_cells: int,
    device_type: str,
    *,
    wording: str = "api",
) -> TrainingBudget:
    """The one place that fills in the epochs, batch size and learning rate of a run, for
    :meth:`scarkids.SCARKIDS.train` and the ``train`` command alike.

    ``None`` means automatic: :func:`default_max_epochs` of ``n_cells``,
    :func:`default_batch_size` for the device, and :func:`default_learning_rate` of the batch
    size (the learning rate gets no reason: the log prints it with every run).

    Parameters
    ----------
    max_epochs
        Epochs, or ``None``.
    batch_size
        Cells per step, or ``None``.
    learning_rate
        Learning rate, or ``None``.
    n_cells
        Cells of the training AnnData (validation cells included).
    device_type
        ``"cpu"``, ``"cuda"`` or another torch device type.
    wording
        How the reasons name the settings: ``"api"`` (``max_epochs``) or ``"config"``
        (``training.n_epochs``).

    Returns
    -------
    TrainingBudget
        The values and the reasons of the automatic ones, for example for the epochs
        ``"automatic: about 5e+05 cell passes for 13,000 cells, 20 to 400 epochs; set
        training.n_epochs to choose"``.
    """
    choose = _CHOOSE_EPOCHS[wording]
    reasons = {}
    if max_epochs is None:
        max_epochs = default_max_epochs(n_cells)
        low, high = AUTO_EPOCHS
        reasons["max_epochs"] = (
            f"automatic: about {CELL_PASSES:.0e} cell passes for {n_cells:,} cells, "
            + choose.format(low=low, high=high)
        )
    if batch_size is None:
        batch_size = default_batch_size(n_cells, device_type)
        reasons["batch_size"] = f"automatic, {device_type}"
    batch_size = int(batch_size)
    if learning_rate is None:
        learning_rate = default_learning_rate(batch_size)
    return TrainingBudget(max_epochs, batch_size, learning_rate, reasons)


@dataclass
class TrainingSettings:
    """The training loop's knobs and their defaults: the one source of the training
    defaults, read by :meth:`scarkids.SCARKIDS.train`, the config schema
    (``training.*``) and so the command line.

    Parameters
    ----------
    max_epochs
        Epochs to train (counting those of a resumed run).
    batch_size
        Cells per optimisation step (in a distributed run, shared by the processes);
        ``None``: :func:`default_batch_size` (128 on CPUs, larger on GPUs).
    learning_rate
        AdamW learning rate, before warm-up and schedule (see :func:`default_learning_rate`
        for the batch-scaled default of :meth:`scarkids.SCARKIDS.train`).
    weight_decay
        AdamW (decoupled) weight decay; not applied to parameters with gradient masks (the
        frozen rows of a later session's per-batch parameters).
    grad_clip_norm
        Largest norm of the gradient of all trained parameters; ``None``: no clipping.
    mixed_precision
        The genes-wide layers in bfloat16 while training (see
        :func:`scarkids.nn.wide_linear`).
    kl_warmup_epochs
        Epochs over which the weight of the KL term rises linearly to 1
        (``(epoch + 1) / kl_warmup_epochs``); 0: full weight from the start.
    lr_warmup_epochs
        Epochs over which the learning rate rises linearly to ``learning_rate``; 0: none.
    lr_scheduler
        Learning rate after the warm-up: ``"cosine"`` (decays towards 1% of the rate by the
        last epoch), ``"step"`` (times 0.1 after each third of the remaining epochs) or
        ``None`` (constant; :meth:`scarkids.SCARKIDS.train` refuses any other value).
    classification_weight
        Weight of the classification loss ``-log q(c_obs | z0)`` of labelled cells.
    early_stopping
        Stop when the validation loss (the training loss without validation cells) has not
        improved for ``early_stopping_patience`` epochs, and end with the best epoch's
        weights. Off by default: integration, as ``benchmarks/integration.py`` scores it,
        keeps improving after the validation ELBO has turned, so the last epoch's weights
        are kept.
    early_stopping_patience
        Epochs without improvement before stopping; training stops only once the KL warm-up
        (and, unsupervised, the cluster pre-training) is over.
    nan_retries
        When an epoch's loss is not finite, training restarts from the best epoch's weights
        with half the learning rate, at most this many times; then it raises
        :class:`~scarkids.errors.TrainingError`.
    cluster_init_epoch
        Unsupervised only: after this many epochs the latent means are clustered with
        k-means and, for ``cluster_pretrain_epochs`` epochs, those clusters act as labels, so
        that ``q(c | z0)`` and ``p(z0 | c)`` agree on a partition before c is treated as
        latent again (otherwise ``q(c | z0)`` tends to stay uniform). ``"auto"``: once the
        latent has had about 600 optimisation steps, at least 3 epochs and at most a quarter
        of ``max_epochs``. ``None`` disables it.
    cluster_pretrain_epochs
        Epochs for which each clustering acts as the labels.
    cluster_refresh
        Unsupervised only: cluster the latent again at this fraction of ``max_epochs`` (the
        latent is organised by then; see ``scarkids.train.loop._epoch_labels``), provided
        the first clustering's pre-training is over by then; ``None``: never.
    cluster_hold
        Keep the refreshed clusters as the labels until the end of training.
    learn_cluster_prior
        Unsupervised only, once the clusters are initialised: re-estimate the mixing
        proportion pi every epoch from the clusters' mass (an EM step); a cluster holding
        less than ``min_cluster_fraction`` of the cells is switched off, so ``n_labels`` is
        a maximum and surplus clusters stay empty.
    min_cluster_fraction
        Share of the cells below which a cluster is switched off (see
        ``learn_cluster_prior``).
    components_per_community
        Unsupervised only: each clustering uses at most this many clusters per Leiden
        community of the latent's neighbour graph (``SCARKIDS(cluster_factor=...)`` sets it
        to its factor, so that every cluster the latent supports gets its components).
    seed
        Seed of the clusterings and, in a distributed run, of the shared shuffling and each
        process's noise; :meth:`scarkids.SCARKIDS.train` also seeds torch and the validation
        split with it, and it is the default seed of the initial weights
        (``SCARKIDS(seed=...)``) and of ``training.seed``.
    validation_fraction
        Share of the cells held out for validation when no separate validation cells are
        given (``SCARKIDS.train(validation_fraction=...)``, ``data.val_fraction``).
    freeze
        What a later session that brings new batches trains (one of :data:`FREEZE_MODES`;
        see :meth:`scarkids.SCARKIDS.train`).
    chunk_cells
        Cells read from disk at a time when the training counts are backed (on disk).
    progress_bar
        Show a progress bar of the epochs (on rank 0 only).
    name
        Name shown in the progress bar, log lines and error messages.
    """

    max_epochs: int = 100
    batch_size: int | None = None
    learning_rate: float = 1e-3
    weight_decay: float = 1e-6
    grad_clip_norm: float | None = 10.0
    #: the genes-wide layers in bfloat16 while training (see scarkids.nn.wide_linear)
    mixed_precision: bool = False
    kl_warmup_epochs: int = 0
    lr_warmup_epochs: int = 0
    lr_scheduler: str | None = None
    classification_weight: float = 50.0
    #: off by default: integration keeps improving after the validation ELBO has turned
    early_stopping: bool = False
    early_stopping_patience: int = 20
    nan_retries: int = 2
    #: unsupervised only: after this many epochs the latent means are clustered with
    #: k-means and, for ``cluster_pretrain_epochs`` epochs, those clusters act as labels, so
    #: that q(c|z0) and p(z0|c) agree on a partition before c is treated as latent again
    #: (otherwise q(c|z0) tends to stay uniform). ``None`` disables it.
    cluster_init_epoch: int | None | str = "auto"
    cluster_pretrain_epochs: int = 10
    #: unsupervised only: cluster the latent again at this fraction of the epochs (the
    #: latent is organised by then; see scarkids.train.loop._epoch_labels); ``None``: never
    cluster_refresh: float | None = 0.5
    #: keep the refreshed clusters as the labels until the end of training
    cluster_hold: bool = False
    #: unsupervised only, once the clusters are initialised: re-estimate the mixing
    #: proportion pi every epoch from the clusters' mass (an EM step); a cluster holding
    #: less than ``min_cluster_fraction`` of the cells is switched off, so ``n_labels`` is
    #: a maximum and surplus clusters stay empty
    learn_cluster_prior: bool = True
    min_cluster_fraction: float = 1e-3
    #: unsupervised only: each clustering uses at most this many clusters per Leiden
    #: community of the latent (the model's ``cluster_factor``: components per cluster)
    components_per_community: int = 1
    seed: int = 0
    validation_fraction: float = 0.1
    freeze: str = "new_batches"
    chunk_cells: int = 8192
    progress_bar: bool = True
    #: name shown in the progress bar and log lines
    name: str = "scARKIDS"
