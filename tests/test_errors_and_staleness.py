"""One error hierarchy that only the CLI turns into messages, and one answer to "is this
conversion stale?" for convert and train alike."""

from __future__ import annotations

import inspect
import json

import pytest
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from helpers.config import compose as compose_config
from segframe.core import errors
from segframe.core.cli import run, user_error
from segframe.data.manifest import FORMAT, FORMAT_VERSION, MANIFEST
from segframe.data.preparation import check_current, conversion_diff, ensure_converted
from segframe.core.errors import ConfigError, RemoteError, SampleError, SegframeError


def test_every_error_type_is_a_segframe_error_and_keeps_its_builtin_base():
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass) if c.__module__ == errors.__name__]
    assert len(classes) >= 12 and all(issubclass(c, SegframeError) for c in classes)
    assert issubclass(ConfigError, ValueError) and issubclass(RemoteError, OSError)
    assert str(RemoteError("HTTP 404 for http://x/a.tar")) == "HTTP 404 for http://x/a.tar"


def test_only_user_errors_lose_their_traceback():
    assert user_error(ConfigError("model.stride=7")) and user_error(SampleError("bad mask"))
    assert not user_error(ValueError("a bug")) and not user_error(FileNotFoundError("a bug"))
    wrapped = InstantiationException("Error in call to target 'segframe.models.fcn.FCN'")
    wrapped.__cause__ = ConfigError("stride must be one of (8, 16, 32)")
    assert user_error(wrapped)
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue

    with pytest.raises(MissingMandatoryValue) as missing:  # data=folder without data.classes, say
        OmegaConf.to_container(OmegaConf.create({"classes": "???"}), resolve=True, throw_on_missing=True)
    assert user_error(missing.value)
    assert not user_error(KeyError("classes")) and not user_error(ZeroDivisionError())


def test_run_prints_a_user_error_and_reraises_a_bug(capsys):
    def config_problem():
        raise ConfigError("model.stride=7: stride must be one of (8, 16, 32)")

    def bug():
        raise ValueError("an internal check")

    with pytest.raises(SystemExit) as exit_info:
        run(config_problem)
    assert exit_info.value.code == 1
    assert "error: model.stride=7: stride must be one of (8, 16, 32)" in capsys.readouterr().err
    with pytest.raises(ValueError, match="an internal check"):
        run(bug)


def _kvasir(tmp_path, *overrides):
    return compose_config(["data=kvasir_seg", f"data.root={tmp_path / 'raw'}", f"data.shard_dir={tmp_path / 'shards'}",
                           *overrides]).data


def _manifest_of(data):
    """What converting `data` records: its classes and its converter's options."""
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "name": data.name, "classes": list(data.classes),
            "palette": [list(c) for c in data.palette], "ignore_index": 255, "splits": {},
            "source": {"options": json.loads(json.dumps(instantiate(data.source).options())), "fingerprint": {}}}


def test_a_changed_split_dir_is_stale_for_convert_and_refused_by_train(tmp_path):
    """Before: convert ignored option keys ending in `root`, train those ending in `root` or `dir`,
    so a new Kvasir split_dir made convert say "stale" while train trained on the old split."""
    data = _kvasir(tmp_path)
    manifest = _manifest_of(data)
    assert conversion_diff(manifest, data) == []
    # where the raw files live does not change the shards
    assert conversion_diff(manifest, _kvasir(tmp_path, f"data.root={tmp_path / 'moved'}")) == []
    lists = _kvasir(tmp_path, f"data.split_dir={tmp_path / 'lists'}")
    [line] = conversion_diff(manifest, lists, raw_files=True)  # the raw files are absent: not a difference
    assert f"split_dir=None (config: '{tmp_path / 'lists'}')" in line
    with pytest.raises(ConfigError, match=r"split_dir=None .*python -m segframe\.convert data=kvasir_seg overwrite=true"):
        check_current(lists, manifest)
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / MANIFEST).write_text(json.dumps(manifest))
    assert ensure_converted(data)["name"] == "kvasir_seg"
    with pytest.raises(ConfigError, match="split_dir"):
        ensure_converted(lists)  # what train and its DDP ranks call before anything is built


def test_other_classes_are_stale_too(tmp_path):
    data = _kvasir(tmp_path)
    renamed = OmegaConf.merge(data, {"classes": ["background", "lesion"]})
    assert conversion_diff(_manifest_of(data), renamed) == [
        "it has classes ['background', 'polyp'] and the config now says ['background', 'lesion']"]


def test_eval_split_is_one_key_in_train_and_eval():
    assert compose_config(["ckpt=x.ckpt", "split=test"], "eval").eval.split == "test"
    assert compose_config(["ckpt=x.ckpt", "eval.split=test"], "eval").eval.split == "test"
    assert compose_config(["ckpt=x.ckpt"], "eval").eval.split is None  # the dataset's val split
    assert compose_config(["data=shapes"]).eval.split == "val"
