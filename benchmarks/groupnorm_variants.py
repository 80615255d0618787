"""GroupNorm + SiLU on a bf16 NHWC activation, each way the sampling copy could compute it (issue 29).

    OMP_NUM_THREADS=1 python benchmarks/groupnorm_variants.py

[128, 128, 16, 16], 32 groups: fp32 GroupNorm between casts (today's), torch's bf16 GroupNorm (bf16
or fp32 affine), through NCHW, and by hand (var_mean / fp32 sums + addcmul); max relative error
against fp32 NCHW, then CPU ms per 10 calls in 3 interleaved rounds.
"""
import time, torch, torch.nn.functional as F
torch.set_num_threads(1)
B, C, H, G = 128, 128, 16, 32
x = torch.randn(B, C, H, H).to(torch.bfloat16).contiguous(memory_format=torch.channels_last) * 3 + 1
w = torch.randn(C); b = torch.randn(C)
def fp32gn(x): return F.silu(F.group_norm(x.float(), G, w, b, 1e-5).to(x.dtype))
def bf16gn(x): return F.silu(F.group_norm(x, G, w.bfloat16(), b.bfloat16(), 1e-5))
def mixgn(x): return F.silu(F.group_norm(x, G, w, b, 1e-5))
def nchw(x): return F.silu(F.group_norm(x.contiguous(), G, w, b, 1e-5)).contiguous(memory_format=torch.channels_last)
def manual(x):
    Bn, Cn, Hn, Wn = x.shape
    v = x.permute(0, 2, 3, 1).reshape(Bn, Hn * Wn, G, Cn // G)  # NHWC memory -> view
    var, mean = torch.var_mean(v, dim=(1, 3), correction=0, keepdim=True)  # bf16 out
    rstd = (var.float() + 1e-5).rsqrt()
    scale = rstd * w.view(1, 1, G, Cn // G)
    shift = b.view(1, 1, G, Cn // G) - mean.float() * scale
    out = torch.addcmul(shift.bfloat16(), v, scale.bfloat16())
    return F.silu(out).reshape(Bn, Hn, Wn, Cn).permute(0, 3, 1, 2)
def manual32(x):
    Bn, Cn, Hn, Wn = x.shape
    v = x.permute(0, 2, 3, 1).reshape(Bn, Hn * Wn, G, Cn // G)
    s = v.sum(dim=(1, 3), keepdim=True, dtype=torch.float32)
    s2 = (v.float().square()).sum(dim=(1, 3), keepdim=True)
    n = Hn * Wn * (Cn // G); mean = s / n; var = s2 / n - mean.square()
    rstd = (var + 1e-5).rsqrt(); scale = rstd * w.view(1, 1, G, Cn // G); shift = b.view(1, 1, G, Cn // G) - mean * scale
    out = torch.addcmul(shift.bfloat16(), v, scale.bfloat16())
    return F.silu(out).reshape(Bn, Hn, Wn, Cn).permute(0, 3, 1, 2)
ref = F.silu(F.group_norm(x.float().contiguous(), G, w, b, 1e-5))
fs = dict(fp32gn=fp32gn, bf16gn=bf16gn, mixgn=mixgn, nchw=nchw, manual=manual, manual32=manual32)
for k, f in fs.items():
    o = f(x); print(k, o.dtype, o.is_contiguous(memory_format=torch.channels_last), f"{((o.float()-ref).abs().max()/ref.abs().max()).item():.2e}")
for r in range(3):
    line = []
    for k, f in fs.items():
        t0 = time.process_time()
        for _ in range(10): f(x)
        line.append(f"{k} {(time.process_time()-t0)*100:.1f}ms")
    print(" ".join(line))
