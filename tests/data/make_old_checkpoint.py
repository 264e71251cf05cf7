"""Writes tests/data/checkpoint_0.1.0_flat.pt and its expected outputs with the code of
commit 793ff14 (the last one before the subpackage layout), so that a test can check that
checkpoints written then load now and give the same latent and predictions.

    git worktree add /tmp/old 793ff14
    PYTHONPATH=/tmp/old/src python tests/data/make_old_checkpoint.py tests/data
"""

import sys
from pathlib import Path

import numpy as np
import torch

import scarkids
from scarkids import SCARKIDS

torch.set_num_threads(1)
out = Path(sys.argv[1])
adata = scarkids.datasets.simulate(200, 60, n_batches=2, n_cell_types=3, seed=11)
SCARKIDS.setup_anndata(adata, batch_key="batch", labels_key="cell_type")
model = SCARKIDS(adata, n_latent=4, seed=0, n_diffusion_steps=20, noise_hidden_dim=16)
model.train(3, progress_bar=False, seed=0)
model.save(out / "checkpoint_0.1.0_flat.pt")
np.savez(
    out / "checkpoint_0.1.0_flat_outputs.npz",
    latent=model.get_latent_representation(),
    probs=model.predict(soft=True).to_numpy(),
    expression=model.get_normalized_expression(transform_batch=0, return_numpy=True)[:20],
)
print("written with", scarkids.__file__)
