"""Sampling arms of a comparison: protocol entries that train nothing and sample an earlier
entry's runs with their own sampler or guidance (Boost-and-Skip, minority guidance, ...).

An arm ``{label: L, sample_from: M, sampling: {...}}`` draws each seed's samples from method
M's run of the same seed, with the protocol's sampling settings overridden by ``sampling``;
its sample folders live in ``runs/L/seed-<s>/`` like any method's, so evaluation, records,
intervals against the baseline, curves and merging work unchanged. String guidance or
sampler options may name per-run files with ``{run}`` (M's run folder of that seed) and
``{seed}`` (the training seed), e.g. a noise-aware classifier trained per run.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from pydantic import BaseModel, ConfigDict, Field

from ..errors import CbdmError

if TYPE_CHECKING:
    from ..config import TrainConfig
    from ..sampling.settings import SamplingSettings
    from .protocol import MethodEntry, Protocol

# The placeholders an arm's option strings may use; anything else in braces is a typo.
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
PLACEHOLDERS = ("run", "seed")


class ArmSampling(BaseModel):
    """What a sampling arm changes in the protocol's ``sampling`` (unset: the protocol's).
    ``sampler_options`` and ``guidance_options`` are merged over the protocol's."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    sampler: Optional[str] = None
    steps: Optional[int] = Field(None, ge=1)
    eta: Optional[float] = None
    clip_denoised: Optional[bool] = None
    sampler_options: dict[str, Any] = Field(default_factory=dict)
    guidance_method: Optional[str] = None
    guidance_options: dict[str, Any] = Field(default_factory=dict)


def check_arm_entry(entry: "MethodEntry", trained_before: list[str]) -> None:
    """One entry's arm fields against the entries listed before it (``ValueError``, one line)."""
    if entry.sample_from is None:
        if entry.sampling is not None:
            raise ValueError(f"method {entry.name}: sampling: is only for a sampling arm (sample_from: METHOD); "
                             "methods that train share the protocol's sampling")
        if entry.method is None:
            raise ValueError("a method entry needs method: (a method to train) or sample_from: (a sampling arm)")
        return
    if entry.label is None:
        raise ValueError(f"the sampling arm of {entry.sample_from!r} needs a label:")
    trains = [k for k in ("method", "init_from", "steps") if getattr(entry, k) is not None]
    if trains or entry.options:
        raise ValueError(f"sampling arm {entry.name} trains nothing: remove {', '.join(trains or ['options'])} "
                         "(it samples the runs of sample_from)")
    if entry.sample_from not in trained_before:
        raise ValueError(f"sampling arm {entry.name}: sample_from {entry.sample_from!r} must name a trained method "
                         f"listed before it ({', '.join(trained_before) or 'none'})")
    if entry.sampling is None:
        raise ValueError(f"sampling arm {entry.name} needs sampling: (the sampler or guidance it changes)")
    for key, value in _strings(entry.sampling.model_dump()):
        unknown = [n for n in _PLACEHOLDER.findall(value) if n not in PLACEHOLDERS]
        if unknown:
            raise ValueError(f"sampling arm {entry.name}: {key} names {{{unknown[0]}}}; only "
                             f"{', '.join('{' + n + '}' for n in PLACEHOLDERS)} are filled in")


def _strings(data: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Every ``(dotted key, string)`` inside nested dicts."""
    if isinstance(data, str):
        return [(prefix, data)]
    if isinstance(data, dict):
        return [kv for k, v in data.items() for kv in _strings(v, f"{prefix}.{k}" if prefix else str(k))]
    return []


def fill_placeholders(value: Any, run_dir: Path, seed: int) -> Any:
    """``value`` (a string, or nested dicts of them) with ``{run}`` and ``{seed}`` filled in."""
    if isinstance(value, str):
        return value.replace("{run}", str(run_dir)).replace("{seed}", str(seed))
    if isinstance(value, dict):
        return {k: fill_placeholders(v, run_dir, seed) for k, v in value.items()}
    return value



def templated(entry: "MethodEntry") -> bool:
    """Whether the arm's options name per-run files (``{run}``/``{seed}``)."""
    return bool(per_run_files(entry, Path("."), 0))


def arm_settings(protocol: "Protocol", entry: "MethodEntry", run_dir: Path, seed: int) -> "SamplingSettings":
    """The sampling settings of one entry and seed: the protocol's, then the arm's changes with
    ``{run}`` = ``run_dir`` (the sampled run) and ``{seed}`` filled in."""
    base = protocol.sampling
    if entry.sampling is None:
        return base
    arm = entry.sampling
    # None: the protocol's (a protocol read back from protocol.json lists every field)
    update: dict[str, Any] = {k: v for k, v in arm.model_dump().items()
                              if v is not None and k not in ("sampler_options", "guidance_options")}
    update["sampler_options"] = {**base.sampler_options, **arm.sampler_options}
    if arm.guidance_method is not None and arm.guidance_method != base.guidance_method:
        update["guidance_options"] = dict(arm.guidance_options)  # another guidance: the old options do not apply
    else:
        update["guidance_options"] = {**base.guidance_options, **arm.guidance_options}
    return base.model_copy(update=fill_placeholders(update, run_dir, seed))


def check_arms(protocol: "Protocol", configs: dict[tuple[str, int], "TrainConfig"], run_dir) -> None:
    """Every arm's settings at every w the study uses, against its run's schedule; an arm whose
    options name per-run files has its sampler and its guidance's option names checked now,
    the rest when it samples (with the run's model)."""
    from ..build import build_schedule
    from ..settings_check import check_sampling_settings

    for e in protocol.methods:
        if e.sample_from is None:
            continue
        for s in protocol.seeds:
            settings = arm_settings(protocol, e, run_dir(e.sample_from, s), s)
            schedule = build_schedule(configs[(e.name, s)])
            if per_run_files(e, run_dir(e.sample_from, s), s):
                # not there yet (the runs are trained first), or there but only checkable against
                # the run's own model (the dry check's dummy has one class): when it samples
                _check_option_names(settings, f"sampling arm {e.name}")
                settings = settings.model_copy(update={"guidance_method": "cfg", "guidance_options": {}})
            for w in protocol.guidance.values + protocol.guidance.curve_values:
                check_sampling_settings(settings, schedule=schedule, where=f"sampling arm {e.name}", guidance=w)
            if not templated(e):
                break  # the same settings for every seed


def per_run_files(entry: "MethodEntry", run_dir: Path, seed: int) -> list[str]:
    """The arm's option values that name per-run files (they hold a placeholder), filled in."""
    if entry.sampling is None:
        return []
    return [fill_placeholders(v, run_dir, seed) for _k, v in _strings(entry.sampling.model_dump()) if _PLACEHOLDER.search(v)]


def missing_files(entry: "MethodEntry", run_dir: Path, seed: int) -> list[str]:
    """The per-run files of one seed that do not exist (yet)."""
    return [f for f in per_run_files(entry, run_dir, seed) if not Path(f).exists()]


def _check_option_names(settings: "SamplingSettings", where: str) -> None:
    from ..interfaces import GuidanceSpec
    from ..registry import lookup

    obj = lookup("guidance", settings.guidance_method)
    model = getattr(obj, "options_model", None) if isinstance(obj, GuidanceSpec) else None
    given = set(settings.guidance_options)
    valid = set(model.model_fields) if model is not None else set()
    if given - valid:
        raise CbdmError(f"{where}: unknown option {sorted(given - valid)[0]!r} of guidance "
                        f"{settings.guidance_method!r}; valid options: {', '.join(sorted(valid)) or 'none'}")


def check_files_before_sampling(entry: "MethodEntry", run_dir: Path, seed: int) -> None:
    """A per-run file an arm needs, missing when its samples are due: one line saying how to make it."""
    missing = missing_files(entry, run_dir, seed)
    if missing:  # (an arm with train_classifier: made its file in an earlier part)
        raise CbdmError(f"sampling arm {entry.name} seed {seed}: {missing[0]} does not exist; make it (e.g. "
                        f"`cbdm train-classifier --noisy RUN --out {missing[0]}`, --minority for minority "
                        "guidance), then re-run the study")


def arm_summary(entry: "MethodEntry") -> Optional[dict[str, Any]]:
    """compare.json's record of what an arm samples and changes (None for a trained method)."""
    if entry.sample_from is None or entry.sampling is None:
        return None
    # fp32 precision is left out, as in a sample manifest: compare.json of fp32 arms stays as it was
    sampling = {k: v for k, v in entry.sampling.model_dump().items()
                if v not in (None, {}) and not (k == "precision" and v == "fp32")}
    out = {"sample_from": entry.sample_from, "sampling": sampling}
    if entry.train_classifier is not None:
        out["train_classifier"] = entry.train_classifier.model_dump()
    return out


def stale_guidance_file(folder: Path) -> Optional[str]:
    """``"OPTION FILE"`` of the first guidance file (a noise-aware or minority classifier) that a
    kept sample set was guided by and whose content is no longer what its manifest recorded
    (retrained, replaced or deleted since), else ``None``; as ``cbdm sample`` checks a kept
    folder, also a set whose manifest predates the file hashes."""
    from ..sampling import shards as sh
    from ..sampling.sample_folder import guidance_file_digests

    try:
        manifest = sh.read_manifest(folder)
    except CbdmError:  # a damaged manifest: the sampling code says what to do if the set is redone
        return None
    if manifest is None:
        return None
    settings = manifest.get("settings", {})
    options = settings.get("guidance_options") or {}
    recorded = settings.get("guidance_files_sha256")
    now = guidance_file_digests(options)
    if recorded is None:  # sampled before the hashes: only a set guided by a file is in doubt
        return next((f"{k} {options[k]} (the set predates guidance file hashes)" for k in sorted(now)), None)
    for key in sorted(recorded):
        if now.get(key) != recorded[key]:
            return f"{key} {options.get(key)}"
    return None


def check_kept_set(folder: Path, *, regenerate: bool) -> bool:
    """A kept sample set (finished or not) whose guidance file changed: a one-line refusal
    naming the set and the file, or, with ``regenerate``, ``True`` (sample it again) after
    removing its old ``metrics.json`` (an interrupted regeneration must not report them)."""
    stale = stale_guidance_file(folder)
    if stale is None:
        return False
    if not regenerate:
        raise CbdmError(f"sample set {folder} was guided by {stale}, which changed after it was sampled; "
                        "delete the set or re-run with --overwrite to regenerate it")
    (Path(folder) / "metrics.json").unlink(missing_ok=True)
    return True
