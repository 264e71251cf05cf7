"""config.yaml: defaults, inheritance, validation messages, sessions and shipped files."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import yaml

from scarkids.config.load import config_hash, dump_config, load_config, resolve_config, session_list
from scarkids.config.schema import SCHEMA
from scarkids.errors import ConfigError

ROOT = Path(__file__).parents[1]
SHIPPED = [ROOT / "config.yaml", *sorted((ROOT / "examples").glob("*.yaml"))]


def config_error(raw: dict) -> str:
    """The message of the ConfigError that resolving ``raw`` raises; always one line."""
    with pytest.raises(ConfigError) as info:
        resolve_config(raw, source="config.yaml")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("config.yaml: ")
    return message


# --------------------------------------------------------------------------- defaults


def test_empty_config_has_every_section_and_key():
    cfg = resolve_config({})
    assert list(cfg) == list(SCHEMA)
    for section, table in SCHEMA.items():
        assert set(cfg[section]) == set(table), section
    assert cfg["global"]["latent_dim"] == 10
    assert cfg["global"]["supervised"] is True
    assert cfg["training"]["batch_size"] is None  # 128 on CPUs, larger on GPUs
    assert cfg["training"]["learning_rate"] is None  # 1e-3 x sqrt(batch_size / 128)
    assert cfg["training"]["lr_scheduler"] is None
    assert cfg["training"]["sessions"] is None
    assert cfg["encoder"]["hidden_dims"] == [128]
    assert cfg["inference"]["n_refinement_steps"] == 100
    assert cfg["variational_posterior"] == {} and cfg["elbo"] == {}


def test_empty_file_and_empty_sections(tmp_path):
    (tmp_path / "empty.yaml").write_text("")
    assert load_config(tmp_path / "empty.yaml") == resolve_config({})
    (tmp_path / "sections.yaml").write_text("training:\nelbo:\n")
    assert load_config(tmp_path / "sections.yaml") == resolve_config({})


def test_resolve_does_not_modify_its_input_and_is_idempotent():
    raw = {"global": {"dropout": 0.2}, "training": {"sessions": [{"data_path": "a.h5ad"}]}}
    before = yaml.safe_dump(raw)
    cfg = resolve_config(raw)
    assert yaml.safe_dump(raw) == before
    assert resolve_config(cfg) == cfg


def test_dump_round_trips_and_hash_is_stable():
    cfg = resolve_config({"training": {"learning_rate": "5e-4"}})
    assert resolve_config(yaml.safe_load(dump_config(cfg))) == cfg
    digest = config_hash(cfg)
    assert len(digest) == 12 and int(digest, 16) >= 0
    assert config_hash(resolve_config({"training": {"learning_rate": 5e-4}})) == digest
    assert config_hash(resolve_config({})) != digest


# --------------------------------------------------------------------------- global inheritance


def test_global_keys_are_inherited_by_sections_that_list_them():
    cfg = resolve_config({"global": {"dropout": 0.25, "use_batch_norm": True}})
    for section in ("encoder", "classifier", "likelihood", "ddpm_backward"):
        assert cfg[section]["dropout"] == 0.25, section
    assert cfg["encoder"]["use_batch_norm"] is True
    assert cfg["classifier"]["use_batch_norm"] is True
    assert cfg["global"]["dropout"] == 0.25  # global is kept


def test_section_value_overrides_global():
    with pytest.warns(UserWarning, match="classifier.dropout"):  # read by no network
        cfg = resolve_config({"global": {"dropout": 0.25}, "classifier": {"dropout": 0.0}})
    assert cfg["classifier"]["dropout"] == 0.0
    assert cfg["encoder"]["dropout"] == 0.25


def test_n_diffusion_steps_is_one_number():
    cfg = resolve_config({"global": {"n_diffusion_steps": 50}})
    assert cfg["ddpm_forward"]["n_diffusion_steps"] == 50
    cfg = resolve_config({"ddpm_forward": {"n_diffusion_steps": 60}})
    assert cfg["global"]["n_diffusion_steps"] == 60
    assert "ddpm_forward.n_diffusion_steps: must be >= 2" in config_error(
        {"ddpm_forward": {"n_diffusion_steps": 1}}
    )
    message = config_error(
        {"global": {"n_diffusion_steps": 50}, "ddpm_forward": {"n_diffusion_steps": 60}}
    )
    assert "ddpm_forward.n_diffusion_steps" in message
    assert "global.n_diffusion_steps" in message


# --------------------------------------------------------------------------- numbers


@pytest.mark.parametrize("text", ["1e-3", "1E-3", "+1e-3", "0.001", "1.0e-3"])
def test_exponent_written_without_a_dot_is_a_float(tmp_path, text):
    file = tmp_path / "c.yaml"
    file.write_text(f"training:\n  learning_rate: {text}\n")
    assert yaml.safe_load(file.read_text())["training"]["learning_rate"] is not None
    cfg = load_config(file)
    assert isinstance(cfg["training"]["learning_rate"], float)
    assert cfg["training"]["learning_rate"] == pytest.approx(1e-3)


def test_int_for_float_and_integral_float_for_int():
    cfg = resolve_config({"training": {"classification_weight": 10, "batch_size": 256.0}})
    assert cfg["training"]["classification_weight"] == 10.0
    assert isinstance(cfg["training"]["classification_weight"], float)
    assert cfg["training"]["batch_size"] == 256
    assert isinstance(cfg["training"]["batch_size"], int)
    assert (
        resolve_config({"inference": {"library_size": "1e4"}})["inference"]["library_size"] == 1e4
    )


def test_non_integral_float_for_int_is_an_error():
    message = config_error({"training": {"batch_size": 2.5}})
    assert "training.batch_size: expected an integer, got 2.5" in message


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"training": {"learning_rate": True}}, "training.learning_rate: expected a number"),
        ({"global": {"latent_dim": False}}, "global.latent_dim: expected an integer"),
    ],
)
def test_bools_are_not_numbers(raw, expected):
    assert expected in config_error(raw)


# --------------------------------------------------------------------------- error messages


def test_unknown_key_suggests_the_close_one():
    message = config_error({"training": {"batch_szie": 64}})
    assert message == ("config.yaml: training.batch_szie: unknown key (did you mean 'batch_size'?)")


def test_key_in_the_wrong_section_names_its_section():
    message = config_error({"global": {"learning_rate": 1e-3}})
    assert "global.learning_rate: unknown key" in message
    assert "training.learning_rate" in message


def test_unknown_section():
    message = config_error({"trainig": {"batch_size": 64}})
    assert message == "config.yaml: trainig: unknown section (did you mean 'training'?)"


def test_legacy_empty_sections_accept_no_keys():
    assert "elbo.beta: unknown key" in config_error({"elbo": {"beta": 1.0}})
    assert "variational_posterior.x: unknown key" in config_error(
        {"variational_posterior": {"x": 1}}
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            {"training": {"learning_rate": "abc"}},
            "training.learning_rate: expected a number or null, got 'abc'",
        ),
        ({"training": {"batch_size": "big"}}, "training.batch_size: expected an integer"),
        ({"global": {"supervised": "maybe"}}, "global.supervised: expected true or false"),
        ({"data": {"batch_key": 3}}, "data.batch_key: expected a non-empty string, got 3"),
        ({"encoder": {"hidden_dims": 128}}, "encoder.hidden_dims: expected a list of integers"),
        ({"encoder": {"hidden_dims": [64, "x"]}}, "encoder.hidden_dims[1]: expected an integer"),
        (
            {"training": {"kl_warmup_epochs": None}},
            "training.kl_warmup_epochs: expected an integer, got null",
        ),
        ({"global": {"dropout": None}}, "global.dropout: expected a number, got null"),
        ({"data": "x.h5ad"}, "data: expected a mapping of keys"),
    ],
)
def test_wrong_type(raw, expected):
    assert expected in config_error(raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"training": {"learning_rate": -1}}, "training.learning_rate: must be > 0, got -1"),
        ({"global": {"dropout": 1}}, "global.dropout: must be >= 0 and < 1, got 1"),
        ({"training": {"batch_size": 1}}, "training.batch_size: must be >= 2, got 1"),
        ({"data": {"val_fraction": 0.6}}, "data.val_fraction: must be >= 0 and <= 0.5"),
        ({"global": {"n_diffusion_steps": 1}}, "global.n_diffusion_steps: must be >= 2"),
        ({"encoder": {"hidden_dims": [64, 0]}}, "encoder.hidden_dims[1]: must be > 0, got 0"),
        ({"encoder": {"hidden_dims": []}}, "encoder.hidden_dims: expected a list of integers"),
        ({"likelihood": {"n_layers": 0}}, "likelihood.n_layers: must be >= 1"),
        (
            {"training": {"learning_rate": float("nan")}},
            "training.learning_rate: expected a finite",
        ),
        (
            {"ddpm_forward": {"beta_min": 0.1, "beta_max": 0.05}},
            "ddpm_forward.beta_max: must be > ddpm_forward.beta_min",
        ),
        ({"ddpm_forward": {"beta_max": 1.0}}, "ddpm_forward.beta_max: must be > 0 and < 1"),
        (
            {"ddpm_backward": {"timestep_embed_dim": 33}},
            "ddpm_backward.timestep_embed_dim: must be even",
        ),
        (
            {"prior": {"cell_type_prior_probs": [0.5, -0.1]}},
            "prior.cell_type_prior_probs[1]: must be >= 0",
        ),
        ({"prior": {"cell_type_prior_probs": [0, 0]}}, "prior.cell_type_prior_probs: must not"),
        (
            {"inference": {"default_target_batch": -1}},
            "inference.default_target_batch: must be >= 0",
        ),
    ],
)
def test_out_of_range(raw, expected):
    assert expected in config_error(raw)


def test_enum_typo_lists_choices_and_suggests():
    message = config_error({"ddpm_forward": {"beta_schedule": "cosin"}})
    assert message == (
        "config.yaml: ddpm_forward.beta_schedule: must be one of 'linear', 'cosine', "
        "'quadratic', got 'cosin' (did you mean 'cosine'?)"
    )


def test_optional_enum_accepts_null():
    assert resolve_config({"training": {"lr_scheduler": None}})["training"]["lr_scheduler"] is None
    assert (
        resolve_config({"training": {"lr_scheduler": "none"}})["training"]["lr_scheduler"] is None
    )
    message = config_error({"training": {"lr_scheduler": "cosin"}})
    assert "must be one of null, 'cosine', 'step', 'plateau'" in message


def test_null_only_where_optional():
    cfg = resolve_config({"global": {"n_genes": None}, "training": {"grad_clip_norm": None}})
    assert cfg["global"]["n_genes"] is None and cfg["training"]["grad_clip_norm"] is None
    assert "training.seed: expected an integer, got null" in config_error(
        {"training": {"seed": None}}
    )


def test_default_target_batch_takes_an_index_or_a_name():
    assert (
        resolve_config({"inference": {"default_target_batch": "10x"}})["inference"][
            "default_target_batch"
        ]
        == "10x"
    )
    assert (
        resolve_config({"inference": {"default_target_batch": 2}})["inference"][
            "default_target_batch"
        ]
        == 2
    )


def test_refinement_steps_cannot_exceed_diffusion_steps():
    message = config_error({"inference": {"n_refinement_steps": 500}})
    assert "inference.n_refinement_steps" in message
    assert "global.n_diffusion_steps (400)" in message
    assert "got 500" in message
    # the default follows a smaller T instead of failing
    cfg = resolve_config({"global": {"n_diffusion_steps": 50}})
    assert cfg["inference"]["n_refinement_steps"] == 50


def test_refinement_sampling_steps_cannot_exceed_refinement_steps():
    message = config_error({"inference": {"n_refinement_sampling_steps": 101}})
    assert "inference.n_refinement_sampling_steps" in message
    assert "inference.n_refinement_steps (100)" in message and "got 101" in message
    cfg = resolve_config({"inference": {"n_refinement_sampling_steps": 25}})
    assert cfg["inference"]["n_refinement_sampling_steps"] == 25
    assert resolve_config({})["inference"]["n_refinement_sampling_steps"] is None


# --------------------------------------------------------------------------- warnings


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"data": {"log_transform": True}}, "data.log_transform has no effect"),
        ({"data": {"normalize": False}}, "data.normalize has no effect"),
        ({"classifier": {"batch_embed_dim": 32}}, "classifier.batch_embed_dim has no effect"),
        ({"prior": {"batch_prior_probs": [0.5, 0.5]}}, "prior.batch_prior_probs has no effect"),
        ({"global": {"eps": 1e-8}}, "global.eps has no effect"),
        ({"likelihood": {"use_library_size": True}}, "likelihood.use_library_size has no effect"),
        ({"ddpm_backward": {"celltype_embed_dim": 32}}, "celltype_embed_dim has no effect"),
        ({"training": {"log_interval": 10}}, "training.log_interval has no effect"),
    ],
)
def test_legacy_keys_are_accepted_with_a_warning(raw, expected):
    with pytest.warns(UserWarning, match=expected):
        resolve_config(raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"encoder": {"dropout": 0.3}}, r"encoder.dropout \(0.3\) has no effect.*global.dropout"),
        ({"classifier": {"use_batch_norm": True}}, "classifier.use_batch_norm"),
        ({"likelihood": {"dropout": 0.0}}, "likelihood.dropout"),
    ],
)
def test_per_network_copies_that_no_network_reads_warn_when_they_differ(raw, expected):
    with pytest.warns(UserWarning, match=expected):
        resolve_config(raw)


def test_per_network_copies_equal_to_the_global_value_do_not_warn():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resolve_config({"global": {"dropout": 0.2}, "encoder": {"dropout": 0.2}})


def test_learned_reverse_variance_is_refused_until_it_exists():
    with pytest.raises(
        ConfigError, match="ddpm_backward.variance_type.*learned is not implemented"
    ):
        resolve_config({"ddpm_backward": {"variance_type": "learned"}})


def test_defaults_raise_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resolve_config({})
        resolve_config({"data": {"log_transform": None}})


# --------------------------------------------------------------------------- sessions


def sessions_config(*entries, **training) -> dict:
    return resolve_config(
        {"training": {"sessions": list(entries), **training}}, source="config.yaml"
    )


def test_session_defaults_and_resume_chain():
    cfg = sessions_config(
        {"data_path": "a.h5ad"},
        {"data_path": "b.h5ad", "supervised": False, "n_epochs": 5},
        {"data_path": "c.h5ad", "output_checkpoint": "out/c.pt"},
        {"data_path": "d.h5ad"},
        n_epochs=30,
        learning_rate=5e-4,
        freeze="none",
    )
    sessions = session_list(cfg)
    assert [s["name"] for s in sessions] == ["session_1", "session_2", "session_3", "session_4"]
    assert [s["supervised"] for s in sessions] == [True, False, True, True]
    assert [s["n_epochs"] for s in sessions] == [30, 5, 30, 30]
    assert all(s["learning_rate"] == 5e-4 and s["freeze"] == "none" for s in sessions)
    assert all(s["val_data_path"] is None for s in sessions)
    outputs = [s["output_checkpoint"] for s in sessions]
    assert outputs == [
        "checkpoints/session_1_best.pt",
        "checkpoints/session_2_best.pt",
        "out/c.pt",
        "checkpoints/session_4_best.pt",
    ]
    assert [s["resume_from"] for s in sessions] == [None, *outputs[:3]]


def test_session_explicit_resume_from_wins_and_null_starts_fresh():
    sessions = session_list(
        sessions_config(
            {"data_path": "a.h5ad", "resume_from": "old.pt"},
            {"data_path": "b.h5ad", "resume_from": None},
        )
    )
    assert sessions[0]["resume_from"] == "old.pt"
    assert sessions[1]["resume_from"] is None


def test_session_values_are_converted():
    (session,) = session_list(sessions_config({"data_path": "a.h5ad", "learning_rate": "1e-4"}))
    assert session["learning_rate"] == 1e-4


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        (
            [{"data_path": "a"}, {"data_path": "b"}, {"data_path": "c", "foo": 1}],
            "training.sessions[2].foo: unknown key",
        ),
        (
            [{"data_path": "a", "supervsied": True}],
            "training.sessions[0].supervsied: unknown key (did you mean 'supervised'?)",
        ),
        ([{"name": "x"}], "training.sessions[0].data_path: required"),
        ([{"data_path": "a", "n_epochs": 0}], "training.sessions[0].n_epochs: must be >= 1"),
        (["a.h5ad"], "training.sessions[0]: expected a mapping"),
        (
            [{"data_path": "a", "name": "s"}, {"data_path": "b", "name": "s"}],
            "training.sessions[1].name",
        ),
        (
            [
                {"data_path": "a", "output_checkpoint": "x.pt"},
                {"data_path": "b", "output_checkpoint": "./x.pt"},
            ],
            "training.sessions[1].output_checkpoint",
        ),
    ],
)
def test_session_errors(entries, expected):
    assert expected in config_error({"training": {"sessions": entries}})


def test_session_list_needs_sessions():
    with pytest.raises(ConfigError, match="training.sessions"):
        session_list(resolve_config({}))


# --------------------------------------------------------------------------- files


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value) and "not found" in str(info.value)


def test_invalid_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("global:\n  latent_dim: 10\ntraining:\n  batch_size: [1, 2\n  seed: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    assert "not valid YAML" in message and "line " in message


def test_top_level_must_be_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level"):
        load_config(path)


def test_errors_from_files_name_the_file(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("training:\n  batch_szie: 64\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: training.batch_szie: unknown key")


def test_overrides_apply_before_resolution(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("global:\n  dropout: 0.2\n")
    cfg = load_config(path, overrides={"training.seed": 7, "global.dropout": 0.3})
    assert cfg["training"]["seed"] == 7
    assert cfg["encoder"]["dropout"] == 0.3
    with pytest.raises(ConfigError, match="training.sede: unknown key"):
        load_config(path, overrides={"training.sede": 7})


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_configs_resolve(path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cfg = load_config(path)
    assert set(cfg) == set(SCHEMA)


def test_shipped_files_exist():
    names = {p.name for p in SHIPPED}
    assert {"config.yaml", "sess1.yaml", "sess2.yaml", "sess3.yaml", "sess4.yaml"} <= names
    assert "sequential.yaml" in names


def test_shipped_config_trains_as_shipped_and_shows_the_seed_paths():
    """The seed's Quick Start trains with config.yaml as shipped: its data paths name the
    built-in dataset, and its comments show the seed's ./data/*.h5ad paths to adjust."""
    data = load_config(ROOT / "config.yaml")["data"]
    assert data["train_data_path"] == data["test_data_path"] == "builtin:simulated"
    assert data["val_data_path"] is None
    text = (ROOT / "config.yaml").read_text()
    assert "./data/train.h5ad" in text and "./data/test.h5ad" in text


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_session_examples_chain(k):
    cfg = load_config(ROOT / "examples" / f"sess{k}.yaml")
    training = cfg["training"]
    assert cfg["global"]["supervised"] is (k % 2 == 1)
    assert training["output_checkpoint"] == f"checkpoints/session_{k}_best.pt"
    expected = None if k == 1 else f"checkpoints/session_{k - 1}_best.pt"
    assert training["resume_from"] == expected


def test_sequential_example():
    sessions = session_list(load_config(ROOT / "examples" / "sequential.yaml"))
    assert len(sessions) == 4
    assert [s["supervised"] for s in sessions] == [True, False, True, False]
    for previous, session in zip(sessions, sessions[1:], strict=False):
        assert session["resume_from"] == previous["output_checkpoint"]
    assert sessions[0]["resume_from"] is None
