"""Reference mapping: new batches extend the model, the reference embedding stays put."""

from __future__ import annotations

import numpy as np
import torch

import scarkids
from scarkids import SCARKIDS


def test_query_mapping_freezes_reference_and_transfers_labels(tmp_path):
    adata = scarkids.datasets.simulate(
        1500, 300, n_batches=3, n_cell_types=4, batch_effect=0.4, seed=4
    )
    is_query = (adata.obs["batch"] == "batch_2").to_numpy()
    ref, query = adata[~is_query].copy(), adata[is_query].copy()
    SCARKIDS.setup_anndata(ref, batch_key="batch", labels_key="cell_type")
    model = SCARKIDS(ref, seed=0)
    model.train(40, progress_bar=False)
    model.save(tmp_path / "ref.pt")
    z_ref = model.get_latent_representation(ref)
    batches_before = list(model.registry.batch_categories)
    labels_before = list(model.registry.label_categories)

    truth = query.obs["cell_type"].astype(str).to_numpy()
    SCARKIDS.setup_anndata(query, batch_key="batch")  # the query's labels are not used
    mapped = SCARKIDS.load_query_data(query, tmp_path / "ref.pt")
    mapped.train(10, progress_bar=False)

    # indices never change meaning; the new batch is appended
    assert mapped.registry.batch_categories[: len(batches_before)] == batches_before
    assert mapped.registry.batch_categories[-1] == "batch_2"
    assert mapped.registry.label_categories == labels_before
    assert np.abs(mapped.get_latent_representation(ref) - z_ref).max() < 1e-4
    old = model.module.decoder.batch_gene_offset.weight
    new = mapped.module.decoder.batch_gene_offset.weight
    assert np.array_equal(new[: old.shape[0]].detach().numpy(), old.detach().numpy())
    assert new[-1].abs().sum() > 0  # the new batch's parameters learnt
    assert (mapped.predict(query) == truth).mean() >= 0.9


def test_freeze_decoder_batch_tunes_decoder_keeps_encoder(tmp_path):
    adata = scarkids.datasets.simulate(900, 120, n_batches=3, n_cell_types=3, seed=5)
    is_query = (adata.obs["batch"] == "batch_2").to_numpy()
    ref, query = adata[~is_query].copy(), adata[is_query].copy()
    SCARKIDS.setup_anndata(ref, batch_key="batch", labels_key="cell_type")
    model = SCARKIDS(ref, seed=0).train(5, progress_bar=False)
    z_ref = model.get_latent_representation(ref)
    SCARKIDS.setup_anndata(query, batch_key="batch")
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    results = {}
    for freeze in ("new_batches", "decoder_batch", "none"):
        mapped = SCARKIDS.load_query_data(query, model)
        mapped.train(3, progress_bar=False, freeze=freeze)
        after = mapped.module.state_dict()
        changed = {
            k
            for k, v in before.items()
            if v.shape == after[k].shape and not torch.equal(v, after[k])
        }
        results[freeze] = (changed, np.abs(mapped.get_latent_representation(ref) - z_ref).max())
    changed, drift = results["decoder_batch"]
    assert drift < 1e-5  # the encoder did not move
    assert "decoder.scale.weight" in changed and "decoder.body.first.weight" in changed
    assert not any(k.startswith(("encoder.", "classifier.", "prior.")) for k in changed)
    assert "decoder.scale.weight" not in results["new_batches"][0]
    assert results["new_batches"][1] < 1e-5
    assert any(k.startswith("encoder.") for k in results["none"][0])
    assert results["none"][1] > 1e-3
