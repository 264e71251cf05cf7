"""A training process killed with SIGKILL mid-run resumes to the same result as a run that
was never interrupted (CPU, fixed seed), and no checkpoint on disk is ever unreadable."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import yaml

from scarkids import SCARKIDS
from scarkids.data.files import write_h5ad
from scarkids.data.simulate import simulate
from scarkids.model import checkpoint

REPO = Path(__file__).resolve().parents[1]
N_EPOCHS = 40
CONFIG = {
    "global": {"latent_dim": 4, "n_diffusion_steps": 20, "n_genes": None, "supervised": True},
    "data": {"train_data_path": "train.h5ad", "val_data_path": None},
    "encoder": {"hidden_dims": [16]},
    "classifier": {"hidden_dim": 8},
    "likelihood": {"hidden_dim": 16},
    "ddpm_backward": {"noise_hidden_dim": 16, "timestep_embed_dim": 8},
    "training": {
        "n_epochs": N_EPOCHS,
        "batch_size": 32,
        "device": "cpu",
        "save_last": True,
        "early_stopping": False,
        "seed": 3,
    },
}


def prepare(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    write_h5ad(
        simulate(n_cells=240, n_genes=60, n_batches=2, n_cell_types=3, seed=0), root / "train.h5ad"
    )
    (root / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    return root


def command() -> list[str]:
    return [sys.executable, str(REPO / "main.py"), "--mode", "train", "--config", "config.yaml"]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def epochs_logged(root: Path) -> int:
    log = root / "logs" / "training.log"
    if not log.exists():
        return 0
    return len(re.findall(r"Epoch \d+/", log.read_text(errors="replace")))


def last_epoch(root: Path) -> int:
    path = root / "checkpoints" / "last.pt"
    return checkpoint.read(path)["training_state"]["epoch"] if path.exists() else 0


def all_checkpoints_readable(root: Path) -> list[str]:
    names = []
    for path in sorted((root / "checkpoints").glob("*.pt")):
        checkpoint.read(path)  # raises CheckpointError for a half-written file
        names.append(path.name)
    return names


def run_to_end(root: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        command(), cwd=root, env=env(), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def test_sigkill_mid_run_then_resume_matches_uninterrupted_run(tmp_path):
    killed = prepare(tmp_path / "killed")
    proc = subprocess.Popen(
        command(), cwd=killed, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 300
    try:
        while not (epochs_logged(killed) >= 3 and last_epoch(killed) >= 3):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "training made no progress"
            # every checkpoint that exists is complete, even while training writes them
            all_checkpoints_readable(killed)
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert "last.pt" in all_checkpoints_readable(killed)
    stopped_at = checkpoint.read(killed / "checkpoints" / "last.pt")["training_state"]["epoch"]
    assert 3 <= stopped_at < N_EPOCHS, "the kill should land mid-run"

    resumed = run_to_end(killed)
    assert f"at epoch {stopped_at}" in resumed.stdout
    all_checkpoints_readable(killed)

    clean = prepare(tmp_path / "clean")
    run_to_end(clean)

    final = {
        name: checkpoint.read(root / "checkpoints" / "last.pt")
        for name, root in (("killed", killed), ("clean", clean))
    }
    for payload in final.values():
        assert payload["training_state"]["epoch"] == N_EPOCHS
    losses = {name: p["history"]["train_loss"] for name, p in final.items()}
    assert len(losses["clean"]) == N_EPOCHS
    assert losses["killed"] == losses["clean"]

    adata = ad.read_h5ad(clean / "train.h5ad")
    latents = [
        SCARKIDS.load(root / "checkpoints" / "best_model.pt").get_latent_representation(adata)
        for root in (killed, clean)
    ]
    np.testing.assert_allclose(latents[0], latents[1], atol=1e-6, rtol=0)
