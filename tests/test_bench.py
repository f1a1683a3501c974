"""The bench parts run at tiny sizes and return well-formed rows. No timing is asserted."""

from __future__ import annotations

import math

import pytest
import torch

from segframe.bench import common, knobs, loader, memory, step
from segframe.bench.evaluation import bench_eval

CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny ops on a shared machine: one thread avoids waiting on a descheduled second one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_step_flops_positive_and_scale_with_pixels():
    flops = []
    for size in (64, 128):
        images, masks = step.make_batch(2, size, 21, CPU)
        flops.append(step.step_flops(step.build_step("resnet18", "baseline", CPU), images, masks))
    assert flops[0] > 0
    assert 3.6 < flops[1] / flops[0] < 4.4  # convolutions dominate: FLOPs ~ pixels


def test_knob_rows_well_formed_and_cuda_knobs_skipped_on_cpu():
    rows = knobs.bench_knobs(["resnet18"], ["channels_last", "fp16", "cudnn_benchmark"], 2, 64, CPU, {"fp32": 100.0},
                            max_steps=1, min_steps=1, budget_s=0, max_slowdown=0)
    by_knob = {r.knob: r for r in rows}
    assert list(by_knob) == ["baseline", "channels_last", "fp16", "cudnn_benchmark"]
    for knob in ("baseline", "channels_last"):
        r = by_knob[knob]
        assert r.status == "ok" and r.steps == 1 and r.batch == 2 and r.size == 64
        assert r.ms > 0 and r.img_s > 0 and r.flops > 0 and r.gflop_s > 0 and r.pct_peak > 0 and r.speedup > 0
    assert by_knob["baseline"].speedup == pytest.approx(1.0)
    for knob in ("fp16", "cudnn_benchmark"):
        assert by_knob[knob].status == "skipped" and "CUDA" in by_knob[knob].reason
    text = knobs.report(rows, {"fp32": {"dtype": "fp32", "gflops": 100.0, "size": 2048}})
    assert "cudnn_benchmark skipped: " in text and "% of peak" in text


def test_compile_without_compiler_is_skipped_and_a_failing_knob_is_reported(monkeypatch):
    monkeypatch.setattr(step.shutil, "which", lambda name: None)
    assert "C++ compiler" in step.skip_reason("compile", CPU)

    def broken(*args, **kwargs):
        raise RuntimeError("inductor exploded\nlong traceback")

    monkeypatch.setattr(step, "skip_reason", lambda knob, device: None)
    monkeypatch.setattr(torch, "compile", broken)
    rows = knobs.bench_knobs(["resnet18"], ["compile"], 2, 64, CPU, {}, max_steps=1, min_steps=1, budget_s=0)
    assert rows[1].status == "failed" and rows[1].reason == "RuntimeError: inductor exploded"
    assert math.isnan(rows[0].pct_peak)  # no peak given: no percentage


def test_slow_knob_is_skipped_with_the_probe_figures_where_flags_do_not_tell(monkeypatch):
    monkeypatch.setattr(step, "probe_slowdown", lambda *a, **k: (10.0, 1.0))
    monkeypatch.setattr(knobs, "cpu_flags", lambda: None)  # e.g. macOS: no /proc/cpuinfo
    rows = knobs.bench_knobs(["resnet18"], ["bf16"], 2, 64, CPU, {}, max_steps=1, min_steps=1, budget_s=0)
    assert rows[1].status == "skipped" and "10.0x the baseline" in rows[1].reason


@pytest.mark.parametrize("flags, skipped", [({"avx2"}, True), ({"avx2", "avx512_bf16"}, False), ({"amx_bf16"}, False)])
def test_bf16_on_a_cpu_is_decided_by_its_bf16_units_not_a_small_probe(monkeypatch, flags, skipped):
    """A small probe misjudges native bf16 (fixed costs dominate at size/4): with bf16 units the setting is
    measured whatever the probe says; without them it is skipped without probing (emulated bf16)."""
    monkeypatch.setattr(step, "probe_slowdown", lambda *a, **k: pytest.fail("probed"))
    monkeypatch.setattr(knobs, "cpu_flags", lambda: flags)
    rows = knobs.bench_knobs(["resnet18"], ["channels_last+bf16"], 2, 64, CPU, {}, max_steps=1, min_steps=1,
                             budget_s=0)
    assert (rows[1].status == "skipped") == skipped
    if skipped:
        assert "CPU without bf16 units" in rows[1].reason and "--max-slowdown 0" in rows[1].reason


def test_matmul_peak_and_machine():
    peak = common.matmul_peak(CPU, torch.float32, max_size=256)
    assert peak["gflops"] > 0 and peak["size"] == 256 and peak["dtype"] == "fp32"
    info = common.machine(CPU)
    assert info["torch"] == torch.__version__ and info["logical cpus"] >= 1
    assert "torch" in common.machine_line(CPU)


def test_run_in_child_returns_and_raises():
    assert common.run_in_child(math.factorial, 5) == 120
    with pytest.raises(RuntimeError, match="ValueError"):
        common.run_in_child(int, "not a number")


@pytest.fixture(scope="module")
def voc_like(tmp_path_factory):
    return loader.voc_like_data(tmp_path_factory.mktemp("voc_like"), 6, shard_size=4)


def test_file_dataset_yields_the_shards_pairs(voc_like):
    from segframe.data.datamodule import ShardStream
    from segframe.data.shards import read_manifest, shard_urls

    shard_dir, items = voc_like
    manifest = read_manifest(shard_dir)
    from_shards = list(ShardStream(shard_urls(manifest, "all", shard_dir), None, len(manifest["classes"])))
    from_files = list(loader.FileDataset(items, None, len(manifest["classes"])))
    assert len(from_shards) == len(from_files) == 6
    for (si, sm), (fi, fm) in zip(from_shards, from_files):
        assert si.shape == (3, 375, 500) and torch.equal(si, fi) and torch.equal(sm.long(), fm)
        assert sm.dtype == torch.uint8 and fm.dtype == torch.int64  # the shard stream widens on the device


def test_files_and_dataloader_parts(voc_like):
    shard_dir, items = voc_like
    rows = loader.bench_files(shard_dir, items, crop=64, batch=2, workers=[0], seconds=0)
    assert len(rows) == 1 and rows[0].shard_rate > 0 and rows[0].file_rate > 0 and rows[0].ratio > 0
    assert "shards / files" in loader.report_files(rows)
    rows = loader.bench_dataloader(shard_dir, crop=64, batch=2, workers=1, epochs=2, batches=1, prefetch=[2, 4],
                                   device=CPU)
    by_knob = {r.knob: r for r in rows}
    assert list(by_knob) == ["baseline", "persistent_workers", "prefetch_factor=4", "pin_memory"]
    assert all(r.rate > 0 and r.epochs == 2 for r in rows if r.status == "ok")
    assert by_knob["pin_memory"].status == "skipped" and "CUDA" in by_knob["pin_memory"].reason
    no_workers = loader.dataloader_knobs(0, [2, 4], CPU)
    assert [(k, kw is None) for k, kw, _ in no_workers] == [("baseline", False), ("persistent_workers", True),
                                                           ("prefetch_factor=4", True), ("pin_memory", True)]


def test_loader_memory_has_numbers_for_each_size(tmp_path):
    shard_dir, items = memory.shapes_data(tmp_path, base=4, factors=[1, 4], image_size=32)
    assert len(items) == 16
    rows = memory.loader_memory(shard_dir, items, base=4, factors=[1, 4], batch=2, workers=False, isolate=False)
    assert [(r.reader, r.samples) for r in rows] == [("shards", 4), ("files", 4), ("shards", 16), ("files", 16)]
    assert all(r.rss_peak_mib >= r.rss_before_mib > 0 and not math.isnan(r.growth_mib) and r.data_mib > 0 for r in rows)
    assert "16x the samples" not in memory.report_loader(rows) and "4x the samples" in memory.report_loader(rows)


def test_train_memory_and_eval_rows():
    row = memory.train_memory("resnet18", batch=2, size=64, steps=1)
    assert row.peak_rss_mib >= row.rss_model_mib > 0 and math.isnan(row.cuda_peak_mib)
    row = bench_eval("resnet18", 2, 48, 80, CPU, forward_reps=1, metric_reps=2)
    assert row.forward_ms > 0 and row.fraction("before") > 0 and row.fraction("after") > 0
    for way in row.ways.values():  # the exactness of both ways is checked inside bench_eval
        assert len(way.labels_ms) == len(way.update_ms) == 2 and min(way.labels_ms + way.update_ms) > 0


def test_cli_parts_and_quick(capsys, monkeypatch, tmp_path):
    from segframe.bench.__main__ import main, parse

    # main() sets these for its run; keep them from leaking into the rest of the session
    monkeypatch.setenv("TQDM_DISABLE", "")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))

    with pytest.raises(SystemExit):
        parse(["--only", "nope"])
    assert parse(["--quick"]).size == 64 and parse(["--quick", "--size", "96"]).size == 96
    main(["--quick", "--only", "eval", "--models", "resnet18", "--device", "cpu"])
    out = capsys.readouterr().out
    assert "== eval ==" in out and "metric / forward" in out and "torch " + torch.__version__ in out


def test_checkpoint_part_compares_the_atomic_writer_with_lightnings(tmp_path):
    from segframe.bench.checkpoint import bench_checkpoint, report

    rows = bench_checkpoint(["resnet18"], 32, 1, tmp_path)
    assert rows[0]["mib"] > 80 and all(rows[0][w][0] > 0 for w in ("lightning", "atomic"))
    assert not list(tmp_path.iterdir())  # nothing left behind
    assert "atomic/lightning" in report(rows, str(tmp_path)) and "FCN-32s resnet18" in report(rows, str(tmp_path))


def test_overhead_bare_loop_is_the_knobs_training_step_and_the_part_reports():
    from segframe.bench import overhead
    from segframe.models.fcn import FCN

    batch = step.make_batch(2, 32, 6, CPU)
    knob_step = step.build_step("resnet18", "baseline", CPU, classes=6, stride=32)
    for _ in range(2):
        knob_step(*batch)
    torch.manual_seed(0)  # as build_step: the same initial weights
    bare_model = FCN(6, 32, "resnet18")
    assert overhead.bench_bare(bare_model, batch, steps=1, warmup=1, device=CPU) > 0
    assert all(torch.equal(a, b) for a, b in zip(knob_step.model.parameters(), bare_model.parameters()))
    bare, light = overhead.bench_overhead("resnet18", 32, 2, 32, steps=1, warmup=1, repeats=1, device=CPU)
    assert len(bare) == len(light) == 1 and bare[0] > 0 and light[0] > 0
    text = overhead.report(bare, light, "resnet18", 32, 2, 32, 1, 1)
    assert "bare PyTorch loop" in text and "overhead ratio (Lightning / bare)" in text


def test_infer_part_runs_each_runtime_on_the_same_model():
    from segframe.bench.infer import bench_infer, report

    rows = bench_infer(["fcn8s_resnet18"], (40, 56), batch=1, reps=1, num_classes=3)
    runtimes = [r[1] for r in rows]
    assert runtimes[:3] == ["eager", "torchscript", "onnxruntime"]
    assert all(r[2] > 0 for r in rows[:3]), rows  # every runtime ran (onnxruntime is in the test extra)
    assert "ms / image" in report(rows, (40, 56), 1, 1)


def test_gpu_check_lists_its_steps_and_refuses_without_a_gpu(capsys, tmp_path):
    from segframe.bench import gpu_check

    assert gpu_check.main(["--dry-run"]) == 0
    listed = capsys.readouterr().out
    assert "bench (at most 330 s)" in listed and "--device cuda" in listed and "channels_last+bf16" in listed
    assert "gpu_tests (at most 150 s)" in listed and "tests/test_scale.py" in listed
    assert sum(limit for _, _, limit in gpu_check.STEPS) <= 8 * 60  # the issue: under 8 minutes
    if not torch.cuda.is_available():
        assert gpu_check.main(["--out", str(tmp_path)]) == 2
        assert "sees no CUDA GPU" in capsys.readouterr().err
