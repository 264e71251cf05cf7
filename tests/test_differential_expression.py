"""Differential expression from the model (lvm-DE, as scvi-tools runs it): planted DE genes
of the simulator, a batch confound, reproducibility, the table and the command line."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score

import scarkids
from scarkids import SCARKIDS, cli
from scarkids.data.files import write_h5ad
from scarkids.errors import InputDataError
from scarkids.model.de import (
    DE_COLUMNS,
    ModelDifferentialExpression,
    _library_pseudocount,
    fdr_calls,
)

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(n_latent=8, encoder_hidden_dims=[64], decoder_hidden_dim=64, n_diffusion_steps=50)


@pytest.fixture(scope="module")
def confounded(one_thread):
    """Two batches with a strong batch effect and four types; ``type_0`` over-represented in
    batch_0 and ``type_1`` in batch_1 (90% of their other batch's cells left out), the other
    two as drawn. Supervised model, 40 epochs."""
    adata = scarkids.datasets.simulate(
        2400, 200, n_batches=2, n_cell_types=4, de_fraction=0.1, de_scale=1.5,
        batch_effect=0.8, seed=5,
    )  # fmt: skip
    cell_type, batch = adata.obs["cell_type"], adata.obs["batch"]
    other = ((cell_type == "type_0") & (batch == "batch_1")) | (
        (cell_type == "type_1") & (batch == "batch_0")
    )
    drop = other.to_numpy() & (np.random.default_rng(0).random(adata.n_obs) < 0.9)
    adata = adata[~drop].copy()
    SCARKIDS.setup_anndata(adata, batch_key="batch", labels_key="cell_type")
    model = SCARKIDS(adata, seed=0, **SMALL)
    model.train(40, progress_bar=False, seed=0)
    return model, adata


def _truth(adata, k: int):
    """Genes of type k's programme (|natural-log LFC| > 1) against genes of no programme;
    genes only in another type's programme, or with a small effect, are left out."""
    lfc = adata.varm["cell_type_lfc"]
    positive = np.abs(lfc[:, k]) > 1
    negative = (lfc == 0).all(1)
    return positive, negative


def test_planted_de_genes_of_one_type_against_the_rest_rank_first(confounded):
    model, adata = confounded
    table = model.differential_expression(groupby="cell_type", group1="type_2", n_samples=2000)
    positive, negative = _truth(adata, 2)
    scored = table.loc[adata.var_names[positive | negative]]
    auprc = average_precision_score(positive[positive | negative], scored["proba_de"])
    assert auprc >= 0.9
    # the sign follows the programme
    lfc = adata.varm["cell_type_lfc"][:, 2]
    up = adata.var_names[lfc > 1]
    assert (table.loc[up, "lfc_mean"] > 0).mean() >= 0.9


def test_batch_correction_removes_a_confounded_batch_from_the_fold_changes(confounded):
    model, adata = confounded
    # genes of no programme that the batches move (planted |log2 FC| 2.8 on average): type_0
    # (mostly batch_0) against type_1 (mostly batch_1) differ there by the batches only
    lfc, batch_lfc = adata.varm["cell_type_lfc"], adata.varm["batch_lfc"]
    moved = (lfc == 0).all(1) & (np.abs(batch_lfc[:, 0] - batch_lfc[:, 1]) > 1.5)
    batch_genes = adata.var_names[moved]
    assert len(batch_genes) >= 10
    tables = {
        correction: model.differential_expression(
            groupby="cell_type",
            group1="type_0",
            group2="type_1",
            batch_correction=correction,
            n_samples=2000,
        ).loc[batch_genes]
        for correction in (True, False)
    }
    # decoded in their own batches the groups differ by the batch effect; decoded in every
    # batch most of it is gone (mean |LFC| 0.24 against 2.02 here; simulation seeds 1 and 2:
    # 0.90 against 3.16, 1.04 against 3.00)
    assert tables[False]["lfc_mean"].abs().mean() >= 1.5
    assert tables[True]["lfc_mean"].abs().mean() <= 0.5 * tables[False]["lfc_mean"].abs().mean()
    assert tables[True]["proba_de"].mean() < tables[False]["proba_de"].mean()


def test_same_seed_same_table_and_columns(confounded):
    model, adata = confounded
    kwargs = dict(groupby="cell_type", group1="type_2", group2="type_3", n_samples=300)
    a = model.differential_expression(seed=3, **kwargs)
    b = model.differential_expression(seed=3, **kwargs)
    pd.testing.assert_frame_equal(a, b)
    c = model.differential_expression(seed=4, **kwargs)
    assert not np.allclose(a.loc[c.index, "lfc_mean"], c["lfc_mean"])
    assert list(a.columns) == [*DE_COLUMNS, "is_de_fdr_0.05", "comparison", "group1", "group2"]
    assert all(a[col].dtype == np.float64 for col in DE_COLUMNS)
    assert a["is_de_fdr_0.05"].dtype == bool
    assert (a["comparison"] == "type_2 vs type_3").all() and len(a) == adata.n_vars
    assert set(a.index) == set(adata.var_names)
    assert np.all(np.diff(a["proba_de"].to_numpy()) <= 0)
    # every group against the rest, in turn
    every = model.differential_expression(groupby="cell_type", n_samples=200)
    assert sorted(every["comparison"].unique()) == [f"type_{k} vs rest" for k in range(4)]
    vanilla = model.differential_expression(mode="vanilla", **kwargs)
    assert {"proba_m1", "proba_m2"} <= set(vanilla.columns)
    np.testing.assert_allclose(vanilla["proba_m1"] + vanilla["proba_m2"], 1)


def test_fdr_calls_control_the_expected_false_discoveries():
    proba = np.array([0.99, 0.2, 0.97, 0.9, 0.5])
    calls = fdr_calls(proba, 0.05)
    # by decreasing probability: 0.99, 0.97 (mean 1 - p = 0.02), 0.9 (0.047), 0.5 (0.16)
    assert calls.tolist() == [True, False, True, True, False]
    assert not fdr_calls(np.array([0.5, 0.4]), 0.05).any()


def test_change_mode_needs_one_direction_and_shrinks_unexpressed_genes():
    stub = SimpleNamespace(registry=SimpleNamespace(gene_names=["up", "scatter", "silent"]))
    rng = np.random.default_rng(0)
    n = 2000
    s1 = np.full((n, 3), 1e-2)
    s2 = np.full((n, 3), 1e-2)
    s1[:, 0] = 4e-2  # log2 fold change +2 on every draw
    s1[:, 1] = np.where(rng.random(n) < 0.5, 4e-2, 2.5e-3)  # +2 or -2, half and half
    s1[:, 2], s2[:, 2] = rng.uniform(1e-6, 1e-5, n), rng.uniform(1e-6, 1e-5, n)
    pairs = (np.arange(n), np.arange(n))
    library = np.array([500.0, 1000.0, 1500.0, 99.0])
    m1, m2 = np.array([True, True, False, False]), np.array([False, False, True, False])
    offset = _library_pseudocount(library, m1, m2)
    assert offset == pytest.approx(1 / 1000)  # one count at the compared cells' median depth
    table = ModelDifferentialExpression._comparison_table(
        stub, s1, s2, pairs, mode="change", delta=0.25, pseudocount=offset, fdr_target=0.05
    )
    assert table.loc["up", "proba_de"] == 1.0
    # |LFC| = 2 on every pair, but half up and half down: not a change
    assert table.loc["scatter", "proba_de"] == pytest.approx(0.5, abs=0.05)
    # tenfold noise far below one count per cell is shrunk below delta
    assert table.loc["silent", "proba_de"] == 0.0
    assert table[f"is_de_fdr_{0.05}"].tolist() == [True, False, False]
    assert table.loc["up", "lfc_mean"] == pytest.approx(2.0, abs=1e-3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(groupby="nope"), "groupby 'nope' is not a column of obs"),
        (dict(groupby="cell_type", group1="type_9"), "group1 'type_9' is not a group"),
        (dict(groupby="cell_type", group1="type_1", group2="type_1"), "both 'type_1'"),
        (dict(idx1=[0, 1, 2], idx2=[2, 3]), "overlap in 1 cells"),
        (dict(idx1=np.zeros(10, dtype=bool)), "has no cells"),
        (dict(groupby="cell_type", delta=-1), "delta must be a number >= 0"),
        (dict(groupby="cell_type", mode="bayes"), "mode must be one of"),
        (dict(), "give groupby"),
    ],
)
def test_bad_requests_are_one_line_errors(confounded, kwargs, match):
    model, adata = confounded
    if "idx1" in kwargs and isinstance(kwargs["idx1"], np.ndarray):
        kwargs = dict(idx1=np.zeros(adata.n_obs, dtype=bool))
    with pytest.raises(InputDataError, match=match) as err:
        model.differential_expression(adata, **kwargs)
    assert "\n" not in str(err.value)


def test_cli_de_writes_the_csv_and_refuses_bad_requests(confounded, tmp_path, capsys):
    model, adata = confounded
    model.save(tmp_path / "model.pt")
    write_h5ad(adata, tmp_path / "cells.h5ad")
    base = [
        "de",
        "--checkpoint",
        str(tmp_path / "model.pt"),
        "--data_path",
        str(tmp_path / "cells.h5ad"),
    ]
    out = tmp_path / "de.csv"
    rc = cli.main(
        [
            *base,
            "--groupby",
            "cell_type",
            "--group1",
            "type_1",
            "--n_samples",
            "200",
            "--output",
            str(out),
        ]
    )
    assert rc == 0
    table = pd.read_csv(out, index_col=0)
    assert len(table) == adata.n_vars and (table["comparison"] == "type_1 vs rest").all()
    capsys.readouterr()
    for extra in (
        ["--groupby", "nope"],
        ["--groupby", "cell_type", "--group1", "type_9"],
        ["--groupby", "cell_type", "--delta", "-0.5"],
    ):
        bad = tmp_path / "bad.csv"
        rc = cli.main([*base, *extra, "--output", str(bad)])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1
        assert not bad.exists() and not list(tmp_path.glob("bad.csv*"))
