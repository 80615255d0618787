"""``cbdm compare merge A B ... --out STUDY``: one study from shards run on different machines
(``cbdm compare PROTOCOL --seeds 0,1 --out A`` here, ``--seeds 2,3,4 --out B`` elsewhere).

The report is built from the shards' per-sample records and metrics alone (``metrics.json``,
``records.csv``, ``manifest.json`` of every sample folder, and ``heldout-real.json``), which are
copied into STUDY; no checkpoint or image is needed. Shards must agree on everything but their
seeds: the protocol, the code version and the feature classifier; the first difference is
refused in one line. Sampling seeds derive from (report seed, training seed) alone, so a seed
sampled in a shard draws the same noise as in a whole study."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any, Callable, Optional

from ..atomic import atomic_path, ensure_dir
from ..errors import CbdmError
from .compare_folder import PROTOCOL_JSON, check_folder, first_difference, manifest_seed, read_metrics
from .compare_plan import plan_study
from .compare_report import COMPARE_JSON, write_outputs
from .curves import collect_curve
from .heldout import HELDOUT_JSON
from .protocol import parse_protocol
from .sampling_cost import TIMING_JSON
from .study_time import read_study_time, time_summary

# What a sample folder keeps that the report reads, and which sample folders a study's report uses.
SAMPLE_FILES = ("metrics.json", "records.csv", "manifest.json", TIMING_JSON)
STUDY_SAMPLE_PREFIXES = ("report", "curve", "select")


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except OSError:
        raise CbdmError(f"{path.parent} is no finished study shard (no {path.name}; {what})") from None
    except ValueError:
        raise CbdmError(f"{path} is not readable JSON") from None


def _shard(folder: Path) -> dict[str, Any]:
    return {"folder": folder,
            "protocol": _read_json(folder / PROTOCOL_JSON, "run `cbdm compare PROTOCOL --out DIR` first"),
            "compare": _read_json(folder / COMPARE_JSON, "run it to the end first"),
            "heldout": _read_json(folder / HELDOUT_JSON, "rerun it with this version to write it")}


def check_shards(shards: list[dict[str, Any]]) -> None:
    """One-line :class:`CbdmError` on the first shard that differs from the first one in protocol
    (seeds aside), code version or classifier, or that repeats a seed."""
    first = shards[0]
    ref = dict(first["protocol"], seeds=None)
    seen: dict[int, Path] = {s: first["folder"] for s in first["protocol"]["seeds"]}
    for sh in shards[1:]:
        where = f"shard {sh['folder']} differs from {first['folder']}"
        diff = first_difference(ref, dict(sh["protocol"], seeds=None))
        if diff is not None:
            raise CbdmError(f"{where} in its protocol (at {diff}); only the seeds may differ")
        a, b = first["compare"].get("code_version"), sh["compare"].get("code_version")
        if a != b:
            raise CbdmError(f"{where} in code version ({b} vs {a})")
        a, b = _classifier_digest(first), _classifier_digest(sh)
        if a != b:
            raise CbdmError(f"{where} in its feature classifier (sha256 {str(b)[:12]} vs {str(a)[:12]})")
        for s in sh["protocol"]["seeds"]:
            if s in seen:
                raise CbdmError(f"seed {s} is in both {seen[s]} and {sh['folder']}")
            seen[s] = sh["folder"]
    if first["protocol"]["guidance"].get("grid") is not None:
        raise CbdmError("shards of a protocol that chooses w per method (guidance.grid) cannot be merged: each "
                        "shard chose w on its own seeds; use guidance.fixed")


def _classifier_digest(shard: dict[str, Any]) -> Optional[str]:
    return (shard["compare"].get("classifier") or {}).get("sha256")


def _classifier_file(shard: dict[str, Any], classifier: Optional[dict[str, Any]]) -> Optional[Path]:
    """The shard's classifier file: by name in the shard folder (a packed or moved shard keeps
    it there), else where compare.json says."""
    if not classifier or not classifier.get("file"):
        return None
    recorded = Path(classifier["file"])
    for path in (shard["folder"] / recorded.name, recorded):
        if path.is_file():
            return path
    return None


def _copy_file(src: Path, dst: Path) -> None:
    ensure_dir(dst.parent, "study folder")
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def _copy_samples(shard: Path, out_dir: Path, seeds: list[int]) -> None:
    """Every sample folder's report files of ``seeds`` from ``shard`` into ``out_dir``."""
    for run in sorted((shard / "runs").glob("*/seed-*")):
        if int(run.name[len("seed-"):]) not in seeds:
            continue
        for folder in sorted(p for p in run.iterdir() if p.is_dir() and p.name.split("-")[0] in
                             STUDY_SAMPLE_PREFIXES):
            for name in SAMPLE_FILES:
                if (folder / name).is_file():
                    _copy_file(folder / name, out_dir / folder.relative_to(shard) / name)


def _results(plan: Any) -> dict[str, dict[str, Any]]:
    """What :func:`.compare_report.write_outputs` takes, read from the merged folder."""
    w = plan.protocol.guidance.values[0]
    results: dict[str, dict[str, Any]] = {}
    for label, entry in plan.entries.items():
        reports = []
        for s in plan.protocol.seeds:
            folder = plan.run_dir(label, s) / _report_name(w)
            doc = read_metrics(folder)
            if doc is None:
                raise CbdmError(f"{folder} has no metrics.json: the shard holding seed {s} is unfinished")
            reports.append({"seed": s, "run": str(plan.model_dir(label, s)), "doc": doc, "samples": str(folder),
                            "sampling_seed": manifest_seed(folder), "guidance": w, "selection": []})
        results[label] = {"entry": entry, "chosen": w, "points": {}, "reports": reports,
                          "curve": collect_curve(plan, label)}
    return results


def _report_name(w: float) -> str:
    from .sweeps import value_label

    return f"report-w{value_label(w)}"


def merge_studies(folders: list[Path], out_dir: Path,
                  status: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    """Merge study shards into ``out_dir``; returns the merged ``compare.json`` document."""
    if len(folders) < 2:
        raise CbdmError("give at least two study shards to merge")
    shards = [_shard(Path(f)) for f in folders]
    check_shards(shards)
    data = copy.deepcopy(shards[0]["protocol"])
    data["seeds"] = sorted(s for sh in shards for s in sh["protocol"]["seeds"])
    for key in ("seed", "guidance"):  # recorded as defaults; the study sets them (a protocol may not)
        (data.get("sampling") or {}).pop(key, None)
    plan = plan_study(parse_protocol(data, "merged protocol"), Path(out_dir))
    check_folder(plan)
    for sh in shards:
        status(f"copying the records of seeds {sh['protocol']['seeds']} from {sh['folder']}")
        _copy_samples(sh["folder"], plan.out_dir, sh["protocol"]["seeds"])
    _copy_file(shards[0]["folder"] / HELDOUT_JSON, plan.out_dir / HELDOUT_JSON)
    classifier = copy.deepcopy(shards[0]["compare"].get("classifier"))
    found = _classifier_file(shards[0], classifier)
    if found is not None:
        kept = plan.out_dir / found.name
        _copy_file(found, kept)
        classifier["file"] = str(kept)
    # Wall time summed over the shards that timed themselves (shards run before the clock have none).
    timed = [read_study_time(sh["folder"]) for sh in shards]
    study_time = time_summary([c for calls in timed for c in calls], shards=sum(1 for calls in timed if calls))
    return write_outputs(plan, _results(plan), plan.out_dir, classifier=classifier, heldout=shards[0]["heldout"],
                         study_time=study_time)
