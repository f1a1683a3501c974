"""The architecture rules of README "Architecture", checked on the source: imports flow one way
(entry points -> orchestration -> run pieces -> components -> data -> foundation), with no cycle
even through function-level imports, and files stay small."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "segframe"

# lowest first; a module may import its own layer or a lower one. The first matching prefix wins.
LAYERS = [
    ("foundation", ("errors", "paths", "atomic", "config", "commands", "metric_names", "host", "unknown_keys", "folds",
                    "task_choice",
                    "progress")),
    ("data", ("data",)),
    ("components", ("models", "losses", "jaccard_loss", "loss_args", "metrics", "inference", "crf", "schedules", "module",
                    "speed", "speed_probe")),
    ("run pieces", ("report", "model_card", "checkpoint", "checkpointing", "resume", "components", "experiments",
                    "experiment_tables", "exported", "run_files", "curves",
                    "progress_bar", "sweep_plot", "trackers")),
    ("orchestration", ("training", "evaluation", "conversion", "prediction", "reproduction", "api", "exporting",
                       "comparison")),
    ("entry points", ("train", "eval", "convert", "predict", "reproduce", "results", "export", "cli", "sweep", "bench",
                      "compare")),
]
ENTRY_POINTS = ("train", "eval", "convert", "predict", "reproduce", "results", "export", "compare")
MAX_LINES, MAX_ENTRY_LINES = 350, 65  # the issue: "no file over ~350 lines, an entry point under ~60"


def _modules() -> dict[str, Path]:
    """Dotted names below `segframe` ("" for the package itself, `data` for data/__init__.py)."""
    names = {".".join(p.relative_to(PACKAGE).with_suffix("").parts): p for p in PACKAGE.rglob("*.py")}
    return {("" if n == "__init__" else n.removesuffix(".__init__")): p for n, p in names.items()}


def _layer(module: str) -> int:
    for rank, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    raise AssertionError(f"segframe.{module} is in no layer of tests/test_architecture.py: add it to LAYERS "
                         f"and to README 'Architecture'")


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
    return found


def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: _imports(p, modules) - {m} for m, p in modules.items() if m}


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


def test_the_checks_can_fail():
    """The import scanner sees a function-level import, and the layer order is what the README says."""
    sample = PACKAGE / "data" / "preparation.py"
    assert "commands" in _imports(sample, _modules()) and "data.shard_writer" in _imports(sample, _modules())
    assert _layer("data.sample") < _layer("module") < _layer("report") < _layer("training") < _layer("train")
