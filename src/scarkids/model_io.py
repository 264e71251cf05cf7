"""Saving and loading a model: one checkpoint payload (weights, registry, settings, history).

A mixin of :class:`scarkids.model.SCARKIDS`; the file format is in :mod:`scarkids.checkpoint`.
"""

from __future__ import annotations

import os

import torch

from . import __version__, checkpoint
from .data import Registry
from .module import SCARKIDSModule
from .training_state import TrainingState


class ModelPersistence:
    """``save`` / ``load`` and the payload behind them (see :class:`SCARKIDS`)."""

    def state_payload(
        self, *, include_training_state: bool = False, extra: dict | None = None
    ) -> dict:
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
        ``<dir>/model.pt``), atomically. Returns the file path."""
        return checkpoint.write_atomic(
            self.state_payload(include_training_state=include_training_state, extra=extra), path
        )

    @classmethod
    def load(cls, path: str | os.PathLike, adata=None, *, device: str | torch.device = "cpu"):
        """Rebuild a model from :meth:`save` output. ``adata`` (optional) becomes the default
        data; it is aligned to the stored genes and categories by name when used."""
        payload = checkpoint.read(path)
        return cls.from_payload(payload, adata, device=device)

    @classmethod
    def from_payload(cls, payload: dict, adata=None, *, device: str | torch.device = "cpu"):
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
        from .model import resolve_device  # the model module imports this one

        self.device = resolve_device(device)
        self.module.to(self.device)
        self.adata = adata
        self.history = payload.get("history", {})
        self.is_trained = payload.get("is_trained", True)
        self.extra = payload.get("extra", {})
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
