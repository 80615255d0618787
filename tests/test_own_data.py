"""Own folder data: ``data.classes``, ``data.class_order`` and backbone lr advice (issue 17, item 4)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cbdm_core.build import dataset_options as cfg_dataset_options
from cbdm_core.config import parse_train_config
from cbdm_core.data import dataset_options, load_dataset
from cbdm_core.errors import CbdmError
from .helpers import write_folder


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return write_folder(tmp_path / "data", {"ant": 2, "bee": 6, "cat": 4})


def test_classes_choose_and_order(folder):
    ds = load_dataset("folder", dataset_options(root=folder, classes=["cat", "ant"]))
    assert ds.class_names == ["cat", "ant"] and ds.class_counts.tolist() == [4, 2]


def test_class_order_count_ranks_head_to_tail(folder):
    ds = load_dataset("folder", dataset_options(root=folder, class_order="count"))
    assert ds.class_names == ["bee", "cat", "ant"] and ds.class_counts.tolist() == [6, 4, 2]
    lt = load_dataset("folder", dataset_options(root=folder, class_order="count", imb_factor=0.5))
    assert lt.class_counts.tolist() == [6, 4, 2]  # bee head: 6; cat int(6 * 0.5**0.5) = 4; ant keeps its 2


def test_class_order_count_uses_train_counts_for_test(tmp_path):
    write_folder(tmp_path / "d" / "train", {"a": 1, "b": 3})
    write_folder(tmp_path / "d" / "test", {"a": 3, "b": 1})
    test = load_dataset("folder", dataset_options(root=tmp_path / "d", split="test", class_order="count"))
    assert test.class_names == ["b", "a"]  # the train split's order: labels mean the same


def test_config_accepts_classes(folder):
    cfg = parse_train_config({"data": {"dataset": "folder", "root": str(folder), "classes": ["bee", "ant"],
                                       "class_order": "count"}}, "test")
    opts = cfg_dataset_options(cfg)
    assert opts.classes == ["bee", "ant"] and opts.class_order == "count"


def test_classes_rejected_for_builtin_and_missing_folder(folder):
    with pytest.raises(CbdmError, match="folder dataset only"):
        load_dataset("digits", dataset_options(classes=["0"]))
    with pytest.raises(CbdmError, match="no class folder 'dog'"):
        load_dataset("folder", dataset_options(root=folder, classes=["dog"]))


def test_backbone_switch_moves_lr(monkeypatch):
    import click

    from cbdm_cli.train_cmd import build_config

    notes: list[str] = []
    monkeypatch.setattr(click, "echo", lambda msg="", **kw: notes.append(str(msg)))
    cfg = build_config(None, "quickstart", {"backbone": "vit"}, ())
    chosen = build_config(None, "quickstart", {"backbone": "vit", "lr": 1e-3}, ())
    assert cfg.optim.lr == pytest.approx(2e-4) and chosen.optim.lr == pytest.approx(1e-3)
    assert any("lr 0.002 -> 0.0002" in n for n in notes)
    notes.clear()
    build_config(None, "quickstart", {"backbone": "edm"}, ())
    assert any("keeps the configured lr 0.002" in n for n in notes)
