"""Public evaluation API (``scarkids.evaluation.evaluate``): scIB metrics of embeddings, and
the structure below the labels (fine types under coarse labels, neighbours within a batch).

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
from scarkids.metrics.structure import fine_label_structure, within_batch_structure

__all__ = [
    "BATCH_METRICS",
    "BIO_METRICS",
    "PREDICTION_METRICS",
    "SCORE_COLUMNS",
    "evaluate",
    "fine_label_structure",
    "quick_metrics",
    "within_batch_structure",
    "write_evaluation",
]
