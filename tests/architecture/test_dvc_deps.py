"""Every dvc.yaml stage lists every project module that its command can import, so that editing the
code a stage runs re-runs the stage (a missing entry leaves a stale cache that `dvc repro` calls up to
date). The set is computed from the import graph, starting at the module that defines the stage's
`resail` subcommand; imports inside functions count."""
from __future__ import annotations

import ast
import shlex

import pytest
import yaml

from tests.architecture.import_graph import build
from tests.conftest import REPO

# Parse or declare, compute nothing: the click group, the params.yaml reader, the shared option
# declarations, and the error types every module raises.
EXEMPT = {"stages.cli", "stages.params", "stages.options", "pipeline.errors"}


def holds_code(path) -> bool:
    """A package ``__init__`` counts only when it defines something (a registry, a facade's names)."""
    tree = ast.parse(path.read_text())
    return any(not isinstance(n, ast.Expr) for n in tree.body)


def command_module(subcommand: str) -> str:
    from stages.cli import main

    cmd = main.commands.get(subcommand)
    assert cmd is not None, f"dvc.yaml runs `resail {subcommand}`, which the CLI does not have"
    return cmd.callback.__module__


def covered(path: str, deps: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


def stages():
    data = yaml.safe_load((REPO / "dvc.yaml").read_text())
    return sorted(data["stages"].items())


@pytest.fixture(scope="module")
def graph():
    return build(REPO)


@pytest.mark.parametrize("name,stage", stages(), ids=[n for n, _ in stages()])
def test_stage_lists_the_code_it_runs(graph, name, stage):
    words = shlex.split(" ".join(stage["cmd"].split()))
    assert words[0] == "resail", f"{name}: the stage command is not a resail subcommand"
    start = command_module(words[1])
    deps = [d for d in stage.get("deps", []) if "${" not in d]
    needed = set()
    for mod in graph.closure(start) - EXEMPT:
        path = graph.files[mod]
        if path.name == "__init__.py" and not holds_code(path):
            continue
        needed.add(str(path.relative_to(REPO)))
    missing = sorted(p for p in needed if not covered(p, deps))
    assert missing == [], f"dvc.yaml stage {name} runs these but does not list them: {missing}"


@pytest.mark.parametrize("name,stage", stages(), ids=[n for n, _ in stages()])
def test_listed_code_exists(name, stage):
    code = [d for d in stage.get("deps", []) if "${" not in d and not d.startswith("datasets_cache/")]
    assert [d for d in code if not (REPO / d).exists()] == []
