"""An exported graph and its sidecar as one pair (issue 27): every message that says how to export
again names the checkpoint the sidecar records, with its options, quoted to paste as it is (and the
command runs); the sidecar is renamed into place last and records the graph's size and sha256, so
that an export stopped between the two renames, or a graph replaced under its sidecar, is refused on
load, naming both files and the command; an export over an existing pair is safe."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
from helpers.checkpoints import small_fcn_checkpoint
from helpers.cli import REPO

from segframe import load_model
from segframe.core.errors import ConfigError, ExportError, MissingFileError
from segframe.deploy import exporting
from segframe.deploy.exported import load_exported
from segframe.deploy.sidecar import export_command, graph_differs, partial_sidecar_path, sidecar_path

pytest.importorskip("onnxruntime")

OPTS = {"outputs": "logits", "input": "float", "opset": None, "exporter": "torchscript", "tolerance": 1e-4,
        "min_agreement": 0.9999}
A_OPTS = {**OPTS, "outputs": "labels", "input": "uint8", "tolerance": 1e-3}
A_WORDS = "export.outputs=labels export.input=uint8 export.exporter=torchscript export.tolerance=0.001"


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """In a folder whose name needs quoting (a space, a comma): checkpoints a and b, a's labels graph
    for uint8 input (exported with a tolerance of its own) and b's logits graph."""
    folder = tmp_path_factory.mktemp("pair") / "runs 1, best"
    folder.mkdir()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {"a": small_fcn_checkpoint(folder / "a.ckpt", 0), "b": small_fcn_checkpoint(folder / "b.ckpt", 1)}
    out["a.onnx"], out["b.onnx"] = folder / "a.onnx", folder / "b.onnx"
    exporting.export_checkpoint(str(out["a"]), "onnx", out["a.onnx"], A_OPTS)
    exporting.export_checkpoint(str(out["b"]), "onnx", out["b.onnx"], OPTS)
    torch.set_num_threads(threads)
    return out


def _copy(graph: Path, target: Path, sidecar: bool = True) -> Path:
    shutil.copy(graph, target)
    if sidecar:
        shutil.copy(sidecar_path(graph), sidecar_path(target))
    return target


def _side(graph: Path) -> dict:
    return json.loads(sidecar_path(graph).read_text())


def _edit(target: Path, **changes) -> None:
    side = _side(target)
    side.update(changes)
    sidecar_path(target).write_text(json.dumps({k: v for k, v in side.items() if v is not None}))


# --------------------------------------------------------------------------- 1: the command names the checkpoint

def _message(target: Path, made, case: str) -> str:
    """The message of one path that prints an export command, for a's pair copied to `target`."""
    if case == "options a labels graph cannot honour":
        with pytest.raises(ConfigError) as caught:
            load_model(target, device="cpu", flip=True)
        return str(caught.value)
    if case == "graph missing beside its sidecar":
        target.unlink()
        with pytest.raises(MissingFileError) as caught:
            load_exported(target)
        with pytest.raises(MissingFileError) as by_api:
            load_model(target, device="cpu")
        assert str(by_api.value) == str(caught.value)
        return str(caught.value)
    if case == "truncated graph":
        target.write_bytes(target.read_bytes()[:5000])
    elif case == "another graph":
        shutil.copy(made["b.onnx"], target)
    else:
        _edit(target, **{"format_version": {"format_version": 99}, "lacks a key": {"classes": None},
                         "bad value": {"num_classes": 99}}[case])
    with pytest.raises(ExportError) as caught:
        load_exported(target)
    return str(caught.value)


@pytest.mark.parametrize("case", ["options a labels graph cannot honour", "graph missing beside its sidecar",
                                  "truncated graph", "another graph", "format_version", "lacks a key",
                                  "bad value"])
def test_every_message_names_the_checkpoint_its_sidecar_records(made, tmp_path, case):
    target = _copy(made["a.onnx"], tmp_path / "model.onnx")
    message = _message(target, made, case)
    assert f"python -m segframe.export \"ckpt='{made['a']}'\" format=onnx output={target}" in message, message
    assert "CHECKPOINT" not in message
    if case == "options a labels graph cannot honour":  # the command that exports what was asked for
        assert message.endswith("export.input=uint8 export.exporter=torchscript export.tolerance=0.001")
    else:
        assert message.endswith(A_WORDS), message
    if case == "truncated graph":
        assert f"it is 5000 bytes, its sidecar recorded {made['a.onnx'].stat().st_size}" in message


def test_an_old_sidecars_warning_names_the_checkpoint(made, tmp_path, caplog):
    target = _copy(made["b.onnx"], tmp_path / "model.onnx")
    _edit(target, graph_sha256=None, graph_bytes=None)  # as segframe wrote sidecars before the hash
    with caplog.at_level(logging.WARNING, logger="segframe.deploy.exported"):
        load_exported(target)
    assert "records no graph_sha256" in caplog.text
    assert f"python -m segframe.export \"ckpt='{made['b']}'\" format=onnx output={target} " \
           f"export.exporter=torchscript" in caplog.text


def test_without_a_sidecar_the_command_says_where_the_checkpoint_is(made, tmp_path):
    target = _copy(made["b.onnx"], tmp_path / "model.onnx", sidecar=False)
    with pytest.raises(ExportError) as caught:
        load_exported(target)
    message = str(caught.value)
    assert f"{target} has no sidecar {target}.json" in message
    assert f"python -m segframe.export ckpt=CHECKPOINT format=onnx output={target} (CHECKPOINT: the .ckpt " \
           "it was exported from; `python -m segframe.train` writes outputs/DATE/TIME/checkpoints/evaluated.ckpt" \
           in message
    for broken in ("{not json", json.dumps({**_side(made["a.onnx"]), "format": "other"})):  # nothing to trust
        sidecar_path(target).write_text(broken)
        with pytest.raises(ExportError, match=r"ckpt=CHECKPOINT .*\(CHECKPOINT: the \.ckpt it was exported from"):
            load_exported(target)
    sidecar_path(target).unlink()
    shutil.copy(made["b"], tmp_path / "model.ckpt")  # where export puts the graph of model.ckpt by default
    with pytest.raises(ExportError) as caught:
        load_exported(target)
    assert f"ckpt={tmp_path / 'model.ckpt'} format=onnx output={target} (the checkpoint of that name " \
           "beside it" in str(caught.value)
    side = {**_side(made["b.onnx"]), "checkpoint": str(tmp_path / "moved.ckpt")}
    assert export_command(target, side).endswith(f"(the sidecar's checkpoint, which is no longer at "
                                                 f"{tmp_path / 'moved.ckpt'}: set ckpt= to where it is now)")


@pytest.mark.slow  # an export in a subprocess: ~20 s on a busy 2-core machine
def test_the_printed_command_runs_as_printed(made, tmp_path):
    """Pasted into a shell, the command of a refusal makes the pair again: the folder's space and
    comma quoted for the shell and for Hydra, a's options kept."""
    import subprocess

    target = _copy(made["a.onnx"], made["a.onnx"].parent / "copy.onnx")
    shutil.copy(made["b.onnx"], target)  # b's graph under a's sidecar
    with pytest.raises(ExportError, match="do not belong together") as caught:
        load_exported(target)
    command = str(caught.value).split("export the pair again: ", 1)[1]
    res = subprocess.run(["bash", "-c", command], check=False, cwd=REPO, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    model = load_exported(target)
    assert (model.outputs, model.input_dtype) == ("labels", "uint8")
    assert _side(target)["checkpoint"] == str(made["a"]) and _side(target)["parity"]["tolerance"] == 1e-3


# --------------------------------------------------------------------------- 2: the pair written atomically

def _failing_rename(monkeypatch, which: str) -> None:
    """os.replace in exporting raising for the graph's rename or the sidecar's (a crash there)."""
    real = os.replace

    def replace(src, dst):
        if str(dst).endswith(".json") == (which == "sidecar"):
            raise OSError(28, "No space left on device (simulated)")
        return real(src, dst)
    monkeypatch.setattr(exporting.os, "replace", replace)


def test_an_export_that_stops_between_the_renames_leaves_a_graph_that_load_refuses(made, tmp_path, monkeypatch):
    """b exported over a's pair stops after renaming the graph: the new graph beside the old sidecar
    (and the partial one) is refused naming both files and b's command; exporting again mends it."""
    target = _copy(made["a.onnx"], tmp_path / "model.onnx")
    _failing_rename(monkeypatch, "sidecar")
    with pytest.raises(ExportError, match=rf"wrote the graph {target} but not its sidecar {target}\.json .*No space"):
        exporting.export_checkpoint(str(made["b"]), "onnx", target, OPTS)
    monkeypatch.undo()
    assert target.read_bytes() == made["b.onnx"].read_bytes() and _side(target) == _side(made["a.onnx"])
    with pytest.raises(ExportError) as caught:
        load_exported(target)
    message = str(caught.value)
    assert f"{target} and its sidecar {target}.json do not belong together" in message
    assert f"an export to {target} stopped after writing the graph and before its sidecar (the sidecar it was " \
           f"writing is left in {partial_sidecar_path(target)}); export it again: python -m segframe.export " \
           f"\"ckpt='{made['b']}'\" format=onnx output={target} export.exporter=torchscript" in message
    partial_sidecar_path(target).unlink()  # without the partial sidecar: the pair check alone
    with pytest.raises(ExportError, match=r"the graph takes float32 images but the sidecar says input uint8"):
        load_exported(target)
    exporting.export_checkpoint(str(made["b"]), "onnx", target, OPTS)  # over the broken pair
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.json"]
    assert load_exported(target).outputs == "logits" and _side(target)["checkpoint"] == str(made["b"])


def test_a_stop_before_the_graphs_rename_keeps_the_old_pair(made, tmp_path, monkeypatch):
    target = _copy(made["a.onnx"], tmp_path / "model.onnx")
    tmp_graph = _copy(made["b.onnx"], tmp_path / ".model.onnx.partial.onnx", sidecar=False)
    _failing_rename(monkeypatch, "graph")
    with pytest.raises(OSError, match="simulated"):
        exporting.write_pair(tmp_graph, target, _side(made["b.onnx"]))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".model.onnx.partial.onnx", "model.onnx", "model.onnx.json"]
    assert load_exported(target).outputs == "labels"  # a's pair, whole


def test_a_first_export_that_stops_between_the_renames_is_refused_for_want_of_its_sidecar(made, tmp_path,
                                                                                          monkeypatch):
    target = tmp_path / "model.onnx"
    _failing_rename(monkeypatch, "sidecar")
    with pytest.raises(ExportError, match="wrote the graph"):
        exporting.write_pair(_copy(made["b.onnx"], tmp_path / "tmp.onnx", sidecar=False), target,
                             _side(made["b.onnx"]))
    monkeypatch.undo()
    with pytest.raises(ExportError, match=rf"{target} has no sidecar {target}\.json: an export to {target} stopped "
                                          rf"after writing the graph.*ckpt='{made['b']}'"):
        load_exported(target)


def test_an_old_sidecar_without_a_hash_goes_before_the_graph_is_replaced(made, tmp_path, monkeypatch):
    """A sidecar from before the hash cannot tell a new graph from its own: a stop between the
    renames leaves the new graph with no sidecar rather than beside that one."""
    target = _copy(made["b.onnx"], tmp_path / "model.onnx")
    _edit(target, graph_sha256=None, graph_bytes=None)
    other = small_fcn_checkpoint(tmp_path / "c.ckpt", 2)  # the same classes and outputs as b: only a hash tells
    side = {**_side(made["b.onnx"]), "checkpoint": str(other)}
    tmp_graph = _copy(made["b.onnx"], tmp_path / "tmp.onnx", sidecar=False)
    _failing_rename(monkeypatch, "sidecar")
    with pytest.raises(ExportError, match="wrote the graph"):
        exporting.write_pair(tmp_graph, target, side)
    monkeypatch.undo()
    assert not sidecar_path(target).exists()
    partial_sidecar_path(target).unlink()  # (as if a crash had lost it too)
    with pytest.raises(ExportError, match=rf"{target} has no sidecar .*ckpt=CHECKPOINT"):
        load_exported(target)


def test_the_graph_is_told_by_its_size_then_its_sha256(made, tmp_path):
    side = _side(made["b.onnx"])
    target = _copy(made["b.onnx"], tmp_path / "model.onnx", sidecar=False)
    assert graph_differs(target, side) is None
    data = bytearray(target.read_bytes())
    target.write_bytes(bytes(data) + b"\0")
    assert graph_differs(target, side) == (f"the graph is {len(data) + 1} bytes but the sidecar was written for a "
                                           f"graph of {len(data)} bytes (an incomplete copy, or another graph)")
    data[len(data) // 2] ^= 1
    target.write_bytes(bytes(data))
    assert graph_differs(target, side).startswith("the graph's sha256 is ")
    assert graph_differs(target, {**side, "graph_sha256": None}) is None  # an old sidecar: checked on the rest


def test_the_command_takes_the_checkpoint_from_a_partial_sidecar_when_no_sidecar_is_left(tmp_path):
    """A stop after an old hash-less sidecar was removed and before the new graph was renamed leaves
    the old graph alone with the `.partial` sidecar of the new one: that still names the checkpoint."""
    graph = tmp_path / "model.onnx"
    graph.write_bytes(b"\x08\x07\x12\x00old graph")
    ckpt = tmp_path / "run" / "best.ckpt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"x")
    partial_sidecar_path(graph).write_text(json.dumps({"format": "segframe-export", "checkpoint": str(ckpt)}))
    command = export_command(graph)
    assert f"ckpt={ckpt}" in command and "CHECKPOINT" not in command
    partial_sidecar_path(graph).write_text(json.dumps({"checkpoint": str(ckpt)}))  # not a segframe sidecar
    assert "ckpt=CHECKPOINT" in export_command(graph)
