"""Other `unknown` thresholds, scored on the leave-one-type-out splits' per-cell scores.

    python benchmarks/uncertainty.py --methods scARKIDS --dump /tmp/unknown_scores
    python benchmarks/unknown_rules.py /tmp/unknown_scores

For each novelty quantile of the reference cells' novelty, with and without the raise by
the query batch's shift (``SCARKIDS.novelty_threshold``), and the low-probability rule
(0.5) in batches that sit on the reference (shift at most 1, as the default): the mean share
of the left-out type's cells and of known cells flagged, per dataset, and the worst split's
known share. Prints a markdown table (docs/benchmarks/uncertainty.md quotes it).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ALIGNED_SHIFT, CONFIDENCE = 1.0, 0.5


def flags(d, quantile: float, raise_by_shift: bool) -> np.ndarray:
    """The cells flagged ``unknown`` in one split's dump under one rule."""
    q, ref, p = d["novelty"], d["reference"], d["probs"].max(1)
    q10, q50 = np.quantile(ref, [0.1, 0.5])
    shift = (np.quantile(q, 0.1) - q10) / max(q50 - q10, 1e-6)
    if shift > ALIGNED_SHIFT:  # off the reference: no call
        return np.zeros(q.shape, dtype=bool)
    threshold = np.quantile(ref, quantile) + (
        max(0.0, shift) * (q50 - q10) if raise_by_shift else 0
    )
    return (q > threshold) | (p < CONFIDENCE)


def main(folder: str) -> int:
    files = sorted(Path(folder).glob("*.npz"))
    if not files:
        print(f"no .npz files in {folder}: run uncertainty.py with --dump {folder} first")
        return 1
    datasets = sorted({f.name.split("_")[0] for f in files})
    header = ["novelty quantile, raise by the batch shift"]
    header += [f"{ds} left-out / known (worst split)" for ds in datasets]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for quantile in (0.99, 0.98, 0.975, 0.95):
        for raise_by_shift in (True, False):
            cells = [f"{quantile}, {'raised' if raise_by_shift else 'not raised'}"]
            for ds in datasets:
                rows = []
                for f in files:
                    if f.name.split("_")[0] != ds:
                        continue
                    d = np.load(f)
                    flagged, new = flags(d, quantile, raise_by_shift), d["is_new"]
                    rows.append((flagged[new].mean(), flagged[~new].mean()))
                new_share, known = np.mean(rows, axis=0)
                worst = max(r[1] for r in rows)
                cells.append(f"{new_share:.3f} / {known:.3f} ({worst:.3f})")
            print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/unknown_scores"))
