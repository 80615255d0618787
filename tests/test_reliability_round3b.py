"""Issue 24 ("reliability round three"), the remaining items: retrained runs never serve the
old model's samples, every setting is validated before any work, YAML alias bombs, broken
plugins, PNG decompression bombs, workers that outlive their parent, bounded sizes.

Each test reproduces the reported failure; it failed before the fix.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch
import yaml

from .helpers import TINY, alive, cli_fails, cli_ok
from .run_helpers import nan_config, nan_registry, tiny_protocol, write_protocol  # noqa: F401 - nan_registry is a fixture


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def _folder_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.glob("shard-*.npz")):
        h.update(p.read_bytes())
    return h.hexdigest()


# -- item 1: samples of a retrained run come from the new model -----------------------------------------------


def test_sampling_after_train_overwrite_uses_the_new_model(tmp_path, tiny_config):
    cfg, run = tiny_config.write(tmp_path), tmp_path / "run"
    sample = ("sample", run, "--sampler", "ddim", "--steps", "2", "-n", "4", "--no-progress")
    cli_ok("train", "--config", cfg, "--out", run, "--no-progress", "--steps", "4")
    cli_ok(*sample)
    (folder,) = run.glob("samples-*")
    (folder / "eval.json").write_text("{}")  # what `cbdm eval` leaves in the folder
    sweep = run / "sweep-guidance" / "w0"  # what `cbdm sweep RUN` leaves: a sample set per point
    sweep.mkdir(parents=True)
    (sweep / "manifest.json").write_text((folder / "manifest.json").read_text())
    mine = run / "samples-mine"  # not a cbdm sample folder: kept
    mine.mkdir()
    before = _folder_hash(folder)
    cli_ok("train", "--config", cfg, "--out", run, "--no-progress", "--steps", "4", "--seed", "5",
           "--lr", "0.01", "--overwrite")
    # The old run's samples (with their evaluation) and sweeps went with it; other folders stay.
    assert not folder.exists() and not sweep.parent.exists() and mine.is_dir()
    res = cli_ok(*sample)
    assert "kept" not in res.output or "0 kept" in res.output, res.output
    assert _folder_hash(folder) != before


def test_a_sample_folder_of_other_weights_is_refused(tmp_path, tiny_config):
    """Same checkpoint path and step, other weights (a folder restored from elsewhere)."""
    cfg, run = tiny_config.write(tmp_path), tmp_path / "run"
    cli_ok("train", "--config", cfg, "--out", run, "--no-progress", "--steps", "4")
    out = tmp_path / "s"
    sample = ("sample", run, "--sampler", "ddim", "--steps", "2", "-n", "4", "--no-progress", "--out", out)
    cli_ok(*sample)
    cli_ok("train", "--config", cfg, "--out", run, "--no-progress", "--steps", "4", "--seed", "5", "--overwrite")
    cli_fails(*sample, match="weights")
    cli_ok(*sample, "--overwrite")


# -- item 6: every setting is validated before any work ------------------------------------------------------


def _nothing_written(run: Path) -> bool:
    return not (run / "config.yaml").exists() and not any(run.glob("checkpoints/*"))


@pytest.mark.parametrize("args", [
    ("--set", "preview.sampler_options.foo=1"), ("--set", "preview.steps=500"), ("--set", "preview.eta=.nan"),
    ("--set", "preview.guidance=.inf"), ("--set", "preview.eta=-1"), ("--T", "1"),
])
def test_preview_settings_are_checked_before_training(tmp_path, args, tiny_config):
    run = tmp_path / "run"
    cli_fails("train", "--config", tiny_config.write(tmp_path), "--out", run, "--no-progress", *args, match="preview")
    assert _nothing_written(run)


@pytest.mark.parametrize("method,option", [("cbdm", "tau"), ("cbdm", "gamma"), ("coral", "weight"), ("cm", "w_con")])
def test_nonfinite_method_options_are_refused_before_training(tmp_path, method, option, tiny_config):
    run = tmp_path / "run"
    cli_fails("train", "--config", tiny_config.write(tmp_path), "--out", run, "--no-progress", "--method", method,
              "-M", f"{method}.{option}=.inf", match=option)
    assert _nothing_written(run)


def test_nonfinite_stop_without_a_checkpoint_does_not_claim_one_is_kept(tmp_path, nan_registry):  # noqa: F811
    err = cli_fails("train", "--config", nan_config(tmp_path, ckpt_every=100), "--out", tmp_path / "run",
                    "--no-progress", match="non-finite")
    assert "is kept" not in err and "no checkpoint" in err


@pytest.mark.parametrize("change,match", [
    ({"sampling": {"sampler": "ddim", "steps": 2, "num": 40, "eta": float("nan")}}, "eta"),
    ({"sampling": {"sampler": "ddim", "steps": 2, "num": 40, "eta": -1}}, "eta"),
    ({"sampling": {"sampler": "ddim", "steps": 500, "num": 40}}, "steps"),
    ({"sampling": {"sampler": "ddim", "steps": 2, "num": 40, "sampler_options": {"foo": 1}}}, "foo"),
    ({"methods": [{"method": "cbdm", "options": {"tau": float("inf")}}]}, "tau"),
    ({"guidance": {"fixed": 1e308}}, "guidance"),
])
def test_compare_dry_run_checks_the_sampling_of_every_run(tmp_path, change, match):
    proto = write_protocol(tmp_path / "p.yaml", tiny_protocol(tmp_path, **change))
    cli_fails("compare", proto, "--out", tmp_path / "study", "--dry-run", match=match)
    assert not (tmp_path / "study").exists()


# -- item 7: YAML alias bombs --------------------------------------------------------------------------------

# Six levels of ten aliases: a million values from eight lines (the report's bomb had more levels).
_BOMB = "\n".join(["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"] + [
    f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 7)])


def _bomb_under(key: str) -> str:
    """A YAML mapping whose ``key`` (``preview.sampler_options``) holds the bomb."""
    outer, inner = key.split(".")
    body = "\n".join("    " + line for line in _BOMB.splitlines())
    return f"{outer}:\n  {inner}:\n{body}\n"


def test_alias_bomb_in_a_config_file_is_refused(tmp_path):
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text(yaml.safe_dump(TINY).replace("preview:\n", "preview_unused:\n") + _bomb_under("preview.sampler_options"))
    run = tmp_path / "run"
    cli_fails("train", "--config", cfg, "--out", run, "--no-progress", match="aliases")
    assert not run.exists()


def test_alias_bomb_in_a_protocol_is_refused(tmp_path):
    proto = tiny_protocol(tmp_path)
    del proto["sampling"]
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(proto) + _bomb_under("sampling.sampler_options"))
    cli_fails("compare", path, "--out", tmp_path / "study", "--dry-run", match="aliases")


def test_alias_bomb_and_recursive_alias_in_set_values_are_refused(tmp_path, tiny_config):
    flat = _BOMB.replace("\n", ", ").replace(": &", ": &")
    for value, match in ((f"{{{flat}}}", "aliases"), ("&r [*r]", "recursive")):
        cli_fails("train", "--config", tiny_config.write(tmp_path), "--out", tmp_path / "run", "--no-progress",
                  "--set", f"preview.sampler_options.bomb={value}", match=match)


def test_small_anchors_and_aliases_still_load(tmp_path):
    from cbdm_core.config import load_config_file

    path = tmp_path / "c.yaml"
    path.write_text("opts: &o {ch: 8, ch_mult: [1, 2]}\nmodel: {options: *o}\n")
    assert load_config_file(path)["model"]["options"] == {"ch": 8, "ch_mult": [1, 2]}


# -- item 8: a broken third-party plugin is left out, not fatal ------------------------------------------------

_PLUGINS = {
    "import_boom": "raise RuntimeError('boom at import')\n",
    "register_boom": ("from cbdm_core import hookimpl\n\n@hookimpl\ndef register_components(register):\n"
                      "    register('sampler', 'half-done', object())\n    raise ValueError('boom in register')\n"),
    "collides": ("from cbdm_core import hookimpl\nfrom cbdm_core.registry import lookup\n\n@hookimpl\n"
                 "def register_components(register):\n    register('label_distribution', 'mine', lambda c, a: c)\n"
                 "    register('sampler', 'ddim', object())\n"),
}


@pytest.fixture
def broken_plugins(tmp_path, monkeypatch):
    """Three fake installed distributions, each with a ``cbdm`` entry point: one fails at import,
    one inside ``register_components``, one registers the built-in sampler name ``ddim``."""
    import sys

    from cbdm_core import registry

    site = tmp_path / "site"
    for name, code in _PLUGINS.items():
        (site / f"fake_{name}.py").parent.mkdir(parents=True, exist_ok=True)
        (site / f"fake_{name}.py").write_text(code)
        info = site / f"fake_{name}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: fake-{name}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(f"[cbdm]\n{name} = fake_{name}\n")
    monkeypatch.syspath_prepend(str(site))
    registry.reset_registry()
    yield
    for name in _PLUGINS:
        sys.modules.pop(f"fake_{name}", None)
    registry.reset_registry()


def test_broken_plugins_are_reported_and_left_out(broken_plugins, tmp_path, caplog, tiny_config):
    import logging

    from cbdm_core.registry import get_registry, reset_registry

    reg = get_registry()
    problems = {p.plugin.split(":")[1]: p.error for p in reg.problems}
    assert set(problems) == set(_PLUGINS)
    assert "boom at import" in problems["import_boom"] and "boom in register" in problems["register_boom"]
    assert "ddim" in problems["collides"] and "cbdm:samplers" in problems["collides"]
    # All or nothing per plugin; the built-in ddim is the one kept.
    assert "half-done" not in reg.names("sampler") and "mine" not in reg.names("label_distribution")
    assert reg.get("sampler", "ddim").plugin == "cbdm:samplers"
    reset_registry()  # `cbdm plugins` builds it afresh: one warning line per plugin left out
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cbdm.plugins"):
        res = cli_ok("plugins")
    text = " ".join(res.output.split())
    assert "left out" in text and "boom at import" in text and "boom in register" in text, res.output
    warnings = [r.getMessage() for r in caplog.records if r.name == "cbdm.plugins"]
    assert len(warnings) == 3 and all(len(w.splitlines()) == 1 and "left out" in w for w in warnings)
    cli_ok("methods")
    cli_ok("train", "--config", tiny_config.write(tmp_path), "--out", tmp_path / "run", "--no-progress", "--steps", "2")


# -- item 9: PNG decompression bombs are refused from their header ---------------------------------------------


@pytest.fixture
def decoded(monkeypatch):
    """The (w, h) of every image PIL decodes (``ImageFile.load``)."""
    from PIL import ImageFile

    sizes: list[tuple[int, int]] = []
    original = ImageFile.ImageFile.load

    def load(self):
        sizes.append(tuple(self.size))
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return sizes


def _png(path: Path, side: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (side, side)).save(path)  # all zeros: a few KB on disk at any size


@pytest.mark.parametrize("side,match", [(6000, "larger than 4096"), (16, "same size")])
def test_folder_dataset_refuses_images_from_their_header(tmp_path, decoded, side, match):
    from cbdm_core.data.folder import load_folder
    from cbdm_core.data.options import DatasetOptions
    from cbdm_core.errors import CbdmError

    for c in ("a", "b"):
        for i in range(3):
            _png(tmp_path / c / f"{i}.png", 8)
    _png(tmp_path / "b" / "bomb.png", side)
    with pytest.raises(CbdmError, match=match):
        load_folder(DatasetOptions(root=tmp_path))
    assert (side, side) not in decoded  # refused before decoding


def test_eval_image_folder_and_png_samples_refuse_other_sizes_undecoded(tmp_path, decoded):
    from cbdm_core.errors import CbdmError
    from cbdm_core.evaluation.inputs import read_image_folder
    from cbdm_core.sampling import shards as sh

    for i in range(3):
        _png(tmp_path / "imgs" / f"{i}.png", 8)
    _png(tmp_path / "imgs" / "bomb.png", 6000)
    with pytest.raises(CbdmError, match="larger than 4096"):
        read_image_folder(tmp_path / "imgs")
    manifest = {"settings": {"image_shape": [8, 8, 1]}, "labels": [[0, 2]], "class_dirs": ["0"]}
    _png(tmp_path / "s" / "0" / "000000.png", 8)
    _png(tmp_path / "s" / "0" / "000001.png", 6000)
    with pytest.raises(CbdmError, match="6000x6000, the manifest says 8x8"):
        sh.read_png_span(tmp_path / "s", manifest, 0, 2)
    assert (6000, 6000) not in decoded


# -- item 5: `cbdm compare --jobs N` workers die with their parent --------------------------------------------


def _describe(pid: int, run: Path) -> str:
    """What a surviving worker was doing, for the failure message."""
    def read(name: str) -> str:
        try:
            return Path(f"/proc/{pid}/{name}").read_text().strip()
        except OSError as exc:
            return f"<{exc.strerror}>"

    state = read("stat").rsplit(")", 1)[-1].split()[:2]
    checkpoints = sorted(p.name for p in (run / "checkpoints").glob("*")) if (run / "checkpoints").is_dir() else []
    from cbdm_core.experiments.parallel_training import last_logged_step

    return (f"pid {pid} state {state} wchan {read('wchan')!r} last logged step {last_logged_step(run)} "
            f"checkpoints {checkpoints}")


_ORPHAN_CHILD = """
import os, signal, sys, time
from cbdm_core.experiments.parallel_training import die_with_parent
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a stop that never comes: only the hard exit ends it
die_with_parent(int(sys.argv[1]), grace_seconds=1.0)
print(os.getpid(), flush=True)
time.sleep(120)
"""

_ORPHAN_PARENT = """
import subprocess, sys, os, time
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], str(os.getpid())], stdout=subprocess.PIPE, text=True)
print(child.stdout.readline().strip(), flush=True)
time.sleep(120)
"""


def test_an_orphaned_worker_that_does_not_stop_is_ended_after_the_grace_period():
    """The watchdog behind `cbdm compare --jobs`: even a worker whose stop hangs (here: SIGTERM
    ignored) is gone soon after its parent is SIGKILLed."""
    import signal
    import subprocess
    import sys
    import time

    parent = subprocess.Popen([sys.executable, "-c", _ORPHAN_PARENT, _ORPHAN_CHILD], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        child = int(parent.stdout.readline())
        assert alive(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 20
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(child), "the orphan outlived its grace period"
    finally:
        if parent.poll() is None:
            parent.kill()
        if "child" in locals() and alive(child):
            os.kill(child, signal.SIGKILL)


@pytest.mark.slow
def test_compare_workers_die_with_a_sigkilled_parent(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from cbdm_core import locks
    from cbdm_core.experiments.parallel_training import ORPHAN_GRACE_SECONDS

    raw = tiny_protocol(tmp_path, seeds=[0], guidance={"fixed": 0.0})
    raw["training"]["steps"] = 100000  # still training when the parent is killed
    proto = write_protocol(tmp_path / "p.yaml", raw)
    out = tmp_path / "study"
    parent = subprocess.Popen([sys.executable, "-m", "cbdm_cli", "compare", str(proto), "--out", str(out),
                               "--jobs", "2", "--no-progress"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    runs = [out / "runs" / m / "seed-0" for m in ("ddpm", "cbdm")]
    try:
        deadline = time.monotonic() + 240
        while not all((r / "metrics.jsonl").exists() for r in runs):  # both workers are training
            assert parent.poll() is None and time.monotonic() < deadline, "the workers never started training"
            time.sleep(0.5)
        workers = [int((r / locks.LOCK_NAME).read_text().split()[0]) for r in runs]
        assert parent.pid not in workers and all(alive(pid) for pid in workers)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        killed_at = time.monotonic()
        deadline = killed_at + ORPHAN_GRACE_SECONDS + 30
        while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(alive(pid) for pid in workers), (
            f"workers outlived their parent by {time.monotonic() - killed_at:.0f} s: "
            + "; ".join(_describe(pid, r) for pid, r in zip(workers, runs)))
    finally:
        if parent.poll() is None:
            parent.kill()
        for pid in locals().get("workers", []):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    for r in runs:  # a re-run is not refused: nobody holds the run folders
        locks.acquire(r, "run folder")
        locks.release(r)


# -- item 10: huge numbers are one line, never an allocation or a traceback -------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_config) -> Path:
    work = tmp_path_factory.mktemp("tiny-run")
    cli_ok("train", "--config", tiny_config.write(work), "--out", work / "run", "--no-progress", "--steps", "2")
    return work / "run"


@pytest.mark.parametrize("args,match", [
    (("--set-size", "1000000000"), "set_size"),
    (("--seed", "99999999999999999999"), "seed"),
    (("--set", "data.lt_seed=99999999999999999999"), "lt_seed"),
])
def test_huge_training_numbers_are_refused_in_one_line(tmp_path, args, match, tiny_config):
    run = tmp_path / "run"
    cli_fails("train", "--config", tiny_config.write(tmp_path), "--out", run, "--no-progress", *args, match=match)
    assert _nothing_written(run)


@pytest.mark.parametrize("args,match", [
    (("--seeds", "0-99999999999"), "--seeds"), (("-n", "1000000000000"), "--num"),
    (("--seed", "99999999999999999999"), "seed"),
])
def test_huge_sampling_numbers_are_refused_in_one_line(tmp_path, tiny_run, args, match):
    cli_fails("sample", tiny_run, "--steps", "2", "--no-progress", "--out", tmp_path / "s", *args, match=match)
    assert not (tmp_path / "s").exists()


def test_huge_grids_are_refused_in_one_line(tmp_path, tiny_run):
    cli_fails("sweep", tiny_run, "--grid", "0:1e308:1e-300", "--out", tmp_path / "sw", match="points")
    proto = write_protocol(tmp_path / "p.yaml", tiny_protocol(
        tmp_path, guidance={"grid": "0:1e308:1e-300", "select": "fid", "selection_seed": 7}))
    cli_fails("compare", proto, "--out", tmp_path / "study", "--dry-run", match="points")


def test_extreme_power_distribution_exponents_stay_finite(tmp_path, tiny_config):
    from cbdm_core.label_distributions import pow_distribution

    counts = torch.tensor([50, 10, 0, 3])
    head = pow_distribution(counts, "1e308")
    assert torch.equal(head, torch.tensor([1.0, 0.0, 0.0, 0.0]))
    tail = pow_distribution(torch.tensor([50, 10, 3]), "-1e308")
    assert torch.equal(tail, torch.tensor([0.0, 0.0, 1.0]))
    # Ordinary exponents are unchanged: n ** q / sum.
    q = pow_distribution(counts, "0.5")
    want = counts.double().pow(0.5)
    assert torch.allclose(q.double(), want / want.sum(), atol=1e-7)
    cli_ok("train", "--config", tiny_config.write(tmp_path), "--out", tmp_path / "run", "--no-progress",
           "--steps", "1", "--y-dist", "pow:1e308")


# -- item 12: import-checkpoint validates what it would write ----------------------------------------------------


@pytest.mark.parametrize("size", ["0", "1000000", "-8"])
def test_import_checkpoint_refuses_sizes_nothing_could_load(tmp_path, size):
    from .reference_unet import save_reference_checkpoint

    save_reference_checkpoint(tmp_path / "ckpt.pt")
    dest = tmp_path / "run"
    cli_fails("import-checkpoint", tmp_path / "ckpt.pt", dest, "--image-size", size, "--ch-mult", "1,2",
              match="image")
    assert not dest.exists()


# -- item 16: load_run of a run being written with --keep-last 1 --------------------------------------------------


def test_load_run_retries_when_pruning_removes_the_chosen_checkpoint(tmp_path, tiny_run, monkeypatch):
    import shutil

    from cbdm_core import run as run_mod
    from cbdm_core.checkpoint import checkpoint_name, list_checkpoints

    folder = tmp_path / "run"
    shutil.copytree(tiny_run, folder)
    ((step, only),) = list_checkpoints(folder / "checkpoints")
    real = run_mod.load_checkpoint
    calls = []

    def training_meanwhile(path, *args, **kwargs):
        # The trainer saves a newer checkpoint and prunes the one just chosen (--keep-last 1).
        if len(calls) < 2:
            newer = folder / "checkpoints" / checkpoint_name(step + 1 + len(calls))
            os.replace(path, newer)
        calls.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(run_mod, "load_checkpoint", training_meanwhile)
    loaded = run_mod.load_run(folder)
    assert loaded.checkpoint.name == checkpoint_name(step + 2) and len(calls) == 3
    # A run whose checkpoints never hold still: one line that says so.
    calls.clear()
    monkeypatch.setattr(run_mod, "load_checkpoint", lambda p, *a, **k: (
        os.replace(p, p.with_name(checkpoint_name(int(p.name[5:13]) + 1))), real(p, *a, **k))[1])
    with pytest.raises(run_mod.CheckpointError, match="being written"):
        run_mod.load_run(folder)
