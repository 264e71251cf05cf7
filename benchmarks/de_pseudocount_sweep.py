"""The pseudocount of DE mode "change" against pseudobulk DESeq2: one supervised scARKIDS
model per dataset (seed 0), its DE at ``c / median library`` of the compared cells for
several ``c``, scored as ``differential_expression.py`` scores it.

    python benchmarks/de_pseudocount_sweep.py

Prints one line per (dataset, c); ``benchmarks/results/de_pseudocount_sweep.md`` holds the
recorded run.
"""

import differential_expression as de
import harness
import numpy as np
import torch


def main() -> None:
    torch.set_num_threads(2)
    for ds in ("cellbench", "kang"):
        adata, comps = de.prepare(ds, 0)
        refs = [de.deseq2(adata, m1, m2) for _, m1, m2 in comps]
        expr = [de.expressed_genes(adata, m1, m2) for _, m1, m2 in comps]
        k = adata.obs.cell_type.nunique()
        m, a = harness.train_scarkids(adata, "cell_type", k, 0, False)
        lib = np.asarray(a.layers["counts"].sum(1)).ravel()
        for c in (0.1, 0.3, 1.0, 3.0):
            res = []
            for (_, m1, m2), ref, e in zip(comps, refs, expr, strict=True):
                pc = c / np.median(lib[m1 | m2])
                t = m.differential_expression(a, idx1=m1, idx2=m2, n_samples=5000, pseudocount=pc)
                res.append(de.comparison_scores(de.lvm_ranking(t, a.var_names), ref, e))
            means = {k: round(float(np.nanmean([x[k] for x in res])), 3) for k in de.SCORES}
            print(ds, c, means, flush=True)


if __name__ == "__main__":
    if harness.data_or_skip():
        main()
