"""The import rules of docs/ARCHITECTURE.md, checked from the code itself (every import statement, also
those inside functions): layers import downward only, so a change in one never needs the ones above it.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOP_LEVEL = ("online", "consumers", "services", "bench")

# Lowest first. The flat modules of online/ are the ground floor (core types, the training-data index,
# the forward path, settings, keys); learning and serving are siblings that never import each other.
LAYERS: list[set[str]] = [
    {"online"},
    {"online.feedback"},
    {"online.memory"},
    {"online.monitoring"},
    {"online.lifecycle"},
    {"online.learning", "online.serving"},
    {"online.wiring"},
    {"consumers"},
    {"services"},
    {"bench"},
]
RANK = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}


def _package(module: str) -> str:
    """``online.feedback.buffer`` -> ``online.feedback``; ``online.model`` (a flat module) -> ``online``."""
    parts = module.split(".")
    if parts[0] == "online" and len(parts) > 1 and (ROOT / "online" / parts[1]).is_dir():
        return f"online.{parts[1]}"
    return parts[0]


def _module_of(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every project module ``path`` imports (absolute imports; the project uses no relative ones)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            found.add(node.module or "")
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in found if m.split(".")[0] in TOP_LEVEL}


def _edges() -> list[tuple[str, str, str]]:
    """(importing module, its package, imported package) for every cross-package import."""
    edges = []
    for top in TOP_LEVEL:
        for path in sorted((ROOT / top).rglob("*.py")):
            module = _module_of(path)
            src = _package(module)
            for imported in _imports(path):
                dst = _package(imported)
                if dst != src:
                    edges.append((module, src, dst))
    return edges


def test_every_package_has_a_layer():
    packages = {src for _, src, _ in _edges()} | {dst for _, _, dst in _edges()}
    assert packages <= set(RANK), f"add these to LAYERS: {sorted(packages - set(RANK))}"


def test_imports_point_down():
    upward = sorted(f"{m} ({src}) imports {dst}" for m, src, dst in _edges() if RANK[dst] >= RANK[src])
    assert not upward, "imports that point up or sideways:\n" + "\n".join(upward)


def test_package_graph_is_acyclic():
    """Implied by the layers, and stated on its own: a cycle is what makes a change ripple everywhere."""
    graph: dict[str, set[str]] = {}
    for _, src, dst in _edges():
        graph.setdefault(src, set()).add(dst)
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, ()):
            assert state.get(nxt) != 1, "cycle: " + " -> ".join([*trail, node, nxt])
            if nxt not in state:
                visit(nxt, [*trail, node])
        state[node] = 2

    for node in list(graph):
        if node not in state:
            visit(node, [])


def test_services_never_import_bench():
    assert not [m for m, src, dst in _edges() if src == "services" and dst == "bench"]


def test_only_the_wiring_builds_stores():
    """Domain code receives the stores it uses; ``online.wiring`` is imported by processes, not by it."""
    offenders = [m for m, src, dst in _edges() if dst == "online.wiring" and src.startswith("online")]
    assert not offenders, offenders


def test_one_function_publishes_versions():
    """``online.lifecycle.release.release`` is the only caller of the registry's publish: every version is
    judged, packaged (int8 artifact, drift reference) and placed the same way."""
    callers = []
    for top in TOP_LEVEL:
        for path in sorted((ROOT / top).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "publish":
                    if ast.unparse(node.func.value) != "self.r":  # the registry's own pub/sub announcements
                        callers.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert callers and all(c.startswith("online/lifecycle/release.py:") for c in callers), callers


def test_the_rules_catch_an_upward_import(tmp_path, monkeypatch):
    """The checker itself: an import from the ground floor into a sub-package is reported."""
    fake = tmp_path / "online"
    (fake / "serving").mkdir(parents=True)
    (fake / "serving" / "x.py").write_text("")
    (fake / "ground.py").write_text("from online.serving import x\n")
    for top in TOP_LEVEL[1:]:
        (tmp_path / top).mkdir()
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert set(_edges()) == {("online.ground", "online", "online.serving")}
