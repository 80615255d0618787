"""CORAL and CM end to end on the CPU: `cbdm train --method coral|cm|t2h+cm` on digits, then
`cbdm sample` and `cbdm eval` with no method flags; `--resume` bit-exact; `--init-from` a DDPM run."""

from __future__ import annotations

import json

import pytest
import torch
import yaml


from .helpers import METHOD_TINY, cli_ok, last_checkpoint, train_run

TERMS = {"coral": {"supcon", "coral_s", "coral"}, "cm": {"cm", "cm_con", "cm_div"},
         "t2h+cm": {"t2h_moved", "cm", "cm_con", "cm_div"}}


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump(METHOD_TINY))
    return path


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    path = tmp_path_factory.mktemp("clf") / "clf.safetensors"
    cli_ok("eval", "train-classifier", "--dataset", "digits", "--epochs", "1", "--out", path, "--device", "cpu")
    return path


def _listed(output: str) -> list[str]:
    """The names after ``re-initialised:`` (the console may wrap the comma-separated list)."""
    tokens = output.split("re-initialised:", 1)[1].split()
    names = []
    for tok in tokens:
        names.append(tok.rstrip(","))
        if not tok.endswith(","):
            break
    return names


@pytest.mark.parametrize("method", ["coral", "cm", "t2h+cm"])
def test_train_sample_eval(method, config, classifier, tmp_path):
    run = tmp_path / "run"
    train_run(config, run, "--method", method)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert [m["name"] for m in saved["objective"]["methods"]] == method.split("+")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert TERMS[method] <= set(records[-1]) and all(torch.isfinite(torch.tensor(r["total"])) for r in records)
    prefix = "coral_head." if method == "coral" else "cm_adapters."
    assert any(k.startswith(prefix) for k in last_checkpoint(run).ema)  # the added module is saved with the run
    assert list((run / "samples").glob("grid-*.png"))  # the training preview ran through for_sampling

    cli_ok("sample", run, "-n", "10", "--steps", "2", "--out", tmp_path / "samples")
    cli_ok("eval", tmp_path / "samples", "--dataset", "digits", "--extractor", "classifier", "--classifier",
           classifier, "--metrics", "fid", "--device", "cpu", "--out", tmp_path / "eval")
    values = json.loads((tmp_path / "eval" / "metrics.json").read_text())["values"]
    assert values["fid"] is not None and values["fid"] >= 0


def test_resume_is_bit_exact(config, tmp_path):
    # One composition carries every added piece: T2H's random draw, CORAL's head, CM's adapters.
    method = "t2h+coral+cm"
    straight, split = tmp_path / "straight", tmp_path / "split"
    train_run(config, straight, "--method", method, "--steps", "4")
    train_run(config, split, "--method", method, "--steps", "2")
    cli_ok("train", "--out", split, "--resume", "--steps", "4", "--no-progress")
    a, b = last_checkpoint(straight), last_checkpoint(split)
    assert a.step == b.step == 4 and a.model.keys() == b.model.keys()
    assert {k.split(".")[0] for k in a.model} >= {"coral_head", "cm_adapters"}
    for k in a.model:
        assert torch.equal(a.model[k], b.model[k]), k
        assert torch.equal(a.ema[k], b.ema[k]), k


def test_init_from_ddpm_reinitialises_only_the_new_modules(config, tmp_path):
    plain = tmp_path / "ddpm"
    train_run(config, plain, "--method", "ddpm", "--steps", "1")
    source = last_checkpoint(plain).ema
    run = tmp_path / "ft"
    res = train_run(config, run, "--method", "coral+cm", "--init-from", plain, "--steps", "1")
    fresh = _listed(res.output)
    added = {k for k in last_checkpoint(run).ema if k.startswith(("coral_head.", "cm_adapters."))}
    assert set(fresh) == added and any(k.startswith("coral_head.") for k in added), res.output
    assert any(k.startswith("cm_adapters.") for k in added)
    assert set(source) == set(last_checkpoint(run).ema) - added


def test_cbdm_methods_lists_coral_and_cm_with_multiline_option_docs():
    rows = {r["name"]: r for r in json.loads(cli_ok("methods", "--json").output)}
    assert rows["coral"]["sweepable"] == ["weight", "tau_sc", "tau_r"] and "coral-lt-diffusion" in rows["coral"]["code"]
    assert rows["cm"]["sweepable"] == ["rho", "w_con", "w_div"] and "ImbDiff-CM" in rows["cm"]["code"]
    cm = {o["name"]: o for o in rows["cm"]["options"]}
    # The docstring entry spans several lines; the listing keeps all of it.
    assert cm["sample_with"]["description"].endswith("``off`` (the network without adapters: an ablation).")
    assert cm["w_div"]["numeric"] and not cm["parts"]["numeric"]
