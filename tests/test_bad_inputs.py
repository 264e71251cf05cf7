"""Bad inputs through the command line: each is one ``error:`` line naming the file, key or
column, exit code 2, no traceback, and no file created or modified."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import yaml

from scarkids import cli
from scarkids.data.files import write_h5ad
from scarkids.data.simulate import simulate

BASE = {
    "global": {"latent_dim": 4, "n_diffusion_steps": 20, "n_genes": None, "supervised": True},
    "data": {
        "train_data_path": "data/train.h5ad",
        "val_data_path": None,
        "test_data_path": "data/test.h5ad",
    },
    "encoder": {"hidden_dims": [16]},
    "classifier": {"hidden_dim": 8},
    "likelihood": {"hidden_dim": 16},
    "ddpm_backward": {"noise_hidden_dim": 16, "timestep_embed_dim": 8},
    "training": {"n_epochs": 2, "batch_size": 64, "device": "cpu"},
    "inference": {"n_refinement_steps": 5, "device": "cpu"},
}


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(seed: int = 0, **kw) -> ad.AnnData:
    args = {"n_cells": 200, "n_genes": 60, "n_batches": 2, "n_cell_types": 3, "seed": seed}
    return simulate(**{**args, **kw})


def write_config(path: Path, **sections) -> Path:
    cfg = copy.deepcopy(BASE)
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A folder with data/train.h5ad, data/test.h5ad and checkpoints/best_model.pt."""
    root = tmp_path_factory.mktemp("trained")
    (root / "data").mkdir()
    write_h5ad(tiny(0), root / "data" / "train.h5ad")
    write_h5ad(tiny(1, n_cells=50), root / "data" / "test.h5ad")
    write_config(root / "config.yaml")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        assert cli.main(["train", "--config", "config.yaml"]) == 0
    return root


@pytest.fixture
def work(trained, tmp_path, monkeypatch) -> Path:
    """A fresh copy of ``trained`` (data, checkpoint, config) as the cwd; no logs/ or results/."""
    shutil.copytree(trained / "data", tmp_path / "data")
    (tmp_path / "checkpoints").mkdir()
    shutil.copy2(trained / "checkpoints" / "best_model.pt", tmp_path / "checkpoints")
    write_config(tmp_path / "config.yaml")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }


def fails(work: Path, capsys, argv: list, *needles: str) -> str:
    """Run ``argv``; assert a clean one-line error containing every needle, nothing written."""
    capsys.readouterr()
    before = snapshot(work)
    rc = cli.main([str(a) for a in argv])
    _, err = capsys.readouterr()
    assert rc == 2, err
    assert "Traceback" not in err
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith("error: "), err
    for needle in needles:
        assert needle in err, (needle, err)
    assert snapshot(work) == before, "files were created or modified"
    return err


def save(adata: ad.AnnData, path: Path) -> Path:
    write_h5ad(adata, path)
    return path


TRAIN = ["train", "--config", "config.yaml"]
INFER = ["infer", "--config", "config.yaml", "--output_dir", "results"]


def train_on(work: Path, adata: ad.AnnData, capsys, *needles, **sections):
    save(adata, work / "data" / "bad.h5ad")
    data = {"train_data_path": "data/bad.h5ad", **sections.pop("data", {})}
    write_config(work / "config.yaml", data=data, **sections)
    return fails(work, capsys, TRAIN, "data/bad.h5ad", *needles)


def infer_on(work: Path, adata: ad.AnnData, capsys, *needles):
    save(adata, work / "data" / "query.h5ad")
    return fails(work, capsys, [*INFER, "--data_path", "data/query.h5ad"], *needles)


# --------------------------------------------------------------------------- files


def test_missing_data_file(work, capsys):
    write_config(work / "config.yaml", data={"train_data_path": "data/nope.h5ad"})
    fails(work, capsys, TRAIN, "data/nope.h5ad", "not found")


def test_text_file_is_not_an_h5ad(work, capsys):
    (work / "data" / "counts.h5ad").write_text("gene,cell1\nA,1\n")
    write_config(work / "config.yaml", data={"train_data_path": "data/counts.h5ad"})
    fails(work, capsys, TRAIN, "data/counts.h5ad", "not an .h5ad")


def test_truncated_h5ad(work, capsys):
    raw = (work / "data" / "train.h5ad").read_bytes()
    (work / "data" / "half.h5ad").write_bytes(raw[: len(raw) // 2])
    write_config(work / "config.yaml", data={"train_data_path": "data/half.h5ad"})
    fails(work, capsys, TRAIN, "data/half.h5ad", "truncated")


def test_data_path_is_a_directory(work, capsys):
    (work / "data" / "dir.h5ad").mkdir()
    write_config(work / "config.yaml", data={"train_data_path": "data/dir.h5ad"})
    fails(work, capsys, TRAIN, "data/dir.h5ad", "directory")


def test_missing_config_file(work, capsys):
    fails(work, capsys, ["train", "--config", "nope.yaml"], "nope.yaml")


def test_malformed_yaml(work, capsys):
    (work / "broken.yaml").write_text("training: [unclosed\n")
    fails(work, capsys, ["train", "--config", "broken.yaml"], "broken.yaml")


# --------------------------------------------------------------------------- matrix


def test_log_normalised_X(work, capsys):
    a = tiny()
    a.X = np.log1p(np.asarray(a.X.toarray() if sp.issparse(a.X) else a.X, dtype=np.float32))
    train_on(work, a, capsys, "log-normalised")


def test_non_integer_counts(work, capsys):
    a = tiny()
    X = np.asarray(a.X.toarray() if sp.issparse(a.X) else a.X, dtype=np.float32)
    a.X = X * 37.3
    train_on(work, a, capsys, "not integers")


def test_negative_values(work, capsys):
    a = tiny()
    X = np.asarray(a.X.toarray() if sp.issparse(a.X) else a.X, dtype=np.float32)
    X[3, 4] = -2
    a.X = X
    train_on(work, a, capsys, "negative")


def test_nan_in_X(work, capsys):
    a = tiny()
    X = np.asarray(a.X.toarray() if sp.issparse(a.X) else a.X, dtype=np.float32)
    X[0, 0] = np.nan
    a.X = X
    train_on(work, a, capsys, "NaN")


def test_inf_in_X(work, capsys):
    a = tiny()
    X = np.asarray(a.X.toarray() if sp.issparse(a.X) else a.X, dtype=np.float32)
    X[5, 1] = np.inf
    a.X = X
    train_on(work, a, capsys, "inf")


def test_empty_matrix(work, capsys):
    a = tiny()[:0].copy()
    train_on(work, a, capsys, "empty")


def test_no_genes(work, capsys):
    a = tiny()[:, :0].copy()
    train_on(work, a, capsys, "empty", "0 genes")


def test_all_zero_cells_with_error_mode(work, capsys):
    a = tiny()
    X = np.asarray(a.X.toarray() if sp.issparse(a.X) else a.X, dtype=np.float32)
    X[:7] = 0
    a.X = X
    train_on(
        work, a, capsys, "7 of 200 cells", "zero_count_cells", data={"zero_count_cells": "error"}
    )


def test_every_cell_zero(work, capsys):
    a = tiny()
    a.X = np.zeros(a.shape, dtype=np.float32)
    train_on(work, a, capsys, "zero counts")


def test_missing_counts_layer(work, capsys):
    train_on(work, tiny(), capsys, "'raw'", "data.counts_layer", data={"counts_layer": "raw"})


def test_duplicate_gene_names(work, capsys):
    a = tiny()
    a.var_names = ["g"] * a.n_vars
    train_on(work, a, capsys, "var_names")


# --------------------------------------------------------------------------- obs columns


def test_batch_column_missing(work, capsys):
    a = tiny()
    del a.obs["batch"]
    train_on(work, a, capsys, "'batch'", "data.batch_key")


def test_label_column_missing_in_supervised_mode(work, capsys):
    a = tiny()
    del a.obs["cell_type"]
    train_on(work, a, capsys, "'cell_type'", "data.cell_type_key")


def test_nan_in_batch_column(work, capsys):
    a = tiny()
    batch = a.obs["batch"].astype(object).to_numpy().copy()  # pandas 3: a read-only view
    batch[:3] = np.nan
    a.obs["batch"] = batch
    train_on(work, a, capsys, "'batch'", "NaN")


def test_more_batches_than_configured(work, capsys):
    train_on(work, tiny(), capsys, "2 batches", "global.n_batches", **{"global": {"n_batches": 1}})


def test_more_cell_types_than_configured(work, capsys):
    sections = {"global": {"n_cell_types": 2}}
    train_on(work, tiny(), capsys, "3 cell types", "global.n_cell_types", **sections)


# --------------------------------------------------------------------------- config


def test_unknown_config_key(work, capsys):
    write_config(work / "config.yaml", training={"batch_szie": 64})
    fails(work, capsys, TRAIN, "training.batch_szie", "config.yaml")


def test_wrong_type_config_value(work, capsys):
    write_config(work / "config.yaml", training={"batch_size": "many"})
    fails(work, capsys, TRAIN, "training.batch_size")


def test_refinement_steps_above_diffusion_steps(work, capsys):
    write_config(work / "config.yaml", inference={"n_refinement_steps": 50})
    fails(work, capsys, INFER, "inference.n_refinement_steps", "global.n_diffusion_steps")


def test_resume_from_missing(work, capsys):
    write_config(work / "config.yaml", training={"resume_from": "checkpoints/prev.pt"})
    fails(work, capsys, TRAIN, "training.resume_from", "checkpoints/prev.pt")


def test_checkpoint_dir_under_a_file(work, capsys):
    (work / "blocker").write_text("x")
    write_config(work / "config.yaml", training={"checkpoint_dir": "blocker/ckpt"})
    fails(work, capsys, TRAIN, "blocker")


def test_log_dir_under_a_file(work, capsys):
    (work / "blocker").write_text("x")
    write_config(work / "config.yaml", training={"log_dir": "blocker/logs"})
    fails(work, capsys, TRAIN, "blocker")


# --------------------------------------------------------------------------- checkpoints


def test_missing_checkpoint(work, capsys):
    fails(work, capsys, [*INFER, "--checkpoint", "checkpoints/none.pt"], "checkpoints/none.pt")


def test_corrupted_checkpoint(work, capsys):
    rng = np.random.default_rng(0)
    (work / "checkpoints" / "junk.pt").write_bytes(rng.bytes(4096))
    fails(work, capsys, [*INFER, "--checkpoint", "checkpoints/junk.pt"], "checkpoints/junk.pt")


def test_truncated_checkpoint(work, capsys):
    raw = (work / "checkpoints" / "best_model.pt").read_bytes()
    (work / "checkpoints" / "half.pt").write_bytes(raw[: len(raw) // 2])
    fails(work, capsys, [*INFER, "--checkpoint", "checkpoints/half.pt"], "checkpoints/half.pt")


def test_checkpoint_from_another_gene_set(work, capsys):
    a = tiny(1, n_cells=50)
    a.var_names = [f"ENSG{i:05d}" for i in range(a.n_vars)]
    infer_on(work, a, capsys, "data/query.h5ad", "genes")


def test_unseen_batch_at_inference(work, capsys):
    a = tiny(1, n_cells=50)
    a.obs["batch"] = "lab_X"
    infer_on(work, a, capsys, "data/query.h5ad", "lab_X")


def test_target_batch_does_not_exist(work, capsys):
    write_config(work / "config.yaml", inference={"default_target_batch": "batch_9"})
    fails(work, capsys, INFER, "inference.default_target_batch", "batch_9")


def test_output_dir_not_writable(work, capsys):
    (work / "blocker").write_text("x")
    fails(work, capsys, [*INFER[:3], "--output_dir", "blocker/results"], "blocker")


def test_inference_data_with_negative_values(work, capsys):
    a = tiny(1, n_cells=50)
    X = np.asarray(a.X.toarray() if sp.issparse(a.X) else a.X, dtype=np.float32)
    X[0, 0] = -1
    a.X = X
    infer_on(work, a, capsys, "data/query.h5ad", "negative")


def test_counts_are_checked_once_per_matrix(monkeypatch):
    """A run reads the same counts several times (zero-count cells, genes, setup, encoding):
    the raw-count scan runs once per matrix, and again for a different matrix."""
    import scipy.sparse as sp

    from scarkids.data import counts

    calls = []
    scan = counts._first_non_integer
    monkeypatch.setattr(counts, "_first_non_integer", lambda d: calls.append(1) or scan(d))
    X = sp.random(50, 20, density=0.3, format="csr", random_state=0, dtype=np.float32)
    X.data = np.round(X.data * 10) + 1
    for _ in range(4):
        counts.check_counts(X, where="x")
    assert len(calls) == 1
    bad = X.copy()
    bad.data[0] = 0.5
    with pytest.raises(counts.InputDataError, match="does not hold raw counts"):
        counts.check_counts(bad, where="x")
    assert len(calls) == 2
