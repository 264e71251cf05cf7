"""Pieces shared by the command-line runs: config loading, logs, provenance, atomic files.

The runs themselves live in :mod:`scarkids.cli.train` (train, sessions) and
:mod:`scarkids.cli.infer` (inference).
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from scarkids.compute import distributed
from scarkids.config.load import config_hash, load_config
from scarkids.data.files import write_atomic, write_h5ad, write_json  # noqa: F401 (re-exported)
from scarkids.errors import ConfigError, InputDataError

#: the logger every run message goes to (console and ``training.log``)
RUN_LOGGER = "scarkids"
log = logging.getLogger("scarkids.run")

_FILE_FORMAT = "%(asctime)s | %(levelname)s | %(message)s"
#: training keys that change where files go or how long a run lasts, not what it computes
_NOT_TRAINING = {
    "n_epochs",
    "device",
    "sessions",
    "output_checkpoint",
    "log_interval",
    "checkpoint_interval",
    "checkpoint_dir",
    "log_dir",
    "save_last",
}


def read_config(path: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> dict:
    """:func:`scarkids.config.load_config`, its warnings sent to the run log."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = load_config(path, overrides)
    for w in caught:
        log.warning("%s", w.message)
    return cfg


def training_hash(cfg: Mapping[str, Any]) -> str:
    """Hash of what decides the trained weights: the config without the epoch budget, the
    device, the inference and the report sections. ``last.pt`` resumes only when this matches, so raising
    ``training.n_epochs`` continues a finished run instead of starting over."""
    core = dict(cfg)
    core.pop("inference", None)
    core.pop("report", None)
    core["data"] = {k: v for k, v in core["data"].items() if k != "test_data_path"}
    core["training"] = {k: v for k, v in core["training"].items() if k not in _NOT_TRAINING}
    return config_hash(core)


def versions() -> dict[str, str]:
    """Versions of scarkids and the libraries whose behaviour shapes the results."""
    out = {}
    for name in ("scarkids", "torch", "anndata", "scanpy", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def require(cfg: Mapping[str, Any], dotted: str, why: str) -> Any:
    """The value at ``section.key``, or a ConfigError saying it is needed."""
    section, key = dotted.split(".", 1)
    value = cfg[section][key]
    if value is None:
        raise ConfigError(f"{dotted}: required {why}; set it in the config file")
    return value


# --------------------------------------------------------------------------- logging


@contextlib.contextmanager
def console_logging(stream=None, level: int = logging.INFO) -> Iterator[None]:
    """Send the package's log records to ``stream`` (stdout) for one command, then undo it."""
    import sys

    logger = logging.getLogger(RUN_LOGGER)
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(_ConsoleFormatter())
    old = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old[0])
        logger.propagate = old[1]


class _ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {msg}"
        return msg


@contextlib.contextmanager
def file_logging(log_dir: str | os.PathLike, name: str = "training.log") -> Iterator[Path]:
    """Append the run's log records to ``<log_dir>/<name>`` while the block runs.

    The handler is removed afterwards, so sessions never write into each other's files twice.
    """
    handle = DeferredLog(log_dir, name)
    handle.open()
    with handle:
        yield handle.path


class DeferredLog:
    """``<log_dir>/<name>``, created only when the run first writes something that matters.

    Used as a context manager, it attaches to the package logger and keeps the run's records
    in memory until :meth:`open` is called (by the first checkpoint); then it writes them to
    the file and appends every later record. A run that fails on its inputs (a
    :class:`~scarkids.errors.ScarkidsError` other than a training failure) before that point
    leaves no log file behind; any other ending (an interrupt, a crash, a NaN loss) writes the
    records it holds, so the log explains what happened.
    """

    def __init__(self, log_dir: str | os.PathLike, name: str = "training.log"):
        self.path = Path(log_dir) / name
        check_writable_dir(self.path.parent, "training.log_dir (the training log folder)")
        self._buffer = _BufferHandler()
        self._file: logging.FileHandler | None = None

    def open(self) -> Path:
        """Create (append to) the log file and write the records held so far; idempotent."""
        if self._file is not None or not distributed.is_main_process():
            return self.path  # (in a distributed run rank 0 alone writes the log)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(self.path, encoding="utf-8")
        except OSError as e:
            raise InputDataError(
                f"{self.path}: cannot write the training log ({e.strerror}); set "
                "training.log_dir to a writable folder"
            ) from e
        handler.setFormatter(logging.Formatter(_FILE_FORMAT))
        for record in self._buffer.records:
            handler.handle(record)
        self._buffer.records.clear()
        logger = logging.getLogger(RUN_LOGGER)
        logger.removeHandler(self._buffer)
        logger.addHandler(handler)
        self._file = handler
        return self.path

    def __enter__(self) -> DeferredLog:
        if self._file is None:
            logging.getLogger(RUN_LOGGER).addHandler(self._buffer)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        from scarkids.errors import ScarkidsError, TrainingError

        logger = logging.getLogger(RUN_LOGGER)
        logger.removeHandler(self._buffer)
        input_error = isinstance(exc, ScarkidsError) and not isinstance(exc, TrainingError)
        if self._file is None and not input_error and self._buffer.records:
            with contextlib.suppress(ScarkidsError):
                self.open()
        if self._file is not None:
            logger.removeHandler(self._file)
            self._file.close()
        self._buffer.records.clear()


class _BufferHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


# --------------------------------------------------------------------------- files


def check_writable_dir(path: str | os.PathLike, what: str) -> Path:
    """Fail early unless files can be written in ``path`` (created later if missing)."""
    p = Path(path)
    probe_dir = p
    while not probe_dir.exists() and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent
    if probe_dir.exists() and not probe_dir.is_dir():
        raise InputDataError(f"{p}: {what} is not a folder ({probe_dir} is a file)")
    if not os.access(probe_dir, os.W_OK | os.X_OK):
        raise InputDataError(f"{p}: {what} is not writable; choose another folder")
    return p
