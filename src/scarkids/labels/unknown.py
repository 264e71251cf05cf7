"""The cells called ``unknown``, counted per batch and rule (logged by
:meth:`scarkids.SCARKIDS.predict_with_uncertainty`)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

# the lines go with the rest of predict_with_uncertainty's (which batches have a rule off),
# under the model's uncertainty logger, so that a filter on it keeps them together
logger = logging.getLogger("scarkids.model.uncertainty")

#: share of a batch's cells called ``unknown`` above which a warning is logged
UNKNOWN_WARN_SHARE = 0.2


def unknown_summary(
    predictions: pd.DataFrame, batches: np.ndarray, *, warn_share: float | None = UNKNOWN_WARN_SHARE
) -> pd.DataFrame:
    """How many cells were called ``unknown`` and why, per batch; logs one line in all, and a
    warning for each batch with more than ``warn_share`` of its cells ``unknown``.

    Parameters
    ----------
    predictions
        The table of :meth:`SCARKIDS.predict_with_uncertainty` (``unknown`` and
        ``unknown_reason`` columns), ``(n_cells, ...)``.
    batches
        ``(n_cells,)`` batch name of each cell.
    warn_share
        Share (0 to 1) of a batch's cells above which it is warned about; ``None``: never.

    Returns
    -------
    pandas.DataFrame
        One row per batch: ``cells``, ``unknown``, ``novelty``, ``low probability`` (counts;
        a cell flagged by both rules counts in both) and ``share`` (unknown / cells).
    """
    reason = predictions["unknown_reason"].fillna("").to_numpy(dtype=str)
    frame = pd.DataFrame(
        {
            "batch": np.asarray(batches).astype(str),
            "cells": 1,
            "unknown": predictions["unknown"].to_numpy(dtype=bool).astype(int),
            "novelty": np.char.find(reason, "novelty") >= 0,
            "low probability": np.char.find(reason, "low probability") >= 0,
        }
    )
    table = frame.groupby("batch", sort=False).sum().astype(int)
    table["share"] = table["unknown"] / table["cells"]
    logger.info(
        "Called unknown: %d of %d cells (novelty above the batch's threshold: %d, "
        "probability below confidence_threshold: %d)",
        int(table["unknown"].sum()),
        int(table["cells"].sum()),
        int(table["novelty"].sum()),
        int(table["low probability"].sum()),
    )
    if warn_share is not None:
        for name, row in table[table["share"] > warn_share].iterrows():
            logger.warning(
                "%.0f%% of batch %r is unknown (%d by novelty, %d by low probability): if its "
                "cells are of the reference's types, read top_label, or recalibrate with a "
                "session on this batch (novelty) or lower confidence_threshold",
                100 * row["share"],
                name,
                row["novelty"],
                row["low probability"],
            )
    return table
