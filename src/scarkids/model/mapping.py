"""Later sessions on a trained model: new batches and cell types, and query mapping.

A mixin of :class:`scarkids.model.SCARKIDS` (scArches-style surgery): it uses the model's
``module``, ``registry``, ``device``, ``is_trained`` and the persistence methods of
:class:`scarkids.model.persistence.ModelPersistence`.
"""

from __future__ import annotations

import logging
import os

import torch

from scarkids._docs import doc_params
from scarkids.labels import space

logger = logging.getLogger("scarkids.model")


@doc_params
class ReferenceMapping:
    """Growing a trained model for new batches / cell types, and what a session may train."""

    def _grow_module(self, n_batches_before: int, n_labels_before: int) -> None:
        n_new_b = len(self.registry.batch_categories) - n_batches_before
        if n_new_b:
            logger.info("adding %d new batch(es) to the model", n_new_b)
            self.module.extend_batches(n_new_b)
        n_labels = len(self.registry.label_categories)
        if n_labels != self.module.n_labels:
            if n_labels > self.module.n_labels:
                logger.info(
                    "adding %d new cell type(s) to the model", n_labels - self.module.n_labels
                )
                self.module.extend_labels(n_labels - self.module.n_labels)
            else:  # cluster slots re-used as named types: keep the larger layout
                self.registry.label_categories += space.cluster_names(
                    self.module.n_labels, start=n_labels
                )
        self.module.to(self.device)

    def _freeze_plan(self, freeze: str, n_batches_before: int):
        """Parameters to optimise and gradient masks for a session that added batches."""
        new_batches = len(self.registry.batch_categories) > n_batches_before
        if freeze == "none" or not self.is_trained or not new_batches:
            return None, None
        decoder = self.module.decoder
        per_batch = [decoder.batch_gene_offset.weight]
        for body in (self.module.encoder.body, decoder.body):
            if body.batch_embedding is not None:
                per_batch.append(body.batch_embedding.weight)
        if decoder.dispersion == "gene-batch":
            per_batch.append(decoder.log_theta)
        masks: dict[torch.nn.Parameter, torch.Tensor] = {}
        for param in per_batch:
            mask = torch.zeros_like(param)
            mask[n_batches_before:] = 1.0  # rows of the new batches learn, the others stay
            masks[param] = mask
        trainable = list(per_batch)
        if freeze == "decoder_batch":  # also fine-tune the rest of the decoder
            in_plan = {id(p) for p in per_batch}
            trainable += [p for p in decoder.parameters() if id(p) not in in_plan]
        return trainable, masks

    @classmethod
    def load_query_data(
        cls,
        adata_query,
        reference: ReferenceMapping | str | os.PathLike,
        *,
        device: str | torch.device = "cpu",
    ):
        """A copy of a trained reference model (object or checkpoint) set to map ``adata_query``.

        Then ``model.train(supervised=False)`` learns the query's new batches only (the default
        ``freeze="new_batches"``: the reference embedding does not move) and
        ``model.predict()`` transfers the reference labels.

        The reference itself is not changed; the query's new batches are added to the copy
        when it is trained.

        Build references for mapping with ``SCARKIDS(adata, encode_batch=True)`` (as
        scArches advises for scVI): the query session then also learns its batches' offsets
        in the encoder, so that the query's known cell types land on the reference's and the
        prior's novelty flags the types the reference lacks; without it, known query cells
        look as novel as the left-out types (``benchmarks/uncertainty.py``;
        docs/benchmarks/uncertainty.md).

        Parameters
        ----------
        adata_query
            AnnData of the query cells (raw counts), set up with :meth:`setup_anndata`; it
            becomes the copy's default data.
        reference
            A trained model, or the path of its checkpoint (see :meth:`save`).
        device
            Device of the copy:
            {param_device}

        Returns
        -------
        SCARKIDS
            The copy of the reference, with ``adata_query`` as its data.
        """
        if isinstance(reference, cls):
            model = cls.from_payload(reference.state_payload(), adata_query, device=device)
        else:
            model = cls.load(reference, adata_query, device=device)
        model.adata = adata_query
        if not model.init_params.get("encode_batch", False):
            logger.info(
                "this reference's encoder does not see the batch, so a query session cannot "
                "adapt it: references for mapping map better with encode_batch=True"
            )
        return model
