"""The config's names turned into the Python API's: a resolved ``config.yaml`` as the keyword
arguments of :class:`scarkids.SCARKIDS`, its ``setup_anndata``, ``train``, ``load`` and
output methods.

The command line reads files, calls these functions and the API, and writes outputs; what a
config key means for the model is decided here (and the defaults themselves in the schema and
:class:`~scarkids.train.TrainingSettings`). Every key of :data:`scarkids.config.SCHEMA` is
either translated into an API keyword argument below or listed in :data:`CLI_ONLY` with its
reason (``tests/test_config_translate.py`` checks both). The functions return plain dicts and
import no torch: the config is read without loading it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from scarkids.config.load import UNREAD_COPIES
from scarkids.constants import DEFAULT_N_LABELS

log = logging.getLogger(__name__)

Config = Mapping[str, Any]

#: Config keys that are no keyword argument of the Python API, by reason (one line each).
#: A nested key is written with both dots (``inference.differential_expression.groupby``).
CLI_ONLY_GROUPS: dict[str, frozenset[str]] = {
    "the files the command line reads, and where it writes checkpoints, logs and outputs": (
        frozenset(
            {
                "data.train_data_path",
                "data.val_data_path",
                "data.test_data_path",
                "training.checkpoint_dir",
                "training.log_dir",
                "training.resume_from",
                "training.output_checkpoint",
                "training.checkpoint_interval",
                "training.save_last",
                "inference.output_dir",
                "inference.save_latent_embeddings",
                "inference.save_corrected_expression",
                "inference.save_cell_type_predictions",
            }
        )
    ),
    "how the command line prepares a data file before the model sees it (cli.inputs)": (
        frozenset(
            {
                "global.n_genes",
                "global.n_batches",
                "data.hvg_flavor",
                "data.zero_count_cells",
            }
        )
    ),
    "the session list of --mode sequential: each entry becomes a config of its own": frozenset(
        {"training.sessions"}
    ),
    "report.html of the command-line runs (cli.report)": frozenset(
        {"report.enabled", "report.max_cells"}
    ),
    "keys of the reference implementation with no effect, accepted with a warning": frozenset(
        {
            "global.eps",
            "data.log_transform",
            "data.normalize",
            "classifier.batch_embed_dim",
            "likelihood.use_library_size",
            "prior.batch_prior_probs",
            "ddpm_backward.celltype_embed_dim",
            "training.log_interval",
        }
    ),
    "one working value (learned is refused by the config check)": frozenset(
        {"ddpm_backward.variance_type"}
    ),
    "per-network copies of global keys that no network reads: the model has one dropout "
    "(global.dropout) and one norm (encoder.use_batch_norm / use_layer_norm); a value that "
    "differs from the global one is warned about": frozenset(
        f"{name}.{key}" for name, key in UNREAD_COPIES
    ),
}
#: Every config key that :func:`translate` does not turn into an API keyword argument.
CLI_ONLY: frozenset[str] = frozenset().union(*CLI_ONLY_GROUPS.values())


def n_labels(cfg: Config) -> int:
    """The most cell types (clusters, unsupervised) of a new model.

    Parameters
    ----------
    cfg
        A resolved config.

    Returns
    -------
    int
        ``global.n_cell_types``, or :data:`scarkids.constants.DEFAULT_N_LABELS` when null.
    """
    value = cfg["global"]["n_cell_types"]
    return DEFAULT_N_LABELS if value is None else value


def norm(section: Mapping[str, Any]) -> str:
    """The ``norm`` of the networks from the seed's two flags of a section.

    Parameters
    ----------
    section
        A resolved config section with ``use_batch_norm`` and ``use_layer_norm``.

    Returns
    -------
    str
        ``"batch"`` (batch norm wins), ``"layer"`` or ``"none"``.
    """
    if section["use_batch_norm"]:
        return "batch"
    if section["use_layer_norm"]:
        return "layer"
    return "none"


def lr_scheduler(cfg: Config) -> str | None:
    """``training.lr_scheduler`` as :meth:`scarkids.SCARKIDS.train` takes it; the seed's
    ``plateau``, which the model does not have, is a warning and a constant rate (``None``).

    Parameters
    ----------
    cfg
        A resolved config.

    Returns
    -------
    str or None
        ``"cosine"``, ``"step"`` or ``None``.
    """
    value = cfg["training"]["lr_scheduler"]
    if value == "plateau":
        log.warning(
            "training.lr_scheduler: plateau is not supported; using a constant learning rate "
            "(use cosine or step)"
        )
        return None
    return value


def setup_kwargs(cfg: Config) -> dict[str, Any]:
    """Keyword arguments of :meth:`scarkids.SCARKIDS.setup_anndata` for the training data.

    Parameters
    ----------
    cfg
        A resolved config.

    Returns
    -------
    dict
        ``batch_key``, ``labels_key`` (``data.cell_type_key``; ``None`` when
        ``global.supervised`` is false), ``layer`` and ``unlabeled_category``.
    """
    data = cfg["data"]
    return {
        "batch_key": data["batch_key"],
        "labels_key": data["cell_type_key"] if cfg["global"]["supervised"] else None,
        "layer": data["counts_layer"],
        "unlabeled_category": data["unlabeled_category"],
    }


def module_kwargs(cfg: Config) -> dict[str, Any]:
    """Keyword arguments of :class:`scarkids.module.SCARKIDSModule` (passed on by
    :class:`scarkids.SCARKIDS`): the networks, the likelihood and the prior.

    Parameters
    ----------
    cfg
        A resolved config.

    Returns
    -------
    dict
        The module's keyword arguments, in the order the model records them.
    """
    enc, lik = cfg["encoder"], cfg["likelihood"]
    fwd, bwd, clf = cfg["ddpm_forward"], cfg["ddpm_backward"], cfg["classifier"]
    return {
        "encoder_hidden_dims": list(enc["hidden_dims"]),
        "decoder_hidden_dim": lik["hidden_dim"],
        "decoder_layers": lik["n_layers"],
        "classifier_hidden_dim": clf["hidden_dim"],
        "classifier_layers": clf["n_layers"],
        "dropout": cfg["global"]["dropout"],
        "norm": norm(enc),
        "encode_batch": enc["use_batch"],
        "input_transform": enc["input_transform"],
        "likelihood": lik["distribution"],
        "dispersion": lik["dispersion_mode"],
        "n_diffusion_steps": cfg["global"]["n_diffusion_steps"],
        "beta_schedule": fwd["beta_schedule"],
        "beta_min": fwd["beta_min"],
        "beta_max": fwd["beta_max"],
        "noise_hidden_dim": bwd["noise_hidden_dim"],
        "noise_n_layers": bwd["noise_n_layers"],
        "timestep_embed_dim": bwd["timestep_embed_dim"],
        "null_label_prob": bwd["null_label_prob"],
        "prior_training": bwd["prior_training"],
        "importance_sampling": bwd["importance_sampling"],
        "label_prior_probs": cfg["prior"]["cell_type_prior_probs"],
        "prior": cfg["prior"]["type"],
    }


def model_kwargs(cfg: Config) -> dict[str, Any]:
    """Keyword arguments of a new :class:`scarkids.SCARKIDS` (``SCARKIDS(adata, **kwargs)``).

    Parameters
    ----------
    cfg
        A resolved config.

    Returns
    -------
    dict
        ``n_latent``, ``n_labels``, ``cluster_factor``, ``seed`` and :func:`module_kwargs`.
    """
    glob = cfg["global"]
    return {
        "n_latent": glob["latent_dim"],
        "n_labels": n_labels(cfg),
        "cluster_factor": glob["cluster_factor"],
        "seed": cfg["training"]["seed"],
        **module_kwargs(cfg),
    }


def train_kwargs(cfg: Config) -> dict[str, Any]:
    """Keyword arguments of :meth:`scarkids.SCARKIDS.train` that come from the config.

    ``max_epochs``, ``batch_size`` and ``learning_rate`` are the config's values (``None``:
    automatic, see :func:`scarkids.train.settings.training_budget`); ``device`` is
    ``training.device`` as written. ``lr_scheduler`` goes through :func:`lr_scheduler` (a
    warning for ``plateau``). What the data and the run decide (``adata``,
    ``validation_adata``, ``freeze_from``, ``resume_state``, callbacks) is the caller's.

    Parameters
    ----------
    cfg
        A resolved config.

    Returns
    -------
    dict
        The keyword arguments, by their API names.
    """
    tr = cfg["training"]
    return {
        "max_epochs": tr["n_epochs"],
        "batch_size": tr["batch_size"],
        "learning_rate": tr["learning_rate"],
        "weight_decay": tr["weight_decay"],
        "validation_fraction": cfg["data"]["val_fraction"],
        "early_stopping": tr["early_stopping"],
        "early_stopping_patience": tr["early_stopping_patience"],
        "kl_warmup_epochs": tr["kl_warmup_epochs"],
        "lr_warmup_epochs": tr["lr_warmup_epochs"],
        "lr_scheduler": lr_scheduler(cfg),
        "classification_weight": tr["classification_weight"],
        "grad_clip_norm": tr["grad_clip_norm"],
        "mixed_precision": tr["use_amp"],
        "supervised": cfg["global"]["supervised"],
        "freeze": tr["freeze"],
        "nan_retries": tr["nan_retries"],
        "seed": tr["seed"],
        "device": tr["device"],
    }


def load_kwargs(cfg: Config) -> dict[str, Any]:
    """Keyword arguments of :meth:`scarkids.SCARKIDS.load` for inference.

    Parameters
    ----------
    cfg
        A resolved config.

    Returns
    -------
    dict
        ``device`` (``inference.device`` as written).
    """
    return {"device": cfg["inference"]["device"]}


def latent_kwargs(cfg: Config) -> dict[str, Any]:
    """Keyword arguments of :meth:`scarkids.SCARKIDS.get_latent_representation`.

    Parameters
    ----------
    cfg
        A resolved config.

    Returns
    -------
    dict
        ``batch_size`` (``inference.batch_size``).
    """
    return {"batch_size": cfg["inference"]["batch_size"]}


def refine_kwargs(cfg: Config) -> dict[str, Any] | None:
    """Keyword arguments of :meth:`scarkids.SCARKIDS.refine_latent`, or ``None`` when
    ``inference.use_ddpm_refinement`` is off.

    Parameters
    ----------
    cfg
        A resolved config.

    Returns
    -------
    dict or None
        ``n_steps``, ``seed`` (``training.seed``), ``batch_size`` and ``n_sampling_steps``.
    """
    inf = cfg["inference"]
    if not inf["use_ddpm_refinement"]:
        return None
    return {
        "n_steps": inf["n_refinement_steps"],
        "seed": cfg["training"]["seed"],
        "batch_size": inf["batch_size"],
        "n_sampling_steps": inf["n_refinement_sampling_steps"],
    }


def predict_kwargs(cfg: Config) -> dict[str, Any]:
    """Keyword arguments of :meth:`scarkids.SCARKIDS.predict_with_uncertainty`.

    Parameters
    ----------
    cfg
        A resolved config.

    Returns
    -------
    dict
        ``confidence_threshold``, ``novelty_quantile``, ``max_clusters`` and ``warn_share``
        (``inference.unknown_warning_share``).
    """
    inf = cfg["inference"]
    return {
        "confidence_threshold": inf["confidence_threshold"],
        "novelty_quantile": inf["novelty_quantile"],
        "max_clusters": inf["max_clusters"],
        "warn_share": inf["unknown_warning_share"],
    }


def de_kwargs(cfg: Config) -> dict[str, Any] | None:
    """Keyword arguments of :meth:`scarkids.SCARKIDS.differential_expression`, or ``None``
    while ``inference.differential_expression.groupby`` is null (no test).

    Parameters
    ----------
    cfg
        A resolved config.

    Returns
    -------
    dict or None
        ``groupby``, ``mode``, ``delta``, ``fdr_target`` and ``seed`` (``training.seed``).
    """
    de = cfg["inference"]["differential_expression"]
    if de["groupby"] is None:
        return None
    return {
        "groupby": de["groupby"],
        "mode": de["mode"],
        "delta": de["delta"],
        "fdr_target": de["fdr_target"],
        "seed": cfg["training"]["seed"],
    }


def expression_kwargs(cfg: Config) -> dict[str, Any]:
    """Keyword arguments of :meth:`scarkids.SCARKIDS.iter_normalized_expression` for the
    batch-corrected expression file.

    Parameters
    ----------
    cfg
        A resolved config.

    Returns
    -------
    dict
        ``transform_batch`` (``inference.default_target_batch``, an index or a name),
        ``library_size``, ``batch_size`` (``inference.batch_size``, at most 1024) and
        ``source`` (``inference.corrected_expression_source``).
    """
    inf = cfg["inference"]
    return {
        "transform_batch": inf["default_target_batch"],
        "library_size": inf["library_size"],
        "batch_size": min(inf["batch_size"], 1024),
        "source": inf["corrected_expression_source"],
    }


def translate(cfg: Config) -> dict[str, dict[str, Any] | None]:
    """Every translation of the config, by the API call it is for.

    Parameters
    ----------
    cfg
        A resolved config.

    Returns
    -------
    dict
        ``{"SCARKIDS.setup_anndata": ..., "SCARKIDS": ..., "SCARKIDS.train": ...,
        "SCARKIDS.load": ..., "get_latent_representation": ..., "refine_latent": ...,
        "predict_with_uncertainty": ..., "differential_expression": ...,
        "iter_normalized_expression": ...}``; ``None`` for a call the config switches off.
    """
    return {
        "SCARKIDS.setup_anndata": setup_kwargs(cfg),
        "SCARKIDS": model_kwargs(cfg),
        "SCARKIDS.train": train_kwargs(cfg),
        "SCARKIDS.load": load_kwargs(cfg),
        "get_latent_representation": latent_kwargs(cfg),
        "refine_latent": refine_kwargs(cfg),
        "predict_with_uncertainty": predict_kwargs(cfg),
        "differential_expression": de_kwargs(cfg),
        "iter_normalized_expression": expression_kwargs(cfg),
    }
