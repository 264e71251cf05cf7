"""The table of every config section and key: type, default and allowed values.

Key names follow the seed's ``config.yaml`` (and the public reference implementation) so that
existing config files keep working; keys the reference read but never used are accepted with a
warning. :mod:`scarkids.config` reads this table to fill defaults and validate values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from scarkids.constants import DE_FILE
from scarkids.train.settings import FREEZE_MODES, LR_SCHEDULERS, TrainingSettings

#: the training defaults come from the loop's settings (one source for API, config, CLI)
_TRAIN = TrainingSettings()

Kind = Literal[
    "int",
    "float",
    "bool",
    "str",
    "enum",
    "int_list",
    "float_list",
    "int_or_str",
    "list",
    "section",
]


@dataclass(frozen=True)
class Key:
    """One config key.

    ``optional`` allows ``null``; ``gt``/``ge``/``lt``/``le`` bound numbers (and every element
    of a list); ``choices`` lists an enum's values (``None`` there means ``null`` is one);
    ``legacy`` is the warning shown when a legacy key is set to anything but ``null``.
    """

    kind: Kind
    default: Any = None
    optional: bool = False
    choices: tuple = ()
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    legacy: str | None = None
    help: str = ""
    #: kind "section": the keys of the sub-section (name -> Key); its default is theirs
    fields: Any = None


#: In a section's table, this marks a key whose spec and default come from ``global``
#: (the section's own value wins when set).
INHERIT = Key("str", help="inherited from global")

_NO_EFFECT = "{key} has no effect: scARKIDS models raw counts"
_UNUSED = "{key} has no effect (a key of the reference implementation, kept so its configs load)"

GLOBAL = {
    "latent_dim": Key("int", 10, gt=0, help="latent dimension d"),
    "n_diffusion_steps": Key("int", 400, ge=2, help="diffusion steps T"),
    "n_genes": Key(
        "int", 2000, optional=True, gt=0, help="highly variable genes kept; null = all genes"
    ),
    "n_batches": Key("int", None, optional=True, gt=0, help="maximum number of batches"),
    "n_cell_types": Key(
        "int", None, optional=True, gt=0, help="max types, or clusters in unsupervised mode"
    ),
    "cluster_factor": Key(
        "int", 2, ge=1, help="unsupervised: mixture components per cluster, merged after training"
    ),
    "supervised": Key("bool", True),
    "eps": Key("float", None, optional=True, gt=0, legacy=_UNUSED.format(key="global.eps")),
    "dropout": Key("float", 0.1, ge=0, lt=1),
    "use_batch_norm": Key("bool", False),
    "use_layer_norm": Key("bool", True),
}

SCHEMA: dict[str, dict[str, Key]] = {
    "global": GLOBAL,
    "data": {
        "train_data_path": Key("str", None, optional=True),
        "val_data_path": Key("str", None, optional=True),
        "test_data_path": Key("str", None, optional=True),
        "cell_type_key": Key("str", "cell_type"),
        "batch_key": Key("str", "batch"),
        "counts_layer": Key("str", None, optional=True, help="null = adata.X"),
        "unlabeled_category": Key("str", "Unknown"),
        "val_fraction": Key("float", _TRAIN.validation_fraction, ge=0, le=0.5),
        "zero_count_cells": Key("enum", "drop", choices=("drop", "error")),
        "hvg_flavor": Key("enum", "seurat_v3", choices=("seurat_v3", "none")),
        "log_transform": Key(
            "bool", None, optional=True, legacy=_NO_EFFECT.format(key="data.log_transform")
        ),
        "normalize": Key(
            "bool", None, optional=True, legacy=_NO_EFFECT.format(key="data.normalize")
        ),
    },
    "encoder": {
        "hidden_dims": Key("int_list", [128], gt=0),
        "input_transform": Key(
            "enum", "normalize_log1p", choices=("normalize_log1p", "log1p", "none")
        ),
        "use_batch": Key("bool", False),
        "dropout": INHERIT,
        "use_batch_norm": INHERIT,
        "use_layer_norm": INHERIT,
        "eps": INHERIT,
    },
    "classifier": {
        "hidden_dim": Key("int", 128, gt=0),
        "n_layers": Key("int", 1, ge=0),
        "dropout": INHERIT,
        "batch_embed_dim": Key(
            "int",
            None,
            optional=True,
            gt=0,
            legacy="classifier.batch_embed_dim has no effect: the classifier sees only the latent",
        ),
        "use_batch_norm": INHERIT,
        "use_layer_norm": INHERIT,
    },
    "likelihood": {
        "hidden_dim": Key("int", 128, gt=0),
        "n_layers": Key("int", 1, ge=1),
        "dispersion_mode": Key("enum", "gene", choices=("gene", "gene-batch")),
        "distribution": Key("enum", "zinb", choices=("zinb", "nb")),
        "use_library_size": Key(
            "bool",
            None,
            optional=True,
            legacy="likelihood.use_library_size has no effect: the mean is always scaled by "
            "each cell's total counts (the observed library size)",
        ),
        "dropout": INHERIT,
    },
    "prior": {
        "type": Key(
            "enum",
            "diffusion",
            choices=("diffusion", "gaussian", "mixture"),
            help="p(z0 | c): diffusion | gaussian (N(0, I)) | mixture (N(mu_c, sigma_c^2))",
        ),
        "cell_type_prior_probs": Key("float_list", None, optional=True, ge=0),
        "batch_prior_probs": Key(
            "float_list",
            None,
            optional=True,
            ge=0,
            legacy="prior.batch_prior_probs has no effect: batches are observed, not modelled",
        ),
    },
    "ddpm_forward": {
        "beta_schedule": Key("enum", "linear", choices=("linear", "cosine", "quadratic")),
        "beta_min": Key("float", 1e-4, gt=0),
        "beta_max": Key("float", 0.02, gt=0, lt=1),
        "n_diffusion_steps": INHERIT,
    },
    "ddpm_backward": {
        "variance_type": Key(
            "enum", "fixed", choices=("fixed", "learned"), help="learned: not implemented (error)"
        ),
        "noise_hidden_dim": Key("int", 128, gt=0),
        "noise_n_layers": Key("int", 2, ge=1),
        "timestep_embed_dim": Key("int", 64, gt=0),
        "celltype_embed_dim": Key(
            "int",
            None,
            optional=True,
            gt=0,
            legacy="ddpm_backward.celltype_embed_dim has no effect: the cell-type embedding has "
            "the noise network's width (ddpm_backward.noise_hidden_dim)",
        ),
        "null_label_prob": Key("float", 0.1, ge=0, lt=1),
        "prior_training": Key("enum", "split", choices=("split", "elbo")),
        "importance_sampling": Key("bool", True),
        "dropout": INHERIT,
    },
    "variational_posterior": {},
    "elbo": {},
    "training": {
        "n_epochs": Key("int", None, optional=True, ge=1, help="null = chosen from data size"),
        "batch_size": Key(
            "int", _TRAIN.batch_size, optional=True, ge=2, help="null = 128 on CPUs, larger on GPUs"
        ),
        "learning_rate": Key(
            "float", None, optional=True, gt=0, help="null = 1e-3 x sqrt(batch_size / 128)"
        ),
        "weight_decay": Key("float", _TRAIN.weight_decay, ge=0),
        "grad_clip_norm": Key(
            "float", _TRAIN.grad_clip_norm, optional=True, gt=0, help="null = no clipping"
        ),
        "lr_scheduler": Key("enum", None, optional=True, choices=(None, *LR_SCHEDULERS, "plateau")),
        "lr_warmup_epochs": Key("int", _TRAIN.lr_warmup_epochs, ge=0),
        "kl_warmup_epochs": Key("int", _TRAIN.kl_warmup_epochs, ge=0),
        "classification_weight": Key("float", _TRAIN.classification_weight, ge=0),
        "early_stopping": Key("bool", _TRAIN.early_stopping),
        "early_stopping_patience": Key("int", _TRAIN.early_stopping_patience, ge=1),
        "log_interval": Key(
            "int", None, optional=True, ge=1, legacy=_UNUSED.format(key="training.log_interval")
        ),
        "checkpoint_interval": Key("int", 0, ge=0, help="0 = no checkpoint_epoch_E.pt"),
        "save_last": Key("bool", True),
        "checkpoint_dir": Key("str", "./checkpoints"),
        "log_dir": Key("str", "./logs"),
        "device": Key("enum", "auto", choices=("auto", "cpu", "cuda", "mps")),
        "use_amp": Key("bool", _TRAIN.mixed_precision),
        "seed": Key("int", _TRAIN.seed, ge=0, lt=2**32),
        "resume_from": Key("str", None, optional=True),
        "output_checkpoint": Key("str", None, optional=True),
        "freeze": Key("enum", _TRAIN.freeze, choices=FREEZE_MODES),
        "nan_retries": Key("int", _TRAIN.nan_retries, ge=0),
        "sessions": Key("list", None, optional=True, help="for --mode sequential"),
    },
    "inference": {
        "use_ddpm_refinement": Key("bool", False),
        "n_refinement_steps": Key("int", 100, ge=1, help="<= global.n_diffusion_steps"),
        "n_refinement_sampling_steps": Key(
            "int",
            None,
            optional=True,
            ge=1,
            help="reverse steps of the refinement (strided sampler); null = n_refinement_steps",
        ),
        "default_target_batch": Key("int_or_str", 0, ge=0, help="batch index or name"),
        "confidence_threshold": Key(
            "float",
            0.5,
            ge=0,
            le=1,
            optional=True,
            help="cells below this calibrated probability are unknown too, in batches whose "
            "codes sit near the reference's; null = off",
        ),
        "novelty_quantile": Key(
            "float",
            0.99,
            gt=0,
            lt=1,
            optional=True,
            help="cells above this quantile of the reference cells' novelty, raised by their "
            "batch's shift, are unknown",
        ),
        "differential_expression": Key(
            "section",
            None,
            help="differential expression between groups of the data's cells, written to "
            f"{DE_FILE}; off while groupby is null",
            fields={
                "groupby": Key("str", None, optional=True, help="obs column of the groups"),
                "mode": Key("enum", "change", choices=("change", "vanilla")),
                "delta": Key("float", 0.25, ge=0, help="|log2 fold change| of a change"),
                "fdr_target": Key("float", 0.05, gt=0, lt=1),
            },
        ),
        "unknown_warning_share": Key(
            "float",
            0.2,
            ge=0,
            le=1,
            optional=True,
            help="warn about a batch with more than this share of unknown cells; null = never",
        ),
        "max_clusters": Key(
            "int",
            None,
            optional=True,
            gt=0,
            help="unsupervised: merge the clusters into at most this many groups; null = keep",
        ),
        "library_size": Key("float", 1e4, gt=0),
        "batch_size": Key("int", 4096, ge=1),
        "save_latent_embeddings": Key("bool", True),
        "save_corrected_expression": Key("bool", True),
        "corrected_expression_source": Key(
            "enum",
            "decoded",
            choices=("decoded", "counts"),
            help="corrected_expression.h5ad: 'decoded' (the decoder's expression) or 'counts' "
            "(each cell's counts with the decoded batch effect divided out: keeps its zeros "
            "and marker genes)",
        ),
        "save_cell_type_predictions": Key("bool", True),
        "output_dir": Key("str", "./results"),
        "device": Key("enum", "auto", choices=("auto", "cpu", "cuda", "mps")),
    },
    "report": {
        "enabled": Key(
            "bool",
            True,
            help="write report.html beside the outputs of train, inference and sequential "
            "runs; 'report: false' is short for 'report: {enabled: false}'",
        ),
        "max_cells": Key(
            "int",
            10_000,
            ge=100,
            help="the UMAPs use a seeded subsample of at most this many cells",
        ),
    },
}

#: Keys of one ``training.sessions`` entry. ``None`` default = taken from the rest of the
#: config (see :func:`scarkids.config.session_list`).
SESSION: dict[str, Key] = {
    "name": Key("str", None),
    "data_path": Key("str", None),
    "val_data_path": Key("str", None, optional=True),
    "supervised": Key("bool", None),
    "n_epochs": SCHEMA["training"]["n_epochs"],
    "learning_rate": SCHEMA["training"]["learning_rate"],
    "resume_from": Key("str", None, optional=True),
    "output_checkpoint": Key("str", None),
    "freeze": SCHEMA["training"]["freeze"],
}
