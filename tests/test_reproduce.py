"""Experiment recipes, `segframe.reproduce` (staged chains, tolerance verdicts) and the generated
results table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from segframe.core.paths import EXPERIMENTS_DIR

from helpers.cli import REPO, run_cli
from helpers.config import compose


@pytest.mark.parametrize("stride, lr, parent", [(32, 1e-6, None), (16, 1e-8, "fcn32s_voc_aug"),
                                                (8, 1e-9, "fcn16s_voc_aug")])
def test_seed_recipes(stride, lr, parent):
    cfg = compose([f"experiment=fcn{stride}s_voc_aug"])
    assert cfg.data.name == "voc_aug" and cfg.data.split_mode == 2 and cfg.data.crop_size == 384
    assert cfg.model.stride == stride and cfg.model.backbone == "vgg16"
    assert cfg.optimizer._target_ == "torch.optim.Adam" and cfg.optimizer.lr == lr
    assert cfg.datamodule.batch_size == 1 and cfg.trainer.max_epochs == 10
    assert cfg.augmentation.train._target_.endswith("seed_train") and list(cfg.augmentation.train.scale) == [0.9, 1.1]
    assert cfg.module.loss_reduction == "mean" and cfg.parent_experiment == parent
    assert cfg.model.pretrained is (parent is None)  # ImageNet for the first stage, the chain after
    assert cfg.reference.mean.miou == {32: 62.70, 16: 63.52, 8: 63.65}[stride]


@pytest.mark.parametrize("stride, lr, miou", [(32, 1e-10, 63.6), (16, 1e-12, 65.0), (8, 1e-14, 65.5)])
def test_paper_recipes(stride, lr, miou):
    cfg = compose([f"experiment=fcn{stride}s_voc_paper"])
    assert cfg.optimizer._target_ == "torch.optim.SGD" and cfg.optimizer.lr == lr
    assert cfg.optimizer.momentum == 0.99 and cfg.optimizer.weight_decay == 0.0005
    assert cfg.module.loss_reduction == "sum" and cfg.module.bias_lr_mult == 2.0 and not cfg.module.bias_weight_decay
    assert cfg.datamodule.batch_size == 1 and cfg.augmentation.train._target_.endswith("identity")
    assert cfg.model.channel_order == "bgr" and cfg.model.input_scale == 255.0 and list(cfg.model.std) == [1, 1, 1]
    assert cfg.reference.mean.miou == miou and cfg.scheduler._target_.endswith("ConstantLR")
    assert cfg.data.split_mode == "seg11valid"  # SBD train / seg11valid, the paper's sets


def test_a_stage_refuses_to_train_without_its_parent_checkpoint(tmp_path):
    res = run_cli("train", "experiment=shapes_fcn16s", f"paths.data_dir={tmp_path}", f"hydra.run.dir={tmp_path}/r",
                  cwd=tmp_path)
    assert res.returncode == 1 and "stage after 'shapes_fcn32s'" in res.stderr and "segframe.reproduce" in res.stderr


# a tiny shapes run like helpers.config.TINY's, as an experiment file: reproduce trains experiments
TINY_EXPERIMENT = """# @package _global_
{parent}defaults:
  - override /data: shapes
  - override /model: {model}
  - override /optimizer: adamw
  - override /logger: none
model: {{backbone: resnet18, pretrained: false}}
data: {{crop_size: 48, shard_size: 8, source: {{num_train: 16, num_val: 6, size: 48}}}}
datamodule: {{batch_size: 4, eval_batch_size: 4, num_workers: 0}}
optimizer: {{lr: 0.003}}
trainer: {{max_epochs: 1}}
report: {{num_images: 0}}
reference:
  recipe: tiny {model}
  data: tiny shapes
  source: test
  seeds: [0]
  mean: {{miou: {miou}}}
  tolerance: {{miou: {tol}}}
"""


def _experiments(tmp_path: Path) -> Path:
    folder = tmp_path / "conf" / "experiment"
    folder.mkdir(parents=True)
    (folder / "tiny32.yaml").write_text(TINY_EXPERIMENT.format(parent="", model="fcn32s", miou=50.0, tol=50.0))
    (folder / "tiny16.yaml").write_text(TINY_EXPERIMENT.format(parent="parent_experiment: tiny32\n", model="fcn16s",
                                                                miou=50.0, tol=50.0))
    (folder / "tiny_miss.yaml").write_text(TINY_EXPERIMENT.format(parent="", model="fcn32s", miou=99.9, tol=0.01))
    return folder


@pytest.mark.slow  # four CLI runs, two of them training a staged chain (~55 s): CI runs it with the slow set
def test_reproduce_trains_the_chain_records_and_judges(tmp_path):
    folder = _experiments(tmp_path)
    env = {"SEGFRAME_EXPERIMENTS": str(folder)}
    common = [f"out={tmp_path / 'runs'}", f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
              f"paths.data_dir={tmp_path / 'data'}"]
    res = run_cli("reproduce", "experiment=tiny16", *common, cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "stage tiny32 has no finished run here yet; training it first" in res.stdout
    assert "run 1/1 (tiny16, seed 0)" in res.stdout  # each run announced with its place (and the time left)
    parent_ckpt = next((tmp_path / "runs" / "tiny32" / "seed0" / "checkpoints").glob("best-*.ckpt"))
    config = OmegaConf.load(tmp_path / "runs" / "tiny16" / "seed0" / "config.yaml")
    assert config.model.init_from == str(parent_ckpt)  # the 16s stage started from the 32s weights
    result = json.loads((folder / "results" / "tiny16.json").read_text())
    assert result["seeds"] == [0] and result["metrics"]["miou"]["within"] is True
    assert result["runs"][0]["ok"] and result["machine"]["cpus"] >= 1
    assert result["runs"][0]["speed_knobs"]["precision"] in ("32-true", "bf16-mixed")  # what each seed trained in
    assert "miou" in res.stdout and "reported" in res.stdout
    assert result["runs"][0]["init_from"] == str(parent_ckpt)
    # a second run reuses the finished stage instead of retraining it; other overrides do not
    again = run_cli("reproduce", "experiment=tiny16", *common, cwd=tmp_path, env=env)
    assert again.returncode == 0 and "training it first" not in again.stdout
    other = run_cli("reproduce", "experiment=tiny16", *common, "optimizer.lr=0.001", cwd=tmp_path, env=env)
    assert other.returncode == 0 and "stage tiny32 has no finished run here yet" in other.stdout
    assert "not recording" in other.stdout  # a changed recipe stays out of the results
    assert len(list((tmp_path / "runs" / "tiny32" / "seed0" / "checkpoints").glob("best-*.ckpt"))) == 1  # fresh dir
    # a stage given model.init_from starts from it: no parent run (the reference's FCN-16s from its released 32s)
    given = run_cli("reproduce", "experiment=tiny16", *common, f"model.init_from={parent_ckpt}", cwd=tmp_path, env=env)
    assert given.returncode == 0 and "starting from the given model.init_from, not from a tiny32 run" in given.stdout
    assert "training it first" not in given.stdout and "not recording" in given.stdout
    bad = run_cli("reproduce", "experiment=tiny16", "seeds=zero", *common, cwd=tmp_path, env=env)
    assert bad.returncode == 2 and "seeds must be integers" in bad.stderr
    miss = run_cli("reproduce", "experiment=tiny_miss", *common, cwd=tmp_path, env=env)
    assert miss.returncode == 1 and "MISS" in miss.stdout and "outside the tolerance: ['miou']" in miss.stderr
    assert json.loads((folder / "results" / "tiny_miss.json").read_text())["metrics"]["miou"]["within"] is False
    unknown = run_cli("reproduce", "experiment=nope", cwd=tmp_path, env=env)
    assert unknown.returncode == 2 and "tiny16" in unknown.stderr


def test_results_table_rows(tmp_path):
    from segframe.results import row

    experiment = OmegaConf.create({"reference": {"recipe": "r", "data": "d", "source": "s", "mean": {"miou": 60.0},
                                                 "tolerance": {"miou": 1.0}, "not_reproduced": "needs a GPU"}})
    assert "not reproduced (needs a GPU)" in row("x", experiment, None)
    runs = [{"ok": True, "miou": 0.612, "mean_acc": 0.7, "pixel_acc": 0.9, "fwiou": 0.8}]
    result = {"runs": runs, "wall_s": [100.0], "machine": {"device": "cpu"}, "date": "2026-11-24"}
    line = row("x", experiment, result)
    assert "61.20" in line and "+1.20" in line and "OUTSIDE tolerance" in line
    experiment.reference.tolerance.miou = 2.0  # judged against the reference as it stands now
    assert "within tolerance" in row("x", experiment, result)


def test_a_second_reference_is_shown_and_not_judged():
    from segframe.experiments.tables import comparison_text
    from segframe.experiments.library import compare, second_references
    from segframe.results import row

    experiment = OmegaConf.create({"reference": {
        "recipe": "r", "data": "d", "source": "the paper", "mean": {"miou": 60.0}, "tolerance": {"miou": 2.0},
        "also": [{"name": "pytorch-fcn", "source": "its README", "mean": {"miou": 63.0}}]}})
    assert "; pytorch-fcn: miou 63.00 | the paper; pytorch-fcn: its README |" in row("x", experiment, None)
    runs = [{"ok": True, "miou": 0.615, "mean_acc": 0.7, "pixel_acc": 0.9, "fwiou": 0.8}]
    result = {"runs": runs, "wall_s": [10.0], "machine": {"device": "cpu"}, "date": "2026-11-30"}
    line = row("x", experiment, result)
    # judged against the paper only: +1.50 is within its ±2.0, although 1.50 below the second reference
    assert "| +1.50 (pytorch-fcn: -1.50) | within tolerance (miou ±2.0) |" in line
    rows = compare(experiment.reference, runs)
    (also,) = second_references(experiment.reference, rows)
    assert also == {"name": "pytorch-fcn", "source": "its README", "mean": {"miou": 63.0}, "diff": {"miou": -1.5}}
    text = comparison_text("x", rows, [also])
    assert "second reference, not judged: pytorch-fcn: miou 63.00 (diff -1.50); its README" in text
    assert second_references(OmegaConf.create({"mean": {"miou": 1.0}}), rows) == []


def test_comparison_table_ranks_families_by_mean_miou(tmp_path):
    from segframe.results import comparison_table

    def experiment(name: str, model: str, runs: list[dict] | None) -> None:
        (tmp_path / f"{name}.yaml").write_text(f"comparison: {{model: '{model}', budget_s: 150}}\n")
        if runs is not None:
            (tmp_path / "results").mkdir(exist_ok=True)
            (tmp_path / "results" / f"{name}.json").write_text(json.dumps({"runs": runs}))

    size = {"model_parameters": 11_300_000, "model_gflops": 0.67, "model_gflops_at": [96, 96], "steps": 518,
            "fit_seconds": 150.0, "train_images_per_s": 55.0, "wall_s": 180.0}
    experiment("a", "FCN-8s", [{"ok": True, "miou": 0.70, "mdice": 0.80, **size},
                               {"ok": True, "miou": 0.74, "mdice": 0.84, **size}])
    experiment("b", "U-Net", [{"ok": True, "miou": 0.50, "mdice": 0.60, **size}, {"ok": False}])
    experiment("c", "FPN", None)
    (tmp_path / "d.yaml").write_text("reference: null\n")  # not in the comparison
    lines = comparison_table(tmp_path).splitlines()
    assert len(lines) == 2 + 3 and lines[2].startswith("| `a` | FCN-8s | 11.30M | 0.67 (96x96) | 55.00 | 518 | 150 |")
    assert "**72.00** (70.00, 74.00) | 82.00 | 180 s |" in lines[2]
    assert lines[3].startswith("| `b` | U-Net") and "**50.00** (50.00)" in lines[3]  # the failed run is left out
    assert lines[4].startswith("| `c` | FPN") and "not run yet" in lines[4]


def test_results_tables_in_the_docs_and_readme_are_generated_from_the_files():
    res = run_cli("results", "--check", cwd=REPO)
    assert res.returncode == 0, res.stderr
    for page in ("docs/reproducing.md", "README.md"):  # the full table, and the README's short one
        assert all(f"`{p.stem}`" in (REPO / page).read_text() for p in EXPERIMENTS_DIR.glob("*.yaml")), page


@pytest.mark.slow  # a real VGG16 trained twice on the CPU (~70 s on 2 idle cores): CI runs it with the slow set
def test_voc_aug_chain_runs_end_to_end_on_a_tiny_voc_tree(tmp_path):
    """The seed's VOC rows as commands: convert a tiny VOC + SBD tree, then reproduce FCN-16s,
    which trains the FCN-32s stage first (VGG16 without ImageNet weights: nothing to download)."""
    from helpers.datasets import BT, BV, PT, PV, make_sbd, make_voc, voc_image

    voc_root = make_voc(tmp_path / "raw", PT, PV)
    sbd_root = make_sbd(tmp_path / "raw", BT, BV)
    for image_id in (set(BT) | set(BV)) - set(PT) - set(PV):
        voc_image(voc_root / "JPEGImages" / f"{image_id}.jpg", 3)
    data = [f"data.voc_root={voc_root}", f"data.sbd_root={sbd_root}", f"paths.data_dir={tmp_path / 'data'}"]
    assert run_cli("convert", "data=voc_aug", *data, cwd=tmp_path).returncode == 0
    res = run_cli("reproduce", "experiment=fcn16s_voc_aug", f"out={tmp_path / 'runs'}", *data,
                  "model.pretrained=false", "data.crop_size=64", "trainer.max_epochs=1", "datamodule.num_workers=0",
                  "report.num_images=0", cwd=tmp_path)
    # a 1-epoch run is far from 63.52 mIoU: the verdict is a miss, and nothing is recorded
    assert res.returncode == 1 and "outside the tolerance: ['miou']" in res.stderr, res.stdout[-3000:]
    assert "stage fcn32s_voc_aug has no finished run here yet" in res.stdout and "not recording" in res.stdout
    metrics = json.loads((tmp_path / "runs" / "fcn16s_voc_aug" / "seed0" / "metrics.json").read_text())
    assert metrics["dataset"] == "voc_aug" and metrics["num_samples"] == 2  # mode 2 val = PV minus BT
    config = OmegaConf.load(tmp_path / "runs" / "fcn16s_voc_aug" / "seed0" / "config.yaml")
    assert config.model.stride == 16 and config.optimizer.lr == 1e-8 and "fcn32s_voc_aug" in config.model.init_from
    assert not (EXPERIMENTS_DIR / "results" / "fcn16s_voc_aug.json").exists()
