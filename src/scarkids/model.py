"""The user-facing model class: AnnData in, AnnData-friendly arrays out (scvi-tools style)."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch

from . import distributed
from .backed import BackedCounts, ChunkedStore
from .data import (
    SETUP_KEY,
    DeviceMatrix,
    Registry,
    align_genes,
    category_codes,
    get_counts,
    obs_column,
    select_columns,
    sorted_categories,
)
from .errors import InputDataError
from .model_io import ModelPersistence
from .model_outputs import ModelOutputs
from .model_surgery import ReferenceMapping
from .module import SCARKIDSModule
from .training import (
    EpochCallback,
    TrainingData,
    TrainingSettings,
    TrainingState,
    releasing_memory,
    train_module,
)

logger = logging.getLogger(__name__)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputDataError(
            "device 'cuda' was requested but no CUDA GPU is available; use 'auto' or 'cpu'"
        )
    return torch.device(device)


def default_learning_rate(batch_size: int) -> float:
    """AdamW learning rate when none is given: 1e-3 at batch 128, scaled by
    ``sqrt(batch_size / 128)`` (larger GPU batches take fewer, less noisy steps; on kang at
    batch 1024 the scaled rate reaches scVI's quality and 1e-3 does not:
    benchmarks/batch_size_quality.py)."""
    return 1e-3 * math.sqrt(batch_size / 128)


def default_max_epochs(n_cells: int) -> int:
    """Epochs when none are given: about 5e5 cell-passes (~4k steps of 128), 20 to 400."""
    return int(np.clip(round(5e5 / max(n_cells, 1)), 20, 400))


class SCARKIDS(ModelOutputs, ReferenceMapping, ModelPersistence):
    """scARKIDS: a VAE with a cell-type-conditioned latent diffusion prior.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata` (raw counts).
    n_latent
        Latent dimension d.
    n_labels
        Number of clusters when the data has no labels (unsupervised); ignored otherwise.
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
        self, adata, *, n_latent: int = 10, n_labels: int = 10, seed: int = 0, **module_kwargs
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
            clusters = False
        else:
            labels, clusters = [f"cluster_{i}" for i in range(n_labels)], True
        self.registry = Registry(
            batch_key=setup["batch_key"],
            labels_key=setup["labels_key"],
            layer=setup["layer"],
            unlabeled_category=setup["unlabeled_category"],
            gene_names=[str(g) for g in adata.var_names],
            batch_categories=batches,
            label_categories=labels,
            labels_are_clusters=clusters,
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
                            self.registry.label_categories = []
                            self.registry.labels_are_clusters = False
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
        batch_size: int = 128,
        learning_rate: float | None = None,
        weight_decay: float = 1e-6,
        validation_fraction: float = 0.1,
        early_stopping: bool = False,
        early_stopping_patience: int = 20,
        kl_warmup_epochs: int = 0,
        lr_warmup_epochs: int = 0,
        lr_scheduler: str | None = None,
        classification_weight: float = 50.0,
        grad_clip_norm: float | None = 10.0,
        mixed_precision: bool = False,
        supervised: bool | None = None,
        freeze: Literal["new_batches", "decoder_batch", "none"] = "new_batches",
        nan_retries: int = 2,
        seed: int = 0,
        device: str | torch.device = "auto",
        progress_bar: bool = True,
        name: str = "scARKIDS",
        resume_state: TrainingState | None = None,
        on_epoch_end: EpochCallback | None = None,
        chunk_cells: int = 8192,
    ) -> SCARKIDS:
        """Train on ``adata`` (default: the AnnData given at construction).

        ``supervised=False`` ignores labels (unsupervised session); ``None`` uses them when the
        data's setup names a labels column. In a later session, batches and (when supervised)
        cell types the model has not seen are added; with ``freeze="new_batches"`` only the new
        batch parameters learn, so the existing embedding does not move; ``"decoder_batch"``
        also fine-tunes the decoder (the encoder, hence every reference cell's latent, the
        classifier and the prior stay fixed); ``"none"`` trains everything. Returns ``self``.

        ``learning_rate=None`` uses :func:`default_learning_rate`: 1e-3 at the default batch
        of 128, scaled by ``sqrt(batch_size / 128)`` for larger (GPU) batches.

        ``mixed_precision=True`` computes the three genes-wide layers (encoder input,
        decoder expression and dropout heads) in bfloat16 during training, with float32
        weights, likelihood and everything else: faster on CPUs with AVX512-BF16/AMX and on
        GPUs (see ``benchmarks/speed.py``); inference stays float32.

        A backed AnnData (``anndata.read_h5ad(path, backed="r")``) trains out of core: its
        counts are read in chunks of ``chunk_cells`` cells and shuffled within a buffer of
        8 chunks (see :mod:`scarkids.backed`).
        """
        adata = self.adata if adata is None else adata
        # under torchrun: join the process group, train on this rank's device
        self.device = resolve_device(distributed.setup(str(device)))
        if resume_state is None:
            torch.manual_seed(seed)
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

        rng = np.random.default_rng(seed)
        if validation_adata is not None:
            X = sp.vstack([X, Xv]).tocsr()
            batch, labels = np.concatenate([batch, bv]), np.concatenate([labels, lv])
            train_idx = np.arange(adata.n_obs)
            val_idx = np.arange(adata.n_obs, X.shape[0])
        else:
            perm = rng.permutation(adata.n_obs)
            n_val = int(round(validation_fraction * adata.n_obs)) if adata.n_obs >= 20 else 0
            val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
        label_mode = (
            "labelled" if (labels >= 0).all() else "unlabelled" if (labels < 0).all() else "mixed"
        )

        dev = self.device
        self.module.to(dev)
        data = TrainingData(
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
        settings = TrainingSettings(
            max_epochs=max_epochs if max_epochs is not None else default_max_epochs(adata.n_obs),
            batch_size=batch_size,
            learning_rate=(
                default_learning_rate(batch_size) if learning_rate is None else learning_rate
            ),
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
        trainable, masks = self._freeze_plan(freeze, n_batches_before)
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
        return self

    def __repr__(self) -> str:
        r = self.registry
        kind = "unsupervised clusters" if r.labels_are_clusters else "cell types"
        return (
            f"SCARKIDS: {len(r.gene_names)} genes, {len(r.batch_categories)} batches, "
            f"{len(r.label_categories)} {kind}, latent {self.module.n_latent}, "
            f"{self.module.prior.n_steps} diffusion steps, trained={self.is_trained}"
        )
