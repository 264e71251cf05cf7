"""What the learned prior looks like inside a coarse type: does it model the fine types?

    python benchmarks/prior_inside_type.py [--datasets kang,panc8] [--seed 0]
        [--priors diffusion,mixture]
    python benchmarks/prior_inside_type.py --table

scARKIDS is trained with the coarse labels of ``label_granularity.py`` (same data, same
settings). Then, for each coarse type of two or more fine types, as many codes as the type
has cells are drawn from the prior ``p(z0 | coarse type)`` and compared with the cells' own
codes (the encoder's means):

- ``fine share TV``: each drawn code takes the fine label of its nearest cell code of that
  coarse type; the total-variation distance between those shares and the cells' fine-label
  shares (0: the prior puts its mass on the subtypes as the data do);
- ``real vs prior``: the 5-fold cross-validated balanced accuracy of a 15-NN classifier
  telling cell codes from drawn codes (0.5: indistinguishable; 1: disjoint);
- ``precision`` / ``recall`` (Kynkaanniemi et al. 2019, k = 5): the share of drawn codes
  inside the cells' k-NN balls, and of cell codes inside the drawn codes' balls.

Means over coarse types. A flexible prior that models the structure inside a type should
score lower TV, lower real-vs-prior accuracy and higher recall than one Gaussian per type.
Rows go to ``benchmarks/results/prior_inside_type/runs.jsonl``; the table to
``benchmarks/results/prior_inside_type.md``.
"""

from __future__ import annotations

import time

import harness
import label_granularity as lg
import numpy as np
import pandas as pd
from harness import log

RESULTS = harness.RESULTS
RUNS = RESULTS / "prior_inside_type" / "runs.jsonl"
KEY = ("dataset", "prior", "seed")
COLUMNS = ["fine_share_tv", "real_vs_prior", "precision", "recall"]


def _radii(x: np.ndarray, k: int) -> np.ndarray:
    from sklearn.neighbors import NearestNeighbors

    d, _ = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x)
    return d[:, -1]


def _covered(points: np.ndarray, ref: np.ndarray, radii: np.ndarray) -> float:
    """Share of ``points`` within the k-NN ball of some row of ``ref``."""
    from sklearn.metrics import pairwise_distances_chunked

    inside = [(block <= radii[None, :]).any(1) for block in pairwise_distances_chunked(points, ref)]
    return float(np.concatenate(inside).mean())


def compare(real: np.ndarray, drawn: np.ndarray, fine: np.ndarray, seed: int) -> dict:
    """The four scores of one coarse type (see the module docstring)."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier, NearestNeighbors

    nearest = NearestNeighbors(n_neighbors=1).fit(real).kneighbors(drawn)[1][:, 0]
    names = np.unique(fine)
    data_share = np.array([(fine == n).mean() for n in names])
    drawn_share = np.array([(fine[nearest] == n).mean() for n in names])
    x = np.vstack([real, drawn])
    y = np.r_[np.zeros(len(real)), np.ones(len(drawn))]
    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    acc = cross_val_score(KNeighborsClassifier(15), x, y, cv=folds, scoring="balanced_accuracy")
    return {
        "fine_share_tv": float(0.5 * np.abs(data_share - drawn_share).sum()),
        "real_vs_prior": float(acc.mean()),
        "precision": _covered(drawn, real, _radii(real, 5)),
        "recall": _covered(real, drawn, _radii(drawn, 5)),
    }


def run_one(name: str, prior: str, seed: int) -> dict:
    """Train on coarse labels with ``prior``; score the prior inside each coarse type."""
    adata = lg.prepare(name, seed)
    k = adata.obs["coarse"].nunique()
    started = time.perf_counter()
    model, a = harness.train_scarkids(adata, "coarse", k, seed, quick=False, prior=prior)
    z = model.get_latent_representation(a)
    coarse = adata.obs["coarse"].astype(str).to_numpy()
    fine = adata.obs["cell_type"].astype(str).to_numpy()
    per_type = {}
    for t, label in enumerate(model.registry.label_categories):
        cells = coarse == label
        if len(np.unique(fine[cells])) < 2:
            continue
        # the prior's own sampler, as generate() draws codes (seeded per type)
        drawn = model._draw_codes(t, int(cells.sum()), None, (seed, t), 4096).cpu().numpy()
        per_type[label] = compare(z[cells], drawn, fine[cells], seed)
    means = pd.DataFrame(per_type).T.mean()
    return {
        "dataset": name,
        "prior": prior,
        "seed": seed,
        **{c: float(means[c]) for c in COLUMNS},
        "per_coarse": per_type,
        "time_s": time.perf_counter() - started,
    }


def write_table() -> None:
    """Mean ± sd over seeds per dataset and prior."""
    runs = pd.DataFrame(harness.read_runs(RUNS))
    lines = [
        "# The prior inside a coarse type (`python benchmarks/prior_inside_type.py`)",
        "",
        "scARKIDS trained with coarse labels; codes drawn from p(z0 | coarse type) against "
        "the cells' codes (see the script's docstring). Mean ± sd over seeds (n = seeds). "
        "Lower is better for TV and real-vs-prior, higher for precision and recall.",
        "",
    ]
    header = ["dataset", "prior", "n", "fine share TV", "real vs prior", "precision", "recall"]
    rows = []
    for (d, p), g in runs.groupby(["dataset", "prior"]):
        cells = [
            f"{g[c].mean():.3f} ± {g[c].std(ddof=1) if len(g) > 1 else 0:.3f}" for c in COLUMNS
        ]
        rows.append([d, p, str(len(g)), *cells])
    lines += [*harness.md_table(header, rows), "", *harness.runs_section(runs.to_dict("records"))]
    harness.write_table(RESULTS / "prior_inside_type.md", lines)


def main(argv=None) -> int:
    parser = harness.part_parser(__doc__, "kang,panc8")
    parser.add_argument("--priors", default="diffusion,mixture")
    args = parser.parse_args(argv)
    if harness.ready_to_run(args):
        for name in args.datasets.split(","):
            for prior in args.priors.split(","):
                log(f"{name} seed {args.seed}: {prior}")
                row = run_one(name, prior, args.seed)
                log("  " + ", ".join(f"{c} {row[c]:.3f}" for c in COLUMNS))
                row.update(harness.provenance(args.threads))
                harness.record_run(RUNS, row, KEY)
    write_table()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
