"""Generating cells from the prior (issue: generate cells, decoded as another batch would
have measured them): shapes, counts, seeds, requests, counterfactual pairs, the CLI."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

import scarkids
from scarkids import SCARKIDS
from scarkids.cli.commands import main as cli_main
from scarkids.errors import InputDataError


@pytest.fixture(scope="module")
def model(one_thread):
    adata = scarkids.datasets.simulate(
        1200, 200, n_batches=2, n_cell_types=3, batch_effect=0.5, seed=3
    )
    SCARKIDS.setup_anndata(adata, batch_key="batch", labels_key="cell_type")
    m = SCARKIDS(adata, n_latent=6, seed=0)
    m.train(40, progress_bar=False, seed=0)
    return m


def test_generate_shapes_dtypes_and_obs(model):
    types, batches = model.label_names, model.registry.batch_categories
    out = model.generate(7, cell_type=types[:2], batch=batches[1])
    assert isinstance(out, ad.AnnData)
    assert out.shape == (14, len(model.registry.gene_names))
    assert list(out.var_names) == model.registry.gene_names
    assert out.X.format == "csr" and out.X.dtype == np.float32
    x = out.X.toarray()
    assert (x >= 0).all() and np.array_equal(x, np.round(x)) and x.sum() > 0
    assert list(out.obs["cell_type"]) == [types[0]] * 7 + [types[1]] * 7
    assert set(out.obs["batch"]) == {batches[1]}
    assert out.obsm["X_scarkids"].shape == (14, 6)
    assert out.obsm["X_scarkids"].dtype == np.float32
    assert (out.obs["library_size"] > 0).all()


def test_generated_library_sizes_follow_the_batch(model):
    """Library sizes are drawn from the log-normal fit of the type's observed ones in the
    batch."""
    a = model.adata
    b0, t0 = model.registry.batch_categories[0], model.label_names[0]
    cells = (a.obs["batch"] == b0) & (a.obs["cell_type"] == t0)
    observed = np.log(np.asarray(a[cells].X.sum(1)).ravel())
    out = model.generate(400, cell_type=t0, batch=b0)
    drawn = np.log(out.obs["library_size"].to_numpy())
    assert abs(drawn.mean() - observed.mean()) < 0.1
    assert abs(drawn.std() - observed.std()) < 0.1
    fixed = model.generate(5, cell_type=model.label_names[0], batch=b0, library_size=2000.0)
    assert np.allclose(fixed.obs["library_size"], 2000.0)


def _shallow_type_data(seed: int = 4):
    """Simulated cells whose type_1 is sequenced 5x shallower (binomial thinning), in two
    batches of which the second has no type_1 cell."""
    adata = scarkids.datasets.simulate(
        900, 100, n_batches=2, n_cell_types=2, de_fraction=0.3, de_scale=2.0, seed=seed
    )
    rng = np.random.default_rng(seed)
    shallow = (adata.obs["cell_type"] == "type_1").to_numpy()
    X = adata.X.tocsr(copy=True)
    rows = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))
    thin = shallow[rows]
    X.data[thin] = rng.binomial(X.data[thin].astype(np.int64), 0.2).astype(np.float32)
    X.eliminate_zeros()
    adata.X = X
    keep = ~(shallow & (adata.obs["batch"] == "batch_1").to_numpy())
    return adata[keep].copy()


@pytest.mark.parametrize("supervised", [True, False])
def test_generated_library_sizes_follow_the_cell_type(one_thread, supervised):
    """A 5x shallower cell type is generated 5x shallower, also in a batch it was never seen
    in (its depth relative to the batches it was seen in), and an unsupervised model fits
    the depth of its clusters."""
    adata = _shallow_type_data()
    SCARKIDS.setup_anndata(adata, batch_key="batch", labels_key="cell_type" if supervised else None)
    m = SCARKIDS(adata, n_latent=4, n_labels=2, seed=0)
    m.train(30, progress_bar=False, seed=0)
    log_lib = np.log(np.asarray(adata.X.sum(1)).ravel())
    shallow = (adata.obs["cell_type"] == "type_1").to_numpy()
    if supervised:
        deep_name, shallow_name = "type_0", "type_1"
    else:  # the clusters that hold most of each type
        pred = np.asarray(m.predict())
        deep_name = pd.Series(pred[~shallow]).mode()[0]
        shallow_name = pd.Series(pred[shallow]).mode()[0]
        assert deep_name != shallow_name
    b0, b1 = m.registry.batch_categories
    out = m.generate(300, cell_type=[deep_name, shallow_name], batch=[b0, b1], seed=1)
    drawn = pd.Series(np.log(out.obs["library_size"].to_numpy()))
    keys = [out.obs["cell_type"].astype(str).values, out.obs["batch"].astype(str).values]
    means = drawn.groupby(keys).mean()
    b0_cells = (adata.obs["batch"] == b0).to_numpy()
    tol = 0.1 if supervised else 0.25
    assert abs(means[(deep_name, b0)] - log_lib[~shallow & b0_cells].mean()) < tol
    assert abs(means[(shallow_name, b0)] - log_lib[shallow & b0_cells].mean()) < tol
    # never seen in b1: its b0 depth moved by the b1 - b0 depth of type_0 (thinned to 0.2:
    # log 0.2 = -1.6)
    gap = means[(deep_name, b1)] - means[(shallow_name, b1)]
    assert 1.3 < gap < 1.9


def test_old_checkpoint_without_type_library_sizes_uses_the_batch(model, tmp_path):
    path = model.save(tmp_path / "m.pt")
    loaded = SCARKIDS.load(path)
    assert loaded.library_sizes_by_type == model.library_sizes_by_type
    assert set(loaded.library_sizes_by_type) == set(model.label_names)
    loaded.library_sizes_by_type = {}
    b0 = model.registry.batch_categories[0]
    out = loaded.generate(400, cell_type=model.label_names[0], batch=b0)
    drawn = np.log(out.obs["library_size"].to_numpy())
    assert abs(drawn.mean() - model.library_sizes[b0][0]) < 0.1


def test_same_seed_same_cells_and_other_seed_other_cells(model):
    kw = {"cell_type": model.label_names[0], "batch": model.registry.batch_categories[0]}
    a, b = model.generate(20, seed=5, **kw), model.generate(20, seed=5, **kw)
    c = model.generate(20, seed=6, **kw)
    assert np.array_equal(a.X.toarray(), b.X.toarray())
    assert np.array_equal(a.obsm["X_scarkids"], b.obsm["X_scarkids"])
    assert not np.array_equal(a.obsm["X_scarkids"], c.obsm["X_scarkids"])


def test_counts_per_type_and_batch_are_the_counts_requested(model):
    t, b = model.label_names, model.registry.batch_categories
    request = {(t[0], b[0]): 3, (t[1], b[1]): 5, (t[2], b[0]): 0, (t[2], b[1]): 2}
    out = model.generate(cell_type=request)
    got = out.obs.groupby(["cell_type", "batch"], observed=True).size().to_dict()
    assert got == {k: v for k, v in request.items() if v}
    per_type = model.generate(cell_type={t[0]: 4, t[1]: 1})  # in every batch
    assert per_type.n_obs == 2 * 5


def test_paired_batches_share_codes_and_differ_only_by_the_decoder(model):
    """Counterfactual pairs: the same codes decoded as batch A and as batch B; their
    expected expression is the decoder's at the same code with the other batch."""
    t, (b0, b1) = model.label_names[1], model.registry.batch_categories
    out = model.generate(50, cell_type=t, batch=[b0, b1], library_size=1e4)
    z = out.obsm["X_scarkids"]
    assert np.array_equal(z[:50], z[50:])
    zt = torch.as_tensor(z[:50])
    with torch.no_grad():
        rho = [
            model.module.generative(zt, torch.full((50,), i), None)["log_rho"].exp().numpy()
            for i in (0, 1)
        ]
    assert not np.allclose(rho[0], rho[1])
    # the generated counts follow the decoder of their own batch: per-gene means correlate
    # better with their own batch's expected expression than with the other's
    x = out.X.toarray()
    own = np.corrcoef(x[:50].mean(0), rho[0].mean(0))[0, 1]
    other = np.corrcoef(x[:50].mean(0), rho[1].mean(0))[0, 1]
    assert own > other
    unpaired = model.generate(50, cell_type=t, batch=[b0, b1], paired=False)
    assert not np.array_equal(unpaired.obsm["X_scarkids"][:50], unpaired.obsm["X_scarkids"][50:])


def test_generated_cells_are_their_type(model):
    """The classifier labels generated cells (re-encoded from their counts) as the type
    asked for: the prior of each type puts its samples where that type's cells are."""
    out = model.generate(60, batch=model.registry.batch_categories[0], seed=1)
    out.layers["counts"] = out.X.copy()
    pred = model.predict(out)
    assert (pred == out.obs["cell_type"].to_numpy()).mean() >= 0.9


def test_strided_sampler_runs_and_stays_close(model):
    """The strided sampler with 50 of the 400 steps draws codes like the full chain's: the
    same mean (within a quarter of the spread) and spread (within 30%)."""
    t, b = model.label_names[2], model.registry.batch_categories[0]
    full = model.generate(400, cell_type=t, batch=b).obsm["X_scarkids"]
    fast = model.generate(400, cell_type=t, batch=b, n_steps=50).obsm["X_scarkids"]
    spread = full.std(0).mean()
    assert np.abs(full.mean(0) - fast.mean(0)).max() < 0.25 * spread
    assert 0.7 < fast.std(0).mean() / spread < 1.3
    with pytest.raises(InputDataError, match="n_steps"):
        model.generate(3, cell_type=t, n_steps=1000)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_cells": 3, "cell_type": "no such type"}, "cell type 'no such type'"),
        ({"n_cells": 3, "batch": "no such batch"}, "batch 'no such batch'"),
        ({"n_cells": -1}, "whole number"),
        ({"n_cells": 0}, "nothing to generate"),
        ({}, "n_cells is needed"),
        ({"n_cells": 2, "library_size": -5.0}, "library_size"),
    ],
)
def test_bad_requests_are_clear_errors(model, kwargs, match):
    with pytest.raises(InputDataError, match=match):
        model.generate(**kwargs)


def test_old_checkpoint_without_library_sizes_asks_for_one(model, tmp_path):
    path = model.save(tmp_path / "m.pt")
    loaded = SCARKIDS.load(path)
    assert loaded.library_sizes == model.library_sizes
    loaded.library_sizes = {}
    with pytest.raises(InputDataError, match="pass library_size"):
        loaded.generate(2, cell_type=model.label_names[0])
    assert loaded.generate(2, cell_type=model.label_names[0], library_size=1e3).n_obs == 4


@pytest.mark.parametrize("prior", ["gaussian", "mixture"])
def test_every_prior_generates(prior):
    adata = scarkids.datasets.simulate(300, 50, n_batches=2, n_cell_types=2, seed=0)
    SCARKIDS.setup_anndata(adata, batch_key="batch", labels_key="cell_type")
    m = SCARKIDS(adata, n_latent=4, prior=prior).train(2, progress_bar=False)
    out = m.generate(5)
    assert out.n_obs == 2 * 2 * 5 and out.uns["scarkids_generate"]["prior"] == prior


def test_cli_generate_writes_a_readable_h5ad(model, tmp_path):
    ckpt = model.save(tmp_path / "m.pt")
    out = tmp_path / "cells.h5ad"
    t, b = model.label_names[0], model.registry.batch_categories[1]
    argv = ["generate", "--checkpoint", str(ckpt), "--cell_type", t, "--batch", b]
    assert cli_main([*argv, "--n_cells", "9", "--output", str(out)]) == 0
    cells = ad.read_h5ad(out)
    assert cells.n_obs == 9 and set(cells.obs["cell_type"]) == {t}


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--cell_type", "nope"], "cell type 'nope'"),
        (["--batch", "nope"], "batch 'nope'"),
        (["--n_cells", "-3"], "whole number"),
    ],
)
def test_cli_generate_refuses_bad_requests(model, tmp_path, capsys, extra, match):
    ckpt = model.save(tmp_path / "m.pt")
    out = tmp_path / "cells.h5ad"
    argv = ["generate", "--checkpoint", str(ckpt), "--n_cells", "4", "--output", str(out)]
    assert cli_main([*argv, *extra]) == 2
    err = capsys.readouterr().err
    assert match in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_cli_generate_unwritable_output(model, tmp_path, capsys):
    ckpt = model.save(tmp_path / "m.pt")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    argv = ["generate", "--checkpoint", str(ckpt), "--n_cells", "2"]
    assert cli_main([*argv, "--output", str(blocker / "cells.h5ad")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_generate_on_cuda_matches_shapes():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    adata = scarkids.datasets.simulate(300, 50, n_batches=2, n_cell_types=2, seed=0)
    SCARKIDS.setup_anndata(adata, batch_key="batch", labels_key="cell_type")
    m = SCARKIDS(adata, n_latent=4).train(2, progress_bar=False, device="cuda")
    out = m.generate(5)
    assert out.n_obs == 20 and np.isfinite(out.obsm["X_scarkids"]).all()
