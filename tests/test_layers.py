"""The package's layers: imports only point down, and no module imports itself round a circle.

Every `from fromzero... import` counts, at the top of a module or inside a function: an import
inside a function still makes the importer depend on the imported module, it only hides the edge.
Modules that say "compat shim" in their docstring re-export old paths for one release and are
exempt from the layer order (never from cycles through the rest of the package).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "fromzero"

# Lower ranks never import higher ones; packages on one rank may import each other (acyclically).
RANKS = {
    "errors": 0,
    "config": 1,
    "tokenizer": 2,
    "modules": 3,
    "corpora": 4,
    "tasks": 5,
    "data": 6, "model": 6,
    "objectives": 7, "peft": 7, "train": 7, "infer": 7, "evaluation": 7,
    "tuning": 8, "prompting": 8, "compress": 8,
    "recipes": 9, "serve": 9,
    "cli": 10, "__main__": 10,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(path: Path, known: set[str]) -> set[str]:
    """The fromzero modules `path` imports; `from pkg import sub` counts as importing pkg.sub."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("fromzero"):
            subs = {f"{node.module}.{a.name}" for a in node.names} & known
            out |= subs or {node.module}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("fromzero")}
    resolved = set()
    for name in out:
        while name not in known and "." in name:
            name = name.rsplit(".", 1)[0]
        resolved.add(name)
    return resolved


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: _imports(p, set(mods)) - {m} for m, p in mods.items()}


def _is_shim(name: str) -> bool:
    doc = ast.get_docstring(ast.parse(_modules()[name].read_text(encoding="utf-8"))) or ""
    return "compat shim" in doc.lower()


def _top(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_module_has_a_rank():
    unranked = sorted({_top(m) for m in _modules() if not _is_shim(m)} - set(RANKS) - {""})
    assert not unranked, f"give these packages a rank in RANKS (tests/test_layers.py): {unranked}"


def test_imports_only_point_down():
    upward = []
    for mod, targets in _graph().items():
        if not _top(mod) or _is_shim(mod):
            continue
        for target in targets:
            if _top(target) and not _is_shim(target) and RANKS[_top(target)] > RANKS[_top(mod)]:
                upward.append(f"{mod} -> {target}")
    assert not upward, "imports that point up a layer:\n  " + "\n  ".join(sorted(upward))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                found.append(sorted(scc))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles:\n  " + "\n  ".join(" <-> ".join(c) for c in cycles)


def test_cli_starts_without_torch():
    import subprocess
    import sys

    code = "import sys, fromzero.cli; fromzero.cli.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_the_checker_sees_function_level_imports(tmp_path):
    """The test above must fail on a hidden cycle: an import inside a function counts."""
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from fromzero.b import x\n", encoding="utf-8")
    assert _imports(src, {"fromzero.b"}) == {"fromzero.b"}
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
