"""The fast paths compute what the plain ones do: bf16 autocast, torch.compile (and its
eager fallback), the batched [y, y'] forward, device-resident batches."""

import os
import warnings

import pytest
import torch
import yaml
from click.testing import CliRunner

from cbdm_cli.main import cli
from cbdm_core.methods.cbdm import CBDMRegularizer
from cbdm_core.checkpoint import list_checkpoints, load_checkpoint
from cbdm_core.objectives import DiffusionObjective, EpsilonLoss
from cbdm_core.schedules import LinearSchedule
from cbdm_core.training.batch_source import BatchSource
from cbdm_core.training.batches import BatchIndexer
from cbdm_core.training.ema import EMA
from cbdm_core.config import PerfConfig
from cbdm_core.errors import CbdmError
from cbdm_core.objectives import run_views
from cbdm_core.training import precision as precision_mod
from cbdm_core.training.precision import Precision, compile_module, resolve_precision
from cbdm_core.training.step import PredictModule, RoutedLoss, TrainStep

from .helpers import TINY, tiny_unet

NUM_CLASSES = 3
CUDA = torch.cuda.is_available()


def _objective(tau: float = 0.01, p_uncond: float = 0.2, y_prime=None) -> DiffusionObjective:
    schedule = LinearSchedule(T=100)
    reg = CBDMRegularizer(probs=torch.full((NUM_CLASSES,), 1 / NUM_CLASSES), tau=tau, gamma=0.25, y_prime=y_prime)
    return DiffusionObjective(schedule, NUM_CLASSES, [reg], p_uncond=p_uncond, base=RoutedLoss(EpsilonLoss(schedule)))


def _batch(b: int = 8, device: str = "cpu"):
    g = torch.Generator().manual_seed(1)
    x0 = (torch.rand(b, 1, 8, 8, generator=g) * 2 - 1).to(device)
    y = torch.randint(0, NUM_CLASSES, (b,), generator=g).to(device)
    return x0, y


def _make_step(precision: Precision = Precision(), device: str = "cpu", forward=None, eager=None) -> TrainStep:
    model = tiny_unet(NUM_CLASSES, dropout=0.0).to(device)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    objective = _objective()
    ema_model = tiny_unet(NUM_CLASSES, dropout=0.0).to(device).requires_grad_(False)
    ema_model.load_state_dict(model.state_dict())
    predict = PredictModule(model, objective.base.inner)
    return TrainStep(model, objective, torch.optim.Adam(model.parameters(), lr=1e-3), EMA(model, ema_model, 0.9),
                     forward=forward(predict) if forward else predict, eager_forward=eager or predict,
                     precision=precision, grad_clip=1.0)


def _grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def _run_steps(step: TrainStep, n: int = 2, device: str = "cpu"):
    x0, y = _batch(device=device)
    losses = []
    for i in range(n):
        torch.manual_seed(100 + i)
        losses.append(step(i, x0, y).terms["total"])
    return torch.stack(losses), torch.cat([p.detach().flatten() for p in step.model.parameters()])


# -- mixed precision --------------------------------------------------------------------------------------


def test_bf16_autocast_step_matches_fp32_on_cpu():
    fp32 = _make_step()
    bf16 = _make_step(Precision(device_type="cpu", amp_dtype=torch.bfloat16))
    x0, y = _batch()
    torch.manual_seed(0)
    a = fp32.loss(x0, y).as_dict()
    torch.manual_seed(0)
    b = bf16.loss(x0, y).as_dict()
    assert b["total"].dtype == torch.float32  # the loss itself is fp32
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=2e-2, atol=1e-6), (k, a[k], b[k])
    a["total"].backward()
    b["total"].backward()
    ga, gb = _grads(fp32.model), _grads(bf16.model)
    assert torch.nn.functional.cosine_similarity(ga, gb, dim=0) > 0.99
    # Whole steps: weights (fp32 master copies) stay close.
    la, wa = _run_steps(_make_step())
    lb, wb = _run_steps(_make_step(Precision(device_type="cpu", amp_dtype=torch.bfloat16)))
    assert all(p.dtype == torch.float32 for p in _make_step().model.parameters())
    assert torch.allclose(la, lb, rtol=2e-2)
    assert (wa - wb).abs().max() < 2e-3  # lr 1e-3: at most ~2 Adam steps of difference anywhere


def test_resolve_precision_defaults(monkeypatch):
    monkeypatch.setattr(precision_mod, "cpu_bf16_support", lambda: "")
    cpu = resolve_precision(None, torch.device("cpu"))
    # fp32-only CPUs: fp32, eager, NHWC (cpu_choice.py's row)
    assert (cpu.amp_dtype, cpu.compile, cpu.channels_last) == (None, False, True)

    class Perf:
        amp, compile, channels_last = "bf16", "on", "on"

    forced = resolve_precision(Perf(), torch.device("cpu"))
    assert (forced.amp_dtype, forced.compile, forced.channels_last) == (torch.bfloat16, True, True)
    if CUDA:
        gpu = resolve_precision(None, torch.device("cuda"))
        assert gpu.compile and gpu.channels_last and gpu.amp_dtype in (torch.bfloat16, None)


@pytest.mark.parametrize("capability, expected", [("amx_bf16", torch.bfloat16), ("avx512_bf16", torch.bfloat16),
                                                  ("", None)])
def test_auto_amp_on_cpu_follows_native_bf16(monkeypatch, capability, expected):
    monkeypatch.setattr(precision_mod, "cpu_bf16_support", lambda: capability)
    cpu = torch.device("cpu")
    assert resolve_precision(PerfConfig(), cpu).amp_dtype is expected
    assert resolve_precision(PerfConfig(amp="off"), cpu).amp_dtype is None  # an explicit choice wins
    assert resolve_precision(PerfConfig(amp="bf16"), cpu).amp_dtype is torch.bfloat16
    assert resolve_precision(PerfConfig(), cpu).as_dict()["cpu_bf16"] == capability


@pytest.mark.parametrize("flags, expected", [("fpu avx512f avx512_bf16 amx_tile amx_bf16", "amx_bf16"),
                                             ("fpu avx512f avx512_bf16", "avx512_bf16"),
                                             ("fpu avx2 avx512f", "")])
def test_cpu_bf16_support_reads_cpuinfo_flags(monkeypatch, tmp_path, flags, expected):
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    real = precision_mod._cpuinfo_flags
    monkeypatch.setattr(precision_mod, "_cpuinfo_flags", lambda: real(info))
    precision_mod.cpu_bf16_support.cache_clear()
    try:
        assert precision_mod.cpu_bf16_support() == expected
    finally:
        precision_mod.cpu_bf16_support.cache_clear()


@pytest.mark.parametrize("cap, expected", [("", "amx_bf16"), ("ALL", "amx_bf16"), ("AVX512_CORE_AMX", "amx_bf16"),
                                          ("avx512_core_bf16", "avx512_bf16"), ("AVX10_1_512", "avx512_bf16"),
                                          ("AVX512_CORE_VNNI", ""), ("AVX2", "")])
def test_cpu_bf16_support_honours_the_onednn_isa_cap(monkeypatch, tmp_path, cap, expected):
    """ONEDNN_MAX_CPU_ISA holds oneDNN's kernels to an older instruction set: bf16 is native only up to the cap."""
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile amx_bf16\n")
    real = precision_mod._cpuinfo_flags
    monkeypatch.setattr(precision_mod, "_cpuinfo_flags", lambda: real(info))
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    precision_mod.cpu_bf16_support.cache_clear()
    try:
        assert precision_mod.cpu_bf16_support() == expected
    finally:
        precision_mod.cpu_bf16_support.cache_clear()


@pytest.mark.parametrize("capability", ["amx_bf16", ""])
def test_auto_pass_layout_follows_host_memory_setting(monkeypatch, capability):
    monkeypatch.setattr(precision_mod, "cpu_bf16_support", lambda: capability)
    cpu = torch.device("cpu")
    # Kept freed memory (the CPU trainer's default): one 2B pass; memory handed back: two B passes.
    assert resolve_precision(PerfConfig(), cpu).pass_layout == "joint"
    assert resolve_precision(PerfConfig(keep_host_memory="off"), cpu).pass_layout == "split"
    for layout in ("joint", "split"):
        assert resolve_precision(PerfConfig(pass_layout=layout, keep_host_memory="off"), cpu).pass_layout == layout


def test_channels_last_step_matches_on_cpu():
    la, wa = _run_steps(_make_step())
    lb, wb = _run_steps(_make_step(Precision(channels_last=True)))
    assert torch.allclose(la, lb, rtol=1e-5, atol=1e-6)
    assert torch.allclose(wa, wb, atol=1e-5)


# -- torch.compile ------------------------------------------------------------------------------------------


@pytest.mark.skipif(os.environ.get("CBDM_TEST_COMPILE") != "1",
                    reason="compiling takes ~100 s on a 2-core CPU; set CBDM_TEST_COMPILE=1")
def test_compiled_step_matches_eager():
    la, wa = _run_steps(_make_step())
    lb, wb = _run_steps(_make_step(forward=torch.compile))
    assert torch.allclose(la, lb, rtol=1e-4, atol=1e-6)
    assert torch.allclose(wa, wb, atol=1e-4)


def test_compile_error_falls_back_with_warning(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    module = torch.nn.Linear(2, 2)
    with pytest.warns(RuntimeWarning, match="eager"):
        out, compiled = compile_module(module, True)
    assert out is module and not compiled
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert compile_module(module, False) == (module, False)


def test_failing_first_compiled_call_falls_back_to_the_same_eager_step():
    def lazily_broken(module):
        def call(*args, **kwargs):
            torch.rand(5)  # consumes random numbers before failing; the retry must not notice
            raise RuntimeError("inductor: C++ compile error")

        return call

    la, wa = _run_steps(_make_step())
    step = _make_step(forward=lazily_broken)
    with pytest.warns(RuntimeWarning, match="eager"):
        lb, wb = _run_steps(step)
    assert torch.equal(la, lb) and torch.equal(wa, wb)
    assert step.forward is step.eager_forward


def test_train_with_compile_on_falls_back_when_compile_raises(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    cfg = {**TINY, "optim": {**TINY["optim"], "steps": 2}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(cli, ["train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "a"),
                                   "--no-progress", "--compile"])
    assert res.exit_code == 0, res.output
    assert yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())["perf"]["compile"] == "on"
    res = CliRunner().invoke(cli, ["train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "b"),
                                   "--no-progress", "--no-compile"])
    assert res.exit_code == 0, res.output
    a = load_checkpoint(list_checkpoints(tmp_path / "a" / "checkpoints")[-1][1])
    b = load_checkpoint(list_checkpoints(tmp_path / "b" / "checkpoints")[-1][1])
    assert all(torch.equal(a.model[k], b.model[k]) for k in a.model)


def test_train_cli_bf16_on_cpu(tmp_path):
    cfg = {**TINY, "optim": {**TINY["optim"], "steps": 2}, "log_every": 1}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(cli, ["train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "r"),
                                   "--no-progress", "--amp", "bf16", "--set", "perf.channels_last=on"])
    assert res.exit_code == 0, res.output
    ck = load_checkpoint(list_checkpoints(tmp_path / "r" / "checkpoints")[-1][1], with_optim=True)
    assert all(v.dtype == torch.float32 for v in ck.model.values() if v.is_floating_point())
    assert all(v.dtype == torch.float32 for v in ck.ema.values() if v.is_floating_point())
    # A resume may switch the speed settings.
    res = CliRunner().invoke(cli, ["train", "--out", str(tmp_path / "r"), "--resume", "--steps", "3",
                                   "--amp", "off", "--no-progress"])
    assert res.exit_code == 0, res.output


# -- one 2B forward = two B forwards ---------------------------------------------------------------------


class _Counting(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, []

    def forward(self, x, t, y, cond=None):
        self.calls.append(x.shape[0])
        return self.model(x, t, y)


def test_batched_forward_equals_two_sequential_passes():
    b, tau, gamma = 8, 0.01, 0.25
    x0, y = _batch(b)
    g = torch.Generator().manual_seed(3)
    t = torch.randint(0, 100, (b,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    keep = torch.rand(b, generator=g) > 0.25
    y_prime = torch.randint(0, NUM_CLASSES, (b,), generator=g)

    model = tiny_unet(NUM_CLASSES, dropout=0.0)
    counting = _Counting(model)
    terms = _objective(tau, y_prime=y_prime)(counting, x0, y, t=t, noise=noise, keep=keep)
    assert counting.calls == [2 * b]  # ONE forward over [x_t, x_t]
    terms.total.backward()
    g_batched = _grads(model)

    model.zero_grad()
    schedule = LinearSchedule(T=100)
    x_t = schedule.q_sample(x0, t, noise)
    y_in = torch.where(keep, y, torch.full_like(y, NUM_CLASSES))
    eps = model(x_t, t, y_in)
    eps_p = model(x_t, t, y_prime)
    w = (tau * t.float() * keep.float()).view(-1, 1, 1, 1)
    diffusion = (eps - noise).pow(2).mean()
    reg = (w * (eps - eps_p.detach()).pow(2)).mean()
    com = (w * (eps.detach() - eps_p).pow(2)).mean()
    total = diffusion + reg + gamma * com
    total.backward()
    for name, ref in (("diffusion", diffusion), ("regularizer", reg), ("commitment", com), ("total", total)):
        assert torch.allclose(terms[name], ref, rtol=1e-5, atol=1e-9), name
    assert torch.allclose(g_batched, _grads(model), rtol=1e-4, atol=1e-7)


def test_split_layout_gives_the_joint_loss_and_gradients():
    b = 8
    x0, y = _batch(b)
    g = torch.Generator().manual_seed(5)
    t = torch.randint(0, 100, (b,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    keep = torch.rand(b, generator=g) > 0.25
    y_prime = torch.randint(0, NUM_CLASSES, (2, b), generator=g)  # two y' draws: three views
    results = {}
    for layout in ("joint", "split"):
        torch.manual_seed(0)
        model = tiny_unet(NUM_CLASSES, dropout=0.0)
        counting = _Counting(model)
        objective = _objective(0.01, y_prime=y_prime)
        objective.pass_layout = layout
        terms = objective(counting, x0, y, t=t, noise=noise, keep=keep)
        terms.total.backward()
        results[layout] = (counting.calls, terms.as_dict(), _grads(model))
    assert results["joint"][0] == [3 * b] and results["split"][0] == [b, b, b]
    for name, joint in results["joint"][1].items():
        assert torch.allclose(results["split"][1][name], joint, rtol=1e-5, atol=1e-9), name
    assert results["joint"][1]["regularizer"] > 0  # the views differ, so the check has teeth
    assert torch.allclose(results["split"][2], results["joint"][2], rtol=1e-4, atol=1e-7)


def test_run_views_rejects_an_unknown_layout():
    with pytest.raises(CbdmError, match="pass layout"):
        run_views(lambda *a: a[0], torch.zeros(2, 1), torch.zeros(2), torch.zeros(2, 2, dtype=torch.long), None,
                  "both")


def test_train_header_and_metadata_show_the_precision(tmp_path, monkeypatch):
    monkeypatch.setattr(precision_mod, "cpu_bf16_support", lambda: "avx512_bf16")
    cfg = {**TINY, "optim": {**TINY["optim"], "steps": 1}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(cli, ["train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "r"),
                                   "--no-progress", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "step: bf16" in res.output and "native bf16: avx512_bf16" in res.output
    speed = load_checkpoint(list_checkpoints(tmp_path / "r" / "checkpoints")[-1][1]).meta.speed
    assert speed["amp"] == "bf16" and speed["cpu_bf16"] == "avx512_bf16"
    assert speed["pass_layout"] == "joint"


# -- data -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("resident", [True, False])
@pytest.mark.parametrize("weighted", [False, True])
def test_device_batches_equal_dataloader_batches(resident, weighted):
    g = torch.Generator().manual_seed(0)
    n, b = 37, 8  # batches straddle epochs
    images = torch.randint(0, 256, (n, 3, 4, 4), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 5, (n,), generator=g)
    weights = torch.rand(n, generator=g) if weighted else None
    indexer = BatchIndexer(n, b, seed=7, weights=weights)
    device = torch.device("cuda" if CUDA else "cpu")
    source = BatchSource(images, labels, indexer, device, resident=resident)

    steps = list(range(12))
    reference = BatchIndexer(n, b, seed=7, weights=weights)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels),
                                         batch_sampler=[reference.indices(s).tolist() for s in steps])
    for s, (xi, yi) in zip(steps, loader):
        xb, yb = source.batch(s)
        assert xb.dtype == torch.uint8 and xb.device.type == device.type
        assert torch.equal(xb.cpu(), xi) and torch.equal(yb.cpu(), yi)


# -- CUDA only ------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_step_makes_no_host_sync():
    """Batch gather + the trainer's step (bf16, channels_last, fused Adam, EMA) never wait for the GPU."""
    from cbdm_core.images import to_float
    from cbdm_core.training.step import build_train_step

    cuda = torch.device("cuda")
    model = tiny_unet(NUM_CLASSES, dropout=0.1).to(cuda)
    ema_model = tiny_unet(NUM_CLASSES).to(cuda).requires_grad_(False)
    schedule = LinearSchedule(T=100)
    reg = CBDMRegularizer(probs=torch.full((NUM_CLASSES,), 1 / NUM_CLASSES), tau=0.01)
    step = build_train_step(model, ema_model, EpsilonLoss(schedule), [reg], schedule=schedule,
                            num_classes=NUM_CLASSES, precision=Precision("cuda", torch.bfloat16, True, False))
    images = torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8)
    source = BatchSource(images, torch.randint(0, NUM_CLASSES, (40,)), BatchIndexer(40, 8, seed=0), cuda)

    def one(i):
        torch.manual_seed(i)
        x, y = source.batch(i)
        step(i, to_float(x).contiguous(memory_format=torch.channels_last), y, lr=1e-3)

    for i in range(2):  # warm-up: lazy init, allocator, optimizer state
        one(i)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        one(2)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_bf16_channels_last_matches_fp32():
    la, wa = _run_steps(_make_step(device="cuda"), device="cuda")
    fast = Precision(device_type="cuda", amp_dtype=torch.bfloat16, channels_last=True)
    lb, wb = _run_steps(_make_step(fast, device="cuda"), device="cuda")
    assert torch.allclose(la, lb, rtol=3e-2)
    assert (wa - wb).abs().max() < 2e-3


@pytest.mark.skipif(not CUDA or os.environ.get("CBDM_TEST_COMPILE") != "1", reason="needs CUDA and CBDM_TEST_COMPILE=1")
def test_cuda_compiled_bf16_step_matches_eager():
    fast = Precision(device_type="cuda", amp_dtype=torch.bfloat16, channels_last=True)
    la, wa = _run_steps(_make_step(fast, device="cuda"), device="cuda")
    lb, wb = _run_steps(_make_step(fast, device="cuda", forward=torch.compile), device="cuda")
    assert torch.allclose(la, lb, rtol=3e-2)
    assert (wa - wb).abs().max() < 2e-3


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_train_and_resume_with_bf16_channels_last(tmp_path):
    cfg = {**TINY, "optim": {**TINY["optim"], "steps": 3}, "device": "cuda",
           "perf": {"amp": "bf16", "compile": "off", "channels_last": "on"}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    run = tmp_path / "r"
    res = CliRunner().invoke(cli, ["train", "--config", str(tmp_path / "c.yaml"), "--out", str(run), "--no-progress"])
    assert res.exit_code == 0, res.output
    # Resuming loads contiguous optimizer state into channels_last parameters (fused Adam).
    res = CliRunner().invoke(cli, ["train", "--out", str(run), "--resume", "--steps", "5", "--no-progress"])
    assert res.exit_code == 0, res.output
    ck = load_checkpoint(list_checkpoints(run / "checkpoints")[-1][1])
    assert ck.step == 5 and all(torch.isfinite(v).all() for v in ck.model.values())
