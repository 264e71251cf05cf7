"""Reference mapping: new batches extend the model, the reference embedding stays put."""

from __future__ import annotations

import numpy as np

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
