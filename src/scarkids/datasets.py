"""Public data sets: the count simulator (``scarkids.datasets.simulate``).

The implementation lives in :mod:`scarkids.data.simulate`; this module is the stable,
scanpy-like public name (``sc.datasets``).
"""

from scarkids.data.simulate import simulate, write_simulated_h5ad

__all__ = ["simulate", "write_simulated_h5ad"]
