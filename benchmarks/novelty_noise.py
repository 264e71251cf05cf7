"""The novelty estimate's own noise against its spread over cells, on simulated data.

    python benchmarks/novelty_noise.py [--seeds 0,1,2,3]
    python benchmarks/novelty_noise.py --table

For each model seed: a reference without one of five simulated cell types (the data of
tests/test_uncertainty.py), 60 epochs; prints the AUROC of the novelty for the left-out type,
the shares flagged ``unknown`` (left-out, known) and the noise ratio: the sd of the
difference of two draw seeds' estimates over sqrt(2), divided by the sd over cells.

Every seed is a row of ``benchmarks/results/novelty_noise/runs.jsonl`` (a rerun replaces its
row), and ``benchmarks/results/novelty_noise.md`` is rebuilt from all rows (``--table`` only
rebuilds it).
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import harness
import numpy as np

RUNS = harness.runs_file("novelty_noise")
TABLE = harness.RESULTS / "novelty_noise.md"
KEY = ("seed",)
COLS = ("AUROC", "flagged left-out", "flagged known", "noise / spread")


def write_table() -> Path:
    """novelty_noise.md: one row per recorded seed, and the mean."""
    rows = sorted(harness.read_runs(RUNS), key=lambda r: r["seed"])
    body = [[str(r["seed"]), *(f"{r[c]:.3f}" for c in COLS), harness.code_label(r)] for r in rows]
    if rows:
        body.append(["mean", *(f"{np.mean([r[c] for r in rows]):.3f}" for c in COLS), ""])
    lines = [
        "# The novelty estimate's noise (`python benchmarks/novelty_noise.py`)",
        "",
        "Simulated (2,500 cells x 300 genes, 2 batches, 5 types), reference without type_4, "
        "60 epochs per model seed; noise / spread: the sd of the difference of two draw "
        "seeds' estimates over sqrt(2), divided by the sd over cells.",
        "",
        *harness.md_table(["seed", *COLS, "commit"], body),
        "",
        *harness.runs_section(rows),
    ]
    return harness.write_table(TABLE, lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2,3")
    harness.table_option(parser)
    args = parser.parse_args(argv)
    if args.table:
        if not RUNS.exists():
            print(f"{RUNS} not found: no runs recorded yet")
            return 0
        print(write_table().read_text())
        return 0
    import torch
    from sklearn.metrics import roc_auc_score

    import scarkids
    from scarkids import SCARKIDS

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    prov = harness.provenance(threads=1)
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
        row = dict(zip(COLS, (roc_auc_score(new, t["novelty"]), t["unknown"][new].mean(),
                              t["unknown"][~new].mean(), noise), strict=True))  # fmt: skip
        print(
            f"seed {s}: AUROC {row['AUROC']:.3f}, flagged left-out "
            f"{row['flagged left-out']:.3f}, known {row['flagged known']:.3f}, "
            f"noise / spread {noise:.3f}",
            flush=True,
        )
        row = {k: float(v) for k, v in row.items()}
        harness.record_run(RUNS, {"seed": s, **row, **prov}, KEY)
    print(write_table().read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
