"""Where a CPU training step's time goes: the reference-style step vs this project's (issue 29).

    OMP_NUM_THREADS=1 python benchmarks/profile_step.py [AMP off|bf16] [CHANNELS_LAST off|on] [DROPOUT_MASKS auto|torch|words]

torch.profiler over 4 steps of each (small config, after 2 warm-up steps), self CPU time per step
and op, the 35 largest ops. Prefix ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 to see an AVX2 CPU.
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
rows = {"reference": ts.reference_step(cfg, dev, 32)[0],
        "project": ts.project_step(cfg, dev, 32, ts.Row("p", "project", amp=amp, compile="off", channels_last=cl, pass_layout="joint", dropout_masks=masks))[0]}
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
keys = sorted(set(res["reference"]) | set(res["project"]), key=lambda k: -max(res["reference"].get(k, 0), res["project"].get(k, 0)))
print(f"{'op':45s} {'ref ms':>9s} {'proj ms':>9s}")
for k in keys[:35]:
    print(f"{k[:45]:45s} {res['reference'].get(k,0):9.1f} {res['project'].get(k,0):9.1f}")
print(f"{'TOTAL':45s} {sum(res['reference'].values()):9.1f} {sum(res['project'].values()):9.1f}")
