"""The command line end to end on tiny simulated data: every row of the seed README's
"Command Reference" table, sessions, errors, and the ``python main.py`` shim."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import yaml

from scarkids import cli
from scarkids.data.files import write_h5ad
from scarkids.data.simulate import simulate
from scarkids.model import checkpoint

REPO = Path(__file__).resolve().parents[1]

TINY = {
    "global": {"latent_dim": 4, "n_diffusion_steps": 20, "n_genes": 100, "supervised": True},
    "data": {
        "train_data_path": "data/train.h5ad",
        "val_data_path": "data/val.h5ad",  # absent: a split of the train cells
        "test_data_path": "data/test.h5ad",
    },
    "encoder": {"hidden_dims": [32]},
    "classifier": {"hidden_dim": 16},
    "likelihood": {"hidden_dim": 32},
    "ddpm_backward": {"noise_hidden_dim": 32, "timestep_embed_dim": 8},
    "training": {"n_epochs": 3, "batch_size": 64, "device": "cpu"},
    "inference": {"n_refinement_steps": 10, "device": "cpu"},
}


pytestmark = pytest.mark.usefixtures("one_thread")


def write_config(path: Path, **sections) -> Path:
    cfg = copy.deepcopy(TINY)
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A folder with data/train.h5ad (300 cells x 120 genes) and config.yaml; the cwd."""
    data = tmp_path / "data"
    data.mkdir()
    write_h5ad(
        simulate(n_cells=300, n_genes=120, n_batches=2, n_cell_types=3, seed=0), data / "train.h5ad"
    )
    write_config(tmp_path / "config.yaml")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(argv, capsys) -> tuple[int, str, str]:
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def epoch_lines(log: Path) -> list[str]:
    """What ``grep "Epoch\\|Loss\\|KL" logs/training.log`` prints."""
    return [line for line in log.read_text().splitlines() if re.search("Epoch|Loss|KL", line)]


def history(path: Path) -> dict[str, list[float]]:
    return checkpoint.read(path)["history"]


# --------------------------------------------------------------------------- training


def test_train_supervised_writes_checkpoints_and_one_log_line_per_epoch(workdir, capsys):
    rc, out, err = run(["train", "--config", "config.yaml"], capsys)
    assert rc == 0, err
    assert (workdir / "checkpoints" / "best_model.pt").exists()
    assert (workdir / "checkpoints" / "last.pt").exists()
    lines = epoch_lines(workdir / "logs" / "training.log")
    assert len(lines) == 3
    for k, line in enumerate(lines, 1):
        assert f"Epoch {k}/3 | Loss " in line
        for field in ("Reconstruction NLL", "VAE KL", "Diffusion KL", "Accuracy", "ELBO"):
            assert field in line and f"val {field}" in line
    assert "Validation metrics: batch silhouette" in out
    assert "selected 100 highly variable genes of 120" in out
    payload = checkpoint.read(workdir / "checkpoints" / "best_model.pt")
    assert payload["registry"]["label_categories"] == ["type_0", "type_1", "type_2"]
    extra = payload["extra"]
    assert extra["seed"] == 0 and extra["data_fingerprint"]["n_genes"] == 100  # the default seed
    assert set(extra["versions"]) >= {"scarkids", "torch", "anndata", "scanpy", "numpy"}


def test_train_unsupervised(workdir, capsys):
    write_config(workdir / "config.yaml", **{"global": {"supervised": False, "n_cell_types": 3}})
    rc, out, err = run(["train", "--config", "config.yaml"], capsys)
    assert rc == 0, err
    payload = checkpoint.read(workdir / "checkpoints" / "best_model.pt")
    registry = payload["registry"]
    assert registry["labels_are_clusters"] and registry["max_clusters"] == 3
    assert payload["init_params"]["n_labels"] == 6  # global.cluster_factor: 2 components each
    # the components in use, merged into at most 3 clusters, each component in one
    groups = registry["cluster_groups"]
    assert 1 <= len(groups) <= 3
    members = [c for g in groups for c in g]
    assert len(members) == len(set(members)) and set(members) <= set(registry["label_categories"])
    log_text = (workdir / "logs" / "training.log").read_text()
    assert f"Clusters: {len(groups)} (global.n_cell_types = 3 is a maximum)" in log_text
    assert len(epoch_lines(workdir / "logs" / "training.log")) == 3


def test_inference_merges_unsupervised_clusters(workdir, capsys):
    """inference.max_clusters: an unsupervised model's predictions name at most that many
    groups of its clusters."""
    write_config(
        workdir / "config.yaml",
        **{"global": {"supervised": False, "n_cell_types": 6}},
        data={"test_data_path": "data/train.h5ad"},
        inference={"max_clusters": 2, "novelty_quantile": None, "confidence_threshold": 0},
    )
    assert run(["train", "--config", "config.yaml"], capsys)[0] == 0
    argv = ["infer", "--config", "config.yaml", "--checkpoint", "checkpoints/best_model.pt"]
    rc, _, err = run([*argv, "--output_dir", "merged"], capsys)
    assert rc == 0, err
    table = pd.read_csv(workdir / "merged" / "cell_type_predictions.csv")
    model = checkpoint.read(workdir / "checkpoints" / "best_model.pt")
    assert model["registry"]["labels_are_clusters"]
    assert 1 <= table["predicted_label"].nunique() <= 2
    assert (table["predicted_label"] == table["top_label"]).all()
    assert table["probability"].between(0.5 - 1e-6, 1 + 1e-6).all()  # top of two groups


def test_train_auto_resumes_from_last_checkpoint(workdir, capsys):
    write_config(workdir / "config.yaml", training={"n_epochs": 2})
    assert run(["train", "--config", "config.yaml"], capsys)[0] == 0  # "interrupted" at 2
    write_config(workdir / "config.yaml", training={"n_epochs": 4})
    rc, out, err = run(["train", "--config", "config.yaml"], capsys)
    assert rc == 0, err
    assert re.search(r"Resuming from \S*last\.pt at epoch 2", out)
    assert "Epoch 3/4" in out and "Epoch 4/4" in out and "Epoch 1/4" not in out
    assert len(history(workdir / "checkpoints" / "best_model.pt")["train_loss"]) == 4
    assert checkpoint.read(workdir / "checkpoints" / "last.pt")["training_state"]["epoch"] == 4


def test_ctrl_c_leaves_a_resumable_last_checkpoint(workdir, capsys, monkeypatch):
    from scarkids.cli import logs as run_log
    from scarkids.cli import train as pipeline_train

    def interrupt_at_2(epoch, *args):
        if epoch == 2:
            raise KeyboardInterrupt
        return run_log.epoch_line(epoch, *args)

    monkeypatch.setattr(pipeline_train, "epoch_line", interrupt_at_2)
    rc, out, err = run(["train", "--config", "config.yaml"], capsys)
    assert rc == 130 and "last.pt" in err and "Traceback" not in err
    monkeypatch.undo()
    monkeypatch.chdir(workdir)
    rc, out, err = run(["train", "--config", "config.yaml"], capsys)
    assert rc == 0 and "at epoch 1" in out and "Epoch 3/3" in out


def test_custom_seed_changes_results_and_same_seed_repeats_them(workdir, capsys):
    best = workdir / "checkpoints" / "best_model.pt"
    losses = {}
    for seed, fresh in ((1, []), (2, []), (1, ["--fresh"])):
        rc, _, err = run(["train", "--config", "config.yaml", "--seed", seed, *fresh], capsys)
        assert rc == 0, err
        assert checkpoint.read(best)["extra"]["seed"] == seed
        losses.setdefault(seed, []).append(history(best)["train_loss"])
    assert losses[1][0] == losses[1][1]
    assert losses[1][0] != losses[2][0]


def test_fresh_ignores_last_checkpoint(workdir, capsys):
    assert run(["train", "--config", "config.yaml"], capsys)[0] == 0
    rc, out, _ = run(["train", "--config", "config.yaml", "--fresh"], capsys)
    assert rc == 0 and "Resuming" not in out and "Epoch 1/3" in out


# --------------------------------------------------------------------------- inference


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A trained supervised model (checkpoints/best_model.pt) and a test file in one folder."""
    root = tmp_path_factory.mktemp("model")
    (root / "data").mkdir()
    write_h5ad(
        simulate(n_cells=300, n_genes=120, n_batches=2, n_cell_types=3, seed=0),
        root / "data" / "train.h5ad",
    )
    test = simulate(n_cells=80, n_genes=120, n_batches=2, n_cell_types=3, seed=1)
    test.obs_names = [f"query_{i:02d}" for i in range(test.n_obs)][::-1]  # not in sorted order
    write_h5ad(test, root / "data" / "test.h5ad")
    write_config(root / "config.yaml")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        assert cli.main(["train", "--config", "config.yaml"]) == 0
    return root


def check_outputs(out: Path, test: ad.AnnData, latent_dim: int = 4) -> ad.AnnData:
    latent = np.load(out / "latent_embeddings.npy")
    assert latent.shape == (test.n_obs, latent_dim) and latent.dtype == np.float32
    table = pd.read_csv(out / "cell_type_predictions.csv")
    assert list(table.columns[:4]) == ["cell_id", "predicted_label", "probability", "entropy"]
    assert {"novelty", "unknown"} <= set(table.columns)
    assert table["unknown"].dtype == bool and np.isfinite(table["novelty"]).all()
    assert (table["predicted_label"][table["unknown"]] == "unknown").all()
    assert table["cell_id"].tolist() == test.obs_names.tolist()
    corrected = ad.read_h5ad(out / "corrected_expression.h5ad")
    assert corrected.obs_names.tolist() == test.obs_names.tolist()
    assert corrected.shape == (test.n_obs, 100)
    assert corrected.obsm["X_scarkids"].shape == (test.n_obs, latent_dim)
    assert "predicted_label" in corrected.obs and "batch" in corrected.obs
    np.testing.assert_allclose(corrected.obs["novelty"], table["novelty"], rtol=1e-5)
    assert corrected.obs["unknown"].tolist() == table["unknown"].tolist()
    assert (out / "run_info.json").exists()
    return corrected


def test_inference_get_embeddings(model_dir, capsys, monkeypatch):
    monkeypatch.chdir(model_dir)
    argv = ["--mode", "inference", "--config", "config.yaml", "--checkpoint"]
    argv += ["checkpoints/best_model.pt", "--data_path", "data/test.h5ad"]
    rc, out, err = run(argv, capsys)
    assert rc == 0, err
    test = ad.read_h5ad(model_dir / "data" / "test.h5ad")
    corrected = check_outputs(model_dir / "results", test)
    np.testing.assert_allclose(
        corrected.obsm["X_scarkids"], np.load(model_dir / "results" / "latent_embeddings.npy")
    )
    assert corrected.uns["scarkids"]["target_batch"] == "batch_0"


def test_inference_custom_output_dir(model_dir, capsys, monkeypatch):
    monkeypatch.chdir(model_dir)
    argv = ["infer", "--config", "config.yaml", "--checkpoint", "checkpoints/best_model.pt"]
    rc, _, err = run(
        [*argv, "--data_path", "data/test.h5ad", "--output_dir", "my_results/"], capsys
    )
    assert rc == 0, err
    check_outputs(model_dir / "my_results", ad.read_h5ad(model_dir / "data" / "test.h5ad"))


def test_inference_refinement_and_target_batch_by_name(model_dir, capsys, monkeypatch):
    monkeypatch.chdir(model_dir)
    inference = {"use_ddpm_refinement": True, "default_target_batch": "batch_1"}
    write_config(model_dir / "refine.yaml", inference=inference)
    rc, out, err = run(["infer", "--config", "refine.yaml", "--output_dir", "refined"], capsys)
    assert rc == 0, err
    corrected = check_outputs(model_dir / "refined", ad.read_h5ad(model_dir / "data/test.h5ad"))
    refined = corrected.obsm["X_scarkids_refined"]
    np.testing.assert_allclose(refined, np.load(model_dir / "refined" / "latent_embeddings.npy"))
    assert not np.allclose(refined, corrected.obsm["X_scarkids"])
    assert corrected.uns["scarkids"]["target_batch"] == "batch_1"


def test_inference_writes_rescaled_counts_when_the_config_asks(model_dir, capsys, monkeypatch):
    """inference.corrected_expression_source: counts: the file holds each cell's counts with
    the decoded batch effect divided out: the cell's zeros, rows at the library size."""
    monkeypatch.chdir(model_dir)
    write_config(model_dir / "counts.yaml", inference={"corrected_expression_source": "counts"})
    rc, _, err = run(["infer", "--config", "counts.yaml", "--output_dir", "counts"], capsys)
    assert rc == 0, err
    test = ad.read_h5ad(model_dir / "data" / "test.h5ad")
    corrected = check_outputs(model_dir / "counts", test)
    assert corrected.uns["scarkids"]["source"] == "counts"
    X = corrected.X.toarray() if sp.issparse(corrected.X) else np.asarray(corrected.X)
    genes = test[:, corrected.var_names].X  # the model's genes
    counts = genes.toarray() if sp.issparse(genes) else np.asarray(genes)
    np.testing.assert_array_equal(X > 0, counts > 0)
    np.testing.assert_allclose(X.sum(1), 1e4, rtol=1e-4)


def test_inference_strided_refinement(model_dir, capsys, monkeypatch):
    """inference.n_refinement_sampling_steps: the strided sampler, said in the log and run_info."""
    monkeypatch.chdir(model_dir)
    inference = {"use_ddpm_refinement": True, "n_refinement_sampling_steps": 3}
    write_config(model_dir / "strided.yaml", inference=inference)
    rc, out, err = run(["infer", "--config", "strided.yaml", "--output_dir", "strided"], capsys)
    assert rc == 0, err
    assert "strided sampler: 3 reverse steps" in out + err
    info = json.loads((model_dir / "strided" / "run_info.json").read_text())
    assert info["refinement"] == {"used": True, "n_steps": 10, "n_sampling_steps": 3}
    latent = np.load(model_dir / "strided" / "latent_embeddings.npy")
    assert latent.shape[1] == 4 and np.isfinite(latent).all()


def test_inference_bad_target_batch_writes_nothing(model_dir, capsys, monkeypatch):
    monkeypatch.chdir(model_dir)
    write_config(model_dir / "bad_target.yaml", inference={"default_target_batch": "batch_9"})
    rc, _, err = run(["infer", "--config", "bad_target.yaml", "--output_dir", "none"], capsys)
    assert rc == 2 and "batch_9" in err and "batch_0" in err
    assert not (model_dir / "none").exists()


@pytest.mark.parametrize("quantile", [0, 1, 1.5, -0.2])
def test_inference_bad_novelty_quantile_is_one_line(model_dir, capsys, monkeypatch, quantile):
    monkeypatch.chdir(model_dir)
    write_config(model_dir / "bad_q.yaml", inference={"novelty_quantile": quantile})
    rc, _, err = run(["infer", "--config", "bad_q.yaml", "--output_dir", "q_out"], capsys)
    assert rc == 2 and "inference.novelty_quantile" in err
    assert err.strip().count("\n") == 0
    assert not (model_dir / "q_out").exists()


def test_inference_differential_expression_section_writes_the_table(model_dir, capsys, monkeypatch):
    monkeypatch.chdir(model_dir)
    section = {"groupby": "cell_type", "mode": "change", "delta": 0.5, "fdr_target": 0.1}
    write_config(model_dir / "de.yaml", inference={"differential_expression": section})
    rc, out, err = run(["infer", "--config", "de.yaml", "--output_dir", "de_out"], capsys)
    assert rc == 0, err
    table = pd.read_csv(model_dir / "de_out" / "differential_expression.csv", index_col=0)
    assert sorted(table["comparison"].unique()) == [f"type_{k} vs rest" for k in range(3)]
    assert "is_de_fdr_0.1" in table and "Differential expression by 'cell_type'" in out
    # off by default: no table
    rc, _, _ = run(["infer", "--config", "config.yaml", "--output_dir", "plain_out"], capsys)
    assert rc == 0 and not (model_dir / "plain_out" / "differential_expression.csv").exists()


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"groupby": "nope"}, "inference.differential_expression.groupby"),
        ({"groupby": "cell_type", "delta": -1}, "inference.differential_expression.delta"),
        ({"groupby": "cell_type", "fdr": 0.1}, "inference.differential_expression.fdr"),
    ],
)
def test_inference_bad_differential_expression_is_one_line(
    model_dir, capsys, monkeypatch, section, key
):
    monkeypatch.chdir(model_dir)
    write_config(model_dir / "bad_de.yaml", inference={"differential_expression": section})
    rc, _, err = run(["infer", "--config", "bad_de.yaml", "--output_dir", "bad_de_out"], capsys)
    assert rc == 2 and key in err and err.strip().count("\n") == 0
    assert not (model_dir / "bad_de_out").exists()


def test_inference_max_clusters_of_a_supervised_model_is_one_line(model_dir, capsys, monkeypatch):
    monkeypatch.chdir(model_dir)
    write_config(model_dir / "merge_sup.yaml", inference={"max_clusters": 2})
    rc, _, err = run(["infer", "--config", "merge_sup.yaml", "--output_dir", "m_out"], capsys)
    assert rc == 2 and "max_clusters" in err
    assert err.strip().count("\n") == 0
    assert not (model_dir / "m_out").exists()


def test_inference_unseen_batch_is_named(model_dir, capsys, monkeypatch):
    monkeypatch.chdir(model_dir)
    query = ad.read_h5ad(model_dir / "data" / "test.h5ad")
    query.obs["batch"] = "lab_X"
    write_h5ad(query, model_dir / "data" / "unseen.h5ad")
    rc, _, err = run(["infer", "--data_path", "data/unseen.h5ad", "--output_dir", "u"], capsys)
    assert rc == 2 and "lab_X" in err and "data/unseen.h5ad" in err
    assert not (model_dir / "u").exists()


# --------------------------------------------------------------------------- sessions


def test_sequential_sessions_write_session_checkpoints(workdir, capsys):
    full = simulate(n_cells=400, n_genes=120, n_batches=3, n_cell_types=3, seed=2)
    write_h5ad(full[full.obs["batch"] != "batch_2"].copy(), workdir / "data" / "s1.h5ad")
    write_h5ad(full[full.obs["batch"] == "batch_2"].copy(), workdir / "data" / "s2.h5ad")
    sessions = [
        {"name": "session_1", "data_path": "data/s1.h5ad", "supervised": True},
        {"name": "session_2", "data_path": "data/s2.h5ad", "supervised": False, "n_epochs": 2},
    ]
    write_config(workdir / "seq.yaml", training={"sessions": sessions, "n_epochs": 2})
    rc, out, err = run(["--mode", "sequential", "--config", "seq.yaml", "--seed", 7], capsys)
    assert rc == 0, err
    for k in (1, 2):
        assert (workdir / "checkpoints" / f"session_{k}_best.pt").exists()
    log = (workdir / "logs" / "training.log").read_text()
    assert "Session 1/2: session_1 (supervised), 2 epochs" in log
    assert "Session 2/2: session_2 (unsupervised), 2 epochs" in log
    assert len(epoch_lines(workdir / "logs" / "training.log")) == 4
    final = checkpoint.read(workdir / "checkpoints" / "session_2_best.pt")
    assert final["registry"]["batch_categories"] == ["batch_0", "batch_1", "batch_2"]


# --------------------------------------------------------------------------- errors


def test_bad_config_key_is_one_line_naming_the_key(workdir, capsys):
    (workdir / "bad.yaml").write_text("training:\n  batch_szie: 64\n")
    rc, _, err = run(["train", "--config", "bad.yaml"], capsys)
    assert rc == 2
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    assert err.startswith("error: ") and "training.batch_szie" in err and "batch_size" in err
    assert not (workdir / "checkpoints").exists()


def test_missing_data_file_is_a_clear_error(workdir, capsys):
    write_config(workdir / "config.yaml", data={"train_data_path": "data/nope.h5ad"})
    rc, _, err = run(["--mode", "train", "--config", "config.yaml"], capsys)
    assert rc == 2 and "data/nope.h5ad" in err and "not found" in err
    rc, _, err = run(["train", "--config", "config.yaml", "--debug"], capsys)
    assert rc == 2 and "Traceback" in err


def test_data_checks_name_the_config_key(workdir, capsys):
    write_config(workdir / "config.yaml", **{"global": {"n_batches": 1}})
    rc, _, err = run(["train", "--config", "config.yaml"], capsys)
    assert rc == 2 and "2 batches" in err and "global.n_batches" in err
    write_config(workdir / "config.yaml", prior={"cell_type_prior_probs": [0.5, 0.5]})
    rc, _, err = run(["train", "--config", "config.yaml"], capsys)
    assert rc == 2 and "prior.cell_type_prior_probs" in err and "3 cell types" in err
    write_config(workdir / "config.yaml", data={"batch_key": "donor"})
    rc, _, err = run(["train", "--config", "config.yaml"], capsys)
    assert rc == 2 and "'donor'" in err and "data.batch_key" in err
    assert not (workdir / "checkpoints").exists()


def test_config_key_appends_the_key_to_the_chosen_errors_only():
    from scarkids.cli.prepare import config_key
    from scarkids.errors import CheckpointError, TrainingError

    with pytest.raises(TrainingError, match=r"^lower learning_rate=; in config.yaml: t.lr$"):
        with config_key("t.lr", TrainingError):
            raise TrainingError("lower learning_rate=")
    with pytest.raises(CheckpointError, match=r"^not found$"):
        with config_key("t.lr", TrainingError):
            raise CheckpointError("not found")


# --------------------------------------------------------------------------- other commands


@pytest.mark.parametrize(
    "command", ["train", "infer", "inference", "sequential", "demo", "simulate", "evaluate"]
)
def test_every_command_has_help(command, capsys):
    assert cli.main([command, "--help"]) == 0
    assert "usage: scarkids" in capsys.readouterr().out


def test_demo_writes_outputs_and_umap(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, out, err = run(["demo", "--output_dir", "demo", "--n_cells", 200, "--epochs", 2], capsys)
    assert rc == 0, err
    demo = tmp_path / "demo"
    written = ("umap.png", "umap_unintegrated.png", "config.yaml", "checkpoints/best_model.pt")
    for name in (*written, "logs/training.log"):
        assert (demo / name).exists(), name
    assert np.load(demo / "results" / "latent_embeddings.npy").shape == (200, 10)
    assert "umap.png" in out
    # the config the demo wrote works with the ordinary commands
    rc, _, err = run(["infer", "--config", demo / "config.yaml", "--output_dir", "again"], capsys)
    assert rc == 0, err


def test_simulate_and_evaluate_errors(tmp_path, capsys, monkeypatch):
    from scarkids.metrics import scib as evaluation

    out = tmp_path / "sim.h5ad"
    rc, _, err = run(["simulate", "--output", out, "--n_cells", 50, "--n_genes", 30], capsys)
    assert rc == 0, err
    assert ad.read_h5ad(out).shape == (50, 30)
    rc, _, err = run(["evaluate", "--data", out, "--embedding", "X_none"], capsys)
    assert rc == 2 and "X_none" in err
    np.save(tmp_path / "emb.npy", np.zeros((50, 3), np.float32))

    def no_scib(*args, **kwargs):
        raise ImportError("scarkids.evaluate needs scib-metrics: pip install 'scarkids[eval]'")

    monkeypatch.setattr(evaluation, "evaluate", no_scib)
    rc, _, err = run(["evaluate", "--data", out, "--embedding", tmp_path / "emb.npy"], capsys)
    assert rc == 2 and err.strip() == (
        "error: scarkids.evaluate needs scib-metrics: pip install 'scarkids[eval]'"
    )


# --------------------------------------------------------------------------- the shim


def test_main_py_help():
    proc = subprocess.run(
        [sys.executable, str(REPO / "main.py"), "--help"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and "train" in proc.stdout and "sequential" in proc.stdout


def test_main_py_seed_form_trains(workdir):
    write_config(workdir / "config.yaml", training={"n_epochs": 1})
    proc = subprocess.run(
        [sys.executable, str(REPO / "main.py"), "--mode", "train", "--config", "config.yaml"]
        + ["--seed", "42"],
        capture_output=True,
        text=True,
        cwd=workdir,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    assert (workdir / "checkpoints" / "best_model.pt").exists()
    assert len(epoch_lines(workdir / "logs" / "training.log")) == 1


def test_the_shipped_config_trains_and_infers_on_a_fresh_machine(tmp_path, capsys, monkeypatch):
    """The seed's Quick Start: config.yaml as shipped names the built-in dataset, so
    ``python main.py --mode train --config config.yaml --seed 42`` needs no data files (here
    with 2 epochs and a smaller network, to keep the suite short)."""
    shipped = yaml.safe_load((REPO / "config.yaml").read_text())
    assert shipped["data"]["train_data_path"] == "builtin:simulated"
    shipped["training"]["n_epochs"] = 2
    shipped["ddpm_backward"]["noise_hidden_dim"] = 16
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(shipped))
    monkeypatch.chdir(tmp_path)
    rc, out, _ = run(["--mode", "train", "--config", "config.yaml", "--seed", "42"], capsys)
    assert rc == 0 and "builtin:simulated: 3000 cells" in out
    rc, out, _ = run(["--mode", "inference", "--config", "config.yaml"], capsys)
    assert rc == 0
    assert np.load(tmp_path / "results" / "latent_embeddings.npy").shape == (3000, 10)


def test_an_unknown_builtin_dataset_is_one_line(workdir, capsys):
    rc, _, err = run(["train", "--config", "config.yaml", "--data_path", "builtin:nope"], capsys)
    assert rc == 2
    assert err.strip().splitlines()[-1] == (
        "error: builtin:nope: no such built-in dataset; the built-in one is 'builtin:simulated'"
    )
