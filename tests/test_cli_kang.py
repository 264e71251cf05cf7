"""Train then infer through the seed's commands on real data with more genes than n_genes."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import shared_file

from scarkids import cli

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
def test_kang_train_then_inference_selects_genes_and_writes_outputs(tmp_path, monkeypatch):
    path = shared_file("kang_ifnb_labeled.h5ad")
    monkeypatch.chdir(tmp_path)
    config = {
        "global": {"n_genes": 2000, "n_diffusion_steps": 100},
        "data": {"train_data_path": str(path), "test_data_path": str(path)},
        "training": {"n_epochs": 2, "batch_size": 256, "device": "cpu"},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    assert cli.main(["--mode", "train", "--config", "config.yaml", "--seed", "1"]) == 0
    log = (tmp_path / "logs" / "training.log").read_text()
    assert len([line for line in log.splitlines() if "Epoch" in line and "KL" in line]) == 2
    assert cli.main(["--mode", "inference", "--config", "config.yaml", "--output_dir", "out"]) == 0

    cells = ad.read_h5ad(path, backed="r").obs_names
    latent = np.load(tmp_path / "out" / "latent_embeddings.npy")
    assert latent.shape == (len(cells), 10) and np.isfinite(latent).all()
    corrected = ad.read_h5ad(tmp_path / "out" / "corrected_expression.h5ad")
    assert corrected.shape == (len(cells), 2000)  # HVG selection kicked in (13,800 genes)
    assert list(corrected.obs_names) == list(cells)
    np.testing.assert_array_equal(corrected.obsm["X_scarkids"], latent)
    predictions = pd.read_csv(tmp_path / "out" / "cell_type_predictions.csv")
    assert list(predictions["cell_id"]) == list(cells)
