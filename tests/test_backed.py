"""Out-of-core training and inference on a backed .h5ad (counts read from disk in chunks)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from scarkids import SCARKIDS
from scarkids.data.backed import BackedCounts, ChunkedStore
from scarkids.data.files import write_h5ad
from scarkids.data.simulate import simulate, write_simulated_h5ad
from scarkids.errors import InputDataError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def h5ad_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("backed") / "cells.h5ad"
    write_simulated_h5ad(path, 2400, 120, n_batches=3, n_cell_types=4, seed=0, chunk_size=500)
    return path


def test_written_file_equals_in_memory_simulation(h5ad_file):
    memory = simulate(2400, 120, n_batches=3, n_cell_types=4, seed=0, chunk_size=500)
    backed = ad.read_h5ad(h5ad_file, backed="r")
    assert backed.isbacked
    assert (backed.X[:] != memory.X).nnz == 0
    # the same values; under pandas 3 the strings read back as its string dtypes
    pd.testing.assert_frame_equal(
        backed.obs,
        memory.obs,
        check_dtype=False,
        check_index_type=False,
        check_categorical=False,
    )


def test_chunked_store_visits_every_cell_once_with_bounded_reads(h5ad_file):
    backed = ad.read_h5ad(h5ad_file, backed="r")
    memory = backed.to_memory()
    counts = BackedCounts(backed, where=str(h5ad_file))
    store = ChunkedStore(counts, torch.device("cpu"), chunk_cells=300, buffer_chunks=3)
    train = torch.as_tensor(np.sort(np.random.default_rng(0).permutation(2400)[:2000]))
    order = store.shuffle(train, torch.Generator().manual_seed(0))
    assert torch.equal(order.sort().values, train)  # a permutation of the training cells
    assert not torch.equal(order, train)
    dense = torch.as_tensor(memory.X.toarray())
    for start in range(0, len(order), 128):
        idx = order[start : start + 128]
        rows, nz = store.rows_and_nonzeros(idx)
        torch.testing.assert_close(rows, dense[idx])
        assert nz.counts.numel() == int((dense[idx] > 0).sum())
    store.end_epoch()
    # 8 chunks; a batch that straddles two groups re-reads at most one group
    assert store.n_chunks <= store.chunks_read <= 2 * store.n_chunks
    # only a bounded part of the data is ever held
    assert store._buffer.shape[0] <= 2 * store.buffer_chunks * store.chunk_cells


def test_backed_training_matches_in_memory_training(h5ad_file):
    backed = ad.read_h5ad(h5ad_file, backed="r")
    memory = backed.to_memory()
    results = {}
    for name, adata in (("backed", backed), ("memory", memory)):
        SCARKIDS.setup_anndata(adata, batch_key="batch", labels_key="cell_type")
        model = SCARKIDS(adata, n_latent=6, seed=0)
        model.train(15, progress_bar=False, chunk_cells=400, seed=0)
        results[name] = (
            np.array(model.history["train_loss"]),
            model.get_latent_representation(),
            np.asarray(model.predict()),
        )
    loss_b, z_b, pred_b = results["backed"]
    loss_m, z_m, pred_m = results["memory"]
    assert z_b.shape == (2400, 6)
    assert loss_b[-1] < 0.9 * loss_b[0]
    np.testing.assert_allclose(loss_b, loss_m, rtol=0.05)
    truth = memory.obs["cell_type"].astype(str).to_numpy()
    assert (pred_b == truth).mean() > 0.9
    assert (pred_m == truth).mean() > 0.9


def test_backed_counts_are_checked_per_chunk(tmp_path):
    path = tmp_path / "bad.h5ad"
    adata = simulate(300, 40, seed=1)
    X = adata.X.tolil()
    X[250, 3] = -2.0  # a negative value in the last chunk only
    adata.X = sp.csr_matrix(X)
    write_h5ad(adata, path)
    backed = ad.read_h5ad(path, backed="r")
    SCARKIDS.setup_anndata(backed, batch_key="batch")
    model = SCARKIDS(backed, n_latent=4, seed=0)
    with pytest.raises(InputDataError, match=r"bad\.h5ad.*negative"):
        model.train(1, progress_bar=False, chunk_cells=100)


def test_unreadable_backed_rows_are_a_clear_error():
    """anndata <= 0.12.6 with scipy >= 1.17 cannot slice a backed sparse matrix (it calls a
    removed scipy method): one error naming the file and the versions to install."""

    class Broken:
        def __getitem__(self, rows):
            raise AttributeError("'backed_csr_matrix' object has no attribute '_validate_indices'")

    class FakeBacked:
        n_obs, n_vars, X = 10, 3, Broken()

    counts = BackedCounts(FakeBacked(), where="atlas.h5ad")
    with pytest.raises(InputDataError, match=r"atlas.h5ad: .*anndata>=0.12.7 or scipy<1.17"):
        counts[0:5]


def test_counts_source_expression_reads_backed_counts_like_in_memory_ones(h5ad_file):
    """``get_normalized_expression(source="counts")`` reads each chunk of a backed file's
    counts: the same matrix as from the counts in memory, with the same model."""
    backed = ad.read_h5ad(h5ad_file, backed="r")
    memory = backed.to_memory()
    SCARKIDS.setup_anndata(memory, batch_key="batch", labels_key="cell_type")
    model = SCARKIDS(memory, n_latent=4, seed=0).train(2, progress_bar=False)
    SCARKIDS.setup_anndata(backed, batch_key="batch", labels_key="cell_type")
    kw = dict(transform_batch=1, source="counts", return_numpy=True, batch_size=333)
    from_disk = model.get_normalized_expression(backed, **kw)
    in_memory = model.get_normalized_expression(memory, **kw)
    np.testing.assert_allclose(from_disk, in_memory, rtol=1e-5, atol=1e-4)
    counts = memory.X.toarray() if sp.issparse(memory.X) else np.asarray(memory.X)
    np.testing.assert_array_equal(from_disk > 0, counts > 0)
