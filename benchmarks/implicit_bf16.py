"""oneDNN's implicit bf16 in fp32 convolutions vs the prepared bf16 copy (issue 29).

    OMP_NUM_THREADS=1 python benchmarks/implicit_bf16.py

One 128-row forward of the small U-Net: the fp32 NHWC copy, the bf16 copy (bf16 weights, fp32
GroupNorm), and the fp32 copy with torch.backends.mkldnn.{conv,matmul}.fp32_precision = "bf16";
relative difference to fp32, then CPU s per forward in 3 interleaved rounds.
"""
from pathlib import Path
import sys, time, torch
sys.path.insert(0, str(Path(__file__).resolve().parent))
from sample_peer import lively
from train_step import CONFIGS, make_unet
from cbdm_core.sampling.cpu_choice import SamplingChoice, prepare_network
torch.set_num_threads(1)
cfg = CONFIGS["small"]; model = lively(make_unet(cfg, torch.device("cpu"))).eval()
C = SamplingChoice(fp32_channels_last=True, bf16_weights=True, bf16_channels_last=True, compile=False, evidence="")
fp32 = prepare_network(model, "fp32", C); bf16 = prepare_network(model, "bf16", C)
rows = 128
g = torch.Generator().manual_seed(0)
x = torch.randn(rows, 3, 32, 32, generator=g); t = torch.randint(0, 1000, (rows,), generator=g); y = torch.randint(0, 100, (rows,), generator=g)
def run_fp32(): return fp32(x, t, y)
def run_bf16():
    with torch.autocast("cpu", dtype=torch.bfloat16): return bf16(x, t, y)
def run_fpmath():
    torch.backends.mkldnn.conv.fp32_precision = "bf16"; torch.backends.mkldnn.matmul.fp32_precision = "bf16"
    try: return fp32(x, t, y)
    finally:
        torch.backends.mkldnn.conv.fp32_precision = "none"; torch.backends.mkldnn.matmul.fp32_precision = "none"
fs = dict(fp32=run_fp32, bf16copy=run_bf16, fp32_mathbf16=run_fpmath)
with torch.no_grad():
    ref = run_fp32()
    for k, f in fs.items():
        o = f(); print(k, f"{((o-ref).abs().max()/ref.abs().max()).item():.2e}")
    for r in range(3):
        line = []
        for k, f in fs.items():
            t0 = time.process_time(); f(); line.append(f"{k} {time.process_time()-t0:.3f}s")
        print(" ".join(line))
