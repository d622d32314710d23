"""The shape of the source tree: no import cycles, imports follow the layering, small files and functions.

Every import counts, also those inside functions (lazy imports still tie modules together).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "llava_fa"

# Lower ranks never import higher ones. A module takes the rank of its longest listed prefix.
LAYERS = [
    ("errors", "paths", "io.files", "runtime"),
    ("quantizers", "transforms", "kernels"),
    ("formats",),
    ("calibration", "selection", "recipe", "assets", "testbed"),
    ("methods",),
    ("io", "__init__"),  # the root package installs the transformers hook (io/hf_hook.py)
    ("pipeline", "evaluation"),
    ("bench",),
    ("commands", "cli", "__main__"),
]
# (importer, imported) pairs allowed against the layering, each with its reason.
EXCEPTIONS: dict[tuple[str, str], str] = {}


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in SRC.rglob("*.py")}


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """Modules of llava_fa that `path` imports (absolute names without the `llava_fa.` prefix)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = package.split(".") if package else []
                pkg = pkg[:len(pkg) - (node.level - 1)]
                base = ".".join(["llava_fa", *pkg, *([base] if base else [])])
            # `from pkg import name`: the submodule when `name` is one, else the package itself.
            targets = [f"{base}.{a.name}" if _short(f"{base}.{a.name}") in known else base for a in node.names]
        for t in targets:
            if not t.startswith("llava_fa"):
                continue
            t = _short(t)
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def _short(module: str) -> str:
    """llava_fa.a.b -> a.b; the root package itself -> __init__."""
    return module.removeprefix("llava_fa").lstrip(".") or "__init__"


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(path, name, set(mods)) for name, path in mods.items()}


def rank(name: str) -> int:
    best, best_len = None, -1
    for i, layer in enumerate(LAYERS):
        for prefix in layer:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = i, len(prefix)
    assert best is not None, f"module {name} has no layer in LAYERS"
    return best


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(g.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (cycle := visit(m)):
                return cycle
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(g):
        if n not in state and (cycle := visit(n)):
            return cycle
    return None


def test_no_import_cycles():
    g = graph()
    # A package's __init__ importing its own submodules is how a package exports; the submodules
    # importing siblings through the package is what would make a cycle, so keep both edges.
    assert find_cycle(g) is None, f"import cycle: {' -> '.join(find_cycle(g))}"


def test_imports_follow_the_layering():
    bad = sorted((a, b) for a, deps in graph().items() for b in deps
                 if rank(b) > rank(a) and (a, b) not in EXCEPTIONS)
    assert not bad, "imports against the layering (lower layers must not import higher ones): " + \
        ", ".join(f"{a} -> {b}" for a, b in bad)


def test_files_and_functions_are_small():
    long_files, long_funcs = [], []
    for name, path in modules().items():
        text = path.read_text()
        if text.count("\n") > 400:
            long_files.append(f"{name} ({text.count(chr(10))} lines)")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 60:
                    long_funcs.append(f"{name}.{node.name} ({length} lines)")
    assert not long_files and not long_funcs, f"files over 400 lines: {long_files}; functions over 60: {long_funcs}"
