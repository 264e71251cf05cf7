"""``--mode train`` and ``--mode sequential``: data, model, training, checkpoints and logs.

One function, :func:`train_session`, runs a training session from a resolved config; a plain
``train`` run is one session and ``sequential`` runs the config's session list in order, each
exactly like a ``sessK.yaml`` run. Every epoch writes ``last.pt`` (with the optimizer and RNG
state) so an interrupted run continues where it stopped when the same command is run again.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scarkids.cli import report
from scarkids.cli.common import (
    DeferredLog,
    check_writable_dir,
    require,
    training_hash,
    versions,
)
from scarkids.cli.inputs import check_categories, read_training_file, read_validation_file
from scarkids.cli.logs import epoch_line, log_validation_metrics
from scarkids.cli.prepare import config_key, fingerprint
from scarkids.config.load import config_hash, session_list
from scarkids.config.translate import model_kwargs, n_labels, setup_kwargs, train_kwargs
from scarkids.constants import BEST_CHECKPOINT, LAST_CHECKPOINT
from scarkids.data.registry import sorted_categories as categories  # the one ordering rule
from scarkids.errors import CheckpointError, ConfigError, InputDataError, TrainingError
from scarkids.model import checkpoint

log = logging.getLogger("scarkids.run")


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; ``message`` says where the last completed epoch is."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def run_train(cfg: dict, *, config_path: str, fresh: bool = False, name: str | None = None) -> dict:
    """``--mode train``: one session (named after the config file), logged to training.log.

    The log file is created with the first checkpoint: a run stopped by its inputs writes
    nothing at all."""
    name = name or Path(config_path).stem
    with DeferredLog(cfg["training"]["log_dir"]) as run_log:
        return train_session(
            cfg, name=name, config_path=config_path, fresh=fresh, on_first_write=run_log.open
        )


def run_sequential(cfg: dict, *, config_path: str, fresh: bool = False) -> list[dict]:
    """``--mode sequential``: every session of ``training.sessions`` in order."""
    sessions = session_list(cfg, source=config_path)
    results = []
    with DeferredLog(cfg["training"]["log_dir"]) as run_log:
        for k, session in enumerate(sessions, 1):
            scfg = session_config(cfg, session)
            results.append(
                train_session(
                    scfg,
                    name=session["name"],
                    config_path=config_path,
                    fresh=fresh,
                    banner=f"Session {k}/{len(sessions)}: {session['name']}",
                    on_first_write=run_log.open,
                )
            )
        log.info("Sequential training done: %s", ", ".join(r["output"] for r in results))
    return results


def session_config(cfg: Mapping[str, Any], session: Mapping[str, Any]) -> dict:
    """The config of one session: the global config with the session's keys applied.

    Each session keeps ``last.pt`` and ``best_model.pt`` in ``<checkpoint_dir>/<name>/``.
    """
    out = copy.deepcopy(dict(cfg))
    out["data"]["train_data_path"] = session["data_path"]
    out["data"]["val_data_path"] = session["val_data_path"]
    out["global"]["supervised"] = session["supervised"]
    training = out["training"]
    for key in ("n_epochs", "learning_rate", "freeze", "resume_from", "output_checkpoint"):
        training[key] = session[key]
    training["checkpoint_dir"] = os.path.join(training["checkpoint_dir"], session["name"])
    training["sessions"] = None
    return out


@dataclass
class _Session:
    """Everything a training session has checked and read before its first epoch."""

    name: str
    cfg: dict
    config_path: str
    device: Any
    ckpt_dir: Path
    last_path: Path
    best_path: Path
    base: Any  # the model of training.resume_from, or None
    adata: Any
    val_adata: Any
    fingerprint: dict
    resume_hash: str
    #: the keyword arguments of SCARKIDS.train from the config, epochs, batch size, learning
    #: rate and device resolved
    train_kwargs: dict
    mode: str


def train_session(
    cfg: dict,
    *,
    name: str,
    config_path: str,
    fresh: bool = False,
    banner: str | None = None,
    on_first_write: Callable[[], Any] | None = None,
) -> dict:
    """Train one session from the resolved config ``cfg``; returns a summary dict.

    Four steps: prepare the inputs (every check before the first file is written), build
    or resume the model, fit, finalise (best checkpoint, metrics). ``on_first_write`` is
    called just before the first write (the end of the first epoch)."""
    with report.captured_warnings() as warned:
        session = _prepare_session(cfg, name=name, config_path=config_path, banner=banner)
        model, resume_state, freeze_from = _build_or_resume(session, fresh)
        extra = _provenance(session, freeze_from)
        state, seconds = _fit(session, model, resume_state, freeze_from, extra, on_first_write)
        result = _finalise(session, model, state, extra, seconds)
        if report.enabled(cfg):  # after the checkpoints it describes
            _write_report(session, model, result, warned, seconds)
    return result


def _write_report(session: _Session, model, result: dict, warned: list[str], seconds) -> None:
    """``report.html`` in the checkpoint folder; a failure is a warning, never the run's."""
    try:
        report.training_report(
            session.cfg,
            model,
            session.adata,
            out_dir=session.ckpt_dir,
            session=session.name,
            metrics=result["metrics"],
            warnings=list(warned),
            seconds=seconds,
            device=session.device,
            data_path=str(session.cfg["data"]["train_data_path"]),
            metrics_role="validation" if session.val_adata is not None else "train",
        )
    except Exception as e:  # the report describes the run; it is not part of its result
        log.warning("report.html not written (%s: %s)", type(e).__name__, e)


def _prepare_session(cfg: dict, *, name: str, config_path: str, banner: str | None) -> _Session:
    """Check paths, read and check the data files, decide the epoch budget."""
    from scarkids.compute.device import resolve_device
    from scarkids.train.settings import training_budget

    tr = cfg["training"]
    device = resolve_device(tr["device"])
    train_path = require(cfg, "data.train_data_path", "for training")
    ckpt_dir = _check_output_dirs(tr)
    kwargs = train_kwargs(cfg)  # warns about an unsupported scheduler before any work
    mode = "supervised" if kwargs["supervised"] else "unsupervised"
    if banner:
        epochs = kwargs["max_epochs"] or "auto (from the data size)"
        log.info("%s (%s), %s epochs", banner, mode, epochs)
    log.info(
        "scARKIDS %s | session %s | config %s (hash %s) | seed %d | device %s",
        versions()["scarkids"],
        name,
        config_path,
        config_hash(cfg),
        kwargs["seed"],
        device,
    )
    base = _starting_model(tr["resume_from"])
    labels_key = setup_kwargs(cfg)["labels_key"]
    genes = base.registry.gene_names if base is not None else None
    adata, n_file_genes = read_training_file(cfg, train_path, "train data file", labels_key, genes)
    genes = list(adata.var_names) if genes is None else genes
    val_adata = read_validation_file(cfg, labels_key, genes)
    check_categories(cfg, adata, val_adata, base, labels_key, train_path)
    _check_cluster_count(cfg, adata, val_adata, base, train_path)
    _log_data(cfg, train_path, adata, val_adata, n_file_genes, mode)

    resume_hash = training_hash(cfg)
    if base is not None:  # a session resumes only on top of the same starting weights
        resume_hash = f"{resume_hash}+{_weights_digest(base)}"
    budget = training_budget(
        kwargs["max_epochs"],
        kwargs["batch_size"],
        kwargs["learning_rate"],
        adata.n_obs,
        device.type,
        wording="config",
    )
    if "batch_size" in budget.reasons:  # automatic: a run resumes only at the size it began with
        resume_hash = f"{resume_hash}+batch_size={budget.batch_size}"
        log.info("Batch size %d (%s)", budget.batch_size, budget.reasons["batch_size"])
    if "max_epochs" in budget.reasons:
        log.info("Epochs: %d (%s)", budget.max_epochs, budget.reasons["max_epochs"])
    kwargs.update(
        max_epochs=budget.max_epochs,
        batch_size=budget.batch_size,
        learning_rate=budget.learning_rate,
        device=device,
    )
    return _Session(
        name=name,
        cfg=cfg,
        config_path=str(config_path),
        device=device,
        ckpt_dir=ckpt_dir,
        last_path=ckpt_dir / LAST_CHECKPOINT,
        best_path=ckpt_dir / BEST_CHECKPOINT,
        base=base,
        adata=adata,
        val_adata=val_adata,
        fingerprint=fingerprint(adata),
        resume_hash=resume_hash,
        train_kwargs=kwargs,
        mode=mode,
    )


def _check_output_dirs(tr: Mapping[str, Any]) -> Path:
    """The checkpoint folder (and the output checkpoint's), checked writable before any work."""
    ckpt_dir = check_writable_dir(tr["checkpoint_dir"], "training.checkpoint_dir")
    if tr["output_checkpoint"]:
        check_writable_dir(
            checkpoint.resolve_path(tr["output_checkpoint"]).parent, "training.output_checkpoint"
        )
    return ckpt_dir


def _starting_model(resume_from: str | None):
    """The model of ``training.resume_from`` (a previous session's), or None."""
    from scarkids.model.scarkids import SCARKIDS

    if resume_from is None:
        return None
    if not Path(resume_from).exists():
        raise ConfigError(
            f"training.resume_from: {resume_from} not found; train the previous "
            "session first or fix the path"
        )
    return SCARKIDS.load(resume_from, device="cpu")


def _log_data(cfg, train_path: str, adata, val_adata, n_file_genes: int, mode: str) -> None:
    data = cfg["data"]
    log.info(
        "Train data: %s: %d cells x %d genes (%d in the file) | %d batch(es) | %s",
        train_path,
        adata.n_obs,
        adata.n_vars,
        n_file_genes,
        len(categories(adata.obs[data["batch_key"]])),
        mode,
    )
    if val_adata is not None:
        log.info("Validation data: %s: %d cells", data["val_data_path"], val_adata.n_obs)
    else:
        log.info(
            "Validation data: %.0f%% of the train cells (data.val_fraction)",
            100 * data["val_fraction"],
        )


def _build_or_resume(session: _Session, fresh: bool):
    """The model to train: ``last.pt`` of this run (resume), the session's starting model,
    or a new one; and the number of batches whose parameters stay frozen."""
    freeze_from = None
    if session.base is not None:
        freeze_from = len(session.base.registry.batch_categories)
    model = resume_state = None
    if session.last_path.exists() and not fresh:
        model, resume_state, freeze_from = _try_resume(
            session.last_path, session.resume_hash, session.fingerprint, freeze_from
        )
    if model is None:
        if session.base is not None:
            model = session.base
            log.info("Starting from %s (%r)", session.cfg["training"]["resume_from"], model)
        else:
            model = _new_model(session.cfg, session.adata)
    model.extra = {}  # provenance of this run only, not of the checkpoint it started from
    return model, resume_state, freeze_from


def _provenance(session: _Session, freeze_from: int | None) -> dict:
    cfg = session.cfg
    return {
        "config": cfg,
        "config_hash": config_hash(cfg),
        "resume_hash": session.resume_hash,
        "config_path": session.config_path,
        "seed": session.train_kwargs["seed"],
        "session": session.name,
        "data_fingerprint": session.fingerprint,
        "versions": versions(),
        "n_epochs": session.train_kwargs["max_epochs"],
        "freeze_from": freeze_from,
    }


def _fit(session: _Session, model, resume_state, freeze_from, extra: dict, on_first_write):
    """Train, writing checkpoints every epoch; Ctrl-C says where the last epoch is."""
    kwargs = session.train_kwargs
    callback = _checkpointer(
        model,
        session.cfg["training"],
        extra,
        kwargs["max_epochs"],
        session.last_path,
        session.best_path,
        on_first_write,
        early_stopping=kwargs["early_stopping"],
    )
    log.info(
        "Training %d epochs | batch size %d | learning rate %g | checkpoints in %s",
        kwargs["max_epochs"],
        kwargs["batch_size"],
        kwargs["learning_rate"],
        session.ckpt_dir,
    )
    started = time.perf_counter()
    try:
        with (
            config_key("training.learning_rate", TrainingError),  # the loss became NaN
            config_key("training.checkpoint_dir", CheckpointError),  # the callback's writes
        ):
            model.train(
                adata=session.adata,
                validation_adata=session.val_adata,
                freeze_from=freeze_from,
                progress_bar=False,
                name=session.name,
                resume_state=resume_state,
                on_epoch_end=callback,
                **kwargs,
            )
    except KeyboardInterrupt:
        where = (
            f"{session.last_path} holds the last completed epoch"
            if session.last_path.exists()
            else "no epoch completed"
        )
        raise RunInterrupted(
            f"interrupted: {where}; run the same command again to resume"
        ) from None
    return model.training_state, time.perf_counter() - started


def _finalise(session: _Session, model, state, extra: dict, seconds: float) -> dict:
    """Write the final best checkpoint, log the selection and the validation metrics."""
    tr, data, kwargs = session.cfg["training"], session.cfg["data"], session.train_kwargs
    extra = {**extra, "complete": True, "best_epoch": state.best_epoch + 1}
    with config_key("training.checkpoint_dir"):
        model.save(session.best_path, extra=extra)
    if state.stopped_early:
        log.info(
            "Early stopping at epoch %d: no improvement for %d epochs",
            state.epoch,
            kwargs["early_stopping_patience"],
        )
    if kwargs["early_stopping"]:
        monitored = "val loss" if any(k.startswith("val_") for k in state.history) else "train loss"
        log.info(
            "Best epoch: %d (%s %.5g) -> %s | %.1f s",
            state.best_epoch + 1,
            monitored,
            state.best_loss,
            session.best_path,
            seconds,
        )
    else:
        log.info(
            "Final model: epoch %d (the last one: training.early_stopping is off) -> %s | %.1f s",
            state.epoch,
            session.best_path,
            seconds,
        )
    if model.registry.labels_are_clusters and model.registry.cluster_groups:
        log.info(
            "Clusters: %d (global.n_cell_types = %d is a maximum): %d of %d mixture components "
            "in use (those under 0.1%% of the cells are switched off), merged into clusters",
            len(model.label_names),
            model.registry.max_clusters,
            int(model.module.labels_in_use().sum()),
            len(model.registry.label_categories),
        )
    elif model.registry.labels_are_clusters:
        log.info(
            "Clusters in use: %d of %d (global.n_cell_types is a maximum; clusters holding "
            "under 0.1%% of the cells are switched off)",
            len(model.label_names),
            len(model.registry.label_categories),
        )
    output = str(session.best_path)
    if tr["output_checkpoint"]:
        with config_key("training.output_checkpoint"):
            output = str(model.save(tr["output_checkpoint"], extra=extra))
        log.info("Wrote %s (final model of session %s)", output, session.name)
    if session.val_adata is not None:
        metrics = log_validation_metrics(
            model, session.val_adata, data, kwargs["seed"], role="validation"
        )
    else:
        metrics = log_validation_metrics(model, session.adata, data, kwargs["seed"], role="train")
    return {
        "name": session.name,
        "output": output,
        "best_model": str(session.best_path),
        "epochs": state.epoch,
        "best_epoch": state.best_epoch + 1,
        "history": state.history,
        "metrics": metrics,
    }


# --------------------------------------------------------------------------- steps


def _check_cluster_count(cfg, adata, val_adata, base, source: str) -> None:
    """Unsupervised training clusters every cell into the model's label slots (k-means): it
    needs at least as many cells as clusters."""
    if cfg["global"]["supervised"]:
        return
    if base is not None:
        n_clusters = base.registry.max_clusters or len(base.registry.label_categories)
    else:
        n_clusters = n_labels(cfg)
    n_cells = adata.n_obs + (val_adata.n_obs if val_adata is not None else 0)
    if n_cells < n_clusters:
        raise InputDataError(
            f"{source}: {n_cells} cells, fewer than the {n_clusters} clusters of unsupervised "
            "training (global.n_cell_types); give more cells or lower global.n_cell_types"
        )


def _new_model(cfg, adata):
    from scarkids.model.scarkids import SCARKIDS

    model = SCARKIDS(adata, **model_kwargs(cfg))
    log.info("Model: %r", model)
    return model


def _try_resume(last_path: Path, thash: str, fp: dict, freeze_from):
    """The model and training state of ``last.pt`` when it belongs to this config and data."""
    from scarkids.model.scarkids import SCARKIDS

    try:
        payload = checkpoint.read(last_path)
    except CheckpointError as e:
        log.warning("%s; starting fresh", e)
        return None, None, freeze_from
    extra = payload.get("extra") or {}
    if payload.get("training_state") is None:
        reason = "it holds no training state"
    elif extra.get("resume_hash") != thash:
        reason = "it was written with a different config or seed"
    elif extra.get("data_fingerprint") != fp:
        reason = "it was trained on different data"
    else:
        try:
            model = SCARKIDS.from_payload(payload)
        except Exception as e:  # written by another version of the model code
            log.warning(
                "%s cannot be resumed (%s: %s); starting fresh", last_path, type(e).__name__, e
            )
            return None, None, freeze_from
        state = model.training_state
        log.info("Resuming from %s at epoch %d", last_path, state.epoch)
        return model, state, extra.get("freeze_from")
    log.info(
        "Not resuming from %s: %s; starting fresh (--fresh skips this check)", last_path, reason
    )
    return None, None, freeze_from


def _checkpointer(
    model,
    tr,
    extra: dict,
    n_epochs: int,
    last_path: Path,
    best_path: Path,
    on_first_write=None,
    *,
    early_stopping: bool = True,
):
    """The ``on_epoch_end`` callback: one log line, then best / last / periodic checkpoints.

    Without early stopping every epoch is "selected" (the final model is the last epoch):
    ``best_model.pt`` is then rewritten each epoch and the line carries no "best" mark."""
    interval = tr["checkpoint_interval"]

    def on_epoch_end(state, metrics: dict[str, float], is_best: bool) -> None:
        if on_first_write is not None:
            on_first_write()
        model.training_state, model.history = state, state.history
        log.info(epoch_line(state.epoch, n_epochs, metrics, is_best and early_stopping))
        tagged = {**extra, "epoch": state.epoch}
        if is_best:
            model.save(best_path, extra=tagged)
        if tr["save_last"]:
            model.save(last_path, include_training_state=True, extra=tagged)
        if interval and state.epoch % interval == 0:
            model.save(last_path.parent / f"checkpoint_epoch_{state.epoch}.pt", extra=tagged)

    return on_epoch_end


def _weights_digest(model) -> str:
    """Short hash of a model's weights (the starting point of a session)."""
    h = hashlib.sha256()
    for key, value in sorted(model.module.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]
