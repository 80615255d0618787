"""``cbdm compare --jobs N``: runs trained in worker processes are the runs the study would
train in-process (bit-identical weights at the same thread count), and Ctrl-C stops every
worker with its checkpoint saved."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cbdm_core.checkpoint import list_checkpoints
from cbdm_core.experiments.compare import plan_study
from cbdm_core.experiments.parallel_training import TrainJob, last_logged_step, train_in_parallel
from cbdm_core.experiments.protocol import parse_protocol
from cbdm_core.tensor_io import load_tensors
from cbdm_core.training.trainer import Trainer
from .run_helpers import tiny_protocol, write_protocol



@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


@pytest.mark.slow
def test_workers_train_the_same_runs_as_in_process(tmp_path):
    plan = plan_study(parse_protocol(tiny_protocol(tmp_path, seeds=[0])), tmp_path / "study")
    configs = [plan.configs[("ddpm", 0)], plan.configs[("cbdm", 0)]]
    jobs = [TrainJob(cfg, tmp_path / "workers" / str(i), resume=False) for i, cfg in enumerate(configs)]
    progress: list[tuple[int, int]] = []
    results = train_in_parallel(jobs, 2, threads=1, on_progress=lambda d, t: progress.append((d, t)))
    assert sorted(r.folder for r in results) == [j.folder for j in jobs]
    assert all(r.step == 2 and not r.interrupted for r in results)
    assert progress and progress[-1] == (4, 4)
    for i, cfg in enumerate(configs):
        here = tmp_path / "here" / str(i)
        Trainer(cfg, here).run()
        (_, a), (_, b) = list_checkpoints(jobs[i].folder / "checkpoints")[-1], list_checkpoints(here / "checkpoints")[-1]
        ta, tb = load_tensors(a)[0], load_tensors(b)[0]
        assert ta.keys() == tb.keys()
        for key in ta:
            assert torch.equal(ta[key], tb[key]), key


def test_pool_threads_gives_this_process_what_the_workers_had():
    from cbdm_core.experiments.parallel_training import pool_threads

    # Under OMP_NUM_THREADS=1 (1 thread here), --jobs 2 workers had one thread each.
    with pool_threads(2, cores=2) as n:
        assert n == torch.get_num_threads() == 2
    assert torch.get_num_threads() == 1
    with pool_threads(1, cores=2) as n:
        assert n == torch.get_num_threads() == 1
    with pool_threads(4, cores=2) as n:  # no more threads than cores: they would spin
        assert n == 2
    torch.set_num_threads(4)
    try:  # never fewer than this process had
        for workers, cores, want in ((1, 16, 4), (2, 16, 4), (3, 16, 4), (8, 16, 8), (8, 2, 4)):
            with pool_threads(workers, cores=cores) as n:
                assert n == torch.get_num_threads() == want, workers
            assert torch.get_num_threads() == 4
    finally:
        torch.set_num_threads(1)


@pytest.mark.slow
def test_a_study_samples_with_the_threads_its_workers_had(tmp_path, monkeypatch):
    from cbdm_core.experiments.compare import run_study
    from cbdm_core.sampling import generate

    seen: list[int] = []
    real = generate.generate_samples

    def recording(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(generate, "generate_samples", recording)
    run_study(parse_protocol(tiny_protocol(tmp_path, seeds=[0])), tmp_path / "study", jobs=2)
    want = min(2, len(os.sched_getaffinity(0)))  # the two workers' threads, as far as there are cores
    assert seen and set(seen) == {want}  # every sample set, not the one thread this process has
    assert torch.get_num_threads() == 1
    calls = json.loads((tmp_path / "study" / "study-time.json").read_text())["calls"]
    assert [(c["jobs"], c["threads"], c["sampling_threads"]) for c in calls] == [(2, 1, want)]

def test_a_worker_error_is_one_line(tmp_path):
    plan = plan_study(parse_protocol(tiny_protocol(tmp_path, seeds=[0])), tmp_path / "study")
    good = plan.configs[("ddpm", 0)]
    bad = good.model_copy(update={"data": good.data.model_copy(update={"dataset": "folder",
                                                                      "root": tmp_path / "no-such-folder"})})
    from cbdm_core.errors import CbdmError

    with pytest.raises(CbdmError, match="training .*no-such-folder|folder"):
        train_in_parallel([TrainJob(bad, tmp_path / "run", resume=False)], 2, threads=1)


@pytest.mark.slow
def test_ctrl_c_stops_every_worker_with_a_checkpoint(tmp_path):
    proto = tiny_protocol(tmp_path, seeds=[0], guidance={"fixed": 1.0})
    proto["training"]["steps"] = 100_000  # far more than the test waits for
    path = write_protocol(tmp_path / "tiny.yaml", proto)
    out = tmp_path / "study"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # A shell's background job (`pytest ... &`, nohup) ignores SIGINT, and a child inherits that: Python then
    # installs no Ctrl-C handler and the study would never see the signal. Give the child the default.
    proc = subprocess.Popen([sys.executable, "-m", "cli", "compare", str(path), "--out", str(out),
                             "--jobs", "2", "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, cwd=Path(__file__).resolve().parents[1],
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    runs = [out / "runs" / m / "seed-0" for m in ("ddpm", "cbdm")]
    # Generous deadlines: on a loaded 2-core machine two spawned workers can take minutes to log
    # their first step, and the test is about stopping workers that are training.
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not all(last_logged_step(r) > 0 for r in runs):
        time.sleep(0.5)
    started = [last_logged_step(r) for r in runs]
    proc.send_signal(signal.SIGINT)  # to the parent only, as `kill -INT`: it must stop the workers
    try:
        output, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        pytest.fail(f"no exit 300 s after Ctrl-C (steps logged when it was sent: {started}); output:\n{output}")
    assert proc.returncode == 130, output
    assert "re-run the same command to continue" in output
    for run in runs:
        saved = list_checkpoints(run / "checkpoints")
        assert saved and 0 < saved[-1][0] < 100_000, run


def _finetune_protocol(work: Path) -> dict:
    proto = tiny_protocol(work, seeds=[0], guidance={"fixed": 1.0})
    proto["methods"] = [{"method": "ddpm"},
                        {"method": "ddpm", "label": "ddpm-continued", "init_from": "ddpm", "steps": 1},
                        {"method": "cbdm", "label": "cbdm-finetune", "init_from": "ddpm", "steps": 1,
                         "options": {"y_dist": "bal"}}]
    proto["baseline"] = "ddpm-continued"
    return proto


def test_init_from_starts_from_the_earlier_method_of_the_same_seed(tmp_path):
    plan = plan_study(parse_protocol(_finetune_protocol(tmp_path)), tmp_path / "study")
    cfg = plan.configs[("cbdm-finetune", 0)]
    assert cfg.init_from == plan.run_dir("ddpm", 0) and cfg.optim.steps == 1
    assert plan.configs[("ddpm", 0)].init_from is None and plan.configs[("ddpm", 0)].optim.steps == 2
    assert [m.name for m in cfg.objective.methods] == ["cbdm"]


@pytest.mark.parametrize("init_from", ["cbdm-finetune", "nothing"])
def test_init_from_must_name_an_earlier_method(tmp_path, init_from):
    from cbdm_core.errors import CbdmError

    proto = _finetune_protocol(tmp_path)
    proto["methods"][1]["init_from"] = init_from
    with pytest.raises(CbdmError, match="init_from .* must name a trained method listed before it"):
        parse_protocol(proto)


@pytest.mark.slow
def test_finetune_study_with_jobs_trains_sources_first(tmp_path):
    """ddpm first (wave 1), then both fine-tuning runs from its weights (wave 2), two at a time."""
    from .helpers import cli_ok

    path = write_protocol(tmp_path / "ft.yaml", _finetune_protocol(tmp_path))
    out = tmp_path / "study"
    res = cli_ok("compare", path, "--out", out, "--jobs", "2", "--no-progress")
    assert "train 1 runs, 1 at a time" in res.output and "train 2 runs, 2 at a time" in res.output
    from cbdm_core.checkpoint import load_checkpoint

    source = load_checkpoint(list_checkpoints(out / "runs" / "ddpm" / "seed-0" / "checkpoints")[-1][1]).ema
    convs = [k for k, v in source.items() if v.dim() == 4]
    for label in ("ddpm-continued", "cbdm-finetune"):
        ckpts = list_checkpoints(out / "runs" / label / "seed-0" / "checkpoints")
        assert ckpts[-1][0] == 1
        tuned = load_checkpoint(ckpts[-1][1]).model
        # one small Adam step (lr 2e-3) away from the source's EMA weights, not a fresh initialisation
        assert all((tuned[k] - source[k]).abs().max() < 0.01 for k in convs)
    doc = (out / "compare.md").read_text()
    # The differences are taken against the protocol's baseline, the continued DDPM run.
    assert "ddpm-continued (baseline)" in doc
    assert json.loads((out / "compare.json").read_text())["baseline"] == "ddpm-continued"
