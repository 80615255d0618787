"""SIGKILL `cbdm eval` inside each of its cache writes (the feature classifier, the reference
features, the k-NN radii, the report) and at seeded-random moments, re-running it after each
kill: the final ``metrics.json`` equals an uninterrupted evaluation's, and after every kill each
file in the cache reads back intact through the hashed reader (issue #24, acceptance).

A kill lands inside a write deterministically: the evaluation runs under a small harness
(``tests/kill_harness.py``, test code only) that wraps ``os.replace``, the last step of every atomic write,
and SIGKILLs its own process at the first replace of a chosen file: with the temporary file
cut short (a kill while writing it), complete (a kill before the rename), or just after the
rename (before the directory is synced).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
import numpy as np
import pytest

from cbdm_core.data import dataset_options, load_dataset
from cbdm_core.tensor_io import HASH_KEY, load_tensors

from .kill_harness import HARNESS

pytestmark = pytest.mark.slow


# The files `cbdm eval` writes, in order, by a pattern of their path.
KINDS = {"classifier": r"/classifiers/[^/]*\.safetensors$", "features": r"/features/(?!.*-radii-)[^/]*\.safetensors$",
         "radii": r"/features/[^/]*-radii-[^/]*\.safetensors$", "report": r"/metrics\.json$"}
TIME_KILLS = 2
SEED = 24


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> Path:
    ds = load_dataset("digits", dataset_options(split="test"))
    path = tmp_path_factory.mktemp("npz") / "s.npz"
    np.savez(path, images=ds.images[:120].permute(0, 2, 3, 1).numpy(), labels=ds.labels[:120].numpy())
    return path


def _start(samples: Path, root: Path, log: Path, **harness: str) -> subprocess.Popen:
    """``cbdm eval`` under the harness; its default extractor, a digits classifier, is trained into
    ``root/cache`` on first use."""
    env = dict(os.environ, OMP_NUM_THREADS="1", H_LOG=str(log), **harness)
    args = [samples, "--dataset", "digits", "--device", "cpu", "--cache-dir",
            root / "cache", "--metrics", "fid,precision_recall,density_coverage,per_class", "--out", root / "out"]
    with open(_output(root), "ab") as fh:  # a file, not a pipe: a full pipe would stall the command
        return subprocess.Popen([sys.executable, "-c", HARNESS, "eval", *map(str, args)], env=env,
                                stdout=fh, stderr=subprocess.STDOUT)


def _output(root: Path) -> Path:
    """Where the commands run on ``root`` write their output (the end of it goes into failure messages)."""
    return root.parent / f"{root.name}-output.txt"


def _tail(root: Path) -> str:
    return "\n".join(_output(root).read_text(errors="replace").splitlines()[-15:])


def _check_cache(cache: Path, context: str) -> None:
    """Every file in the cache reads back through the hashed reader, and carries a hash to check."""
    for path in sorted(cache.rglob("*.safetensors")):
        _, meta = load_tensors(path)  # raises IntegrityError on a damaged file
        assert HASH_KEY in meta, f"{path} has no content hash to check ({context})"


def _values(root: Path) -> str:
    """``metrics.json`` with the evaluation's folder spelled ``<root>``, without its creation time
    and without whether the reference came from the cache (the only fields that may differ)."""
    doc = json.loads((root / "out" / "metrics.json").read_text().replace(str(root), "<root>"))
    doc.pop("created")
    doc["reference"].pop("cache_hit")
    return json.dumps(doc, sort_keys=True, indent=1)  # as text: NaN equals NaN


def _schedule(rng: random.Random) -> list[dict[str, str]]:
    """A kill inside each cache write (cut short or complete: the file is not there), then one just
    after it lands; the report once; then kills at random moments."""
    out = []
    for kind in ("classifier", "features", "radii"):
        out.append({"H_TARGET": KINDS[kind], "H_MODE": rng.choice(["torn", "before"]), "H_CUT": f"{rng.random():.3f}"})
        out.append({"H_TARGET": KINDS[kind], "H_MODE": "after"})
    out.append({"H_TARGET": KINDS["report"], "H_MODE": "torn", "H_CUT": f"{rng.random():.3f}"})
    return out


def _attempt(samples: Path, root: Path, log: Path, harness: dict[str, str], delay: float) -> str:
    """One ``cbdm eval`` under ``harness``, SIGKILLed after ``delay`` s if still running; the
    cache must read back intact whatever the moment."""
    proc = _start(samples, root, log, **harness)
    try:
        code = proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        code = proc.wait()
    note = f"seed {SEED}: {harness or f'{delay:.2f} s'}: exit {code}"
    assert code in (0, -signal.SIGKILL), f"{note}:\n{_tail(root)}"
    _check_cache(root / "cache", note)
    return note


def _finish(samples: Path, root: Path, log: Path) -> None:
    proc = _start(samples, root, log)
    assert proc.wait(timeout=300) == 0, f"seed {SEED}, final run:\n{_tail(root)}"
    _check_cache(root / "cache", f"seed {SEED}, final run")
    leftovers = [p for p in (root / "cache").rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers, f"temporary files left behind: {leftovers}"


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkills_inside_cache_writes_then_reruns_give_the_uninterrupted_metrics(tmp_path, samples):
    straight, inside, timed = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    log = tmp_path / "writes.txt"
    started = time.monotonic()
    _finish(samples, straight, tmp_path / "straight.txt")
    duration = time.monotonic() - started
    rng = random.Random(SEED)
    record = [_attempt(samples, inside, log, harness, 300) for harness in _schedule(rng)]
    _finish(samples, inside, log)
    # Kills at random moments of a cold evaluation (their own folder: the kills above left it warm).
    record += [_attempt(samples, timed, log, {}, rng.uniform(0.2, 1.0) * duration) for _ in range(TIME_KILLS)]
    _finish(samples, timed, log)
    context = "; ".join(record) + "\n" + log.read_text()
    kills = [line.split() for line in log.read_text().splitlines() if line.startswith("killed")]
    for kind in ("classifier", "features", "radii", "report"):  # every kind of write was interrupted
        assert any(re.search(KINDS[kind], k[2]) and k[1] in ("torn", "before") for k in kills), (kind, context)
    assert _values(inside) == _values(straight), context
    assert _values(timed) == _values(straight), context
