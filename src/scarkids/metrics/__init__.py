"""Integration metrics: fast numpy ones for the training log, and the scIB benchmark."""

from scarkids.metrics.quick import quick_metrics
from scarkids.metrics.scib import evaluate, write_evaluation

__all__ = ["evaluate", "quick_metrics", "write_evaluation"]
