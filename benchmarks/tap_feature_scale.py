"""How far apart a trained U-Net's bottleneck features are: what Dispersive Loss acts on (issue 26).

    OMP_NUM_THREADS=1 python benchmarks/tap_feature_scale.py RUN [RUN ...]

For each run folder (training weights, not EMA): one batch of 64 noisy inputs (seeded random x_t,
t and labels), the raw output of ``feature_tap().module`` flattened per row, and printed: its
per-element RMS, the mean and least pairwise D = ||z_i - z_j||^2 / dim over i != j, and the mean of
exp(-D / tau) at the run's own Dispersive tau (0.5, the default, for a run without the method): near 0
means every off-diagonal pair is out of the loss's reach, i.e. the term sits at its floor -log B.
"""

from __future__ import annotations

import sys

import torch

from cbdm_core.run import load_run


def run_tau(run, default: float = 0.5) -> float:
    """The tau of the run's ``dispersive`` method (its options as stored), else ``default``."""
    for m in run.config.objective.methods:
        if m.name == "dispersive":
            return float(m.options.get("tau", default))
    return default


def scale(folder: str, rows: int = 64) -> str:
    run = load_run(folder, ema=False, device=torch.device("cpu"))
    tau = run_tau(run)
    model = run.model
    feats: list[torch.Tensor] = []
    hook = model.feature_tap().module.register_forward_hook(lambda mod, args, out: feats.append(out.detach()))
    g = torch.Generator().manual_seed(1)
    c, s = run.meta.channels, run.meta.image_size
    x = torch.randn(rows, c, s, s, generator=g)
    t = torch.randint(0, 1000, (rows,), generator=g)
    y = torch.randint(0, run.num_classes, (rows,), generator=g)
    with torch.no_grad():
        model(x, t, y)
    hook.remove()
    z = feats[0].flatten(1).float()
    n, dim = z.shape
    d = torch.cdist(z, z).pow(2) / dim
    off = d[~torch.eye(n, dtype=torch.bool)]
    return (f"{folder}: per-element RMS {z.pow(2).mean().sqrt():.3f}, mean D {off.mean():.3f}, "
            f"least D {off.min():.3f}, mean exp(-D/{tau:g}) {torch.exp(-off / tau).mean():.2e}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    for folder in sys.argv[1:]:
        print(scale(folder), flush=True)
