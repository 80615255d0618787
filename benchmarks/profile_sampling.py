"""Where the prepared sampling network's forward spends its time (issue 29).

    OMP_NUM_THREADS=1 python benchmarks/profile_sampling.py bf16|fp32

torch.profiler over 3 forwards of 128 rows of the small U-Net's prepared copy (NHWC; bf16 weights
with fp32 GroupNorm for bf16), self CPU time per op and its share.
"""
from pathlib import Path
import sys, torch
sys.path.insert(0, str(Path(__file__).resolve().parent))
from sample_peer import lively
from train_step import CONFIGS, make_unet
from cbdm_core.sampling.cpu_choice import SamplingChoice, prepare_network
torch.set_num_threads(1)
cfg = CONFIGS["small"]; model = lively(make_unet(cfg, torch.device("cpu"))).eval()
NHWC = SamplingChoice(fp32_channels_last=True, bf16_weights=True, bf16_channels_last=True, compile=False, evidence="")
mode = sys.argv[1]
net = prepare_network(model, mode, NHWC)
rows = 128
x = torch.randn(rows, 3, 32, 32); t = torch.randint(0, 1000, (rows,)); y = torch.randint(0, 100, (rows,))
from torch.profiler import profile, ProfilerActivity
with torch.no_grad():
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if mode == "bf16" else torch.no_grad()
    with ctx:
        net(x, t, y); net(x, t, y)
        with profile(activities=[ProfilerActivity.CPU]) as p:
            for _ in range(3): net(x, t, y)
tot = sum(e.self_cpu_time_total for e in p.key_averages())
for e in sorted(p.key_averages(), key=lambda e: -e.self_cpu_time_total)[:18]:
    print(f"{e.key[:50]:50s} {e.self_cpu_time_total/3e3:8.1f} ms {100*e.self_cpu_time_total/tot:5.1f}%")
print("total ms per forward", tot / 3e3)
