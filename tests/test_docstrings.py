"""The public API documents its parameters (issue: a house that shows its plan): every
function and method of the API reference (docs/api.md) has a numpydoc ``Parameters``
section naming each of its parameters."""

from __future__ import annotations

import inspect

import pytest

import scarkids
import scarkids.config
import scarkids.config.translate
import scarkids.datasets
import scarkids.evaluation
import scarkids.pl
from scarkids.module import DiffusionPrior, SCARKIDSModule
from scarkids.train import TrainingSettings
from scarkids.train.settings import training_budget

FUNCTIONS = [
    scarkids.datasets.simulate,
    scarkids.datasets.write_simulated_h5ad,
    scarkids.evaluation.evaluate,
    scarkids.evaluation.write_evaluation,
    scarkids.evaluation.quick_metrics,
    scarkids.pl.plot_umap,
    scarkids.pl.plot_metrics_table,
    scarkids.config.load_config,
    scarkids.config.resolve_config,
    scarkids.config.session_list,
    scarkids.config.translate.translate,
    scarkids.config.translate.model_kwargs,
    scarkids.config.translate.train_kwargs,
    training_budget,
]
CLASSES = [scarkids.SCARKIDS, SCARKIDSModule, DiffusionPrior, TrainingSettings]


def public_callables():
    out = [(f.__qualname__, f) for f in FUNCTIONS]
    for cls in CLASSES:
        out.append((cls.__name__, cls))
        for name, member in inspect.getmembers(cls):
            if name.startswith("_") or not callable(member):
                continue
            if getattr(member, "__module__", "").startswith("torch"):
                continue  # inherited from torch.nn.Module
            out.append((f"{cls.__name__}.{name}", member))
    return out


def parameters(obj) -> list[str]:
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return []
    skip = {"self", "cls", "args", "kwargs", "module_kwargs"}
    return [p for p in sig.parameters if p not in skip]


@pytest.mark.parametrize(("name", "obj"), public_callables(), ids=lambda x: str(x))
def test_public_api_documents_its_parameters(name, obj):
    doc = inspect.getdoc(obj) or ""
    assert doc.strip(), f"{name} has no docstring"
    names = parameters(obj)
    if not names:
        return
    assert "Parameters\n----------" in doc, f"{name}: no numpydoc Parameters section"
    section = doc.split("Parameters\n----------", 1)[1]
    missing = [
        p
        for p in names
        if f"\n{p}\n" not in f"\n{section}"
        and f"\n{p} :" not in f"\n{section}"
        and f", {p}\n" not in section
        and f"\n{p}," not in f"\n{section}"
    ]
    assert not missing, f"{name}: parameters not documented: {missing}"


def test_shared_parameter_texts_are_filled_in():
    """``{param_<name>}`` lines (scarkids._docs) are replaced at import, indented like the
    placeholder; an unknown name fails at import instead of reaching the docs."""
    from scarkids._docs import PARAMS, doc_params, fill

    for name, obj in public_callables():
        assert "{param_" not in (inspect.getdoc(obj) or ""), f"{name}: placeholder left"
    doc = inspect.getdoc(scarkids.SCARKIDS.get_latent_representation)
    assert "\nadata\n    " + PARAMS["adata"].splitlines()[0] + "\n" in doc
    assert fill("x\n        {param_t}\n", {"t": "one\ntwo"}) == "x\n        one\n        two\n"
    assert fill("a {param_t} b, {n}", {"t": "one"}) == "a {param_t} b, {n}"  # whole lines only

    def f():
        """Text.

        {param_no_such_text}
        """

    with pytest.raises(KeyError, match="no_such_text"):
        doc_params(f)
