"""The clustering of the latent, in numpy: below the model and the training loop, which
both use it.

- :mod:`scarkids.labels.clustering`: the initial clusters of unsupervised training
  (k-means pieces merged by Ward, bounded by the Leiden communities), the merge of mixture
  components into clusters (an entropy criterion) and the renumbering that keeps a cluster's
  number from one clustering to the next.
"""
