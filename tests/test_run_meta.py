"""RunMeta: the typed run metadata of checkpoints (old files load, same JSON written, one-line refusals)."""

import dataclasses
import json

import pytest
import torch

from cbdm_core import load_run
from cbdm_core.build import build_model
from cbdm_core.checkpoint import Checkpoint, RunMeta, load_checkpoint, read_metadata, save_checkpoint
from cbdm_core.config import TrainConfig
from cbdm_core.errors import CheckpointError
from cbdm_core.tensor_io import load_tensors, save_tensors
from tests.helpers import cli_fails
from tests.run_helpers import TOY_META, TOY_OPTS, write_toy_run


def _save_run(root, meta: dict):
    cfg = TrainConfig.model_validate({"model": {"options": TOY_OPTS}, "diffusion": {"T": 50}})
    sd = build_model(cfg, image_size=8, channels=1, num_classes=3).state_dict()
    path = root / "checkpoints" / "ckpt-00000000.safetensors"
    save_checkpoint(path, Checkpoint(step=0, config=cfg.model_dump(mode="json"), model=sd,
                                     ema={k: v.clone() for k, v in sd.items()}, meta=meta))
    return path


def test_an_old_meta_without_the_optional_keys_loads_and_is_written_back_as_given(tmp_path):
    old = {"image_size": 8, "channels": 1, "num_classes": 3}  # before cond_dim, counts, names, plugins
    path = _save_run(tmp_path / "run", old)
    assert read_metadata(path)["meta"] == json.dumps(old)  # the keys given, in their order, nothing added
    run = load_run(tmp_path / "run")
    assert (run.meta.image_size, run.meta.channels, run.meta.num_classes) == (8, 1, 3)
    assert run.meta.cond_dim == 0 and run.meta.class_counts is None and run.meta.plugins is None
    assert run.model(torch.zeros(1, 1, 8, 8), torch.tensor([3]), torch.tensor([0])).shape == (1, 1, 8, 8)
    by_hand = dataclasses.replace(run, meta=dict(old))  # a LoadedRun made by hand with a plain dict
    assert isinstance(by_hand.meta, RunMeta) and by_hand.meta.to_dict() == old


def test_the_model_round_trips_with_unknown_keys_and_their_order(tmp_path):
    given = {"dataset": "toy", "imported_from": "ckpt.pt", **TOY_META, "speed": {"amp": "off", "cpu_bf16": None},
             "log_window": {"sums": {"loss": 1.5}, "count": 2}}
    meta = RunMeta.parse(given, "test")
    assert meta.to_dict() == given and list(meta.to_dict()) == list(given)
    assert meta.imported_from == "ckpt.pt" and meta.class_names == ["a", "b", "c"]
    assert RunMeta.parse(meta.to_dict(), "again").to_dict() == given
    path = _save_run(tmp_path / "run", given)
    assert read_metadata(path)["meta"] == json.dumps(given)
    back = load_checkpoint(path).meta
    assert back == meta and list(back.to_dict()) == list(given)
    later = back.updated(log_window=None)
    assert list(later.to_dict()) == list(given) and later.log_window is None and back.log_window is not None
    with pytest.warns(DeprecationWarning):
        assert back["dataset"] == "toy" and back.get("missing", 7) == 7


@pytest.mark.parametrize("key,value", [("image_size", "8"), ("cond_dim", True), ("class_counts", [9, "3", 1]),
                                       ("class_names", ["a", 2, "c"]), ("plugins", ["unet"])])
def test_a_wrong_type_is_one_error_naming_the_key(key, value):
    with pytest.raises(CheckpointError, match=rf"^ckpt: metadata {key} = .* is not "):
        RunMeta.parse({**TOY_META, key: value}, "ckpt")


def test_cbdm_sample_on_a_tampered_meta_is_one_line(tmp_path):
    run = write_toy_run(tmp_path / "run")
    path = run / "checkpoints" / "ckpt-00000000.safetensors"
    tensors, metadata = load_tensors(path)
    metadata["meta"] = json.dumps({**json.loads(metadata["meta"]), "image_size": "8"})
    save_tensors(path, tensors, metadata)  # a consistent file (hash rewritten) whose meta has a string size
    line = cli_fails("sample", run, "--out", tmp_path / "s", "--steps", "2", "--num", "3", "--format", "png",
                     "--no-progress", match="metadata image_size = '8' is not an integer")
    assert str(path) in line and not (tmp_path / "s").exists()


def test_a_missing_plugin_is_named_from_the_stored_plugins(tmp_path):
    from cbdm_core.build import explain_missing_plugin
    from cbdm_core.checkpoint import read_run_meta
    from cbdm_core.errors import UnknownComponentError

    exc = UnknownComponentError("unknown method 'tail'", "method", "tail")
    path = _save_run(tmp_path / "run", {**TOY_META, "plugins": {"method:tail": "cbdm-tail 0.2"}})
    assert "(pip install cbdm-tail)" in str(explain_missing_plugin(exc, read_run_meta(path)))
    assert explain_missing_plugin(exc, None) is exc and explain_missing_plugin(exc, RunMeta()) is exc
    (tmp_path / "bad.safetensors").write_bytes(b"not a checkpoint")
    assert read_run_meta(tmp_path / "bad.safetensors") == RunMeta()  # unreadable: nothing to add
