"""The label space and the clustering of the latent, in numpy: below the model and the
training loop, which both use them.

- :mod:`scarkids.labels.space`: cell types, mixture components and clusters, by name and
  by code (which component belongs to which cluster, which are in use, how the unnamed
  ones are named).
- :mod:`scarkids.labels.clustering`: the initial clusters of unsupervised training
  (k-means pieces merged by Ward, bounded by the Leiden communities), the merge of mixture
  components into clusters (an entropy criterion) and the renumbering that keeps a cluster's
  number from one clustering to the next.
- :mod:`scarkids.labels.unknown`: the per-batch summary of the cells called ``unknown``.
"""
