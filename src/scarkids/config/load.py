"""Read, validate and complete a scARKIDS ``config.yaml``.

:func:`load_config` reads a file; :func:`resolve_config` turns a raw mapping into a complete
config: every section of :data:`scarkids.config.schema.SCHEMA`, every key present, values
converted to their types. The first problem found raises :class:`~scarkids.errors.ConfigError`
with one line naming the file and the key in dotted form, for example
``config.yaml: training.batch_szie: unknown key (did you mean 'batch_size'?)``.

Resolution order for a key: the schema default, then (for keys that ``global`` also lists)
the value resolved in ``global``, then the section's own value.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import math
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

import yaml

from scarkids.config.schema import GLOBAL, INHERIT, SCHEMA, SESSION, Key
from scarkids.errors import ConfigError

__all__ = [
    "SCHEMA",
    "apply_overrides",
    "config_hash",
    "dump_config",
    "load_config",
    "resolve_config",
    "session_list",
]

# PyYAML (YAML 1.1) reads ``1e-3`` as a string because it has no dot; such strings are numbers.
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_EXPECTED = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "str": "a string",
    "int_list": "a list of integers",
    "float_list": "a list of numbers",
    "int_or_str": "a batch index (integer) or a batch name (string)",
    "list": "a list",
}


# --------------------------------------------------------------------------- public API


def load_config(path: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> dict:
    """Read the YAML file at ``path`` and return the resolved config.

    ``overrides`` maps dotted keys to values (``{"training.seed": 7}``) and is applied to the
    file's contents before resolution, so inherited keys and defaults follow it.

    Parameters
    ----------
    path
        The YAML file; an empty file is an empty config (all defaults).
    overrides
        ``{"section.key": value}`` set over the file's values; ``None``: none.

    Returns
    -------
    dict
        The resolved config (see :func:`resolve_config`).

    Raises
    ------
    ConfigError
        When the file is missing or unreadable, is not valid YAML or not a mapping, or a
        key or value is invalid; the message names the file and the key.
    """
    source = str(path)
    file = Path(path)
    if not file.exists():
        _fail(source, "", "config file not found")
    if file.is_dir():
        _fail(source, "", "is a directory, not a config file")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        _fail(source, "", f"cannot read config file ({type(exc).__name__}: {exc})", exc)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        _fail(source, "", f"not valid YAML: {where}{problem}", exc)
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        _fail(
            source,
            "",
            f"expected a mapping of sections (global:, data:, training:, ...) at the top "
            f"level, got {_show(raw)}",
        )
    if overrides:
        raw = apply_overrides(raw, overrides, source=source)
    return resolve_config(raw, source=source)


def apply_overrides(
    raw: Mapping[str, Any], overrides: Mapping[str, Any], *, source: str = "<config>"
) -> dict:
    """Return a copy of the raw mapping ``raw`` with ``{"section.key": value}`` set."""
    out = copy.deepcopy(dict(raw))
    for dotted, value in overrides.items():
        section, _, key = str(dotted).partition(".")
        if not key:
            _fail(source, dotted, "an override must name 'section.key'")
        body = out.get(section)
        if body is None:
            body = out[section] = {}
        elif not isinstance(body, Mapping):
            _fail(source, section, f"expected a mapping of keys, got {_show(body)}")
        else:
            body = out[section] = dict(body)
        body[key] = value
    return out


def resolve_config(raw: Mapping[str, Any], source: str = "<config>") -> dict:
    """Validate ``raw`` and return a new config with every section and key filled in.

    Parameters
    ----------
    raw
        The config as read from YAML: ``{section: {key: value}}``; absent sections and keys
        take their defaults. It is not modified.
    source
        Name of the config (usually its file path), at the start of every error message.

    Returns
    -------
    dict
        Every section of the schema with every key, values converted to their types, and
        ``training.sessions`` resolved as :func:`session_list` does (or ``None``).

    Raises
    ------
    ConfigError
        For the first unknown section or key, invalid value, or inconsistency found.
    """
    if not isinstance(raw, Mapping):
        _fail(source, "", f"expected a mapping of sections at the top level, got {_show(raw)}")
    for name in raw:
        if name not in SCHEMA:
            _fail(source, name, f"unknown section{_suggest(name, SCHEMA)}")
    bodies = {name: _section_body(raw, name, source) for name in SCHEMA}

    # T is one number: a value written only under ddpm_forward also sets global.
    steps_in = [n for n in ("global", "ddpm_forward") if "n_diffusion_steps" in bodies[n]]
    if steps_in == ["ddpm_forward"]:
        key, value = "ddpm_forward.n_diffusion_steps", bodies["ddpm_forward"]["n_diffusion_steps"]
        bodies["global"]["n_diffusion_steps"] = _check(
            GLOBAL["n_diffusion_steps"], value, key, source
        )

    cfg: dict[str, Any] = {"global": _resolve_section("global", bodies["global"], {}, source)}
    for name in SCHEMA:
        if name != "global":
            cfg[name] = _resolve_section(name, bodies[name], cfg["global"], source)

    _cross_check(cfg, bodies, source)
    cfg["training"]["sessions"] = _resolve_sessions(cfg, cfg["training"]["sessions"], source)
    _warn_legacy(cfg, source)
    return cfg


def session_list(cfg: Mapping[str, Any], source: str = "<config>") -> list[dict]:
    """The validated ``training.sessions`` of a resolved config, every key filled in.

    Defaults: ``name`` ``session_K``; ``supervised``, ``n_epochs``, ``learning_rate`` and
    ``freeze`` from the rest of the config; ``resume_from`` the previous session's
    ``output_checkpoint`` (none for session 1; an explicit ``null`` starts fresh);
    ``output_checkpoint`` ``<training.checkpoint_dir>/session_K_best.pt``.

    Parameters
    ----------
    cfg
        A resolved config (:func:`load_config`, :func:`resolve_config`).
    source
        Name of the config (usually its file path), at the start of every error message.

    Returns
    -------
    list of dict
        One dict per session, with every session key.

    Raises
    ------
    ConfigError
        When there are no sessions, a session lacks ``data_path``, has an unknown key or an
        invalid value, or two sessions share a ``name`` or an ``output_checkpoint``.
    """
    entries = cfg["training"].get("sessions")
    if not entries:
        _fail(source, "training.sessions", "--mode sequential needs a list of sessions; none set")
    return _resolve_sessions(cfg, entries, source)


def dump_config(cfg: Mapping[str, Any]) -> str:
    """YAML text of ``cfg``, sections in schema order; it loads back to the same config."""
    return yaml.safe_dump(
        _plain(cfg), sort_keys=False, default_flow_style=False, allow_unicode=True, width=100
    )


def config_hash(cfg: Mapping[str, Any]) -> str:
    """First 12 hex digits of the sha256 of ``cfg`` as canonical JSON (sorted keys)."""
    text = json.dumps(_plain(cfg), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


# --------------------------------------------------------------------------- resolution


def _section_body(raw: Mapping[str, Any], name: str, source: str) -> dict:
    body = raw.get(name)
    if body is None:  # absent, or written as an empty "section:" line
        return {}
    if name == "report" and isinstance(body, bool):  # "report: false" switches it off
        body = {"enabled": body}
    if not isinstance(body, Mapping):
        _fail(source, name, f"expected a mapping of keys, got {_show(body)}")
    table = SCHEMA[name]
    for key in body:
        if key not in table:
            _fail(source, f"{name}.{key}", f"unknown key{_suggest(key, table, section=name)}")
    return dict(body)


def _resolve_section(name: str, body: Mapping, glob: Mapping, source: str) -> dict:
    out = {}
    for key, spec in SCHEMA[name].items():
        if spec is INHERIT:
            spec, default = GLOBAL[key], glob[key]
        else:
            default = copy.deepcopy(spec.default)
            if spec.kind == "section":
                default = {k: copy.deepcopy(f.default) for k, f in spec.fields.items()}
        out[key] = _check(spec, body[key], f"{name}.{key}", source) if key in body else default
    return out


def _cross_check(cfg: dict, bodies: dict, source: str) -> None:
    steps = cfg["global"]["n_diffusion_steps"]
    fwd = cfg["ddpm_forward"]
    if fwd["n_diffusion_steps"] != steps:
        _fail(
            source,
            "ddpm_forward.n_diffusion_steps",
            f"{fwd['n_diffusion_steps']} disagrees with global.n_diffusion_steps ({steps}); "
            "set it in one place",
        )
    if fwd["beta_max"] <= fwd["beta_min"]:
        _fail(
            source,
            "ddpm_forward.beta_max",
            f"must be > ddpm_forward.beta_min ({_num(fwd['beta_min'])}), "
            f"got {_num(fwd['beta_max'])}",
        )
    if cfg["ddpm_backward"]["variance_type"] == "learned":
        _fail(
            source,
            "ddpm_backward.variance_type",
            "learned is not implemented; use fixed (the reverse variance beta_t)",
        )
    dim = cfg["ddpm_backward"]["timestep_embed_dim"]
    if dim % 2:
        _fail(source, "ddpm_backward.timestep_embed_dim", f"must be even, got {dim}")
    probs = cfg["prior"]["cell_type_prior_probs"]
    if probs is not None and sum(probs) <= 0:
        _fail(source, "prior.cell_type_prior_probs", f"must not sum to 0, got {probs}")
    inf = cfg["inference"]
    if "n_refinement_steps" not in bodies["inference"]:
        inf["n_refinement_steps"] = min(inf["n_refinement_steps"], steps)
    elif inf["n_refinement_steps"] > steps:
        _fail(
            source,
            "inference.n_refinement_steps",
            f"must be <= global.n_diffusion_steps ({steps}), got {inf['n_refinement_steps']}",
        )
    sampling = inf["n_refinement_sampling_steps"]
    if sampling is not None and sampling > inf["n_refinement_steps"]:
        _fail(
            source,
            "inference.n_refinement_sampling_steps",
            f"must be <= inference.n_refinement_steps ({inf['n_refinement_steps']}), got {sampling}",
        )


#: per-network copies of global keys that no network reads: the model has one dropout rate
#: (``global.dropout``) and its norm is ``encoder.use_batch_norm`` / ``use_layer_norm``
UNREAD_COPIES = (
    ("encoder", "dropout"),
    ("encoder", "eps"),
    ("classifier", "dropout"),
    ("classifier", "use_batch_norm"),
    ("classifier", "use_layer_norm"),
    ("likelihood", "dropout"),
    ("ddpm_backward", "dropout"),
)


def _warn_legacy(cfg: dict, source: str) -> None:
    for name, table in SCHEMA.items():
        for key, spec in table.items():
            if spec.legacy and cfg[name][key] is not None:
                warnings.warn(f"{source}: {spec.legacy}", UserWarning, stacklevel=3)
    for name, key in UNREAD_COPIES:
        if cfg[name][key] != cfg["global"][key]:
            warnings.warn(
                f"{source}: {name}.{key} ({cfg[name][key]!r}) has no effect: the model reads "
                f"global.{key} ({cfg['global'][key]!r}); set that instead",
                UserWarning,
                stacklevel=3,
            )


def _resolve_sessions(cfg: Mapping, entries: list | None, source: str) -> list[dict] | None:
    if entries is None:
        return None
    training = cfg["training"]
    out: list[dict] = []
    previous_output = None
    for i, entry in enumerate(entries):
        base = f"training.sessions[{i}]"
        if not isinstance(entry, Mapping):
            _fail(source, base, f"expected a mapping with at least data_path, got {_show(entry)}")
        for key in entry:
            if key not in SESSION:
                _fail(
                    source, f"{base}.{key}", f"unknown key{_suggest(key, SESSION, elsewhere=False)}"
                )
        if entry.get("data_path") is None:
            _fail(source, f"{base}.data_path", "required: the .h5ad file this session trains on")
        defaults = {
            "name": f"session_{i + 1}",
            "val_data_path": None,
            "supervised": cfg["global"]["supervised"],
            "n_epochs": training["n_epochs"],
            "learning_rate": training["learning_rate"],
            "resume_from": previous_output,
            "output_checkpoint": os.path.normpath(
                os.path.join(training["checkpoint_dir"], f"session_{i + 1}_best.pt")
            ),
            "freeze": training["freeze"],
        }
        session = {
            key: _check(spec, entry[key], f"{base}.{key}", source)
            if key in entry
            else defaults[key]
            for key, spec in SESSION.items()
        }
        for field in ("name", "output_checkpoint"):
            for j, other in enumerate(out):
                if os.path.normpath(other[field]) == os.path.normpath(session[field]):
                    _fail(
                        source,
                        f"{base}.{field}",
                        f"{session[field]!r} is already used by training.sessions[{j}]",
                    )
        previous_output = session["output_checkpoint"]
        out.append(session)
    return out


# --------------------------------------------------------------------------- values


def _check(spec: Key, value: Any, key: str, source: str) -> Any:
    """``value`` converted to ``spec``'s type, or a ConfigError naming ``key``."""
    if value is None and spec.kind == "section":  # "section:" with nothing under it
        value = {}
    if value is None:
        if spec.optional:
            return None
        _fail(source, key, f"expected {_expected(spec)}, got null")
    kind = spec.kind
    if kind == "section":
        if not isinstance(value, Mapping):
            _fail(source, key, f"expected a mapping of keys, got {_show(value)}")
        for sub in value:
            if sub not in spec.fields:
                names = ", ".join(spec.fields)
                _fail(source, f"{key}.{sub}", f"unknown key; the keys here are {names}")
        return {
            k: _check(f, value[k], f"{key}.{k}", source) if k in value else copy.deepcopy(f.default)
            for k, f in spec.fields.items()
        }
    if kind == "bool":
        if not isinstance(value, bool):
            _fail(source, key, f"expected true or false, got {_show(value)}")
        return value
    if kind == "str":
        if not isinstance(value, str) or not value:
            _fail(source, key, f"expected a non-empty string, got {_show(value)}")
        return value
    if kind == "enum":
        if None in spec.choices and isinstance(value, str) and value.lower() in ("none", "null"):
            return None
        if not isinstance(value, str) or value not in spec.choices:
            names = [c for c in spec.choices if c is not None]
            hint = _suggest(value, names, elsewhere=False) if isinstance(value, str) else ""
            _fail(source, key, f"must be {_expected(spec)}, got {_show(value)}{hint}")
        return value
    if kind in ("int", "float"):
        return _number(spec, value, key, source)
    if kind == "int_or_str":
        if isinstance(value, str) and not _NUMBER.fullmatch(value.strip()):
            return value
        return _number(Key("int", ge=spec.ge), value, key, source)
    if not isinstance(value, list | tuple):
        _fail(source, key, f"expected {_expected(spec)}, got {_show(value)}")
    if kind == "list":
        return copy.deepcopy(list(value))
    if not value:
        _fail(source, key, f"expected {_expected(spec)}, got an empty list")
    item = Key("int" if kind == "int_list" else "float", gt=spec.gt, ge=spec.ge)
    return [_number(item, v, f"{key}[{i}]", source) for i, v in enumerate(value)]


def _number(spec: Key, value: Any, key: str, source: str) -> int | float:
    as_int = spec.kind == "int"
    number = value
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        text = value.strip()
        number = int(text) if text.lstrip("+-").isdigit() else float(text)
    if isinstance(number, bool) or not isinstance(number, int | float):
        _fail(source, key, f"expected {_expected(spec)}, got {_show(value)}")
    if not math.isfinite(number):
        _fail(source, key, f"expected a finite number, got {_show(value)}")
    shown = _num(number)
    if as_int:
        if isinstance(number, float) and not number.is_integer():
            _fail(source, key, f"expected an integer, got {_show(value)}")
        number = int(number)
    else:
        number = float(number)
    bounds = [
        (spec.gt, ">", number > spec.gt if spec.gt is not None else True),
        (spec.ge, ">=", number >= spec.ge if spec.ge is not None else True),
        (spec.lt, "<", number < spec.lt if spec.lt is not None else True),
        (spec.le, "<=", number <= spec.le if spec.le is not None else True),
    ]
    if not all(ok for _, _, ok in bounds):
        rule = " and ".join(f"{op} {_num(b)}" for b, op, _ in bounds if b is not None)
        _fail(source, key, f"must be {rule}, got {shown}")
    return number


# --------------------------------------------------------------------------- messages


def _fail(source: str, key: str, message: str, cause: BaseException | None = None) -> NoReturn:
    text = f"{source}: {key}: {message}" if key else f"{source}: {message}"
    raise ConfigError(" ".join(text.splitlines())) from cause


def _suggest(word: Any, candidates, *, section: str | None = None, elsewhere: bool = True) -> str:
    """' (did you mean ...?)' for the same key in another section, or for a close match."""
    word = str(word)
    if elsewhere:
        for name, table in SCHEMA.items():
            if word in table and name != section:
                return f" (did you mean '{name}.{word}'?)"
    close = difflib.get_close_matches(word, [str(c) for c in candidates], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _expected(spec: Key) -> str:
    if spec.kind == "enum":
        return "one of " + ", ".join("null" if c is None else repr(c) for c in spec.choices)
    text = _EXPECTED[spec.kind]
    return f"{text} or null" if spec.optional else text


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "a mapping"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _num(x: int | float) -> str:
    if isinstance(x, int):
        return str(x)
    return f"{x:g}" if (abs(x) >= 1e5 or (x and abs(x) < 1e-3)) else repr(x)


def _plain(value: Any) -> Any:
    """Plain dicts, lists and scalars, so YAML and JSON output is canonical."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
