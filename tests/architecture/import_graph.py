"""The project's import graph, read from the source (no module is imported): every ``import`` and
``from … import`` of a project module, those inside functions included, resolved to the module file it
loads. The architecture tests use it to check the layer order and the DVC stage dependencies."""
from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = ("pipeline", "resail_train", "resail_studio", "benchmarks", "stages")


@dataclass
class Graph:
    root: Path
    files: dict[str, Path] = field(default_factory=dict)  # module name -> file
    edges: dict[str, set[str]] = field(default_factory=dict)  # module -> modules it imports

    def closure(self, start: str) -> set[str]:
        """Every module ``start`` can load, itself included; a module also loads its parent packages."""
        seen, todo = set(), [start]
        while todo:
            m = todo.pop()
            if m in seen:
                continue
            seen.add(m)
            todo.extend(self.edges.get(m, ()))
            parts = m.split(".")
            todo.extend(".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in self.files)
        return seen

    def cycles(self) -> list[list[str]]:
        """Strongly connected components of more than one module (Tarjan, iterative)."""
        index: dict[str, int] = {}
        low: dict[str, int] = {}
        stack: list[str] = []
        on: set[str] = set()
        out: list[list[str]] = []
        counter = 0
        for root in sorted(self.files):
            if root in index:
                continue
            work = [(root, iter(sorted(self.edges.get(root, ()))))]
            index[root] = low[root] = counter
            counter += 1
            stack.append(root)
            on.add(root)
            while work:
                v, it = work[-1]
                w = next(it, None)
                if w is not None:
                    if w not in index:
                        index[w] = low[w] = counter
                        counter += 1
                        stack.append(w)
                        on.add(w)
                        work.append((w, iter(sorted(self.edges.get(w, ())))))
                    elif w in on:
                        low[v] = min(low[v], index[w])
                    continue
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
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
        return out


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(graph: Graph, current: str, node: ast.AST) -> list[str]:
    names: list[str] = []
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            pkg = current.split(".")
            if graph.files[current].name != "__init__.py":
                pkg = pkg[:-1]
            pkg = pkg[: len(pkg) - (node.level - 1)]
            base = ".".join(pkg + ([base] if base else []))
        for a in node.names:  # `from pkg import submodule` loads the submodule
            sub = f"{base}.{a.name}"
            names.append(sub if sub in graph.files else base)
    out = []
    for n in names:
        while n and n not in graph.files:
            n = n.rpartition(".")[0]
        if n and n != current:
            out.append(n)
    return out


def build(root: Path, packages: tuple[str, ...] = PACKAGES) -> Graph:
    graph = Graph(root)
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            graph.files[module_name(root, path)] = path
    for mod, path in graph.files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        deps: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                deps.update(_resolve(graph, mod, node))
        graph.edges[mod] = deps
    return graph
