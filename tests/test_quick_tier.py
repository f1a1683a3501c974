"""The quick tier's rule (tests/helpers/quick.py, applied in tests/conftest.py): what it sees and what
it selects."""

from __future__ import annotations

import importlib.util
import sys
import textwrap

import pytest
from helpers.quick import SLOW_HERE, TESTS, heavy_reasons

SAMPLES = '''
import subprocess

from helpers.cli import ok, run_cli


def plain(tmp_path):
    return ok(tmp_path)


def direct():
    return run_cli("train")


def _helper():
    return subprocess.run(["true"])


def indirect():
    return [_helper() for _ in range(2)]


def lazy():
    from helpers.cli import run_cli as cli

    return cli("eval")


class Fit:
    def go(self):
        import lightning.pytorch as pl

        return pl.Trainer().fit


def through_a_class():
    return Fit().go()


def in_a_string():
    return "python -m segframe.train (run_cli, subprocess, Trainer)"


def a_vgg(backbone="resnet18"):
    return compose(["model.backbone=vgg16"])
'''


@pytest.fixture
def samples(tmp_path, monkeypatch):
    path = tmp_path / "samples.py"
    path.write_text(textwrap.dedent(SAMPLES))
    spec = importlib.util.spec_from_file_location("quick_tier_samples", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # as an imported test file is
    spec.loader.exec_module(module)
    return module, tmp_path


def test_the_rule_follows_helpers_classes_and_local_imports(samples):
    module, root = samples
    found = {name: heavy_reasons(getattr(module, name), root=root) for name in
             ("plain", "direct", "indirect", "lazy", "through_a_class", "in_a_string", "a_vgg")}
    assert found == {"plain": set(), "direct": {"a process"}, "indirect": {"a process"}, "lazy": {"a process"},
                     "through_a_class": {"a training run"}, "in_a_string": set(), "a_vgg": {"a large network"}}
    assert heavy_reasons(module.direct, root=root / "elsewhere") == set()  # code outside the root is not read


def test_no_quick_test_is_slow(request):
    """`pytest -m quick` replaces the default `-m 'not slow'`: the tier must hold no slow test itself."""
    items = request.session.items
    assert all(not (item.get_closest_marker("quick") and item.get_closest_marker("slow")) for item in items)
    assert request.node.get_closest_marker("quick")  # this file starts no process: it is quick


def test_the_slow_list_names_tests_that_exist():
    """A renamed or removed test leaves no stale line in SLOW_HERE."""
    for entry in SLOW_HERE:
        file, function = entry.split("::")
        assert f"def {function}(" in (TESTS / file).read_text(), entry
