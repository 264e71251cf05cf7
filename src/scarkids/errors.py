"""Exceptions that carry a one-line, user-facing message.

The command line turns any :class:`ScarkidsError` into that one line on stderr and exit
code 2 (no traceback unless ``--debug``). Messages name the file, key or column at fault and
say what to do.
"""

from __future__ import annotations


class ScarkidsError(Exception):
    """Base class of every error the user can fix by changing an input."""


class ConfigError(ScarkidsError):
    """A configuration file or a configuration value is invalid."""


class InputDataError(ScarkidsError):
    """An input AnnData file, matrix or obs column is unusable as given."""


class CheckpointError(ScarkidsError):
    """A checkpoint is missing, corrupted, or does not fit the data."""


class TrainingError(ScarkidsError):
    """Training could not continue (for example the loss became NaN)."""
