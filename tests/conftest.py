from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

# fixtures only; plain helpers live in tests/helpers (`from helpers.cli import run_cli`)
from helpers.config import TINY_SHAPES_SOURCE  # noqa: E402


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory) -> Path:
    """A small converted shapes dataset (2 train shards, 2 val shards) shared by the tests."""
    from segframe.data.shard_writer import write_dataset
    from segframe.data.sources.shapes import CLASSES, PALETTE, ShapesSource

    out = tmp_path_factory.mktemp("data") / "shapes"
    source = ShapesSource(**TINY_SHAPES_SOURCE, seed=0)
    write_dataset(source, out, "shapes", CLASSES, PALETTE, shard_size=6)
    return out


@pytest.fixture
def one_thread():
    """Tiny tensors gain nothing from threads, and on a shared 2-core machine OpenMP threads competing
    with other processes made model tests ~30x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_configure(config):
    config.addinivalue_line("markers", "quick: set by tests/conftest.py on the tests that start no process, train "
                                       "nothing, export nothing and build no large network (the rule: "
                                       "tests/helpers/quick.py); `pytest -m quick` runs them, in under 2 minutes")
    config.addinivalue_line("markers", "not_quick: keeps a test out of the quick tier when it is slow for a reason "
                                       "the rule of tests/helpers/quick.py does not see")


def pytest_collection_modifyitems(config, items):
    from helpers.quick import is_quick

    cache: dict = {}
    for item in items:
        if is_quick(item, cache):
            item.add_marker(pytest.mark.quick)


_slow_quick: list[tuple[float, str]] = []


def pytest_runtest_logreport(report):
    from helpers.quick import SLOW_CALL_S

    if report.when == "call" and "quick" in report.keywords and report.duration > SLOW_CALL_S:
        _slow_quick.append((report.duration, report.nodeid))


def pytest_terminal_summary(terminalreporter, config):
    """After `pytest -m quick`: the quick tests that took long, for helpers/quick.py's SLOW_HERE."""
    from helpers.quick import SLOW_CALL_S

    if "quick" in (config.getoption("markexpr") or "") and _slow_quick:
        terminalreporter.write_sep("-", f"quick tests over {SLOW_CALL_S:g} s (make them faster or add them to "
                                        "SLOW_HERE in tests/helpers/quick.py)")
        for duration, nodeid in sorted(_slow_quick, reverse=True):
            terminalreporter.write_line(f"{duration:.1f} s {nodeid}")
