"""Tests of scarkids.evaluation and scarkids.pl on small synthetic embeddings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from scarkids.errors import InputDataError
from scarkids.evaluation import (
    BATCH_METRICS,
    BIO_METRICS,
    SCORE_COLUMNS,
    evaluate,
    quick_metrics,
    write_evaluation,
)
from scarkids.pl.plots import plot_metrics_table, plot_umap

N_CELLS, N_BATCHES, N_TYPES, DIM = 600, 3, 4, 10
N_UNKNOWN, N_NAN = 30, 10  # cells without a usable label


def _synthetic(seed: int = 0) -> ad.AnnData:
    """Cell types are well-separated Gaussian clusters; batches are drawn independently.

    obsm: X_good (types separated, batches mixed), X_shuffled (rows permuted relative to the
    labels), X_split (X_good plus a large per-batch offset). X holds Poisson counts with a
    batch effect, for the PCA that PCR comparison needs.
    """
    rng = np.random.default_rng(seed)
    types = rng.integers(0, N_TYPES, N_CELLS)
    batches = rng.integers(0, N_BATCHES, N_CELLS)
    centers = rng.normal(size=(N_TYPES, DIM)) * 6.0
    good = centers[types] + rng.normal(size=(N_CELLS, DIM))
    offsets = rng.normal(size=(N_BATCHES, DIM)) * 10.0
    gene_type = rng.gamma(2.0, 1.0, size=(N_TYPES, 50))
    gene_batch = rng.gamma(4.0, 0.25, size=(N_BATCHES, 50))
    counts = rng.poisson(3.0 * gene_type[types] * gene_batch[batches]).astype(np.float32)

    labels = np.array([f"type{t}" for t in types], dtype=object)
    labels[:N_UNKNOWN] = "Unknown"
    labels[N_UNKNOWN : N_UNKNOWN + N_NAN] = np.nan
    obs = pd.DataFrame(
        {
            "batch": pd.Categorical([f"batch{b}" for b in batches]),
            "cell_type": pd.Categorical(labels),
            "true_type": [f"type{t}" for t in types],
        },
        index=[f"cell{i}" for i in range(N_CELLS)],
    )
    adata = ad.AnnData(counts, obs=obs)
    adata.obsm["X_good"] = good.astype(np.float32)
    adata.obsm["X_shuffled"] = good[rng.permutation(N_CELLS)].astype(np.float32)
    adata.obsm["X_split"] = (good + offsets[batches]).astype(np.float32)
    return adata


@pytest.fixture(scope="module")
def adata() -> ad.AnnData:
    return _synthetic()


# ---- quick_metrics --------------------------------------------------------------------------


def _quick(adata, key, labels=True, **kwargs):
    lab = adata.obs["true_type"] if labels else None
    return quick_metrics(adata.obsm[key], adata.obs["batch"], lab, **kwargs)


def test_quick_metrics_keys(adata):
    assert set(_quick(adata, "X_good")) == {
        "batch_silhouette",
        "celltype_silhouette",
        "cLISI",
        "bLISI",
    }
    assert set(_quick(adata, "X_good", labels=False)) == {"batch_silhouette", "bLISI"}


def test_quick_metrics_bio_good_beats_shuffled(adata):
    good, shuffled = _quick(adata, "X_good"), _quick(adata, "X_shuffled")
    # Separated clusters: ASW near 0.9, pure neighbourhoods. Shuffled: ASW near 0.5, cLISI
    # near the 4 types.
    assert good["celltype_silhouette"] > 0.8
    assert shuffled["celltype_silhouette"] < 0.6
    assert good["cLISI"] < 1.1
    assert shuffled["cLISI"] > 2.0


def test_quick_metrics_batch_mixed_beats_split(adata):
    mixed, split = _quick(adata, "X_good"), _quick(adata, "X_split")
    assert mixed["batch_silhouette"] > 0.9
    assert split["batch_silhouette"] < mixed["batch_silhouette"] - 0.4
    assert mixed["bLISI"] > 2.0  # 3 batches, well mixed
    assert split["bLISI"] < 1.2
    # Global variant (no labels) ranks the two the same way.
    assert (
        _quick(adata, "X_split", labels=False)["batch_silhouette"]
        < _quick(adata, "X_good", labels=False)["batch_silhouette"] - 0.2
    )


def test_quick_metrics_subsample_is_seeded(adata):
    a = _quick(adata, "X_good", max_cells=200, seed=3)
    b = _quick(adata, "X_good", max_cells=200, seed=3)
    c = _quick(adata, "X_good", max_cells=200, seed=4)
    assert a == b
    assert a != c
    assert all(np.isfinite(v) for v in a.values())


def test_quick_metrics_skips_unlabelled_cells(adata):
    labels = adata.obs["cell_type"]
    labelled = labels.notna().to_numpy() & (labels.astype(str) != "Unknown").to_numpy()
    with_missing = quick_metrics(adata.obsm["X_good"], adata.obs["batch"], labels)
    only_labelled = quick_metrics(
        adata.obsm["X_good"][labelled], adata.obs["batch"][labelled], labels[labelled]
    )
    assert with_missing["celltype_silhouette"] == pytest.approx(
        only_labelled["celltype_silhouette"]
    )
    assert with_missing["cLISI"] == pytest.approx(only_labelled["cLISI"])


def test_quick_metrics_rejects_mismatched_lengths(adata):
    with pytest.raises(InputDataError, match="labels"):
        quick_metrics(adata.obsm["X_good"], adata.obs["batch"], adata.obs["true_type"][:10])
    with pytest.raises(InputDataError, match="batch"):
        quick_metrics(adata.obsm["X_good"], adata.obs["batch"][:10])


def test_quick_metrics_works_without_scib_metrics():
    code = (
        "import sys; sys.modules['scib_metrics'] = None; sys.modules['jax'] = None\n"
        "import numpy as np\n"
        "from scarkids.evaluation import quick_metrics\n"
        "rng = np.random.default_rng(0)\n"
        "m = quick_metrics(rng.normal(size=(100, 5)), rng.integers(0, 2, 100), "
        "rng.integers(0, 3, 100))\n"
        "assert set(m) == {'batch_silhouette', 'celltype_silhouette', 'cLISI', 'bLISI'}, m\n"
    )
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {"PYTHONPATH": src, "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr


# ---- evaluate -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def table(adata) -> pd.DataFrame:
    pytest.importorskip("scib_metrics", reason="scib-metrics not installed (scarkids[eval])")
    # Predictions: exactly 3 of every 4 labelled cells correct; unlabelled cells predicted
    # wrongly, which must not count.
    truth = adata.obs["true_type"].to_numpy()
    pred = truth.copy().astype(object)
    labelled = np.arange(N_UNKNOWN + N_NAN, N_CELLS)
    wrong = labelled[::4]
    pred[wrong] = np.where(pred[wrong] == "type0", "type1", "type0")
    pred[: N_UNKNOWN + N_NAN] = "wrong"
    adata.obs["predicted"] = pred
    before = (set(adata.obsm), list(adata.obs.columns), dict(adata.uns), adata.X.copy())
    result = evaluate(
        adata,
        embedding_key=["X_good", "X_shuffled", "X_split"],
        prediction_key="predicted",
    )
    after = (set(adata.obsm), list(adata.obs.columns), dict(adata.uns))
    assert before[:3] == after, "evaluate modified the AnnData"
    np.testing.assert_array_equal(before[3], adata.X)
    result.attrs["expected_accuracy"] = 1.0 - wrong.size / labelled.size
    return result


def test_evaluate_table_shape(table):
    assert list(table.index) == ["X_good", "X_shuffled", "X_split"]
    expected = list(BIO_METRICS + BATCH_METRICS + SCORE_COLUMNS) + ["accuracy", "macro_f1"]
    assert list(table.columns) == expected
    assert table.attrs["n_cells"] == N_CELLS - N_UNKNOWN - N_NAN
    assert np.isfinite(table.to_numpy(dtype=float)).all()


def test_evaluate_ranks_embeddings(table):
    bio, batch = table["Bio conservation"], table["Batch correction"]
    assert bio["X_good"] > 0.9
    assert bio["X_good"] > bio["X_shuffled"] + 0.3
    assert batch["X_good"] > 0.8
    assert batch["X_split"] < batch["X_good"] - 0.4


def test_evaluate_aggregates(table):
    np.testing.assert_allclose(
        table["Bio conservation"], table[list(BIO_METRICS)].mean(axis=1), rtol=1e-12
    )
    np.testing.assert_allclose(
        table["Batch correction"], table[list(BATCH_METRICS)].mean(axis=1), rtol=1e-12
    )
    np.testing.assert_allclose(
        table["Total"], 0.6 * table["Bio conservation"] + 0.4 * table["Batch correction"]
    )


def test_evaluate_prediction_metrics(table):
    assert table["accuracy"].tolist() == pytest.approx([table.attrs["expected_accuracy"]] * 3)
    assert table.attrs["expected_accuracy"] == pytest.approx(0.75, abs=0.01)
    assert 0.5 < table["macro_f1"].iloc[0] < 0.9


def test_evaluate_subsample(adata):
    pytest.importorskip("scib_metrics", reason="scib-metrics not installed (scarkids[eval])")
    result = evaluate(adata, embedding_key="X_good", subsample=300, seed=1)
    assert list(result.index) == ["X_good"]
    assert result.attrs["n_cells"] == 300
    assert result.loc["X_good", "Bio conservation"] > 0.85


def test_evaluate_without_scib_metrics(adata, monkeypatch):
    monkeypatch.setitem(sys.modules, "scib_metrics", None)
    with pytest.raises(ImportError) as info:
        evaluate(adata, embedding_key="X_good")
    assert str(info.value) == "scarkids.evaluate needs scib-metrics: pip install 'scarkids[eval]'"


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"embedding_key": "X_missing"}, "X_missing"),
        ({"embedding_key": ["X_good", "X_absent"]}, "X_absent"),
        ({"batch_key": "sample"}, "sample"),
        ({"labels_key": "celltype_l2"}, "celltype_l2"),
        ({"prediction_key": "pred_missing"}, "pred_missing"),
    ],
)
def test_evaluate_missing_keys(adata, kwargs, name):
    kwargs = {"embedding_key": "X_good", **kwargs}
    with pytest.raises(InputDataError, match=f"'{name}'"):
        evaluate(adata, **kwargs)


# ---- writing and plotting -------------------------------------------------------------------


def _fake_table() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    cols = list(BIO_METRICS + BATCH_METRICS + SCORE_COLUMNS)
    df = pd.DataFrame(rng.uniform(size=(2, len(cols))), index=["X_good", "X_split"], columns=cols)
    df.loc["X_split", "KBET"] = np.nan
    df.index.name = "Embedding"
    return df


def _is_png(path: Path) -> bool:
    return path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_write_evaluation_files(adata, tmp_path):
    table = _fake_table()
    obsm_before = set(adata.obsm)
    written = write_evaluation(
        table,
        tmp_path / "eval",
        adata=adata,
        embedding_key="X_good",
        batch_key="batch",
        labels_key="cell_type",
    )
    out = tmp_path / "eval"
    names = {p.name for p in written}
    assert names == {"metrics.tsv", "metrics.json", "metrics_table.png", "umap_X_good.png"}
    assert _is_png(out / "metrics_table.png")
    assert _is_png(out / "umap_X_good.png")
    assert set(adata.obsm) == obsm_before
    back = pd.read_csv(out / "metrics.tsv", sep="\t", index_col=0)
    np.testing.assert_allclose(back.to_numpy(), table.to_numpy(), rtol=1e-5)
    records = json.loads((out / "metrics.json").read_text())
    assert records["X_split"]["KBET"] is None
    assert records["X_good"]["Total"] == pytest.approx(table.loc["X_good", "Total"])


def test_write_evaluation_without_adata(tmp_path):
    written = write_evaluation(_fake_table(), tmp_path)
    assert {p.name for p in written} == {"metrics.tsv", "metrics.json", "metrics_table.png"}


def test_plot_metrics_table_handles_unbounded_columns(tmp_path):
    table = pd.DataFrame({"bLISI": [2.5, 1.1], "cLISI": [1.0, 3.2]}, index=["a", "b"])
    assert _is_png(plot_metrics_table(table, tmp_path / "t.png"))


def test_plot_umap_missing_keys(adata, tmp_path):
    with pytest.raises(InputDataError, match="'donor'"):
        plot_umap(adata, embedding_key="X_good", color=["batch", "donor"], path=tmp_path / "u.png")
    with pytest.raises(InputDataError, match="'X_nope'"):
        plot_umap(adata, embedding_key="X_nope", color=["batch"], path=tmp_path / "u.png")
