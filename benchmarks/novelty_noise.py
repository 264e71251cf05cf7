"""The novelty estimate's own noise against its spread over cells, on simulated data.

    python benchmarks/novelty_noise.py [--seeds 0,1,2,3]

For each model seed: a reference without one of five simulated cell types (the data of
tests/test_uncertainty.py), 60 epochs; prints the AUROC of the novelty for the left-out type,
the shares flagged ``unknown`` (left-out, known) and the noise ratio: the sd of the
difference of two draw seeds' estimates over sqrt(2), divided by the sd over cells.
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np


def main(argv=None) -> int:
    import torch
    from sklearn.metrics import roc_auc_score

    import scarkids
    from scarkids import SCARKIDS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2,3")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    adata = scarkids.datasets.simulate(
        2500, 300, n_batches=2, n_cell_types=5, batch_effect=0.4, seed=7
    )
    new = (adata.obs["cell_type"] == "type_4").to_numpy()
    ref = adata[~new].copy()
    ref.obs["cell_type"] = ref.obs["cell_type"].astype(str)
    SCARKIDS.setup_anndata(ref, batch_key="batch", labels_key="cell_type")
    for s in (int(v) for v in args.seeds.split(",")):
        m = SCARKIDS(ref, n_latent=8, seed=s).train(60, progress_bar=False, seed=s)
        t = m.predict_with_uncertainty(adata.copy())
        a, c = m.novelty(adata, seed=3), m.novelty(adata, seed=4)
        noise = np.std(a - c) / np.sqrt(2) / np.std(a)
        print(
            f"seed {s}: AUROC {roc_auc_score(new, t['novelty']):.3f}, flagged left-out "
            f"{t['unknown'][new].mean():.3f}, known {t['unknown'][~new].mean():.3f}, "
            f"noise / spread {noise:.3f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
