"""Rules of the package layout, read from the source with ``ast`` (nothing is imported): no import cycles, no
private names imported across packages, render keeps to presentation."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# private names still imported across packages, in files other helpers own: to fold (the list may only shrink)
KNOWN_PRIVATE_IMPORTS = {
    ("sdlens.commands.convert", "sdlens.cli", "_progress_bar"),
    ("sdlens.commands.embed", "sdlens.cli", "_fail"),
    ("sdlens.commands.matrix", "sdlens.cli", "_fail"),
    ("sdlens.commands.matrix", "sdlens.cli", "_progress_bar"),
    ("sdlens.convert.layouts", "sdlens.arch.keymap.unet", "_DEFAULTS"),
}
# what render may not import: model building and the libraries that build models
NOT_IN_RENDER = ("torch", "diffusers", "transformers", "sdlens.arch.build", "sdlens.testing")


def _modules(src: Path) -> dict[str, Path]:
    out = {}
    for p in src.rglob("*.py"):
        rel = p.relative_to(src).with_suffix("")
        out[".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)] = p
    return out


@functools.cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"))


def _imports(path: Path, *, in_functions: bool) -> list[tuple[str, str | None, int]]:
    """(module, name or None, line) of every absolute import; ``TYPE_CHECKING`` blocks skipped, function
    bodies only with ``in_functions``."""
    found: list[tuple[str, str | None, int]] = []

    def visit(node: ast.AST) -> None:
        for ch in ast.iter_child_nodes(node):
            if isinstance(ch, ast.If) and "TYPE_CHECKING" in ast.unparse(ch.test):
                continue
            if isinstance(ch, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and not in_functions:
                continue
            if isinstance(ch, ast.Import):
                found.extend((a.name, None, ch.lineno) for a in ch.names)
            elif isinstance(ch, ast.ImportFrom) and ch.level == 0 and ch.module:
                found.extend((ch.module, a.name, ch.lineno) for a in ch.names)
            visit(ch)

    visit(_tree(path))
    return found


def import_graph(src: Path, root: str = "sdlens", *, in_functions: bool = False) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (``from pkg import mod`` counts as importing ``mod``)."""
    mods = {m: p for m, p in _modules(src).items() if m == root or m.startswith(root + ".")}

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for m, p in mods.items():
        deps = set()
        for mod, name, _ in _imports(p, in_functions=in_functions):
            target = resolve(f"{mod}.{name}" if name and f"{mod}.{name}" in mods else mod)
            if target and target != m:
                deps.add(target)
        graph[m] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _package_of(module: str) -> str:
    """The top-level part a module belongs to: ``sdlens.io.open`` -> ``sdlens.io``, ``sdlens.cli`` -> itself."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) >= 2 else module


def test_cycle_finder_finds_a_known_cycle(tmp_path):
    pkg = tmp_path / "pk"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pk.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from pk import a\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pk.a\n")
    assert cycles(import_graph(tmp_path, "pk")) == []  # b imports a only in a function
    assert cycles(import_graph(tmp_path, "pk", in_functions=True)) == [["pk.a", "pk.sub.b"]]
    assert import_graph(tmp_path, "pk")["pk.c"] == set()  # TYPE_CHECKING imports do not count


def test_no_import_cycles_at_module_level():
    assert cycles(import_graph(SRC)) == []


def test_io_and_convert_have_no_cycles_even_through_function_imports():
    # convert.verify <-> convert.writer and io.open <-> io.folders were broken by moving the shared code
    # (convert.sources, io.files) below both
    tangled = [
        c
        for c in cycles(import_graph(SRC, in_functions=True))
        if any(m.startswith(("sdlens.io.", "sdlens.convert.")) for m in c)
    ]
    assert tangled == []


def test_no_private_names_imported_across_packages():
    found = set()
    for m, p in _modules(SRC).items():
        for mod, name, _ in _imports(p, in_functions=True):
            if (
                mod.startswith("sdlens.")
                and name
                and name.startswith("_")
                and not name.startswith("__")
                and _package_of(mod) != _package_of(m)
            ):
                found.add((m, mod, name))
    assert found <= KNOWN_PRIVATE_IMPORTS, sorted(found - KNOWN_PRIVATE_IMPORTS)


def test_render_keeps_to_presentation():
    offenders = []
    for m, p in _modules(SRC).items():
        if not m.startswith("sdlens.render."):
            continue
        for mod, _name, line in _imports(p, in_functions=True):
            if any(mod == x or mod.startswith(x + ".") for x in NOT_IN_RENDER):
                offenders.append(f"{p.name}:{line}: {mod}")
    assert offenders == []


def test_make_plan_applies_the_passes_of_the_issue_in_order():
    from sdlens.convert.plan import PASSES

    names = [p.__name__.removesuffix("_pass") for p in PASSES]
    assert names == ["vae", "ema", "drop", "position_ids", "extract", "dtype", "layout", "prediction"]
