"""Raw-count checks: a count matrix is finite, non-negative and integer, as float32 CSR."""

from __future__ import annotations

import weakref

import numpy as np
import scipy.sparse as sp

from scarkids.errors import InputDataError

#: counts deviating from integers by more than this are "not counts"
INTEGER_TOLERANCE = 1e-3


#: matrices that passed the checks, with their shape and stored entries: a training run
#: reads the same counts several times (zero-count cells, gene selection, setup, encoding)
#: and checks them once
#: (matrices are unhashable: keyed by id, with a weak reference that proves the identity)
_CHECKED: dict[int, tuple[weakref.ref, tuple]] = {}


def _fingerprint(X) -> tuple:
    return (X.shape, X.nnz if sp.issparse(X) else None)


def check_counts(X, *, where: str, what: str = "X") -> sp.csr_matrix:
    """``X`` as float32 CSR after the raw-count checks of :func:`get_counts` (finite,
    non-negative, integer); a matrix that passed them before is not scanned again."""
    source = X
    entry = _CHECKED.get(id(source))
    checked = entry is not None and entry[0]() is source and entry[1] == _fingerprint(source)
    if not sp.issparse(X):
        X = sp.csr_matrix(np.asarray(X))
    X = sp.csr_matrix(X, dtype=np.float32)
    data = X.data
    if data.size and not checked:
        # min/max propagate NaN and see inf: no full-size boolean temporary
        if not (np.isfinite(data.min()) and np.isfinite(data.max())):
            raise InputDataError(
                f"{where}: {what} contains NaN or inf values; scARKIDS needs raw counts"
            )
        if data.min() < 0:
            raise InputDataError(
                f"{where}: {what} has negative values (min {data.min():.3g}); it looks scaled or "
                "normalised, give raw counts (pass layer= to setup_anndata if they are in a layer)"
            )
        example = _first_non_integer(data)
        if example is not None:
            hint = "it looks log-normalised" if data.max() < 20 else "values are not integers"
            raise InputDataError(
                f"{where}: {what} does not hold raw counts ({hint}, e.g. {example:.4g}); "
                "give integer counts (pass layer= to setup_anndata if they are in a layer, or round "
                "them)"
            )
    _remember(source)
    return X


def _remember(source) -> None:
    key = id(source)
    try:
        ref = weakref.ref(source, lambda _: _CHECKED.pop(key, None))
    except TypeError:  # not weak-referenceable: checked every time
        return
    _CHECKED[key] = (ref, _fingerprint(source))


def _first_non_integer(data: np.ndarray, piece: int = 1 << 24) -> float | None:
    """A value of ``data`` that is not an integer (beyond the tolerance), or None. Checked
    in pieces: no full-size temporaries for hundreds of millions of values."""
    for start in range(0, data.size, piece):
        part = data[start : start + piece]
        frac = np.abs(part - np.round(part))
        if frac.max() > INTEGER_TOLERANCE:
            return float(part[frac.argmax()])
    return None


def select_columns(X: sp.csr_matrix, positions: np.ndarray) -> sp.csr_matrix:
    """Columns ``positions`` of ``X`` in that order; -1 gives an all-zero column."""
    if hasattr(X, "with_columns"):  # counts on disk: selected as each chunk is read
        return X.with_columns(positions)
    if (positions >= 0).all():
        if np.array_equal(positions, np.arange(X.shape[1])):
            return X
        return X[:, positions].tocsr()
    present = positions >= 0
    sub = X[:, positions[present]].tocsc()
    out = sp.hstack(
        [sub, sp.csc_matrix((X.shape[0], int((~present).sum())), dtype=X.dtype)]
    ).tocsc()
    order = np.concatenate([np.flatnonzero(present), np.flatnonzero(~present)])
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return out[:, inverse].tocsr()
