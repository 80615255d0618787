"""Sampling settings validated once, their click options generated from the models (issue 28 item 3)."""

from __future__ import annotations

import json

import click
import pytest

from cbdm_cli.main import cli
from cbdm_cli.sampling_options import FLAGS, JOB_FIELDS, SAMPLER_FIELDS, flag_of
from cbdm_core.sampling.settings import SampleJob, SamplerSettings, SamplingSettings

from .helpers import cli_fails, invoke_cli
from .run_helpers import write_toy_run

# The flags each command took before its options were generated (they must all stay).
OLD_SAMPLE = {"--sampler", "--steps", "--eta", "--guidance", "-w", "--guidance-method", "--guidance-option", "-G",
              "--num", "--num-samples", "-n", "--classes", "--batch-size", "--seed", "--ema", "--no-ema", "--out",
              "-o", "--device", "--var-type", "--spacing", "--sampler-option", "-S", "--clip", "--no-clip",
              "--shard-size", "--format", "--seeds", "--overwrite", "--progress", "--no-progress"}
OLD_SWEEP = {"--grid", "-w", "--axis", "-a", "--dataset", "--data-root", "--num", "--num-samples", "-n", "--classes",
             "--sampler", "--steps", "--eta", "--guidance-method", "--guidance-option", "-G", "--sampler-option",
             "-S", "--clip", "--no-clip", "--seed", "--batch-size", "--metrics", "--select", "--device", "--ema",
             "--no-ema", "--out", "-o"}
OLD_TAU = {"--values", "--preset", "--config", "--set", "--train-steps", "--train-seed", "--dataset", "--data-root",
           "--guidance", "--num", "-n", "--sampler", "--steps", "--eta", "--guidance-method", "-G", "-S", "--clip",
           "--seed", "--batch-size", "--metrics", "--select", "--device", "--out", "-o"}
# Options of `cbdm sample` that are not fields of the settings models.
SAMPLE_EXTRAS = {"--device", "--var-type", "--spacing", "--shard-size", "--format", "--seeds", "--overwrite",
                 "--progress"}


def _command(*path: str) -> click.Command:
    cmd, ctx = cli, click.Context(cli)
    for name in path:
        cmd = cmd.get_command(ctx, name)
    return cmd


def _flags(cmd: click.Command) -> set[str]:
    return {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}


def _expected(fields) -> set[str]:
    """Every option name the models give ``fields`` (long names and the explicit short flags)."""
    out = set()
    for name in fields:
        for flag in FLAGS.get(name, (flag_of(name),)):
            out.update(flag.split("/"))
    return out


def test_sample_options_come_from_the_models_and_keep_every_old_flag():
    flags = _flags(_command("sample"))
    assert OLD_SAMPLE <= flags, OLD_SAMPLE - flags
    offered = [f for f in SAMPLER_FIELDS + JOB_FIELDS if f != "per_class"]  # no --per-class (grid rows), as before
    assert _expected(offered) | SAMPLE_EXTRAS <= flags
    helps = {p.name: p.help for p in _command("sample").params}
    assert helps["batch_size"] == SampleJob.model_fields["batch_size"].description  # help from the field


def test_sweep_options_keep_every_old_flag_and_gain_the_missing_ones():
    default = _command("sweep", "__default__")  # `cbdm sweep RUN ...` (the group's default command)
    assert OLD_SWEEP <= _flags(default), OLD_SWEEP - _flags(default)
    assert OLD_TAU <= _flags(_command("sweep", "tau"))
    assert OLD_TAU - {"--values"} <= _flags(_command("sweep", "option"))
    sampler_flags = _expected(f for f in SAMPLER_FIELDS if f != "guidance")  # w is --grid / --guidance there
    assert sampler_flags <= _flags(default) and sampler_flags <= _flags(_command("sweep", "tau"))


def test_the_models_refuse_bad_numbers_once():
    for bad in ({"steps": 0}, {"eta": float("nan")}, {"guidance": -1.0}, {"guidance": 1e4}):
        with pytest.raises(ValueError):
            SamplerSettings(**bad)
    for bad in ({"num": 0}, {"batch_size": 0}, {"seed": -1}):
        with pytest.raises(ValueError):
            SampleJob(**bad)
    s = SamplingSettings(steps=7, num=5)
    assert list(s.model_dump())[:len(SamplerSettings.model_fields)] == list(SamplerSettings.model_fields)  # old order
    assert s.sampler_settings().steps == 7 and s.job().num == 5
    with pytest.raises(ValueError):
        s.with_guidance(-0.5)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    return write_toy_run(tmp_path_factory.mktemp("toy") / "run")


@pytest.mark.parametrize("args, match", [
    (("--steps", "-3"), "--steps must be positive, got -3"),
    (("--batch-size", "0"), "--batch-size must be positive, got 0"),
    (("--guidance-method", "nope"), "unknown guidance 'nope'"),
])
def test_bad_values_are_one_line_from_every_command(toy_run, tmp_path, args, match):
    cli_fails("sample", toy_run, "--out", tmp_path / "s", "--no-progress", *args, match=match)
    cli_fails("sweep", toy_run, "--grid", "0", "--num", "4", "--out", tmp_path / "w", *args, match=match)
    cli_fails("sweep", "tau", "--values", "0", "--out", tmp_path / "t", *args, match=match)
    assert not (tmp_path / "s").exists() and not (tmp_path / "w").exists() and not (tmp_path / "t").exists()


# The manifest settings of a folder sampled before the split (keys and values as written then).
OLD_SETTINGS_KEYS = {"checkpoint", "step", "ema", "sampler", "steps", "eta", "guidance", "clip_denoised",
                     "sampler_options", "seed", "num", "counts_per_class", "labels_sha256", "shard_size",
                     "image_shape", "weights_sha256"}


def test_a_manifest_written_before_the_change_still_resumes(toy_run, tmp_path):
    out = tmp_path / "s"
    args = ("sample", toy_run, "--out", out, "--num", "6", "--shard-size", "3", "--steps", "2", "--no-progress",
            "--device", "cpu")
    assert invoke_cli(*args).exit_code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    settings = manifest["settings"]
    assert set(settings) == OLD_SETTINGS_KEYS
    assert (settings["sampler"], settings["steps"], settings["eta"], settings["guidance"]) == ("ddim", 2, 0.0, 0.0)
    # As the old code wrote it: the same keys in the old order, and one shard still to make.
    old_order = ["checkpoint", "step", "ema", "sampler", "steps", "eta", "guidance", "clip_denoised",
                 "sampler_options", "seed", "num", "counts_per_class", "labels_sha256", "shard_size", "image_shape",
                 "weights_sha256"]
    manifest["settings"] = {k: settings[k] for k in old_order}
    manifest["complete"] = False
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / "shard-00001.npz").unlink()
    res = invoke_cli(*args)
    assert res.exit_code == 0, res.output
    assert "1 written, 1 kept" in res.output
    assert json.loads((out / "manifest.json").read_text())["complete"] is True
    assert SamplerSettings.from_manifest(settings).steps == 2


def test_every_guidance_strength_is_bounded_by_the_model(toy_run, tmp_path):
    cli_fails("sample", toy_run, "--out", tmp_path / "s", "-w", "5000", match="--guidance must be <= 1000")
    cli_fails("sweep", toy_run, "--grid", "0,5000", "--out", tmp_path / "w", match="--grid must be <= 1000")
    assert not (tmp_path / "s").exists() and not (tmp_path / "w").exists()
