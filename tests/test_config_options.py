"""`cbdm train`'s config-field options come from one table, typed by the config model (issue 28 item 3)."""

from __future__ import annotations

import typing

import click

from cbdm_cli.config_options import RESUMABLE, TRAIN_FIELDS, config_values
from cbdm_cli.train_cmd import build_config_overrides, train
from cbdm_core.config import DataConfig, TrainConfig, parse_train_config


def test_every_table_entry_is_an_option_of_cbdm_train_typed_by_its_field():
    params = {p.name: p for p in train.params}
    for name, spec in TRAIN_FIELDS.items():
        assert name in params, name
        node = TrainConfig()
        for part in spec.path.split("."):  # the path names a real field
            node = getattr(node, part)
    choices = params["resample"].type
    assert isinstance(choices, click.Choice)
    assert list(choices.choices) == list(typing.get_args(DataConfig.model_fields["resample"].annotation))
    assert params["T"].opts == ["--T"] and params["T"].type is click.INT
    assert params["ckpt_every_minutes"].type is click.FLOAT


def test_the_table_sets_the_config_and_only_resumable_fields_on_resume():
    data: dict = {}
    config_values(data, {"T": 7, "lr": 0.01, "steps": 3, "resample": "sqrt"})
    cfg = parse_train_config(data, "configuration")
    assert (cfg.diffusion.T, cfg.optim.lr, cfg.optim.steps, cfg.data.resample) == (7, 0.01, 3, "sqrt")
    assert "steps" in RESUMABLE and "lr" not in RESUMABLE
    assert build_config_overrides({"steps": 9, "keep_last": 2}, ()) == {"optim": {"steps": 9}, "keep_last": 2}
