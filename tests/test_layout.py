"""The package layout: layers point down, no import cycles, a small package root, a cheap import.

Every `import` / `from ... import` in `voice_agent/**/*.py` counts, wherever it
is: at module level, inside a function (lazy imports) or under
`if TYPE_CHECKING:`. Relative imports are resolved against the importing module.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "voice_agent"

# Subpackages by layer; a module may import its own subpackage and strictly lower ranks.
RANK = {
    "core": 0,
    "audio": 1,
    "stt": 2,
    "llm": 2,
    "tts": 2,
    "client": 3,
    "tools": 3,
    "pipeline": 4,
    "server": 5,
    "ui": 5,
    "testing": 6,
    "bench": 7,
    "cli": 8,
}
MAX_ROOT_MODULES = 8
HEAVY = ("torch", "transformers", "gradio")


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    path: Path
    line: int

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line} -> {self.target}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    base = package.split(".")
    base = base[: len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


@cache
def edges() -> tuple[Edge, ...]:
    """Every import of a `voice_agent` module, resolved to the most specific module named."""
    known = modules()
    found: list[Edge] = []
    for module, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, path, node)
                # `from pkg import mod` imports the module pkg.mod; `from mod import name` imports mod.
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                    for alias in node.names
                ]
            for target in targets:
                if target == "voice_agent" or target.startswith("voice_agent."):
                    found.append(Edge(module, target, path, node.lineno))
    return tuple(found)


def graph() -> dict[str, dict[str, Edge]]:
    known = modules()
    result: dict[str, dict[str, Edge]] = {m: {} for m in known}
    for edge in edges():
        if edge.target in known and edge.target != edge.source:
            result[edge.source].setdefault(edge.target, edge)
    return result


def cycle_groups(g: dict[str, dict[str, Edge]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(g[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(g):
        if node not in index:
            visit(node)
    return groups


def shortest_cycle(g: dict[str, dict[str, Edge]], group: list[str]) -> list[Edge]:
    """The shortest cycle inside one group, as its edges (breadth-first from each member)."""
    members = set(group)
    best: list[Edge] = []
    for start in group:
        parent: dict[str, Edge] = {}
        queue = [start]
        while queue and start not in parent:
            node = queue.pop(0)
            for nxt in sorted(g[node]):
                if nxt in members and nxt not in parent:
                    parent[nxt] = g[node][nxt]
                    queue.append(nxt)
        if start in parent:
            path = [parent[start]]
            while path[-1].source != start:
                path.append(parent[path[-1].source])
            path.reverse()
            if not best or len(path) < len(best):
                best = path
    return best


def layer(module: str) -> str | None:
    """The subpackage a module belongs to; None for the package root modules."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and (PACKAGE / parts[1]).is_dir() else None


def test_internal_imports_resolve() -> None:
    """Guards against stale imports (e.g. left behind by a move): every voice_agent import names a module that exists."""
    known = modules()
    missing = [str(e) for e in edges() if e.target not in known]
    assert not missing, "imports of modules that do not exist:\n" + "\n".join(missing)


def test_no_import_cycles() -> None:
    """Guards against import cycles between voice_agent modules, lazy and type-only imports included."""
    g = graph()
    report = []
    for group in cycle_groups(g):
        cycle = shortest_cycle(g, group)
        report.append(
            f"{len(group)} modules import each other: {', '.join(group)}\n"
            f"  e.g. {' -> '.join([cycle[0].source] + [e.target for e in cycle])}\n"
            + "\n".join(f"    {e}" for e in cycle)
        )
    assert not report, "import cycles:\n" + "\n".join(report)


def test_layers_point_down() -> None:
    """Guards the layering: core < audio < stt/llm/tts < client/tools < pipeline < server/ui < testing < bench < cli.

    A module may import its own subpackage and strictly lower layers; equal
    layers that differ (stt -> llm, server -> ui) are violations. The package
    root modules (voice_agent/__init__.py, __main__.py) may import anything, and
    anything may import the `voice_agent` package itself (it imports nothing).
    """
    assert set(RANK) == {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}, (
        "a subpackage was added or removed: give it a rank in RANK"
    )
    violations = []
    for edge in edges():
        source, target = layer(edge.source), layer(edge.target)
        if source is None or target is None or source == target:
            continue
        if RANK[target] >= RANK[source]:
            violations.append(f"{edge}  ({source} {RANK[source]} -> {target} {RANK[target]})")
    assert not violations, "imports that point up or sideways:\n" + "\n".join(violations)


def test_package_root_stays_small() -> None:
    """Guards against modules piling up at the package root again: code goes in a subpackage."""
    root_modules = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(root_modules) <= MAX_ROOT_MODULES, (
        f"{len(root_modules)} modules at voice_agent/ (at most {MAX_ROOT_MODULES}): {root_modules}"
    )


def test_import_voice_agent_is_cheap() -> None:
    """Guards that `import voice_agent` imports no torch, transformers or gradio."""
    code = f"import sys, voice_agent\nprint(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    heavy = done.stdout.strip()
    assert not heavy, f"`import voice_agent` imported {heavy}"
