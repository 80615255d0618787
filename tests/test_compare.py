"""``cbdm compare``: a tiny protocol end to end, resuming, w chosen on the selection seeds only,
the statistics (t-interval, CMH, two-stage bootstrap, Holm), per-seed sampling seeds, protocol
errors, and the shipped protocols."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cbdm_core.experiments.compare import choose_guidance, plan_study, sampling_seed
from cbdm_core.experiments.protocol import load_protocol, parse_protocol, protocol_names
from cbdm_core.experiments.stats import cmh_test, holm, paired_difference, summarize, t_interval, two_stage_bootstrap

from .helpers import cli_fails, cli_ok, invoke_cli
from .run_helpers import TrainerSpy, tiny_protocol, write_protocol



@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def test_tiny_protocol_end_to_end_and_seeds(tmp_path, monkeypatch):
    spy = TrainerSpy(monkeypatch)
    proto = write_protocol(tmp_path / "tiny.yaml", tiny_protocol(tmp_path, seeds=[0, 1, 2]))
    out = tmp_path / "study"
    res = cli_ok("compare", proto, "--out", out, "--no-progress")
    assert len(spy.runs) == 6 and "wrote" in res.output
    doc = json.loads((out / "compare.json").read_text())
    assert list(doc["methods"]) == ["ddpm", "cbdm"] and doc["baseline"] == "ddpm"
    assert [p["value"] for p in doc["primary"]] == ["memorization_pixels_tail", "coverage_tail"]
    assert [p["direction"] for p in doc["primary"]] == ["lower", "higher"]
    for label, m in doc["methods"].items():
        # w was chosen on the selection seed: the best mean fid over seeds of the selection sets
        points = {w: [next(x["fid"] for x in r["selection"] if x["w"] == w) for r in m["runs"]] for w in (0, 2)}
        assert m["guidance"]["chosen"] == choose_guidance(points, "fid")
        for run in m["runs"]:
            # every training seed samples with its own seeds, derived from the protocol's
            assert {x["seed"] for x in run["selection"]} == {sampling_seed(7, run["seed"])}
            report = run["report"]
            assert report["sampling_seed"] == sampling_seed(3, run["seed"])
            assert report["guidance"] == m["guidance"]["chosen"]
            manifest = json.loads((Path(report["samples"]) / "manifest.json").read_text())
            assert manifest["settings"]["seed"] == sampling_seed(3, run["seed"])
            assert (Path(report["samples"]) / "records.csv").is_file()
            assert manifest["settings"]["guidance"] == m["guidance"]["chosen"]
            # the reported numbers are the report folder's, not a selection folder's
            metrics = json.loads((Path(report["samples"]) / "metrics.json").read_text())
            assert report["values"]["fid"] == metrics["values"]["fid"]
        fids = [r["report"]["values"]["fid"] for r in m["runs"]]
        assert m["summary"]["fid"]["mean"] == pytest.approx(np.mean(fids))
        assert m["summary"]["fid"]["sd"] == pytest.approx(np.std(fids, ddof=1))
        assert list(m["summary"]["fid"]["per_seed"].values()) == fids
    seeds = doc["sampling_seeds"]
    assert len(set(seeds["report"].values()) | set(seeds["select"].values())) == 6  # all distinct
    base = [r["report"]["values"]["fid"] for r in doc["methods"]["ddpm"]["runs"]]
    other = [r["report"]["values"]["fid"] for r in doc["methods"]["cbdm"]["runs"]]
    diff = doc["methods"]["cbdm"]["difference_to_baseline"]["fid"]
    assert list(diff["per_seed"].values()) == pytest.approx(np.subtract(other, base))
    assert diff["diff_mean"] == pytest.approx(np.mean(np.subtract(other, base)))
    low, high = diff["t_interval"]
    assert low <= diff["diff_mean"] <= high and "p_image" not in diff  # FID is no rate
    assert doc["methods"]["ddpm"]["difference_to_baseline"] is None
    diffs = doc["methods"]["cbdm"]["difference_to_baseline"]
    for rate in ("memorization_pixels_tail", "accuracy"):
        assert "p_image" in diffs[rate] and diffs[rate]["t_interval"][0] is not None
    assert diffs["accuracy"]["images"] == [120, 120]  # 40 images x 3 seeds per method
    assert {t["value"] for t in doc["primary_tests"]} == {"memorization_pixels_tail", "coverage_tail"}
    assert "p_holm" in diffs["coverage_tail"]
    md = (out / "compare.md").read_text()
    sections = [line for line in md.splitlines() if line.startswith("## ")]
    assert sections[1] == "## Primary endpoint: memorization_pixels_tail (lower is better)"
    assert "seed-level intervals are weak" in md and "Holm" in md
    assert "| seed 0 | seed 1 | seed 2 |" in md and "95% t-interval (seeds)" in md
    tail = doc["methods"]["cbdm"]["summary"]["coverage_tail"]["per_seed"]
    assert " | ".join(f"{x:.4g}" for x in tail.values()) in md  # every seed's value in its table
    fid = doc["methods"]["cbdm"]["summary"]["fid"]["per_seed"]
    assert " / ".join(f"{x:.4g}" for x in fid.values()) in md  # and in the appendix
    assert "Appendix" in md and "| tail |" in md
    # conditional accuracy next to the auto classifier's held-out accuracy (its ceiling)
    assert len(doc["classifier"]["held_out"]["per_class_accuracy"]) == 10
    assert "classifier, held-out real images (ceiling)" in md
    plots = [Path(p) for p in doc["plots"]]
    assert any(p.name == "per-class-memorization_pixels.png" for p in plots)
    assert all(p.stat().st_size > 1000 for p in plots)


def test_rerun_after_interruption_skips_finished_parts(tmp_path, monkeypatch):
    proto = write_protocol(tmp_path / "tiny.yaml", tiny_protocol(tmp_path, seeds=[0],
                                                                  guidance={"fixed": 1.0}))
    out = tmp_path / "study"
    TrainerSpy(monkeypatch, stop_before=2)  # Ctrl-C as the second run starts
    res = invoke_cli("compare", proto, "--out", out, "--no-progress")
    assert res.exit_code == 130 and "re-run" in res.output
    assert not (out / "compare.json").exists()
    spy = TrainerSpy(monkeypatch)
    cli_ok("compare", proto, "--out", out, "--no-progress")
    assert spy.runs == [out / "runs" / "cbdm" / "seed-0"]  # the finished ddpm run was not retrained
    # a lost report is recomputed from its kept samples; nothing else is redone
    kept = out / "runs" / "cbdm" / "seed-0" / "report-w1" / "metrics.json"
    lost = out / "runs" / "ddpm" / "seed-0" / "report-w1" / "metrics.json"
    before = kept.stat().st_mtime_ns
    lost.unlink()
    spy = TrainerSpy(monkeypatch)
    res = cli_ok("compare", proto, "--out", out, "--no-progress")
    assert spy.runs == [] and lost.is_file() and kept.stat().st_mtime_ns == before
    assert res.output.count("(running)") == 1
    # every call timed its phases, the interrupted one too
    calls = json.loads((out / "study-time.json").read_text())["calls"]
    assert [c["complete"] for c in calls] == [False, True, True]
    assert all(c["sampling_threads"] == 1 for c in calls)  # --jobs 1 under one thread
    assert all(c["seconds"]["sampling_evaluation"] > 0 for c in calls)  # ddpm was sampled before the Ctrl-C
    assert calls[2]["seconds"]["training"] < 0.5 * calls[0]["seconds"]["training"]  # the third trained nothing
    timed = json.loads((out / "compare.json").read_text())["study_time"]
    assert timed["calls"] == 3
    for phase in ("training", "sampling_evaluation", "reference"):
        assert timed["seconds"][phase] == pytest.approx(sum(c["seconds"][phase] for c in calls))
    assert timed["sampling_evaluation_share"] == pytest.approx(timed["seconds"]["sampling_evaluation"] / timed["total"])
    assert "## Wall time" in (out / "compare.md").read_text() and "wall time (3 call(s))" in res.output
    # the folder belongs to this protocol: a changed one is refused
    cli_fails("compare", proto, "--out", out, "--set", "training.steps=3", match="different protocol")


def test_time_summary_adds_calls_and_shards():
    from cbdm_core.experiments.study_time import time_lines, time_summary

    assert time_summary([]) is None and time_lines(None) == []
    calls = [{"seconds": {"reference": 10.0, "training": 600.0, "sampling_evaluation": 0.0}, "jobs": 2, "threads": 1},
             {"seconds": {"reference": 0.0, "training": 0.0, "sampling_evaluation": 190.0}, "jobs": 2, "threads": 1}]
    s = time_summary(calls, shards=2)
    assert s["total"] == 800.0 and s["seconds"]["training"] == 600.0 and s["calls"] == 2
    assert s["sampling_evaluation_share"] == pytest.approx(190 / 800)
    text = " ".join(time_lines(s))
    assert "over 2 shards" in text and "training 10.0 min" in text and "**24%**" in text


def test_t_interval_against_scipy_and_a_hand_value():
    from scipy import stats

    d = paired_difference([0.005, 0.015, 0.045], [0.07, 0.06, 0.09])  # diffs -0.065, -0.045, -0.045
    assert d.per_seed == pytest.approx([-0.065, -0.045, -0.045]) and d.n == 3
    assert d.mean == pytest.approx(-0.051667, abs=1e-6)
    assert (d.low, d.high) == pytest.approx((-0.080, -0.023), abs=6e-4)  # by hand: t(0.975, 2) = 4.303
    diffs = np.array([0.3, -0.1, 0.5, 0.2, 0.1])
    want = stats.t.interval(0.95, len(diffs) - 1, loc=diffs.mean(), scale=stats.sem(diffs))
    assert t_interval(diffs) == pytest.approx(want)
    assert paired_difference(diffs + 1, np.ones(5)).p == pytest.approx(stats.ttest_1samp(diffs, 0).pvalue)
    assert t_interval([1.0]) == (None, None)
    missing = paired_difference([1.0, None, 3.0], [0.0, 5.0, 1.0])
    assert missing.n == 2 and missing.per_seed == [1.0, None, 2.0]
    assert paired_difference([None], [1.0]).mean is None
    s = summarize([1.0, 2.0, None, 4.0])
    assert s.n == 3 and s.mean == pytest.approx(7 / 3) and s.sd == pytest.approx(np.std([1, 2, 4], ddof=1))


def test_cmh_against_statsmodels_and_empty_strata():
    from statsmodels.stats.contingency_tables import StratifiedTable

    tables = [[[10, 90], [3, 97]], [[7, 43], [2, 48]], [[4, 16], [1, 19]]]
    want = StratifiedTable([np.array(t) for t in tables]).test_null_odds(correction=False)
    # strata without information (a zero row or column margin) are skipped, not a crash
    padded = tables + [[[0, 20], [0, 20]], [[0, 0], [3, 5]], [[5, 0], [4, 0]]]
    got = cmh_test(padded)
    assert got.p == pytest.approx(want.pvalue) and got.statistic == pytest.approx(want.statistic)
    assert got.strata == 3 and got.odds_ratio > 1
    assert cmh_test([[[0, 10], [0, 10]]]).p is None and cmh_test([]).strata == 0


def test_two_stage_bootstrap_and_holm():
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(1)
    base = [rng.random(200) < 0.10 for _ in range(3)]
    method = [rng.random(200) < 0.03 for _ in range(3)]
    low, high = two_stage_bootstrap(method, base, resamples=2000, seed=0)
    observed = np.mean([m.mean() - b.mean() for m, b in zip(method, base)])
    assert low < observed < high < 0
    assert two_stage_bootstrap(method, base, resamples=2000, seed=0) == (low, high)  # seeded
    # the within-seed stage adds the image noise: wider than resampling seeds alone
    seeds_only = np.quantile([np.mean(rng.choice([m.mean() - b.mean() for m, b in zip(method, base)], 3))
                              for _ in range(2000)], [0.025, 0.975])
    assert high - low > seeds_only[1] - seeds_only[0]
    assert two_stage_bootstrap([np.empty(0)], [np.ones(3)]) == (None, None)
    ps = [0.01, 0.04, None, 0.03]
    assert holm(ps) == pytest.approx([multipletests([0.01, 0.04, 0.03], method="holm")[1][0], 0.06, None, 0.06])


def test_distinct_sampling_seeds_per_training_seed(tmp_path):
    proto = parse_protocol(tiny_protocol(tmp_path, seeds=[0, 1, 2, 3]))
    seeds = plan_study(proto, tmp_path / "x").seeds
    report, select = seeds["report"], seeds["select"]
    assert list(report) == [0, 1, 2, 3] and len(set(report.values())) == 4
    assert not set(report.values()) & set(select.values())  # a selection seed is never a report seed
    assert report[1] == sampling_seed(3, 1) == sampling_seed(3, 1)  # deterministic
    assert sampling_seed(3, 1) != sampling_seed(7, 1)


def test_choose_guidance_follows_declared_direction():
    assert choose_guidance({0.0: [5.0, 3.0], 1.0: [2.0, 2.0], 2.0: [2.0, 2.0]}, "fid") == 1.0  # tie: smaller w
    assert choose_guidance({0.0: [0.2, 0.4], 1.0: [0.5, None]}, "coverage") == 1.0  # higher is better
    assert choose_guidance({0.0: [None]}, "fid") is None


@pytest.mark.parametrize("change, match", [
    ({"colour": 1}, "colour: unknown key"),
    ({"methods": []}, "methods"),
    ({"baseline": "nope"}, "baseline 'nope'"),
    ({"guidance": {"grid": [0, 1], "select": "fid", "selection_seed": 3}}, "must differ from report_seed"),
    ({"guidance": {"grid": [0, 1]}}, "needs select"),
    ({"guidance": {"fixed": 1, "grid": [0]}}, "either fixed"),
    ({"sampling": {"seed": 5}}, "sampling.seed"),
    ({"seeds": [0, 0]}, "seeds are listed twice"),
    ({"methods": [{"method": "nope"}]}, "unknown method 'nope'"),
    ({"methods": [{"method": "cbdm", "options": {"tua": 1}}]}, "tua"),
    ({"methods": [{"method": "ddpm"}, {"method": "ddpm"}]}, "listed twice"),
    ({"primary": ["fid_tail"]}, "primary endpoint 'fid_tail' is not a value of the chosen metrics"),
    ({"primary": ["memorization_train_n"]}, "not a score"),
    ({"guidance": {"grid": [0, 1], "select": "precision"}}, "guidance.select 'precision'"),
])
def test_bad_protocols_give_one_line_errors(tmp_path, change, match):
    proto = write_protocol(tmp_path / "bad.yaml", tiny_protocol(tmp_path, **change))
    cli_fails("compare", proto, "--dry-run", match=match)


def test_protocol_file_errors(tmp_path):
    cli_fails("compare", tmp_path / "none.yaml", "--dry-run", match="no protocol file")
    (tmp_path / "broken.yaml").write_text("data: [unclosed\n")
    cli_fails("compare", tmp_path / "broken.yaml", "--dry-run", match="not valid YAML")
    (tmp_path / "list.yaml").write_text("- 1\n")
    cli_fails("compare", tmp_path / "list.yaml", "--dry-run", match="must be a mapping")
    proto = write_protocol(tmp_path / "ok.yaml", tiny_protocol(tmp_path))
    cli_fails("compare", proto, match="--out DIR")
    cli_fails("compare", proto, "--dry-run", "--set", "training.steps=0", match="training.steps")


def test_compositions_and_options_reach_the_config(tmp_path):
    proto = parse_protocol(tiny_protocol(tmp_path, methods=[
        {"method": "ddpm"}, {"method": "t2h+cbdm", "options": {"t2h": {"mode": "full"}, "cbdm": {"tau": 0.003}}}]))
    plan = plan_study(proto, tmp_path / "x")
    cfg = plan.configs[("t2h+cbdm", 1)]
    assert [(m.name, m.options) for m in cfg.objective.methods] == [("t2h", {"mode": "full"}), ("cbdm", {"tau": 0.003})]
    assert plan.configs[("ddpm", 0)].objective.methods == [] and cfg.seed == 1
    # everything but the method is identical across methods
    a, b = (plan.configs[(m, 1)].model_dump() for m in ("ddpm", "t2h+cbdm"))
    a["objective"].pop("methods"), b["objective"].pop("methods")
    assert a == b
    with pytest.raises(Exception, match="keyed by method name"):
        plan_study(parse_protocol(tiny_protocol(tmp_path, methods=[
            {"method": "t2h+cbdm", "options": {"tau": 0.003}}])), tmp_path / "x")


@pytest.mark.parametrize("name", protocol_names())
def test_shipped_protocols_validate_and_start(name):
    res = cli_ok("compare", name, "--dry-run")
    assert "parts:" in res.output
    proto = load_protocol(name)
    # a comparison needs seeds; a gate (the baseline alone: does the effect exist?) is one run
    assert proto.primary and (len(proto.seeds) >= 3 or [m.method for m in proto.methods] == [proto.baseline_label])
    assert proto.guidance.grid is None or proto.guidance.selection_seed != proto.report_seed


def test_digits_lt_protocol_is_the_memorising_design():
    proto = load_protocol("digits-lt")
    assert proto.data.imb_factor == 0.03 and 6000 <= proto.training.steps <= 9000
    assert [m.method for m in proto.methods] == ["ddpm", "cbdm"] and proto.baseline_label == "ddpm"
    assert proto.primary == ["memorization_pixels_tail", "coverage_tail"]
    cfg = plan_study(proto, Path("x")).configs[("ddpm", 0)]
    assert cfg.model.options["ch"] == 32 and cfg.optim.lr == 0.002 and cfg.optim.ema_warmup


def test_new_methods_protocol_repeats_digits_lt_methods():
    """digits-lt-new-methods reuses digits-lt-methods' ddpm and cbdm run folders, so those runs'
    configurations must be identical, and every other setting the same; the new methods run
    with their options written out at the registered defaults."""
    from cbdm_core.registry import get_registry

    old, new = load_protocol("digits-lt-methods"), load_protocol("digits-lt-new-methods")
    assert [m.name for m in new.methods] == ["ddpm", "cbdm", "diffrop", "diffrop-released", "dispersive", "ccua"]
    for field in ("data", "seeds", "sampling", "guidance", "evaluation", "primary", "report_seed"):
        assert getattr(new, field) == getattr(old, field), field
    assert new.training.steps == old.training.steps == 6000 and new.baseline_label == old.baseline_label
    old_plan, new_plan = plan_study(old, Path("x")), plan_study(new, Path("y"))
    for key in [(m, s) for m in ("ddpm", "cbdm") for s in new.seeds]:
        assert new_plan.configs[key].model_dump() == old_plan.configs[key].model_dump(), key
    for m in new.methods[2:]:
        spec = get_registry().get("method", m.method).obj
        if m.name == m.method:  # a method at its defaults, written out in full
            defaults = spec.options_model().model_dump()
            if m.method == "diffrop":  # its weight default depends on the form; the study pins it
                defaults["weight"] = spec.options_model().resolved_weight()
            if m.method == "dispersive":  # added after the study ran; its default (every step) is what it ran
                assert defaults.pop("until_step") is None
            assert m.options == defaults, m.method
        else:  # a variant: only the options it changes
            assert spec.options_model(**m.options).model_dump() != spec.options_model().model_dump(), m.name


def test_list_shows_shipped_protocols():
    res = cli_ok("compare", "--list")
    for name in ("digits-lt", "mnist-lt", "cifar10-lt", "cifar100-lt"):
        assert name in res.output


def test_dispersive_ablation_protocol_repeats_the_new_methods_dispersive_arm():
    """digits-lt-dispersive-ablation repeats digits-lt-new-methods' ddpm and dispersive runs exactly
    (same configurations) and changes only the switch-off step or the temperature in its two arms."""
    old, new = load_protocol("digits-lt-new-methods"), load_protocol("digits-lt-dispersive-ablation")
    assert [m.name for m in new.methods] == ["ddpm", "dispersive", "dispersive-200", "dispersive-tau5"]
    for field in ("data", "seeds", "sampling", "evaluation", "report_seed", "training"):
        assert getattr(new, field) == getattr(old, field), field
    assert new.guidance.fixed == old.guidance.fixed == 1.0 and not new.guidance.curve_values
    assert new.primary == ["memorization_pixels_tail"] and new.baseline_label == "ddpm"
    old_plan, new_plan = plan_study(old, Path("x")), plan_study(new, Path("y"))
    for s in new.seeds:
        for m in ("ddpm", "dispersive"):
            assert new_plan.configs[(m, s)].model_dump() == old_plan.configs[(m, s)].model_dump(), (m, s)
        base = new_plan.configs[("dispersive", s)].model_dump()
        for arm, changed in (("dispersive-200", {"until_step": 200}), ("dispersive-tau5", {"tau": 5.0})):
            cfg = new_plan.configs[(arm, s)].model_dump()
            assert cfg["objective"]["methods"][0]["options"] == {**base["objective"]["methods"][0]["options"],
                                                                  **changed}, arm
            cfg["objective"]["methods"] = base["objective"]["methods"]
            assert cfg == base, arm
