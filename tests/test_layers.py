"""The package's plan, read from its imports: each room (a subpackage or a top-level module)
imports only the rooms its row of ``ALLOWED`` names, the rooms form no cycle, and no modules
import each other in a circle (issue: a house that shows its plan). docs/architecture.md
describes the same table in words."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "scarkids"

#: room -> the rooms it may import (its own files aside), read from the imports as they are.
#: ``model`` is the centre: it puts module, train, data, compute, labels and pl together, and
#: only the command line (and the package root's lazy ``SCARKIDS``) stand above it.
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "constants": set(),
    "nn": set(),
    "distributions": set(),
    "labels": {"errors", "constants"},  # clustering and label-space mapping in numpy
    "compute": {"errors"},  # the machine: device, process group, memory release
    "module": {"constants", "distributions", "nn"},
    "data": {"constants", "distributions", "errors"},
    "datasets": {"data"},
    "train": {"compute", "errors", "labels", "module"},
    "pl": {"data", "errors"},  # draws what it is given: a model's history and outputs
    "config": {"constants", "errors", "train"},  # training defaults from train.settings
    "metrics": {"constants", "errors", "pl"},
    "evaluation": {"metrics"},
    "model": {
        "compute",
        "constants",
        "data",
        "distributions",
        "errors",
        "labels",
        "module",
        "pl",
        "train",
    },
    "cli": {
        "compute",
        "config",
        "constants",
        "data",
        "errors",
        "metrics",
        "model",
        "pl",
        "train",
    },
    "__main__": {"cli"},
    "_docs": set(),  # docstring texts written once (scarkids._docs): imports nothing
}
#: ``_docs`` is importable by every room: its shared texts are filled into their docstrings
for _row, _allowed in ALLOWED.items():
    if _row != "_docs":
        _allowed.add("_docs")
#: the package root (``scarkids/__init__.py``) re-exports lazily and stands above all; any
#: room may read its ``__version__``


def room(module: str) -> str:
    """``scarkids.model.scarkids`` -> ``model``; ``scarkids`` -> ``""`` (the package root)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("scarkids", *path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports_of(path: Path, module: str, known: set[str]) -> set[str]:
    """The scarkids modules ``path`` imports, at any depth (lazy imports count too)."""
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            # ``from pkg import submodule`` imports the submodule, not the package's others
            subs = [f"{prefix}.{a.name}" for a in node.names if f"{prefix}.{a.name}" in known]
            names = subs if len(subs) == len(node.names) else [prefix, *subs]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                out.add(name)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports_of(p, m, set(mods)) for m, p in mods.items()}


def forbidden_imports(edges: dict[str, set[str]]) -> list[str]:
    """``src -> dst`` for each import across rooms that the source room's row does not allow."""
    bad = []
    for src, targets in edges.items():
        if src == "scarkids":
            continue
        for dst in targets:
            if dst == "scarkids" or room(src) == room(dst):
                continue  # the root's __version__; a room's own files
            if room(dst) not in ALLOWED.get(room(src), set()):
                bad.append(f"{src} -> {dst}")
    return sorted(bad)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node, modules or rooms (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w == "scarkids":
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_every_room_has_a_row():
    rooms = {room(m) for m in modules()} - {""}
    assert rooms <= set(ALLOWED), f"add a row to ALLOWED for: {sorted(rooms - set(ALLOWED))}"
    named = set().union(*ALLOWED.values())
    assert named <= set(ALLOWED), f"rows name unknown rooms: {sorted(named - set(ALLOWED))}"


def test_the_rooms_form_no_cycle():
    assert cycles(ALLOWED) == []


def test_each_room_imports_only_what_its_row_allows():
    assert forbidden_imports(graph()) == []


def test_no_import_cycle():
    assert cycles(graph()) == []


def test_the_check_catches_a_forbidden_import_and_a_cycle():
    edges = graph()
    edges["scarkids.module.vae"] = edges["scarkids.module.vae"] | {"scarkids.model.scarkids"}
    assert "scarkids.module.vae -> scarkids.model.scarkids" in forbidden_imports(edges)
    assert any("scarkids.module.vae" in c for c in cycles(edges))
    allowed = {**ALLOWED, "train": ALLOWED["train"] | {"model"}}
    assert any({"train", "model"} <= set(c) for c in cycles(allowed))


@pytest.mark.parametrize(
    "source", ["from scarkids.cli.commands import main", "from ..cli import main"]
)
def test_relative_and_absolute_imports_are_read(tmp_path, source):
    path = tmp_path / "vae.py"
    path.write_text(source + "\n")
    found = imports_of(path, "scarkids.module.vae", set(modules()))
    assert found and all(m.startswith("scarkids.cli") for m in found)
