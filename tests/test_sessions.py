"""The seed's sequential sessions on real data: cellbench split by batch, four sessions."""

from __future__ import annotations

import anndata as ad
import pytest
import yaml
from helpers import shared_file

from scarkids import cli
from scarkids.data.files import write_h5ad
from scarkids.model import checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

# later sessions bring batches (and, in session 3, cell types) the earlier ones never saw
SESSIONS = [
    ("session_1", ["CEL-seq2_3cl", "Drop-seq_3cl"], True),
    ("session_2", ["CEL-seq2_5cl_p1"], False),
    ("session_3", ["CEL-seq2_5cl_p2"], True),
    ("session_4", ["CEL-seq2_5cl_p3"], False),
]
EPOCHS = [6, 4, 5, 3]


@pytest.mark.slow
def test_four_sessions_on_cellbench(tmp_path, monkeypatch, caplog):
    adata = ad.read_h5ad(shared_file("cellbench_5batch.h5ad"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    sessions = []
    for (name, batches, supervised), epochs in zip(SESSIONS, EPOCHS, strict=True):
        part = adata[adata.obs["batch"].isin(batches)].copy()
        write_h5ad(part, tmp_path / "data" / f"{name}.h5ad")
        sessions.append(
            {
                "name": name,
                "data_path": f"data/{name}.h5ad",
                "supervised": supervised,
                "n_epochs": epochs,
            }
        )
    config = {
        "global": {"n_genes": 500, "n_diffusion_steps": 100},
        "training": {
            "sessions": sessions,
            "early_stopping": True,  # the kept model is the best validation epoch
            "early_stopping_patience": 100,
            "device": "cpu",
        },
    }
    (tmp_path / "seq.yaml").write_text(yaml.safe_dump(config))
    caplog.set_level("INFO")
    assert cli.main(["sequential", "--config", "seq.yaml", "--seed", "3"]) == 0

    log = (tmp_path / "logs" / "training.log").read_text()
    previous = None
    for k, ((name, _, _), epochs) in enumerate(zip(SESSIONS, EPOCHS, strict=True), 1):
        assert f"Session {k}/4: {name}" in log
        best = checkpoint.read(tmp_path / "checkpoints" / f"{name}_best.pt")
        last = checkpoint.read(tmp_path / "checkpoints" / name / "last.pt")
        # every session trains its configured epochs, and keeps its best validation epoch
        assert len(last["history"]["train_loss"]) == epochs
        assert best["history"]["val_loss"][-1] == min(last["history"]["val_loss"])
        reg = best["registry"]
        if previous is not None:  # indices never change meaning
            assert (
                reg["batch_categories"][: len(previous["batch_categories"])]
                == previous["batch_categories"]
            )
            assert (
                reg["label_categories"][: len(previous["label_categories"])]
                == previous["label_categories"]
            )
            assert reg["gene_names"] == previous["gene_names"]
        previous = reg
    assert previous["batch_categories"] == [b for _, bs, _ in SESSIONS for b in bs]
    assert {"A549", "H838"} <= set(previous["label_categories"])  # added in session 3
