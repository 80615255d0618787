"""The logged ``dispersive`` term of every run in study folders or packs, at chosen steps (secondary
analysis of the digits-lt-dispersive-ablation protocol).

    python experiments/digits-lt-dispersive-ablation/logged_terms.py STUDY_OR_PACK [...] [--steps 100,200,...]

Per arm and seed: the logged ``dispersive`` value (a window mean of the term, weighted or not; after
``until_step`` it is logged without gradient) at each step, and ``diffusion`` at the last. The floor of
the term is ``-log B`` (-4.159 at batch 64): a value there means the term has no pair left to push.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def read_metrics(path: Path) -> dict[int, dict]:
    rows = {}
    for line in path.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            if "step" in rec:
                rows[int(rec["step"])] = rec
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folders", nargs="+", type=Path)
    p.add_argument("--steps", default="100,200,300,500,1000,2000,4000,6000")
    args = p.parse_args()
    steps = [int(s) for s in args.steps.split(",")]
    print(f"floor -log 64 = {-math.log(64):.4f}")
    print(f"{'folder':<16} {'arm':<18} {'seed':>4} " + " ".join(f"{s:>8}" for s in steps) + f" {'diff@end':>9}")
    runs = [(f.name, m.parent.parent.name, m.parent.name, m) for f in args.folders
            for m in sorted(f.glob("runs/*/seed-*/metrics.jsonl"))]
    for folder, arm, seed, path in runs:
        rows = read_metrics(path)
        vals = [rows.get(s, {}).get("dispersive") for s in steps]
        last = rows[max(rows)] if rows else {}
        cells = " ".join(f"{v:>8.3f}" if v is not None else f"{'-':>8}" for v in vals)
        print(f"{folder[-16:]:<16} {arm:<18} {seed.split('-')[-1]:>4} {cells} {last.get('diffusion', float('nan')):>9.4f}")


if __name__ == "__main__":
    main()
