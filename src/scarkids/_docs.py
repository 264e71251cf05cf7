"""Docstring texts that several functions share, written once (as scanpy's ``_docs`` and
scvi-tools' docstring utilities do).

A docstring names a shared text by a line that holds only ``{param_<name>}``;
:func:`doc_params` replaces that line, at import, with the text of :data:`PARAMS`
indented like the placeholder, so that :func:`inspect.getdoc`, ``help()`` and Sphinx's
autodoc read the full docstring. Other braces in a docstring are left alone.

This module imports nothing from the package: every room may import it.
"""

from __future__ import annotations

import re
from typing import TypeVar

T = TypeVar("T")

#: shared parameter texts by name; a docstring line ``{param_<name>}`` is replaced by one
PARAMS: dict[str, str] = {
    # the AnnData a model method reads (outputs, predictions, refinement, novelty)
    "adata": """\
AnnData of raw counts, set up with :meth:`setup_anndata` (without a setup record
the model's own batch key and layer are used). Its genes are matched to the
model's by name and its batches must be known to the model. ``None`` uses the
AnnData the model was created or loaded with.""",
    # the devices a model is put on (training, loading, reference mapping)
    "device": """\
``"auto"`` (a CUDA GPU when there is one, else the CPU), ``"cpu"``, ``"cuda"``,
``"cuda:1"`` or a :class:`torch.device`.""",
}

_PLACEHOLDER = re.compile(r"^([ \t]*)\{param_(\w+)\}[ \t]*$", re.MULTILINE)


def fill(doc: str, texts: dict[str, str] | None = None) -> str:
    """``doc`` with each line ``{param_<name>}`` replaced by ``texts[name]`` (default:
    :data:`PARAMS`), every line of the text indented like the placeholder.

    Parameters
    ----------
    doc
        A docstring.
    texts
        The texts by name; ``None`` uses :data:`PARAMS`.

    Returns
    -------
    str
        The filled docstring.

    Raises
    ------
    KeyError
        When a placeholder names no text (a typo fails at import, not in the docs).
    """
    texts = PARAMS if texts is None else texts

    def replace(match: re.Match) -> str:
        indent, name = match.group(1), match.group(2)
        if name not in texts:
            raise KeyError(f"docstring placeholder {{param_{name}}}: no such shared text")
        return "\n".join(indent + line if line else line for line in texts[name].splitlines())

    return _PLACEHOLDER.sub(replace, doc)


def doc_params(obj: T) -> T:
    """Fill the ``{param_<name>}`` lines of a function's docstring, or of a class's and of
    the functions defined in its body (methods, static and class methods).

    Parameters
    ----------
    obj
        A function or a class; it is changed in place.

    Returns
    -------
    object
        ``obj`` itself, so that ``@doc_params`` decorates.
    """
    targets = [obj]
    if isinstance(obj, type):
        for member in vars(obj).values():
            if isinstance(member, (staticmethod, classmethod)):
                member = member.__func__
            if callable(member) and not isinstance(member, type):
                targets.append(member)
    for target in targets:
        if target.__doc__:
            target.__doc__ = fill(target.__doc__)
    return obj
