"""The user-facing model class: AnnData in, AnnData-friendly arrays out (scvi-tools style)."""

from __future__ import annotations

import logging
import operator
from collections.abc import Iterator
from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch

from scarkids._docs import doc_params
from scarkids.compute import distributed
from scarkids.compute.device import resolve_device
from scarkids.compute.memory import releasing_memory
from scarkids.constants import DEFAULT_N_LABELS
from scarkids.data.backed import BackedCounts, ChunkedStore
from scarkids.data.counts import select_columns
from scarkids.data.registry import (
    SETUP_KEY,
    Registry,
    align_genes,
    category_codes,
    get_counts,
    obs_column,
    sorted_categories,
)
from scarkids.data.store import DeviceMatrix
from scarkids.errors import InputDataError
from scarkids.labels import space
from scarkids.model.de import ModelDifferentialExpression
from scarkids.model.generation import ModelGeneration, library_fit
from scarkids.model.mapping import ReferenceMapping
from scarkids.model.outputs import ModelOutputs
from scarkids.model.persistence import ModelPersistence
from scarkids.model.report import ModelReport
from scarkids.model.uncertainty import ModelUncertainty
from scarkids.module.vae import SCARKIDSModule
from scarkids.train.loop import (
    EpochCallback,
    TrainingData,
    TrainingState,
    train_module,
)
from scarkids.train.settings import (
    FREEZE_MODES,
    LR_SCHEDULERS,
    TrainingBudget,
    TrainingSettings,
    training_budget,
)

logger = logging.getLogger(__name__)


def _row_sums(X, block: int = 65_536) -> np.ndarray:
    """Total counts per cell of a CSR matrix or backed counts (read in blocks)."""
    if isinstance(X, BackedCounts):
        n = X.shape[0]
        return np.concatenate(
            [np.asarray(X[s : min(s + block, n)].sum(1)).ravel() for s in range(0, n, block)]
        )
    return np.asarray(X.sum(1)).ravel()


def _say(message: str, progress_bar: bool) -> None:
    """A line for the user: logged, and printed above the progress bar when there is one."""
    logger.info(message)
    if progress_bar:
        from tqdm.auto import tqdm

        tqdm.write(message)


def _say_budget(budget: TrainingBudget, name: str, progress_bar: bool) -> None:
    """The epochs and the batch size that were chosen automatically, each with its reason."""
    if "max_epochs" in budget.reasons:
        _say(f"{name}: {budget.max_epochs} epochs ({budget.reasons['max_epochs']})", progress_bar)
    if "batch_size" in budget.reasons:
        _say(
            f"{name}: batch size {budget.batch_size} ({budget.reasons['batch_size']})",
            progress_bar,
        )


def _check_train_arguments(lr_scheduler, freeze, batch_size) -> None:
    """A clear error for a ``train()`` argument outside its choices (a typo such as
    ``lr_scheduler="cosin"`` would otherwise train at a constant rate without a word)."""
    for key, value, choices in (
        ("lr_scheduler", lr_scheduler, (None, *LR_SCHEDULERS)),
        ("freeze", freeze, FREEZE_MODES),
    ):
        if value not in choices:
            names = ", ".join(repr(c) for c in choices)
            raise InputDataError(f"{key} must be one of {names}; got {value!r}")
    if batch_size is None:
        return
    try:
        size = 0 if isinstance(batch_size, bool) else operator.index(batch_size)
    except TypeError:
        size = 0
    if size < 2:
        raise InputDataError(
            f"batch_size must be an integer of at least 2 (or None: automatic), got {batch_size!r}"
        )


#: the defaults of :meth:`SCARKIDS.train` (one source: :class:`TrainingSettings`)
_TRAIN = TrainingSettings()


@doc_params
class SCARKIDS(
    ModelOutputs,
    ModelUncertainty,
    ModelGeneration,
    ModelDifferentialExpression,
    ReferenceMapping,
    ModelPersistence,
    ModelReport,
):
    """scARKIDS: a VAE with a cell-type-conditioned latent diffusion prior.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata` (raw counts).
    n_latent
        Latent dimension d.
    n_labels
        Unsupervised (the data has no labels): the most clusters the model reports (the
        seed's "max number of cell types"); ignored otherwise.
    cluster_factor
        Unsupervised: mixture components fitted per reported cluster. The prior has
        ``cluster_factor * n_labels`` components; after training, those in use are merged
        into at most ``n_labels`` clusters, the pair the classifier confuses most first
        (:func:`scarkids.labels.clustering.merge_clusters`), and :meth:`predict` names those
        clusters. Fitting twice as many components as types and merging recovers the types
        better than fitting as many: a large type's halves take two components that the
        merge joins, instead of two small types sharing one (``benchmarks/clustering.py``;
        docs/benchmarks/clustering.md); 1: every component is a cluster.
    seed
        Seed of the initial weights (training has its own ``seed``).
    **module_kwargs
        Passed to :class:`scarkids.module.SCARKIDSModule` (hidden sizes, likelihood,
        diffusion schedule, ...).

    Examples
    --------
    >>> SCARKIDS.setup_anndata(adata, batch_key="batch", labels_key="cell_type")
    >>> model = SCARKIDS(adata)
    >>> model.train()
    >>> adata.obsm["X_scarkids"] = model.get_latent_representation()
    """

    def __init__(
        self,
        adata,
        *,
        n_latent: int = 10,
        n_labels: int = DEFAULT_N_LABELS,
        cluster_factor: int = 2,
        seed: int = _TRAIN.seed,
        **module_kwargs,
    ):
        setup = self._setup_of(adata)
        batches = sorted_categories(
            obs_column(adata, setup["batch_key"], source=None, what="batch")
        )
        if setup["labels_key"] is not None:
            labels = sorted_categories(
                obs_column(adata, setup["labels_key"], source=None, what="cell type"),
                exclude=setup["unlabeled_category"],
            )
            if not labels:
                raise InputDataError(
                    f"obs[{setup['labels_key']!r}] has no labelled cells; pass labels_key=None for "
                    "unsupervised training"
                )
            clusters, max_clusters = False, None
        else:
            space.check_cluster_numbers(n_labels, cluster_factor)
            labels = space.component_names(n_labels, cluster_factor)
            clusters, max_clusters = True, int(n_labels)
            if module_kwargs.get("label_prior_probs") is not None:
                # one probability per cluster: shared by its components
                module_kwargs["label_prior_probs"] = space.component_prior(
                    module_kwargs["label_prior_probs"], n_labels, cluster_factor
                )
        self.registry = Registry(
            batch_key=setup["batch_key"],
            labels_key=setup["labels_key"],
            layer=setup["layer"],
            unlabeled_category=setup["unlabeled_category"],
            gene_names=[str(g) for g in adata.var_names],
            batch_categories=batches,
            label_categories=labels,
            labels_are_clusters=clusters,
            max_clusters=max_clusters,
        )
        self.init_params = {"n_latent": n_latent, **module_kwargs}
        with torch.random.fork_rng(devices=[]):  # seeded weights, global RNG untouched
            torch.manual_seed(seed)
            self.module = SCARKIDSModule(
                adata.n_vars, len(batches), len(labels), n_latent=n_latent, **module_kwargs
            )
        self.adata = adata
        self.history: dict[str, list[float]] = {}
        self.training_state: TrainingState | None = None
        self.is_trained = False
        self.device = torch.device("cpu")
        self.extra: dict = {}
        #: per batch name: [mean, sd, n] of the log library sizes it was trained on
        self.library_sizes: dict[str, list[float]] = {}
        #: per cell type (or cluster), per batch name: [mean, sd, n] of the log library sizes
        self.library_sizes_by_type: dict[str, dict[str, list[float]]] = {}
        #: the classifier's temperature and the validation cells' novelty (sorted)
        self.calibration: dict = {}

    # ------------------------------------------------------------ AnnData setup
    @staticmethod
    def setup_anndata(
        adata,
        *,
        batch_key: str = "batch",
        labels_key: str | None = None,
        layer: str | None = None,
        unlabeled_category: str = "Unknown",
    ) -> None:
        """Record where counts, batches and (optional) cell-type labels are.

        Checks the columns exist and that the counts are raw counts; writes only
        ``adata.uns["_scarkids_setup"]``. ``labels_key=None`` means unsupervised; labels equal
        to ``unlabeled_category`` or NaN mark unlabelled cells (semi-supervised).

        Parameters
        ----------
        adata
            AnnData with raw (non-negative integer) counts, cells x genes. The counts of a
            backed AnnData (in ``X``) are checked as they are read, not here.
        batch_key
            ``adata.obs`` column of the batches; it may not have missing values.
        labels_key
            ``adata.obs`` column of the cell types; ``None``: no labels (unsupervised).
        layer
            ``adata.layers`` entry holding the counts; ``None`` uses ``adata.X``.
        unlabeled_category
            Label value that marks an unlabelled cell (as NaN does).

        Raises
        ------
        InputDataError
            When a column or the layer is missing, the batch column has NaN values, or the
            counts are empty, not finite, negative or not integers.
        """
        obs_column(adata, batch_key, source=None, what="batch")
        if obs_column(adata, batch_key, source=None, what="batch").isna().any():
            raise InputDataError(
                f"obs[{batch_key!r}] has missing (NaN) values; fill them or drop those cells"
            )
        if labels_key is not None:
            obs_column(adata, labels_key, source=None, what="cell type")
        get_counts(adata, layer)
        adata.uns[SETUP_KEY] = {
            "batch_key": batch_key,
            "labels_key": labels_key,
            "layer": layer,
            "unlabeled_category": unlabeled_category,
        }

    @staticmethod
    def _setup_of(adata) -> dict:
        setup = adata.uns.get(SETUP_KEY)
        if setup is None:
            raise InputDataError(
                "AnnData is not set up: call SCARKIDS.setup_anndata(adata, batch_key=...) first"
            )
        return dict(setup)

    # ------------------------------------------------------------- data access
    def _encode(
        self,
        adata,
        *,
        labels: Literal["use", "ignore"] = "use",
        new_categories: bool = False,
        source: str | None = None,
        counts: bool = True,
    ) -> tuple[sp.csr_matrix | None, np.ndarray, np.ndarray]:
        """Counts aligned to the model's genes, batch codes, label codes (-1 = unlabelled).

        With ``new_categories`` unseen batch and label names are added to the registry (the
        module is extended by the caller); otherwise unseen batches are an error.
        """
        setup = adata.uns.get(SETUP_KEY) or {
            "batch_key": self.registry.batch_key,
            "labels_key": self.registry.labels_key,
            "layer": self.registry.layer,
            "unlabeled_category": self.registry.unlabeled_category,
        }
        X = None  # counts=False: the caller needs the codes only
        if counts:
            X = get_counts(adata, setup["layer"], source=source)
            X = select_columns(X, align_genes(adata, self.registry.gene_names, source=source))
        batch_col = obs_column(adata, setup["batch_key"], source=source, what="batch")
        if new_categories:
            for name in sorted_categories(batch_col):
                if name not in self.registry.batch_categories:
                    self.registry.batch_categories.append(name)
        batch = category_codes(
            batch_col, self.registry.batch_categories, column=setup["batch_key"], source=source
        )
        codes = np.full(adata.n_obs, -1, dtype=np.int64)
        if labels == "use" and setup["labels_key"] is not None and setup["labels_key"] in adata.obs:
            col = adata.obs[setup["labels_key"]]
            if new_categories:
                for name in sorted_categories(col, exclude=setup["unlabeled_category"]):
                    if name not in self.registry.label_categories:
                        if self.registry.labels_are_clusters:
                            # a supervised session on an unsupervised model: names replace clusters
                            self._clusters_to_types()
                        self.registry.label_categories.append(name)
            codes = category_codes(
                col,
                self.registry.label_categories,
                column=setup["labels_key"],
                source=source,
                unknown="unlabelled",
                unlabeled_category=setup["unlabeled_category"],
            )
        return X, batch, codes

    def check_query(self, adata, *, source: str | None = None) -> None:
        """Check that ``adata`` can be embedded by this model: its batches are known and it
        has enough of the model's genes. Raises a one-line
        :class:`~scarkids.errors.InputDataError` naming ``source`` (a file) otherwise
        (:class:`~scarkids.errors.CheckpointError` when fewer than half of the model's genes
        are in ``adata.var_names``).

        Parameters
        ----------
        adata
            AnnData set up with :meth:`setup_anndata` (raw counts).
        source
            Where ``adata`` came from, for the error message (e.g. its file path).
        """
        self._encode(adata, labels="ignore", source=source)

    def _chunks(
        self, adata, batch_size: int, **kw
    ) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor]]:
        """``(cell slice, dense counts or None when counts=False, batch codes)`` chunks."""
        adata = self.adata if adata is None else adata
        X, batch, _ = self._encode(adata, labels="ignore", **kw)
        for start in releasing_memory(range(0, adata.n_obs, batch_size)):
            sl = slice(start, min(start + batch_size, adata.n_obs))
            x = torch.as_tensor(X[sl].toarray(), device=self.device) if X is not None else None
            yield sl, x, torch.as_tensor(batch[sl], device=self.device)

    # ----------------------------------------------------------------- training
    def train(
        self,
        max_epochs: int | None = None,
        *,
        adata=None,
        validation_adata=None,
        batch_size: int | None = _TRAIN.batch_size,
        learning_rate: float | None = None,
        weight_decay: float = _TRAIN.weight_decay,
        validation_fraction: float = _TRAIN.validation_fraction,
        early_stopping: bool = _TRAIN.early_stopping,
        early_stopping_patience: int = _TRAIN.early_stopping_patience,
        kl_warmup_epochs: int = _TRAIN.kl_warmup_epochs,
        lr_warmup_epochs: int = _TRAIN.lr_warmup_epochs,
        lr_scheduler: str | None = _TRAIN.lr_scheduler,
        classification_weight: float = _TRAIN.classification_weight,
        grad_clip_norm: float | None = _TRAIN.grad_clip_norm,
        mixed_precision: bool = _TRAIN.mixed_precision,
        supervised: bool | None = None,
        freeze: Literal["new_batches", "decoder_batch", "none"] = _TRAIN.freeze,
        freeze_from: int | None = None,
        nan_retries: int = _TRAIN.nan_retries,
        seed: int = _TRAIN.seed,
        device: str | torch.device = "auto",
        progress_bar: bool = _TRAIN.progress_bar,
        name: str = _TRAIN.name,
        resume_state: TrainingState | None = None,
        on_epoch_end: EpochCallback | None = None,
        chunk_cells: int = _TRAIN.chunk_cells,
    ) -> SCARKIDS:
        """Train on ``adata`` (default: the AnnData given at construction).

        ``supervised=False`` ignores labels (unsupervised session); ``None`` uses them when the
        data's setup names a labels column. In a later session, batches and (when supervised)
        cell types the model has not seen are added; with ``freeze="new_batches"`` only the new
        batch parameters learn, so the existing embedding does not move; ``"decoder_batch"``
        also fine-tunes the decoder (the encoder, hence every reference cell's latent, the
        classifier and the prior stay fixed); ``"none"`` trains everything. Returns ``self``.

        ``learning_rate=None`` uses :func:`default_learning_rate`: 1e-3 at batch 128, scaled
        by ``sqrt(batch_size / 128)`` for larger (GPU) batches.

        ``mixed_precision=True`` computes the three genes-wide layers (encoder input,
        decoder expression and dropout heads) in bfloat16 during training, with float32
        weights, likelihood and everything else: faster on CPUs with AVX512-BF16/AMX and on
        GPUs (see ``benchmarks/speed.py``); inference stays float32.

        A backed AnnData (``anndata.read_h5ad(path, backed="r")``) trains out of core: its
        counts are read in chunks of ``chunk_cells`` cells and shuffled within a buffer of
        8 chunks (see :mod:`scarkids.data.backed`).

        Most defaults come from :class:`~scarkids.train.TrainingSettings`, whose other knobs
        (the clustering of unsupervised runs) keep their defaults here.

        Parameters
        ----------
        max_epochs
            Epochs to train (in total, counting those of ``resume_state``). ``None`` uses
            :func:`~scarkids.train.default_max_epochs`: about 5e5 cell passes over
            ``adata``, 20 to 400 epochs.
        adata
            AnnData set up with :meth:`setup_anndata` (raw counts), in memory or backed;
            ``None`` uses the AnnData given at construction.
        validation_adata
            Separate validation cells (set up like ``adata``); ``validation_fraction`` is
            then ignored. Not possible with a backed ``adata``. ``None`` splits validation
            cells off ``adata``.
        batch_size
            Cells per optimisation step (in a distributed run, shared by the processes).
            ``None`` uses :func:`~scarkids.train.default_batch_size`: 128 on CPUs; on a GPU
            the largest of 128, 256, ..., 4096 that leaves 200 steps per epoch.
        learning_rate
            AdamW learning rate; ``None`` uses the batch-scaled default described above.
        weight_decay
            AdamW (decoupled) weight decay; not applied to the parameters a ``freeze`` plan
            masks.
        validation_fraction
            Fraction of the cells of ``adata`` held out for validation when
            ``validation_adata`` is ``None`` (none below 20 cells).
        early_stopping
            Stop when the validation loss (the training loss without validation cells) has
            not improved for ``early_stopping_patience`` epochs, and end with the weights of
            the best epoch. Off: train all epochs and keep the last weights.
        early_stopping_patience
            Epochs without improvement before stopping; training stops only once the KL
            warm-up (and, unsupervised, the cluster pre-training) is over.
        kl_warmup_epochs
            Epochs over which the weight of the KL term rises linearly to 1
            (``(epoch + 1) / kl_warmup_epochs``); 0: full weight from the start.
        lr_warmup_epochs
            Epochs over which the learning rate rises linearly to its value; 0: none.
        lr_scheduler
            Learning rate after the warm-up: ``"cosine"`` (decays towards 1% of the rate by
            the last epoch), ``"step"`` (times 0.1 after each third of the remaining epochs)
            or ``None`` (constant).
        classification_weight
            Weight of the classification loss ``-log q(c_obs | z0)`` of labelled cells.
        grad_clip_norm
            Largest norm of the gradient of all trained parameters; ``None``: no clipping.
        mixed_precision
            bfloat16 genes-wide layers while training, as described above.
        supervised
            Use the labels (``True``; an error when no cell is labelled), ignore them
            (``False``), or ``None``: use them when the setup names a labels column.
        freeze
            What a later session that brings new batches trains, as described above. It
            applies only to a trained model and a session that adds batches; otherwise every
            parameter trains.
        freeze_from
            Index of the first batch that counts as new for ``freeze``; ``None``: the number
            of batches the model knew before this call. Set it when resuming a session whose
            new batches were already added to the model.
        nan_retries
            When an epoch's loss is not finite, training restarts from the best epoch's
            weights with half the learning rate, at most this many times; then it raises
            :class:`~scarkids.errors.TrainingError`.
        seed
            Seed of torch's random number generator (not reseeded with ``resume_state``), of
            the validation split and of the clusterings.
        device
            {param_device}
            Under ``torchrun``, this process's device. The model stays on it after training.
        progress_bar
            Show a progress bar of the epochs (on rank 0 only).
        name
            Name shown in the progress bar, log lines and error messages.
        resume_state
            A :class:`~scarkids.train.TrainingState` to continue (optimiser moments, random
            number generator states, history, early-stopping counters), for example the
            ``training_state`` of a model saved with ``include_training_state=True``;
            ``None`` starts a new run.
        on_epoch_end
            Called as ``on_epoch_end(state, metrics, is_best)`` after every epoch (on rank 0
            only), for checkpoints and logs; ``None``: nothing is called.
        chunk_cells
            Cells read from disk at a time for a backed ``adata``; unused otherwise.

        Returns
        -------
        SCARKIDS
            ``self``, trained, with ``self.history`` and ``self.training_state`` set.
        """
        _check_train_arguments(lr_scheduler, freeze, batch_size)
        adata = self.adata if adata is None else adata
        # under torchrun: join the process group, train on this rank's device
        self.device = resolve_device(distributed.setup(str(device)))
        if resume_state is None:
            torch.manual_seed(seed)
        n_batches_before = len(self.registry.batch_categories)
        data = self._training_data(
            adata, validation_adata, supervised, validation_fraction, seed, chunk_cells
        )
        budget = training_budget(
            max_epochs, batch_size, learning_rate, adata.n_obs, self.device.type
        )
        _say_budget(budget, name, progress_bar)
        settings = TrainingSettings(
            max_epochs=budget.max_epochs,
            batch_size=budget.batch_size,
            learning_rate=budget.learning_rate,
            weight_decay=weight_decay,
            grad_clip_norm=grad_clip_norm,
            mixed_precision=mixed_precision,
            kl_warmup_epochs=kl_warmup_epochs,
            lr_warmup_epochs=lr_warmup_epochs,
            lr_scheduler=lr_scheduler,
            classification_weight=classification_weight,
            early_stopping=early_stopping,
            early_stopping_patience=early_stopping_patience,
            nan_retries=nan_retries,
            seed=seed,
            progress_bar=progress_bar,
            name=name,
        )
        trainable, masks = self._session_plan(
            freeze, n_batches_before if freeze_from is None else freeze_from, settings
        )
        self.training_state = train_module(
            self.module,
            data,
            settings,
            state=resume_state,
            trainable=trainable,
            grad_masks=masks,
            on_epoch_end=on_epoch_end,
        )
        self.history = self.training_state.history
        self.is_trained = True
        if trainable is None:
            self._merge_components(data, name, progress_bar, seed)
        self._calibrate(data, fit_reference=trainable is None, seed=seed)
        return self

    def _clusters_to_types(self) -> None:
        """A supervised session on an unsupervised model: cell-type names replace the
        clusters (the module keeps one label slot per former cluster, not per component,
        and the clusters' library sizes go)."""
        r = self.registry
        if r.max_clusters and self.module.n_labels > r.max_clusters:
            self.module.keep_labels(r.max_clusters)
        r.label_categories, r.labels_are_clusters = [], False
        r.max_clusters, r.cluster_groups = None, None
        self.library_sizes_by_type = {}

    @torch.no_grad()
    def _merge_components(self, data, name: str, progress_bar: bool, seed: int) -> None:
        """Unsupervised, after a session that trained everything: merge the mixture
        components in use into at most ``registry.max_clusters`` clusters, and no more than
        the latent has Leiden communities (:func:`~scarkids.labels.clustering.merge_components`
        on every training cell's ``q(c | z0)``), numbered by decreasing mass, into
        ``registry.cluster_groups``."""
        r = self.registry
        if (
            not r.labels_are_clusters
            or not r.max_clusters
            or self.module.n_labels <= r.max_clusters
        ):
            return
        from scarkids.labels.clustering import merge_components
        from scarkids.train.loop import latent_means

        self.module.eval()
        used = self.module.labels_in_use()
        z = latent_means(self.module, data)
        p = self.module.label_log_probs(z)[:, used].exp()
        probs = (p / p.sum(1, keepdim=True)).double().cpu().numpy()
        names = space.names_in_use(r.label_categories, used.cpu().numpy())
        previous = r.cluster_groups
        r.cluster_groups, communities = merge_components(
            probs, z.cpu().numpy(), names, r.max_clusters, seed, previous
        )
        for cluster in space.cluster_names(len(previous or [])):  # the previous clusters' fits
            self.library_sizes_by_type.pop(cluster, None)
        _say(
            f"{name}: {int(used.sum())} mixture components in use, merged into "
            f"{len(r.cluster_groups)} clusters (at most {r.max_clusters}, and at most the "
            f"latent's {communities} Leiden communities)",
            progress_bar,
        )

    def _session_plan(self, freeze: str, n_batches_before: int, settings: TrainingSettings):
        """The freeze plan (trainable parameters, gradient masks) of this session; the
        clustering of ``settings`` is switched off unless the labels are this model's own
        clusters and every parameter trains (a query session keeps the reference's), and
        otherwise allows the model's components per cluster per Leiden community."""
        trainable, masks = self._freeze_plan(freeze, n_batches_before)
        if not self.registry.labels_are_clusters or trainable is not None:
            settings.cluster_init_epoch, settings.learn_cluster_prior = None, False
        elif self.registry.max_clusters:  # components per cluster, per Leiden community
            settings.components_per_community = space.components_per_cluster(
                self.module.n_labels, self.registry.max_clusters
            )
        return trainable, masks

    def _training_data(
        self, adata, validation_adata, supervised, validation_fraction, seed, chunk_cells
    ) -> TrainingData:
        """Encode the training (and validation) cells, grow the module for new batches and
        cell types, split off validation cells and put everything on the device."""
        n_batches_before = len(self.registry.batch_categories)
        n_labels_before = len(self.registry.label_categories)
        use_labels = "ignore" if supervised is False else "use"
        X, batch, labels = self._encode(adata, labels=use_labels, new_categories=True)
        if validation_adata is not None:
            if isinstance(X, BackedCounts):
                raise InputDataError(
                    "validation_adata cannot be combined with backed (on-disk) training data; "
                    "use validation_fraction instead"
                )
            Xv, bv, lv = self._encode(validation_adata, labels=use_labels, new_categories=True)
        if supervised and (labels < 0).all():
            raise InputDataError("supervised training needs labelled cells, but none are labelled")
        self._grow_module(n_batches_before, n_labels_before)
        library = _row_sums(X)
        self.library_sizes.update(library_fit(library, batch, self.registry.batch_categories))
        self._update_type_library_sizes(library, batch, labels)

        if validation_adata is not None:
            X = sp.vstack([X, Xv]).tocsr()
            batch, labels = np.concatenate([batch, bv]), np.concatenate([labels, lv])
            train_idx = np.arange(adata.n_obs)
            val_idx = np.arange(adata.n_obs, X.shape[0])
        else:
            perm = np.random.default_rng(seed).permutation(adata.n_obs)
            n_val = int(round(validation_fraction * adata.n_obs)) if adata.n_obs >= 20 else 0
            val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
        label_mode = (
            "labelled" if (labels >= 0).all() else "unlabelled" if (labels < 0).all() else "mixed"
        )
        dev = self.device
        self.module.to(dev)
        return TrainingData(
            X=(
                ChunkedStore(X, dev, chunk_cells=chunk_cells)
                if isinstance(X, BackedCounts)
                else DeviceMatrix(X, dev)
            ),
            batch=torch.as_tensor(batch, device=dev),
            labels=torch.as_tensor(labels, device=dev),
            train_index=torch.as_tensor(train_idx, device=dev),
            val_index=torch.as_tensor(val_idx, device=dev),
            label_mode=label_mode,
        )

    def _prior_text(self) -> str:
        if self.module.prior_type == "diffusion":
            return f"{self.module.prior.n_steps} diffusion steps"
        return f"{self.module.prior_type} prior"

    def __repr__(self) -> str:
        r = self.registry
        kind = space.describe(len(r.label_categories), r.labels_are_clusters, r.max_clusters)
        return (
            f"SCARKIDS: {len(r.gene_names)} genes, {len(r.batch_categories)} batches, "
            f"{kind}, latent {self.module.n_latent}, "
            f"{self._prior_text()}, trained={self.is_trained}"
        )
