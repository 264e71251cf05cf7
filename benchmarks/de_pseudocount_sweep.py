"""The pseudocount of DE mode "change" against pseudobulk DESeq2: one supervised scARKIDS
model per dataset (seed 0), its DE at ``c / median library`` of the compared cells for
several ``c``, scored as ``differential_expression.py`` scores it.

    python benchmarks/de_pseudocount_sweep.py [--datasets cellbench,kang] [--seed 0]
    python benchmarks/de_pseudocount_sweep.py --table

Every (dataset, c, seed) is a row of ``benchmarks/results/de_pseudocount_sweep/runs.jsonl``
(the means over comparisons; a rerun replaces its row), and
``benchmarks/results/de_pseudocount_sweep.md`` is rebuilt from all rows (``--table`` only
rebuilds it).
"""

from pathlib import Path

import differential_expression as de
import harness
import numpy as np

RUNS = harness.runs_file("de_pseudocount_sweep")
TABLE = harness.RESULTS / "de_pseudocount_sweep.md"
KEY = ("dataset", "c", "seed")
PSEUDOCOUNTS = (0.1, 0.3, 1.0, 3.0)


def write_table() -> Path:
    """de_pseudocount_sweep.md from every recorded row."""
    rows = harness.read_runs(RUNS)
    lines = [
        "# DE pseudocount sweep (`python benchmarks/de_pseudocount_sweep.py`)",
        "",
        'One supervised scARKIDS model per dataset (default training), DE mode "change" with '
        f"`delta` {de.DELTA}, 5000 draws, `batch_correction=True`, at a pseudocount of "
        "`c / median library` of the compared cells; scored against pseudobulk DESeq2 as "
        "`differential_expression.py` scores (means over comparisons). The default is `c` = 1.",
        "",
    ]
    head = ["dataset", "seed", "c", "AUPRC", "top-100 precision", "LFC Spearman", "called"]
    body = [
        [r["dataset"], str(r["seed"]), f"{r['c']:g}", *(f"{r['mean'][k]:.3f}" for k in
         ("auprc", "top100_precision", "lfc_spearman")), f"{r['mean']['n_called']:.0f}",
         f"{r['mean']['called_outside_deseq2']:.3f}", harness.code_label(r)]
        for r in sorted(rows, key=lambda r: (r["dataset"], r["seed"], r["c"]))
    ]  # fmt: skip
    lines += harness.md_table([*head, "outside DESeq2", "commit"], body)
    return harness.write_table(TABLE, lines + ["", *harness.runs_section(rows)])


def main() -> None:
    parser = harness.part_parser(__doc__, "cellbench,kang")
    args = parser.parse_args()
    if not harness.ready_to_run(args):
        if args.table:
            print(write_table().read_text())
        return
    prov = harness.provenance(args.threads)
    for ds in args.datasets.split(","):
        adata, comps = de.prepare(ds, args.seed)
        refs = [de.deseq2(adata, m1, m2) for _, m1, m2 in comps]
        expr = [de.expressed_genes(adata, m1, m2) for _, m1, m2 in comps]
        k = adata.obs.cell_type.nunique()
        m, a = harness.train_scarkids(adata, "cell_type", k, args.seed, False)
        lib = np.asarray(a.layers["counts"].sum(1)).ravel()
        for c in PSEUDOCOUNTS:
            res = []
            for (_, m1, m2), ref, e in zip(comps, refs, expr, strict=True):
                pc = c / np.median(lib[m1 | m2])
                t = m.differential_expression(a, idx1=m1, idx2=m2, n_samples=5000, pseudocount=pc)
                res.append(de.comparison_scores(de.lvm_ranking(t, a.var_names), ref, e))
            means = {k: float(np.nanmean([x[k] for x in res])) for k in de.SCORES}
            print(ds, c, {k: round(v, 3) for k, v in means.items()}, flush=True)
            row = dict(dataset=ds, c=c, seed=args.seed, mean=means)
            harness.record_run(RUNS, {**row, **prov}, KEY)
    print(write_table().read_text())


if __name__ == "__main__":
    main()
