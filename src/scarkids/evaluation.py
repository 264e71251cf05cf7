"""Public evaluation API (``scarkids.evaluation.evaluate``): scIB metrics of embeddings.

The implementation lives in :mod:`scarkids.metrics`; this module keeps the public name.
"""

from scarkids.metrics.quick import quick_metrics
from scarkids.metrics.scib import (
    BATCH_METRICS,
    BIO_METRICS,
    PREDICTION_METRICS,
    SCORE_COLUMNS,
    evaluate,
    write_evaluation,
)

__all__ = [
    "BATCH_METRICS",
    "BIO_METRICS",
    "PREDICTION_METRICS",
    "SCORE_COLUMNS",
    "evaluate",
    "quick_metrics",
    "write_evaluation",
]
