"""The quick tier (`pytest -m quick`, a developer's inner loop; CI runs everything): the tests that start
no process, train nothing, export nothing and build no large network, decided from their code, so that
a new test falls on its side without anyone marking it. tests/conftest.py marks them `quick`.

A test is quick unless
- it is marked `slow` or `not_quick`;
- the code it reaches names one of HEAVY (a process, a training run, an export, a large network). The
  code it reaches: the test function (not its decorators), the fixtures it uses (its whole fixture
  closure) and every function or class defined under tests/ that those name, followed to the end: a
  helper in the test file or in tests/helpers that calls `run_cli` takes every test calling it out.
  Names are names, attributes, imported modules and names, and strings (the value after an override's
  `=`: `"model=fcn8s"` names fcn8s); a parametrized test's id counts too (`deeplabv3-resnet50-os16`);
- or it is listed in SLOW_HERE: it takes seconds for work its code does not name (code outside tests/
  is not read). A `-m quick` run lists at its end every quick test that took over SLOW_CALL_S.
"""

from __future__ import annotations

import ast
import inspect
import re
import sys
import textwrap
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent
CONF = TESTS.parent / "conf"

LARGE = ("vgg11", "vgg16", "resnet50", "resnet101")


def _configs_building(backbones) -> set[str]:
    """The model configs whose default backbone is one of `backbones`, and the experiments that name one of
    `backbones` or of those models."""
    def default(text: str) -> str | None:
        found = re.search(r"^backbone:\s*(?:\$\{alias:\$\{\.encoder\},)?(\w+)", text, re.MULTILINE)
        return found.group(1) if found else None

    models = {p.stem for p in (CONF / "model").glob("*.yaml") if default(p.read_text()) in backbones}
    models |= {p.stem for p in (CONF / "model").glob("*.yaml") if re.search(r"vgg1[16]", p.read_text())}
    def large(text: str) -> bool:  # a large backbone named, or a large model's default kept
        return bool(re.search(rf"\b({'|'.join(backbones)})\b", text) or
                    re.search(rf"\b({'|'.join(models)})\b", text) and not re.search(r"^\s*backbone:", text, re.MULTILINE))

    return models | {p.stem for p in (CONF / "experiment").glob("*.yaml") if large(p.read_text())}


# What makes a test slow, by the names its code uses: a name, an attribute, an imported module or name
# (`segframe.deploy.exporting`, and `exporting` alone), or a string that is one of them or an override
# setting one (`"vgg16"`, `"model.backbone=vgg16"`)
HEAVY = {
    "a process": {"run_cli", "subprocess", "Popen", "multiprocessing", "ProcessPoolExecutor"},
    "a training run": {"Trainer", "segframe.engine.training", "segframe.train"},
    "an export": {"segframe.deploy.exporting", "exporting", "export_checkpoint", "export_onnx", "export_torchscript",
                  "onnx", "jit"},
    # VGG16 / VGG11 (FCN, TernausNet) and ResNet-50 / 101 (DeepLab, dilated FCN): seconds a forward on 2 cores;
    # the model and experiment configs that build one by default (`model=fcn8s`, `experiment=fcn8s_voc_paper`)
    "a large network": {*LARGE, "VGG16Backbone", "TernausNet16", "vgg16_features", *_configs_building(LARGE)},
}


# Tests that take seconds for work their code does not name (a larger input, a process or a heavy import
# inside segframe), measured with --durations on 2 cores; `pytest -m quick` lists any quick test over
# SLOW_CALL_S at its end, to be made faster or added here
SLOW_CALL_S = 2.0
SLOW_HERE = {
    # a `pipe:` process and two 0.5 s stalls; in a `-m quick` run it took 6 s against its own 5 s bound and failed
    # (it passes alone, in its file and in the default set): to be looked into, kept out of the quick tier meanwhile
    "test_remote_shards.py::test_a_stalled_download_times_out": "6 s in a quick run, over its own bound",
    "test_remote_shards.py::test_wrong_checksum_is_an_error_only_when_verifying": "9.5 s (HTTP reads of every shard)",
    "test_inference.py::test_shapes_and_probabilities_on_a_random_fcn": "sliding windows and scales, 4-12 s",
    "test_eval_speed_exact.py::test_segmodule_eval_and_test_steps_count_like_argmax": "3-5 s",
    "test_sources_endovis2017.py::test_tasks_equal_ternausnet_on_every_variant": "every label variant, 6-8 s",
    "test_sources_endovis2017.py::test_convert_one_split_per_dataset": "1280x1024 frames, 2-3 s",
    "test_remote_shards.py::test_failing_pipe_command_names_the_shard_and_shows_its_stderr": "a pipe: process, 5 s",
    "test_bench.py::test_run_in_child_returns_and_raises": "a child process, 3-6 s",
    "test_scale.py::test_auto_convert_waits_for_a_conversion_already_running": "a second converter, 3 s",
    "test_fcn_reference.py::test_the_default_fcn_is_unchanged": "the default config's VGG16 FCN, 2-4 s",
    "test_model_menu.py::test_init_from_between_compatible_models": "2-4 s",
    "test_model_menu.py::test_encoder_weights_from_a_local_file": "1-3 s each",
    "test_models.py::test_staged_init_from_coarser": "3 s",
    "test_models.py::test_bf16_autocast_gradients_match_fp32": "2 s each",
    "test_trackers.py::test_the_loggers_are_built_from_their_nodes_and_mlflow_follows_its_tracking_uri":
        "MLflow, 4-5 s",
    "test_trackers.py::test_every_logger_choice_composes_and_the_default_is_csv_and_tensorboard": "2-3 s",
    "test_remote_shards.py::test_truncated_shard_names_the_shard": "a download that stalls, 5 s",
    "test_remote_shards.py::test_a_download_that_breaks_is_resumed_or_named": "retries, 5 s",
    "test_one_name.py::test_model_configs_of_either_name_rebuild": "every model config built, 5 s",
    "test_bench.py::test_infer_part_runs_each_runtime_on_the_same_model": "2-3 s",
    "test_bench.py::test_overhead_bare_loop_is_the_knobs_training_step_and_the_part_reports": "2 s",
    "test_compare.py::test_a_sweep_directory_and_a_glob_expand_to_their_runs": "2 s",
}


def _source_names(obj) -> set[str]:
    """The names in `obj`'s source as HEAVY reads them (empty when it has no source)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(obj)))
    except (OSError, TypeError, SyntaxError):
        return set()
    for top in tree.body:  # a test's parameters are its item's own (see is_quick), not all of its decorator's
        if isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            top.decorator_list = []
    return _names(tree)


def _names(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.add(node.value.rsplit("=", 1)[-1].strip("'\" "))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            module = node.module if isinstance(node, ast.ImportFrom) else None
            for alias in node.names:
                dotted = f"{module}.{alias.name}" if module else alias.name
                names.update({dotted, alias.name, alias.asname or alias.name, *dotted.split(".")})
            if module:
                names.add(module)
    return names


def _ours(obj, root: Path) -> bool:
    """Whether `obj` is a function or class defined in a file under `root`."""
    if not (inspect.isfunction(obj) or inspect.isclass(obj)):
        return False
    try:
        return Path(inspect.getsourcefile(obj)).resolve().is_relative_to(root)
    except (OSError, TypeError):
        return False


def _namespace(obj) -> dict:
    if inspect.isfunction(obj):
        return obj.__globals__
    module = sys.modules.get(getattr(obj, "__module__", ""), None)
    return vars(module) if module else {}


def heavy_reasons(*starts, root: Path = TESTS, cache: dict | None = None) -> set[str]:
    """The reasons of HEAVY that `starts` (functions, classes) reach through the code under `root`."""
    cache = {} if cache is None else cache
    starts = [getattr(s, "__func__", s) for s in starts]  # a method of a test class: its function
    found, seen, todo = set(), set(), [s for s in starts if _ours(s, root)]
    while todo:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if id(obj) not in cache:
            cache[id(obj)] = (obj, _source_names(obj))  # obj kept alive so that its id stays its own
        names = cache[id(obj)][1]
        found |= {reason for reason, marks in HEAVY.items() if names & marks}
        namespace = _namespace(obj)
        todo.extend(namespace[n] for n in names if n in namespace and _ours(namespace[n], root))
    return found


def is_quick(item, cache: dict | None = None) -> bool:
    """Whether a collected pytest item belongs to the quick tier (see the module's docstring)."""
    if item.get_closest_marker("slow") or item.get_closest_marker("not_quick"):
        return False
    if item.get_closest_marker("quick"):  # chosen by hand: tests/test_smoke.py's one short training run
        return True
    function = getattr(item, "function", None)
    if function is None:
        return False
    fixtures = [d.func for name in getattr(item, "fixturenames", ())
                for d in item._fixtureinfo.name2fixturedefs.get(name, ())]
    if f"{Path(item.path).name}::{function.__name__}" in SLOW_HERE:
        return False
    # a parametrized test's own parameters, by the words of its id (`deeplabv3-resnet50-os16`)
    words = set(re.split(r"[^\w.]+", getattr(getattr(item, "callspec", None), "id", "")))
    return not heavy_reasons(function, *fixtures, cache=cache) and not any(words & marks for marks in HEAVY.values())
