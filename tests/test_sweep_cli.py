"""``cbdm sweep`` (guidance grid, tau runs) end to end on the embedded digits, plus its pieces."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from cbdm_core.errors import CbdmError
from cbdm_core.experiments.sweeps import SweepPoint, best_point, parse_grid

from .helpers import cli_fails, cli_ok, invoke_cli
from .run_helpers import digits_feature_classifier, write_digits_run as _write_run

TINY_UNET = {"ch": 8, "ch_mult": [1, 2], "attn": [], "num_res_blocks": 1, "dropout": 0.0, "num_groups": 4}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield


def _invoke(*args):
    return invoke_cli("sweep", *args)


def _ok(*args):
    return cli_ok("sweep", *args)


def _fails(*args, match: str):
    return cli_fails("sweep", *args, match=match)


def test_parse_grid():
    grid = parse_grid("0:2:0.2")
    assert len(grid) == 11 and grid[0] == 0 and grid[-1] == 2 and grid[3] == 0.6  # no 0.6000000000000001
    assert parse_grid("1.6, 0,0.8,0.8") == [0, 0.8, 1.6]
    for bad in ("", "a,b", "0:2", "0:2:0", "2:0:0.5", "0:1e9:1e-6"):
        with pytest.raises(CbdmError):
            parse_grid(bad)


def test_best_point_direction_and_ties():
    pts = [SweepPoint(0.0, "a", {"fid": 5.0, "is": 2.0}), SweepPoint(0.5, "b", {"fid": 3.0, "is": 1.0}),
           SweepPoint(1.0, "c", {"fid": 3.0, "is": 4.0}), SweepPoint(1.5, "d", {"fid": None, "is": None})]
    assert best_point(pts, "fid").value == 0.5  # lowest; tie broken towards the smaller setting
    assert best_point(pts, "is").value == 1.0  # highest
    assert best_point(pts, "kid") is None


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sweep")


@pytest.fixture(scope="module")
def classifier(work: Path) -> Path:
    """A quickly trained digits feature classifier (its quality does not matter here)."""
    return digits_feature_classifier(work / "clf.safetensors")


def _eval_args(classifier: Path, work: Path) -> list:
    return ["--extractor", "classifier", "--classifier", classifier, "--cache-dir", work / "cache",
            "--device", "cpu"]


def test_guidance_sweep_end_to_end(classifier, work):
    run = _write_run(work / "run", p_uncond=0.1)
    out = work / "gsweep"
    args = [run, "--grid", "0,1,2", "--num", "30", "--steps", "3", "--batch-size", "16",
            "--metrics", "fid,is,precision_recall", "--out", out, *_eval_args(classifier, work)]
    res = _ok(*args)
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["parameter"] == "guidance" and [p["value"] for p in doc["points"]] == [0, 1, 2]
    fids = [p["metrics"]["fid"] for p in doc["points"]]
    assert all(f is not None and f >= 0 for f in fids)
    assert len(set(fids)) == 3  # guidance changes the samples
    best = min(doc["points"], key=lambda p: p["metrics"]["fid"])
    assert doc["best"]["value"] == best["value"] and f"best guidance: {best['value']:g}" in res.output
    assert doc["settings"]["dataset"] == "digits-lt"  # taken from the run
    assert (out / "sweep.png").stat().st_size > 1000
    for p in doc["points"]:  # each point is a complete `cbdm sample` folder with its own report
        folder = Path(p["samples"])
        assert json.loads((folder / "manifest.json").read_text())["settings"]["guidance"] == p["value"]
        assert json.loads((folder / "metrics.json").read_text())["values"]["fid"] == pytest.approx(p["metrics"]["fid"])
    # a re-run keeps the samples and reproduces the numbers
    shard = Path(doc["points"][1]["samples"]) / "shard-00000.npz"
    before = shard.stat().st_mtime_ns
    _ok(*args)
    assert shard.stat().st_mtime_ns == before
    again = json.loads((out / "sweep.json").read_text())
    assert [p["metrics"]["fid"] for p in again["points"]] == pytest.approx(fids)


def test_guidance_sweep_user_errors(classifier, work):
    nodrop = _write_run(work / "nodrop", p_uncond=0.0)
    common = ["--num", "10", "--steps", "2", *_eval_args(classifier, work)]
    _fails(nodrop, "--grid", "0,1", *common, match="without label dropout")
    _fails(nodrop, "--grid", "0:1", *common, match="cannot read grid")
    _fails(nodrop, "--grid", "0", "--select", "recall", *common, match="precision_recall")
    _fails(nodrop, "--grid", "0", "--metrics", "nope", *common, match="nope")
    _fails(work / "missing", *common, match="missing")
    # evaluation mistakes surface before any sampling
    run = _write_run(work / "run2", p_uncond=0.1)
    _fails(run, "--grid", "0", "--num", "10", "--extractor", "classifier", "--out", work / "none",
           match="needs --classifier")
    _fails(run, "--grid", "0", "--num", "10", "--data-root", work / "nowhere", "--dataset", "mnist",
           *_eval_args(classifier, work)[:4], "--out", work / "none", match="nowhere")
    assert not (work / "none").exists()


def test_tau_sweep_trains_one_run_per_value(classifier, work):
    out = work / "tsweep"
    res = _ok("tau", "--values", "0,0.002", "--train-steps", "3", "--set", "optim.batch_size=8",
              "--set", "preview.per_class=1", "--set", "preview.steps=2", "--set", "log_every=1",
              *[x for k, v in TINY_UNET.items() for x in ("--set", f"model.options.{k}={json.dumps(v)}")],
              "--guidance", "1", "--num", "20", "--steps", "2", "--out", out, *_eval_args(classifier, work))
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["parameter"] == "tau" and [p["value"] for p in doc["points"]] == [0, 0.002]
    plain = (out / "tau-0" / "config.yaml").read_text()
    cbdm = (out / "tau-0.002" / "config.yaml").read_text()
    assert "methods: []" in plain and "tau: 0.002" in cbdm
    for p in doc["points"]:
        assert Path(p["run"], "checkpoints", "ckpt-00000003.safetensors").is_file()
        assert p["metrics"]["fid"] is not None
    assert "best tau" in res.output
    # Finished runs are re-used, not retrained.
    ckpt = out / "tau-0.002" / "checkpoints" / "ckpt-00000003.safetensors"
    before = ckpt.stat().st_mtime_ns
    res = _ok("tau", "--values", "0.002", "--train-steps", "3", "--set", "optim.batch_size=8",
              "--set", "preview.per_class=1", "--set", "preview.steps=2",
              *[x for k, v in TINY_UNET.items() for x in ("--set", f"model.options.{k}={json.dumps(v)}")],
              "--guidance", "1", "--num", "20", "--steps", "2", "--out", out, *_eval_args(classifier, work))
    assert ckpt.stat().st_mtime_ns == before and ": training" not in res.output
    _fails("tau", "--values", "-1,0.001", "--out", out, match="tau values")


def test_option_sweep_over_any_method_option(classifier, work):
    out = work / "osweep"
    _ok("option", "t2h.cut_time", "--method", "t2h", "--values", "10,90", "--train-steps", "2",
        "--set", "optim.batch_size=8", "--set", "preview.per_class=1", "--set", "preview.steps=2",
        "--set", "diffusion.T=100",
        *[x for k, v in TINY_UNET.items() for x in ("--set", f"model.options.{k}={json.dumps(v)}")],
        "--num", "20", "--steps", "2", "--out", out, *_eval_args(classifier, work))
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["parameter"] == "t2h.cut_time" and [p["value"] for p in doc["points"]] == [10, 90]
    for value in (10, 90):
        saved = yaml.safe_load((out / f"t2h.cut_time-{value}" / "config.yaml").read_text())
        assert saved["objective"]["methods"] == [{"name": "t2h", "options": {"cut_time": value}}]


def test_option_sweep_errors_are_one_line(work):
    out = work / "never"
    _fails("option", "t2h.mode", "--values", "1", "--out", out, match="not a number")
    _fails("option", "cbdm.tua", "--values", "1", "--out", out, match="options: tau, gamma")
    _fails("option", "t2h.cut_time", "--values", "0.5", "--method", "t2h", "--out", out, match="whole numbers")
    _fails("option", "nope.x", "--values", "1", "--out", out, match="unknown method 'nope'")
    assert not out.exists()


class _ToyLossPlugin:
    """A third-party metric where LOWER is better, under a name no list in the code knows."""

    from cbdm_core.hookspecs import hookimpl

    @hookimpl
    def register_components(self, register):
        from cbdm_core.interfaces import Direction, MetricSpec

        def compute(real, fake, **_options):
            return {"toy_loss": float(fake.features.double().mean())}

        register("metric", "toy", MetricSpec(compute, values={"toy_loss": Direction.LOWER}))


def test_sweep_loads_reference_once_and_ranks_plugin_metric_by_its_direction(classifier, work, monkeypatch):
    import cbdm_core.evaluation.prepared as prepared
    import cbdm_core.registry as registry

    monkeypatch.setattr(registry, "_DEFAULT", registry.build_registry(extra_plugins=[_ToyLossPlugin()]))
    loads: list[str] = []
    original = prepared.load_reference

    def spy(dataset, root, split, **kwargs):
        loads.append(dataset)
        return original(dataset, root, split, **kwargs)

    monkeypatch.setattr(prepared, "load_reference", spy)
    run = _write_run(work / "run-toy", p_uncond=0.1)
    out = work / "toy-sweep"
    res = _ok(run, "--grid", "0,1,2", "--num", "24", "--steps", "2", "--batch-size", "24",
              "--metrics", "toy,precision_recall", "--select", "toy_loss", "--out", out, *_eval_args(classifier, work))
    assert loads == ["digits-lt"]  # once for the whole sweep, not once per point
    doc = json.loads((out / "sweep.json").read_text())
    values = {p["value"]: p["metrics"]["toy_loss"] for p in doc["points"]}
    assert len(set(values.values())) == 3
    lowest = min(values, key=values.get)
    assert doc["best"]["value"] == lowest and doc["select_direction"] == "min"
    assert f"best guidance: {lowest:g} (lowest toy_loss" in res.output
    assert all(p["metrics"]["pr_n"] == 24 for p in doc["points"])
    # a value that is not a score cannot pick the best point
    _fails(run, "--grid", "0", "--num", "24", "--steps", "2", "--metrics", "precision_recall", "--select", "pr_n",
           "--out", work / "none", *_eval_args(classifier, work), match="not a score")


def test_best_point_uses_declared_direction_or_override():
    pts = [SweepPoint(0.0, "a", {"coverage": 0.2, "memorization_pixels": 0.1}),
           SweepPoint(1.0, "b", {"coverage": 0.5, "memorization_pixels": 0.3})]
    assert best_point(pts, "coverage").value == 1.0  # higher is better
    assert best_point(pts, "memorization_pixels").value == 0.0  # lower is better
    assert best_point(pts, "coverage", lower_is_better=True).value == 0.0
    with pytest.raises(CbdmError, match="declared"):
        best_point(pts + [SweepPoint(2.0, "c", {"nope": 1.0})], "nope")
