"""The architecture rules of docs/architecture.md, checked on the source. The folders are the layers
(core -> data -> models -> evaluation -> engine -> deploy -> experiments -> the commands on top):
imports flow down only, with no cycle even through function-level imports; the top of the package
holds the `python -m segframe.X` commands and nothing else; files stay small."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "segframe"

# the folders, lowest first: a module may import its own folder or a lower one
FOLDERS = ("core", "data", "models", "evaluation", "engine", "deploy", "experiments")
# the commands at the top of the package (thin entry modules), and bench, the benchmark command's package
COMMANDS = ("train", "eval", "convert", "predict", "reproduce", "results", "export", "compare", "bench")
LAYERS = [(f, (f,)) for f in FOLDERS] + [("commands", COMMANDS)]
ENTRY_POINTS = COMMANDS[:-1]
MAX_LINES, MAX_ENTRY_LINES = 350, 65  # "no file over ~350 lines, an entry point under ~60"


def _modules() -> dict[str, Path]:
    """Dotted names below `segframe` ("" for the package itself, `data` for data/__init__.py)."""
    names = {".".join(p.relative_to(PACKAGE).with_suffix("").parts): p for p in PACKAGE.rglob("*.py")}
    return {("" if n == "__init__" else n.removesuffix(".__init__")): p for n, p in names.items()}


def _layer(module: str) -> int:
    if module == "":  # segframe/__init__.py: `from segframe import load_model`, above everything
        return len(LAYERS) - 1
    for rank, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    raise AssertionError(f"segframe.{module} is in no layer: move it into the folder of its kind of work "
                         f"({', '.join(FOLDERS)}); only the commands live at the top (docs/architecture.md)")


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The segframe modules `path` imports anywhere (module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if name.startswith("segframe."):
                inner = name.removeprefix("segframe.")
                if inner in modules:
                    found.add(inner)
        if isinstance(node, ast.ImportFrom) and node.module == "segframe":
            found.update(a.name for a in node.names if a.name in modules)
        if (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
                and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
                and node.args[0].value.removeprefix("segframe.") in modules):  # importlib.import_module("segframe.X")
            found.add(node.args[0].value.removeprefix("segframe."))
    return found


def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: _imports(p, modules) - {m} for m, p in modules.items()}


def test_every_import_goes_to_the_same_or_a_lower_layer():
    upward = [f"segframe.{m} ({LAYERS[_layer(m)][0]}) imports segframe.{d} ({LAYERS[_layer(d)][0]})"
              for m, deps in sorted(graph().items()) for d in sorted(deps)
              if _layer(d) > _layer(m) and not d.startswith(m + ".")]
    assert not upward, "\n".join(upward)


def test_no_import_cycle_even_through_function_level_imports():
    edges = graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(edges.get(node, ())):
            if node.startswith(dep + "."):  # a package's __init__ runs before its submodules: not a cycle
                continue
            if state.get(dep) == 1:
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)


@pytest.mark.parametrize("module", sorted(m for m in _modules() if m))
def test_module_size(module):
    lines = len(_modules()[module].read_text().splitlines())
    limit = MAX_ENTRY_LINES if module in ENTRY_POINTS else MAX_LINES
    assert lines <= limit, f"segframe/{module.replace('.', '/')}.py has {lines} lines (limit {limit}): split it by job"


def test_every_module_is_in_a_layer_and_every_folder_a_package():
    for module in _modules():
        _layer(module)  # raises, naming the module, when it is in no layer
    loose = sorted(str(d.relative_to(PACKAGE)) for d in PACKAGE.rglob("*") if d.is_dir() and d.name != "__pycache__"
                   and any(d.glob("*.py")) and not (d / "__init__.py").is_file())
    assert not loose, f"folders with modules but no __init__.py (invisible to the layer check): {loose}"


def test_imports_are_absolute():
    """A relative import (`from ..engine import x`) would hide an upward import from the scanner."""
    relative = [f"{p.relative_to(PACKAGE)}:{n.lineno}" for p in PACKAGE.rglob("*.py")
                for n in ast.walk(ast.parse(p.read_text())) if isinstance(n, ast.ImportFrom) and n.level > 0]
    assert not relative, f"use absolute imports (from segframe.X import ...): {relative}"


def test_the_top_of_the_package_holds_only_the_commands():
    top = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
    assert top == sorted(ENTRY_POINTS), f"only the commands live at the top of segframe/: {top}"
    folders = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    assert folders == sorted(FOLDERS + ("bench",)), folders


@pytest.mark.parametrize("folder", FOLDERS)
def test_each_folder_says_what_it_holds_and_what_it_may_import(folder):
    doc = ast.get_docstring(ast.parse((PACKAGE / folder / "__init__.py").read_text()))
    assert doc and "Imports" in doc, f"segframe/{folder}/__init__.py needs a docstring saying its job and its imports"


def test_the_checks_can_fail():
    """The import scanner sees a function-level import, and the layer order is the folders' order."""
    sample = PACKAGE / "data" / "preparation.py"
    assert "core.commands" in _imports(sample, _modules()) and "data.shard_writer" in _imports(sample, _modules())
    assert "deploy.api" in _imports(PACKAGE / "__init__.py", _modules())
    assert (_layer("core.errors") < _layer("data.sample") < _layer("models.fcn") < _layer("evaluation.report")
            < _layer("engine.training") < _layer("deploy.api") < _layer("experiments.sweep") < _layer("train"))
