"""The config translator (``scarkids.config.translate``): every config key is either turned into
a keyword argument of the Python API or listed in ``CLI_ONLY``; the default config gives what
the command line passed before the translator existed; the epoch / batch-size resolver says
why it chose what it chose."""

from __future__ import annotations

import copy
import inspect
import logging
import subprocess
import sys
import warnings

import pytest

from scarkids.config import SCHEMA, resolve_config
from scarkids.config.schema import GLOBAL, INHERIT
from scarkids.config.translate import (
    CLI_ONLY,
    CLI_ONLY_GROUPS,
    lr_scheduler,
    model_kwargs,
    n_labels,
    norm,
    setup_kwargs,
    train_kwargs,
    translate,
)
from scarkids.constants import DEFAULT_N_LABELS
from scarkids.errors import ConfigError
from scarkids.train.settings import TrainingSettings, training_budget

#: the walk starts from a config whose optional inference calls are on, so that their keys
#: can show up in the translation
BASE = {
    "inference": {
        "use_ddpm_refinement": True,
        "differential_expression": {"groupby": "condition"},
    }
}
#: values the generic rule of :func:`other_value` would get wrong (an odd embedding width)
OTHER = {"ddpm_backward.timestep_embed_dim": 32}


def schema_keys() -> list[tuple[str, object]]:
    """``(dotted key, spec)`` of every key of the schema, nested section keys included."""
    out = []
    for section, table in SCHEMA.items():
        for key, spec in table.items():
            if spec is INHERIT:
                spec = GLOBAL[key]
            if spec.kind == "section":
                out += [(f"{section}.{key}.{k}", f) for k, f in spec.fields.items()]
            else:
                out.append((f"{section}.{key}", spec))
    return out


def schema_params() -> list:
    return [pytest.param(dotted, spec, id=dotted) for dotted, spec in schema_keys()]


def other_value(dotted: str, spec, current):
    """A valid value of ``spec`` other than ``current``."""
    if dotted in OTHER:
        return OTHER[dotted]
    kind = spec.kind
    if kind == "bool":
        return True if current is None else not current
    if kind == "enum":
        return next(c for c in spec.choices if c not in (current, None))
    if kind in ("int", "int_or_str"):
        return 3 if current is None else current + 1
    if kind == "float":
        return 0.25 if current is None else current / 2
    if kind == "int_list":
        return [7]
    if kind == "float_list":
        return [0.5, 0.5]
    if kind == "list":
        return [{"data_path": "session.h5ad"}]
    return "other"


def with_value(raw: dict, dotted: str, value) -> dict:
    out = copy.deepcopy(raw)
    *path, last = dotted.split(".")
    node = out
    for part in path:
        node = node.setdefault(part, {})
    node[last] = value
    return out


def current_value(cfg: dict, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def quiet_translate(raw: dict) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy keys' warnings
        return translate(resolve_config(raw))


@pytest.mark.parametrize(("dotted", "spec"), schema_params())
def test_every_key_is_translated_or_cli_only(dotted, spec):
    base = quiet_translate(BASE)
    value = other_value(dotted, spec, current_value(resolve_config(BASE), dotted))
    try:
        changed = quiet_translate(with_value(BASE, dotted, value))
    except ConfigError:  # the key has no second valid value
        assert dotted in CLI_ONLY, f"{dotted}: no other valid value, yet not in CLI_ONLY"
        return
    if dotted in CLI_ONLY:
        assert changed == base, f"{dotted} is in CLI_ONLY but changes the API keyword arguments"
    else:
        assert changed != base, (
            f"{dotted} = {value!r} changes no API keyword argument: translate it in "
            "scarkids.config.translate or list it in CLI_ONLY with its reason"
        )


def test_cli_only_names_schema_keys_once():
    keys = {dotted for dotted, _ in schema_keys()}
    assert CLI_ONLY <= keys, f"not config keys: {sorted(CLI_ONLY - keys)}"
    n_listed = sum(len(group) for group in CLI_ONLY_GROUPS.values())
    assert n_listed == len(CLI_ONLY), "a key is listed under two reasons"
    legacy = {f"{s}.{k}" for s, table in SCHEMA.items() for k, spec in table.items() if spec.legacy}
    assert legacy <= CLI_ONLY


def test_translated_names_are_api_keyword_arguments():
    from scarkids import SCARKIDS
    from scarkids.module import SCARKIDSModule

    calls = quiet_translate(BASE)
    accepted = {
        "SCARKIDS.setup_anndata": SCARKIDS.setup_anndata,
        "SCARKIDS.train": SCARKIDS.train,
        "SCARKIDS.load": SCARKIDS.load,
        "get_latent_representation": SCARKIDS.get_latent_representation,
        "refine_latent": SCARKIDS.refine_latent,
        "predict_with_uncertainty": SCARKIDS.predict_with_uncertainty,
        "differential_expression": SCARKIDS.differential_expression,
        "iter_normalized_expression": SCARKIDS.iter_normalized_expression,
    }
    for call, func in accepted.items():
        names = set(inspect.signature(func).parameters)
        assert set(calls[call]) <= names, f"{call}: {sorted(set(calls[call]) - names)}"
    model = set(inspect.signature(SCARKIDS).parameters) | set(
        inspect.signature(SCARKIDSModule).parameters
    )
    assert set(calls["SCARKIDS"]) <= model


def test_the_default_config_gives_what_the_command_line_passed_before():
    """Written out by hand from ``cli/common.module_kwargs``, ``cli/train._new_model`` and
    ``cli/train._fit`` as they were before the translator; the seed is the default (0) since
    the API and the config agree on it (it was 42 in the config)."""
    cfg = resolve_config({})
    expected_model = {
        "n_latent": 10,
        "n_labels": 10,
        "cluster_factor": 2,
        "seed": 0,
        "encoder_hidden_dims": [128],
        "decoder_hidden_dim": 128,
        "decoder_layers": 1,
        "classifier_hidden_dim": 128,
        "classifier_layers": 1,
        "dropout": 0.1,
        "norm": "layer",
        "encode_batch": False,
        "input_transform": "normalize_log1p",
        "likelihood": "zinb",
        "dispersion": "gene",
        "n_diffusion_steps": 400,
        "beta_schedule": "linear",
        "beta_min": 1e-4,
        "beta_max": 0.02,
        "noise_hidden_dim": 128,
        "noise_n_layers": 2,
        "timestep_embed_dim": 64,
        "null_label_prob": 0.1,
        "prior_training": "split",
        "importance_sampling": True,
        "label_prior_probs": None,
        "prior": "diffusion",
    }
    got = model_kwargs(cfg)
    assert got == expected_model
    assert list(got) == list(expected_model)  # the order the model records (init_params)
    assert train_kwargs(cfg) == {
        "max_epochs": None,  # resolved by training_budget before the call
        "batch_size": None,
        "learning_rate": None,
        "weight_decay": 1e-6,
        "validation_fraction": 0.1,
        "early_stopping": False,
        "early_stopping_patience": 20,
        "kl_warmup_epochs": 0,
        "lr_warmup_epochs": 0,
        "lr_scheduler": None,
        "classification_weight": 50.0,
        "grad_clip_norm": 10.0,
        "mixed_precision": False,
        "supervised": True,
        "freeze": "new_batches",
        "nan_retries": 2,
        "seed": 0,
        "device": "auto",  # resolved to a torch device by the command line
    }
    assert setup_kwargs(cfg) == {
        "batch_key": "batch",
        "labels_key": "cell_type",
        "layer": None,
        "unlabeled_category": "Unknown",
    }
    calls = translate(cfg)
    assert calls["refine_latent"] is None and calls["differential_expression"] is None
    assert calls["get_latent_representation"] == {"batch_size": 4096}
    assert calls["predict_with_uncertainty"] == {
        "confidence_threshold": 0.5,
        "novelty_quantile": 0.99,
        "max_clusters": None,
        "warn_share": 0.2,
    }
    assert calls["iter_normalized_expression"] == {
        "transform_batch": 0,
        "library_size": 1e4,
        "batch_size": 1024,
        "source": "decoded",
    }


def test_legacy_values_are_translated(caplog):
    cfg = resolve_config({"training": {"lr_scheduler": "plateau"}})
    with caplog.at_level(logging.WARNING, logger="scarkids"):
        assert lr_scheduler(cfg) is None
    assert "training.lr_scheduler: plateau is not supported" in caplog.text
    assert norm({"use_batch_norm": True, "use_layer_norm": True}) == "batch"
    assert norm({"use_batch_norm": False, "use_layer_norm": True}) == "layer"
    assert norm({"use_batch_norm": False, "use_layer_norm": False}) == "none"
    cfg = resolve_config({"global": {"use_batch_norm": True, "supervised": False}})
    assert model_kwargs(cfg)["norm"] == "batch"
    assert setup_kwargs(cfg)["labels_key"] is None


def test_one_default_for_n_labels_the_seed_and_the_training_settings():
    from scarkids import SCARKIDS

    assert n_labels(resolve_config({})) == DEFAULT_N_LABELS
    assert n_labels(resolve_config({"global": {"n_cell_types": 4}})) == 4
    model = inspect.signature(SCARKIDS).parameters
    train = inspect.signature(SCARKIDS.train).parameters
    settings = TrainingSettings()
    assert model["n_labels"].default == DEFAULT_N_LABELS
    assert model["seed"].default == train["seed"].default == settings.seed
    assert SCHEMA["training"]["seed"].default == settings.seed
    automatic = {"max_epochs", "learning_rate"}  # None in train(): training_budget decides
    for name, parameter in train.items():
        if hasattr(settings, name) and name not in automatic:
            assert parameter.default == getattr(settings, name), name
    for name in ("validation_fraction", "freeze", "chunk_cells"):
        assert name in train and hasattr(settings, name)
    assert SCHEMA["data"]["val_fraction"].default == settings.validation_fraction
    assert SCHEMA["training"]["freeze"].default == settings.freeze


def test_the_resolver_says_why():
    budget = training_budget(None, None, None, 13_000, "cpu", wording="config")
    assert (budget.max_epochs, budget.batch_size, budget.learning_rate) == (38, 128, 1e-3)
    assert budget.reasons == {
        "max_epochs": "automatic: about 5e+05 cell passes for 13,000 cells, 20 to 400 epochs; "
        "set training.n_epochs to choose",
        "batch_size": "automatic, cpu",
    }
    api = training_budget(None, None, None, 120, "cuda")
    assert api.max_epochs == 400 and api.batch_size == 128
    assert api.reasons["max_epochs"] == (
        "automatic: about 5e+05 cell passes for 120 cells, 20 to 400; pass max_epochs to choose"
    )
    assert api.reasons["batch_size"] == "automatic, cuda"
    gpu = training_budget(7, None, None, 200_000, "cuda")
    assert (gpu.max_epochs, gpu.batch_size) == (7, 512)
    assert gpu.learning_rate == pytest.approx(2e-3)  # 1e-3 x sqrt(512 / 128)
    assert set(gpu.reasons) == {"batch_size"}
    given = training_budget(5, 64, 0.01, 120, "cpu")
    assert (given.max_epochs, given.batch_size, given.learning_rate) == (5, 64, 0.01)
    assert given.reasons == {}


def test_the_translator_loads_no_torch():
    code = (
        "import sys, scarkids.config.translate as t, scarkids.config as c\n"
        "t.translate(c.resolve_config({}))\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
