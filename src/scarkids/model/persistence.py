"""Saving and loading a model: one checkpoint payload (weights, registry, settings, history).

A mixin of :class:`scarkids.model.SCARKIDS`; the file format is in :mod:`scarkids.model.checkpoint`.
"""

from __future__ import annotations

import os

import torch

from scarkids import __version__
from scarkids._docs import doc_params
from scarkids.compute.device import resolve_device
from scarkids.data.registry import Registry
from scarkids.model import checkpoint
from scarkids.module.vae import SCARKIDSModule
from scarkids.train.state import TrainingState


@doc_params
class ModelPersistence:
    """``save`` / ``load`` and the payload behind them (see :class:`SCARKIDS`)."""

    def state_payload(
        self, *, include_training_state: bool = False, extra: dict | None = None
    ) -> dict:
        """The checkpoint payload of this model: what :meth:`save` writes.

        Parameters
        ----------
        include_training_state
            Also store the state of the last training run (``training_state``: optimiser
            moments, random number generator states, history, early-stopping counters), so
            that training can resume; ignored when the model has no training state.
        extra
            Entries merged over the model's own ``extra`` dict (the new values win) and stored
            with it, for example run provenance; ``None`` adds nothing.

        Returns
        -------
        dict
            ``format``, ``format_version``, ``package_version``, ``torch_version``,
            ``init_params`` (the constructor's keywords plus ``n_genes``, ``n_batches`` and
            ``n_labels``), ``registry``, ``state_dict`` (CPU tensors), ``history``,
            ``is_trained``, ``extra``, ``library_sizes`` (per batch: mean, sd and number of the
            log library sizes, for :meth:`generate`), ``library_sizes_by_type`` (the same
            per cell type and batch), ``calibration`` (the classifier's
            temperature and the validation cells' novelty, see :meth:`novelty`) and, when asked for and present, ``training_state``.
        """
        payload = {
            "format": checkpoint.FORMAT,
            "format_version": checkpoint.FORMAT_VERSION,
            "package_version": __version__,
            "torch_version": str(torch.__version__),
            "init_params": {
                **self.init_params,
                "n_genes": len(self.registry.gene_names),
                "n_batches": len(self.registry.batch_categories),
                "n_labels": self.module.n_labels,
            },
            "registry": self.registry.to_dict(),
            "state_dict": {k: v.detach().cpu() for k, v in self.module.state_dict().items()},
            "history": self.history,
            "is_trained": self.is_trained,
            "extra": {**self.extra, **(extra or {})},
            "library_sizes": dict(getattr(self, "library_sizes", {})),
            "library_sizes_by_type": dict(getattr(self, "library_sizes_by_type", {})),
            "calibration": dict(getattr(self, "calibration", {})),
        }
        if include_training_state and self.training_state is not None:
            payload["training_state"] = _to_cpu(self.training_state.to_dict())
        return payload

    def save(
        self,
        path: str | os.PathLike,
        *,
        include_training_state: bool = False,
        extra: dict | None = None,
    ):
        """Write one checkpoint file (``path`` ending in ``.pt``, or a directory ->
        ``<dir>/model.pt``), atomically. Returns the file path.

        The payload is :meth:`state_payload`, written to a temporary file beside ``path`` and
        renamed over it, so a reader never sees a half-written checkpoint. In a distributed
        run only rank 0 writes.

        Parameters
        ----------
        path
            File to write; an existing directory or a path without a suffix means
            ``<path>/model.pt``. Missing parent directories are created.
        include_training_state
            Also store the last training run's state, so that training can resume (see
            :meth:`state_payload`).
        extra
            Entries stored in the payload's ``extra`` dict, over the model's own; ``None``
            adds nothing.

        Returns
        -------
        pathlib.Path
            The checkpoint file.

        Raises
        ------
        CheckpointError
            When the file or its directory cannot be written.
        """
        return checkpoint.save(
            self.state_payload(include_training_state=include_training_state, extra=extra), path
        )

    @classmethod
    def load(cls, path: str | os.PathLike, adata=None, *, device: str | torch.device = "cpu"):
        """Rebuild a model from :meth:`save` output. ``adata`` (optional) becomes the default
        data; it is aligned to the stored genes and categories by name when used.

        Parameters
        ----------
        path
            Checkpoint file, or a directory (or a path without a suffix) holding
            ``model.pt``.
        adata
            AnnData the methods use when called without one; ``None`` sets none. It is not
            checked here.
        device
            Device the model is put on:
            {param_device}

        Returns
        -------
        SCARKIDS
            The model, in evaluation mode, with its registry, history, ``extra`` and (when
            saved) training state.

        Raises
        ------
        CheckpointError
            When the file is missing, unreadable, not a scARKIDS checkpoint, or written by a
            newer checkpoint format.
        """
        payload = checkpoint.read(path)
        return cls.from_payload(payload, adata, device=device)

    @classmethod
    def from_payload(cls, payload: dict, adata=None, *, device: str | torch.device = "cpu"):
        """Rebuild a model from a checkpoint payload, as :meth:`state_payload` returns it.

        Parameters
        ----------
        payload
            The checkpoint dict (:meth:`state_payload`, or a checkpoint file's contents);
            the weights are copied into a new module.
        adata
            AnnData the methods use when called without one; ``None`` sets none.
        device
            Device the model is put on:
            {param_device}

        Returns
        -------
        SCARKIDS
            The model, in evaluation mode.
        """
        self = cls.__new__(cls)
        params = dict(payload["init_params"])
        n_genes, n_batches, n_labels = (
            params.pop("n_genes"),
            params.pop("n_batches"),
            params.pop("n_labels"),
        )
        self.registry = Registry.from_dict(payload["registry"])
        self.init_params = params
        self.module = SCARKIDSModule(n_genes, n_batches, n_labels, **params)
        self.module.load_state_dict(payload["state_dict"])
        self.module.eval()
        self.device = resolve_device(device)
        self.module.to(self.device)
        self.adata = adata
        self.history = payload.get("history", {})
        self.is_trained = payload.get("is_trained", True)
        self.extra = payload.get("extra", {})
        self.library_sizes = dict(payload.get("library_sizes", {}))
        self.library_sizes_by_type = dict(payload.get("library_sizes_by_type", {}))
        self.calibration = dict(payload.get("calibration", {}))
        ts = payload.get("training_state")
        self.training_state = TrainingState.from_dict(ts) if ts else None
        return self


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_to_cpu(v) for v in obj)
    return obj
