"""The tiny_config fixture (tests/conftest.py): fresh copies of the CLI tests' tiny config with overrides."""

import yaml

from tests.helpers import TINY


def test_every_call_is_a_fresh_deep_copy(tiny_config):
    a = tiny_config()
    a["optim"]["steps"] = 999
    a["model"]["options"]["ch_mult"].append(4)
    assert tiny_config() == TINY and TINY["optim"]["steps"] != 999 and TINY["model"]["options"]["ch_mult"] == [1, 2]


def test_dotted_keys_set_nested_dicts_merge(tiny_config):
    cfg = tiny_config({"optim.steps": 2, "objective.p_uncond": 0.1}, preview={"steps": 3}, log_every=1)
    assert cfg["optim"] == {**TINY["optim"], "steps": 2} and cfg["objective"] == {"p_uncond": 0.1}
    assert cfg["preview"] == {**TINY["preview"], "steps": 3} and cfg["log_every"] == 1
    replaced = tiny_config({"model.options": {"ch": 4}})  # a dotted key replaces the section
    assert replaced["model"] == {"backbone": "unet", "options": {"ch": 4}}
    # Applied in turn: keywords merge into what the mapping set.
    assert tiny_config({"optim": {"steps": 5}}, optim={"lr": 0.5})["optim"] == {**TINY["optim"], "steps": 5, "lr": 0.5}


def test_write_gives_the_yaml_file(tmp_path, tiny_config):
    path = tiny_config.write(tmp_path, {"optim.steps": 3})
    assert path == tmp_path / "tiny.yaml" and yaml.safe_load(path.read_text()) == tiny_config(optim={"steps": 3})
    assert tiny_config.write(tmp_path / "sub" / "c.yaml").is_file()
