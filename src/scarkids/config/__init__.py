"""The ``config.yaml`` schema (every key, its type and default) and its loader."""

from scarkids.config.load import (
    apply_overrides,
    config_hash,
    dump_config,
    load_config,
    resolve_config,
    session_list,
)
from scarkids.config.schema import SCHEMA

__all__ = [
    "SCHEMA",
    "apply_overrides",
    "config_hash",
    "dump_config",
    "load_config",
    "resolve_config",
    "session_list",
]
