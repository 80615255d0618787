"""Share of a finished study's wall time spent in sampling and evaluation (issue 29, item 3).

    python benchmarks/study_share.py STUDY_OR_PACK [...]

For studies run before ``cbdm compare`` timed its phases, from stamps a pack keeps: training from
the first run's start (its first metrics.jsonl record's ``time - elapsed``) to the last run's last
record, sampling and evaluation from there to compare.json's ``created``. (With ``--jobs N`` all
training happens before any sampling, so the two spans do not overlap; with ``--jobs 1`` they
interleave and this split is meaningless.) A folder with ``study-time.json`` also prints what
the study timed itself.
"""
from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path

from cbdm_core.experiments.study_time import read_study_time, time_split, time_summary


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def stamps(study: Path) -> tuple[float, float, float]:
    """(training start, training end, study end) as Unix seconds."""
    starts, ends = [], []
    for log in sorted(study.glob("runs/*/seed-*/metrics.jsonl")):
        recs = [r for r in _records(log) if "time" in r and "elapsed" in r]
        if recs:
            starts.append(recs[0]["time"] - recs[0]["elapsed"])
            ends.append(recs[-1]["time"])
    if not starts:
        raise SystemExit(f"{study}: no run's metrics.jsonl with time stamps")
    created = json.loads((study / "compare.json").read_text())["created"]
    return min(starts), max(ends), datetime.fromisoformat(created).timestamp()


def main(folders: list[str]) -> None:
    print(f"{'study':58s} {'training min':>12s} {'sampling+eval min':>17s} {'share':>6s}   timed by the study")
    for name in folders:
        study = Path(name)
        start, trained, end = stamps(study)
        train, rest = (trained - start) / 60, (end - trained) / 60
        summary = time_summary(read_study_time(study))
        timed = f"{time_split(summary)}, {summary['calls']} call(s)" if summary else ""
        print(f"{name[-58:]:58s} {train:12.1f} {rest:17.1f} {100 * rest / (train + rest):5.0f}%   {timed}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    main(sys.argv[1:])
