"""The layer order of docs/architecture.md holds, and no import cycle exists (imports inside functions
count: a cycle hidden in a function still ties the modules together)."""
from __future__ import annotations

import re

import pytest

from tests.architecture.import_graph import build
from tests.conftest import REPO


def read_layers() -> list[list[str]]:
    text = (REPO / "docs" / "architecture.md").read_text()
    m = re.search(r"```layers\n(.*?)```", text, re.S)
    assert m, "docs/architecture.md has no ```layers block"
    return [line.split() for line in m.group(1).splitlines() if line.strip()]


def layer_of(module: str, layers: list[list[str]]) -> int:
    """Index of the layer whose longest prefix matches ``module``."""
    best, best_len = None, -1
    for i, prefixes in enumerate(layers):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best_len:
                best, best_len = i, len(p)
    if best is None:
        raise AssertionError(f"{module} is in no layer of docs/architecture.md")
    return best


@pytest.fixture(scope="module")
def graph():
    return build(REPO)


def test_no_import_cycle(graph):
    assert graph.cycles() == []


def test_every_module_imports_only_its_own_layer_or_above(graph):
    layers = read_layers()
    bad = []
    for mod, deps in graph.edges.items():
        mine = layer_of(mod, layers)
        bad += [f"{mod} (layer {mine}) imports {d} (layer {layer_of(d, layers)})"
                for d in sorted(deps) if layer_of(d, layers) > mine]
    assert bad == []


def test_graph_sees_imports_inside_functions_and_relative_imports(tmp_path):
    """The walker itself, on a hand-made package: a function-level import is an edge, a cycle through it
    is found, ``from pkg import sub`` resolves to the submodule."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from pkg import b\n")
    (pkg / "b.py").write_text("from .c import x\n")
    (pkg / "c.py").write_text("import pkg.a\nx = 1\n")
    g = build(tmp_path, ("pkg",))
    assert g.edges["pkg.a"] == {"pkg.b"} and g.edges["pkg.b"] == {"pkg.c"} and g.edges["pkg.c"] == {"pkg.a"}
    assert g.cycles() == [["pkg.a", "pkg.b", "pkg.c"]]
    assert g.closure("pkg.b") == {"pkg", "pkg.a", "pkg.b", "pkg.c"}


def test_layer_lookup_takes_the_longest_prefix():
    layers = [["pipeline"], ["resail_train.runtime", "resail_train"], ["resail_train.models"]]
    assert layer_of("pipeline.cache.files", layers) == 0
    assert layer_of("resail_train", layers) == 1
    assert layer_of("resail_train.models.norms.resail", layers) == 2
    with pytest.raises(AssertionError, match="no layer"):
        layer_of("elsewhere", layers)
