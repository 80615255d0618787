"""``cbdm compare`` at one pre-registered w with a w-curve (curve and Pareto plots, the matched
tail-accuracy comparison), the memorisation evidence (held-out-real row, copied share,
memorisation among correctly classified samples, d1/d2 histogram), and shards merged into one
study (equal to the study run whole; mismatched shards refused)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from cbdm_core.experiments.curves import interpolate_at
from cbdm_core.experiments.protocol import parse_protocol

from .helpers import cli_fails, cli_ok
from .run_helpers import TrainerSpy, tiny_protocol, write_protocol

GUIDANCE = {"fixed": 1.0, "curve": [0, 1]}


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def _normalised(path: Path, folders: list[Path]) -> dict:
    """compare.json without its timestamp and wall times, and with every study folder written as DIR."""
    text = path.read_text()
    for folder in sorted(folders, key=lambda f: -len(str(f))):  # a longer path before its prefix
        text = text.replace(str(folder), "DIR")
    doc = json.loads(text)
    doc.pop("created")
    doc.pop("study_time")
    return doc


def _shard_from(whole: Path, shard: Path, seed: int) -> None:
    """A shard folder holding one seed's finished runs of ``whole`` (so the shard's own
    `cbdm compare --seeds` only writes its report) and the same classifier file."""
    for run in whole.glob(f"runs/*/seed-{seed}"):
        shutil.copytree(run, shard / run.relative_to(whole))
    for clf in whole.glob("classifier-*.safetensors"):
        shutil.copy(clf, shard / clf.name)


@pytest.mark.parametrize("guidance, match", [
    ({"fixed": 1.0, "curve": [0, 1]}, None),
    ({"fixed": 1.0, "curve": "0,0.5,1"}, None),
    ({"fixed": float("nan")}, "finite"),
    ({"fixed": 25.0}, "within [0, 20]"),
    ({"fixed": -1.0}, "within [0, 20]"),
    ({"fixed": 1.0, "curve": [1, 0]}, "sorted and without repeats"),
    ({"fixed": 1.0, "curve": [0, 1, 1]}, "sorted and without repeats"),
    ({"fixed": 1.0, "curve": [0, float("inf")]}, "curve"),
    ({"fixed": 1.0, "curve": [1]}, "at least 2"),
])
def test_guidance_fixed_and_curve_validate(tmp_path, guidance, match):
    proto = tiny_protocol(tmp_path, guidance=guidance)
    if match is None:
        g = parse_protocol(proto).guidance
        assert g.fixed == 1.0 and g.curve_values == sorted(set(g.curve_values)) and len(g.curve_values) >= 2
    else:
        cli_fails("compare", write_protocol(tmp_path / "bad.yaml", proto), "--dry-run", match=match)


def test_interpolation_along_a_curve():
    assert interpolate_at([0.2, 0.6, 0.8], [0.0, 1.0, 2.0], 0.4) == pytest.approx((0.5, 0.5))
    assert interpolate_at([0.2, 0.6], [0.0, 1.0], 0.9) is None  # no extrapolation
    assert interpolate_at([0.6, 0.2], [1.0, 3.0], 0.3) == pytest.approx((0.75, 2.5))  # decreasing curve


def test_curve_heldout_row_and_merged_shards_equal_the_whole_study(tmp_path, monkeypatch):
    proto = write_protocol(tmp_path / "tiny.yaml", tiny_protocol(tmp_path, guidance=GUIDANCE))
    whole = tmp_path / "whole"
    cli_ok("compare", proto, "--out", whole, "--no-progress")
    doc = json.loads((whole / "compare.json").read_text())
    # every method at the one pre-registered w; the curve adds w = 0 with all metrics
    for label, m in doc["methods"].items():
        assert m["guidance"]["chosen"] == 1.0
        curve = {p["w"]: p["summary"] for p in doc["guidance_curve"][label]}
        assert sorted(curve) == [0.0, 1.0] and "fid" in curve[0.0] and "memorization_pixels_tail" in curve[0.0]
        # the curve's w = 1 point is the report itself
        assert curve[1.0]["coverage_tail"]["mean"] == m["summary"]["coverage_tail"]["mean"]
        assert all((Path(r["report"]["samples"]).parent / "curve-w0" / "records.csv").is_file() for r in m["runs"])
    matched = doc["matched_tail_accuracy"]
    assert matched["target"] == doc["guidance_curve"]["ddpm"][1]["summary"]["accuracy_tail"]["mean"]
    names = {Path(p).name for p in doc["plots"]}
    assert {"pareto-tail.png", "curve-memorization_pixels_tail.png", "curve-accuracy_tail.png",
            "memorization-d1-d2.png"} <= names
    # the held-out-real row: the metric on real images outside the diffusion training set
    ev = doc["memorization_evidence"]
    held = ev["heldout_real"]["rows"]["pixels"]
    raw = json.loads((whole / "heldout-real.json").read_text())
    tail = set(doc["groups"]["tail"])
    flags = [f for y, f in zip(raw["labels"], raw["spaces"]["pixels"]["memorized"]) if y in tail]
    assert held["images"]["tail"] == len(flags) > 0 and held["tail"] == pytest.approx(sum(flags) / len(flags))
    assert len(raw["train_labels"]) == sum(doc["class_counts"])
    for m in ev["methods"].values():
        assert set(m["copied_training_share"]["pixels"]) == {"all", "head", "medium", "tail"}
        assert "tail" in m["memorized_when_classified_correct"]["pixels"]
    md = (whole / "compare.md").read_text()
    assert "held-out real (false positives)" in md and "matched tail accuracy" in md
    # shards: seed 0 here, seed 1 elsewhere, each from the same finished runs
    a, b = tmp_path / "A", tmp_path / "B"
    _shard_from(whole, a, 0), _shard_from(whole, b, 1)
    spy = TrainerSpy(monkeypatch)
    cli_ok("compare", proto, "--seeds", "0", "--out", a, "--no-progress")
    cli_ok("compare", proto, "--seeds", "1", "--out", b, "--no-progress")
    assert spy.runs == []
    merged = tmp_path / "merged"
    res = cli_ok("compare", "merge", a, b, "--out", merged)
    assert "merged 2 shards" in res.output
    # the merged wall time is the shards' summed
    shard_times = [json.loads((x / "compare.json").read_text())["study_time"] for x in (a, b)]
    timed = json.loads((merged / "compare.json").read_text())["study_time"]
    assert timed["shards"] == 2 and timed["calls"] == 2
    assert timed["total"] == pytest.approx(sum(t["total"] for t in shard_times))
    folders = [whole, merged, a, b]
    assert _normalised(merged / "compare.json", folders) == _normalised(whole / "compare.json", folders)
    assert not list(merged.glob("runs/*/*/checkpoints"))  # built from records and metrics alone
    # packs (small outputs only) of the shards, moved elsewhere, merge to the same study
    packs = []
    for shard in (a, b):
        res = cli_ok("compare", "pack", shard, "--out", tmp_path / f"pack-{shard.name}")
        moved = tmp_path / "elsewhere" / shard.name
        shutil.move(str(tmp_path / f"pack-{shard.name}"), moved)
        packs.append(moved)
        assert f"into {tmp_path / f'pack-{shard.name}'}" in res.output
        assert not list(moved.rglob("checkpoints")) and not list(moved.rglob("*.npz"))
        assert list(moved.glob("classifier-*.safetensors")) and list(moved.rglob("records.csv"))
        assert (moved / "study-time.json").is_file()
    shutil.rmtree(a), shutil.rmtree(b)
    cli_ok("compare", "merge", *packs, "--out", tmp_path / "merged-packs")
    folders += [tmp_path / "merged-packs", *packs]
    assert (_normalised(tmp_path / "merged-packs" / "compare.json", folders)
            == _normalised(whole / "compare.json", folders))
    cli_fails("compare", "pack", packs[0], "--out", packs[1], match="not empty")
    cli_fails("compare", "pack", tmp_path / "none", "--out", tmp_path / "p3", match="no finished study")


def _altered(src: Path, dst: Path, name: str, change) -> Path:
    shutil.copytree(src, dst)
    doc = json.loads((dst / name).read_text())
    change(doc)
    (dst / name).write_text(json.dumps(doc))
    return dst


def test_mismatched_shards_are_refused_in_one_line(tmp_path):
    proto = write_protocol(tmp_path / "tiny.yaml", tiny_protocol(
        tmp_path, guidance=GUIDANCE, methods=[{"method": "ddpm"}], primary=["coverage_tail"]))
    a = tmp_path / "A"
    cli_ok("compare", proto, "--seeds", "0", "--out", a, "--no-progress")
    steps = _altered(a, tmp_path / "steps", "protocol.json", lambda d: d["training"].update(steps=3))
    steps_doc = json.loads((steps / "protocol.json").read_text())
    steps_doc["seeds"] = [1]
    (steps / "protocol.json").write_text(json.dumps(steps_doc))
    cli_fails("compare", "merge", a, steps, "--out", tmp_path / "m1", match="in its protocol (at training.steps)")
    def other_seed(d):
        d["seeds"] = [1]

    code = _altered(a, tmp_path / "code", "protocol.json", other_seed)
    data = json.loads((code / "compare.json").read_text())
    data["code_version"] = "0.0.1+gdeadbeef"
    (code / "compare.json").write_text(json.dumps(data))
    cli_fails("compare", "merge", a, code, "--out", tmp_path / "m2", match="in code version")
    clf = _altered(a, tmp_path / "clf", "protocol.json", other_seed)
    data = json.loads((clf / "compare.json").read_text())
    data["classifier"]["sha256"] = "0" * 64
    (clf / "compare.json").write_text(json.dumps(data))
    cli_fails("compare", "merge", a, clf, "--out", tmp_path / "m3", match="in its feature classifier")
    cli_fails("compare", "merge", a, a, "--out", tmp_path / "m4", match="seed 0 is in both")
    cli_fails("compare", "merge", a, tmp_path / "none", "--out", tmp_path / "m5", match="no finished study shard")


@pytest.mark.parametrize("recorded", sorted((Path(__file__).resolve().parents[1] / "docs" / "results")
                                            .glob("*/shard-seed*/protocol.json")), ids=lambda p: p.parent.parent.name
                         + "/" + p.parent.name)
def test_study_folders_recorded_by_earlier_versions_still_resume(recorded):
    """A study folder's protocol.json, written by the version that ran the shard, is what this
    version records for the same protocol (fields added since, left at their defaults, are
    left out), so a folder recorded earlier is not refused as "a different protocol"."""
    from cbdm_core.experiments.compare_folder import first_difference
    from cbdm_core.experiments.protocol import protocol_dict

    saved = json.loads(recorded.read_text())
    data = json.loads(recorded.read_text())
    for key in ("seed", "guidance"):  # recorded as defaults; the study sets them (as merge does)
        data["sampling"].pop(key, None)
    assert first_difference(saved, protocol_dict(parse_protocol(data, str(recorded)))) is None
