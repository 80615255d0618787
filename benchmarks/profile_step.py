"""Where a CPU training step's time goes: the reference-style step vs this project's (issue 29).

    OMP_NUM_THREADS=1 python benchmarks/profile_step.py [AMP off|bf16] [CHANNELS_LAST off|on] [DROPOUT_MASKS auto|torch|words] [BASELINE reference|ddpm]

torch.profiler over 4 steps of each (small config, after 2 warm-up steps), self CPU time per step
and op, the 35 largest ops. BASELINE ``ddpm``: the project's own step with tau = 0 (one view) instead
of the reference-style step, same settings, with each op's CBDM/DDPM ratio: what a second view costs.
Prefix ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 to see an AVX2 CPU.
"""
from pathlib import Path

import sys, time, torch, numpy as np
sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_step as ts
from cbdm_core.host_memory import keep_freed_host_memory
keep_freed_host_memory()
torch.set_num_threads(1)
dev = torch.device("cpu"); cfg = ts.CONFIGS["small"]
amp = sys.argv[1] if len(sys.argv) > 1 else "off"
cl = sys.argv[2] if len(sys.argv) > 2 else "off"
masks = sys.argv[3] if len(sys.argv) > 3 else "auto"
baseline = sys.argv[4] if len(sys.argv) > 4 else "reference"
if baseline not in ("reference", "ddpm"):
    sys.exit(f"BASELINE must be reference or ddpm, got {baseline!r}")
settings = dict(amp=amp, compile="off", channels_last=cl, pass_layout="joint", dropout_masks=masks)
base_step = (ts.reference_step(cfg, dev, 32)[0] if baseline == "reference"
             else ts.project_step(cfg, dev, 32, ts.Row("d", "project", tau=0.0, **settings))[0])
rows = {baseline: base_step, "project": ts.project_step(cfg, dev, 32, ts.Row("p", "project", **settings))[0]}
from torch.profiler import profile, ProfilerActivity
res = {}
for name, step in rows.items():
    step(0); step(1)
for name, step in rows.items():
    torch.manual_seed(1); np.random.seed(1)
    with profile(activities=[ProfilerActivity.CPU]) as p:
        for i in range(2, 6):
            step(i)
    res[name] = {e.key: e.self_cpu_time_total / 4e3 for e in p.key_averages()}
base, proj = res[baseline], res["project"]
keys = sorted(set(base) | set(proj), key=lambda k: -max(base.get(k, 0), proj.get(k, 0)))
head = "ref ms" if baseline == "reference" else "ddpm ms"
print(f"{'op':45s} {head:>9s} {'proj ms':>9s} {'ratio':>6s}")
for k in keys[:35]:
    a, b = base.get(k, 0), proj.get(k, 0)
    print(f"{k[:45]:45s} {a:9.1f} {b:9.1f} {b / a if a else float('nan'):6.2f}")
print(f"{'TOTAL':45s} {sum(base.values()):9.1f} {sum(proj.values()):9.1f} {sum(proj.values()) / sum(base.values()):6.2f}")
