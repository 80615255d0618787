"""Dropout masks from 64-bit random words (cbdm_core/nets/dropout.py, ``perf.dropout_masks``): the
mask is i.i.d. Bernoulli with the rounded keep probability in every piece of a word, scaled to
keep the expectation, laid out like its input; the layer is ``nn.Dropout`` with torch's masks;
the trainer picks words on the CPU."""

import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from cbdm_core.config import PerfConfig
from cbdm_core.nets.dropout import (Dropout, dropout, kept_units, use_dropout_masks, word_keep_mask,
                                    word_masks_apply)
from cbdm_core.training.precision import resolve_precision

from .helpers import tiny_unet

ALPHA = 1e-4  # a fixed seed makes each test deterministic; this only says how unusual a failure is


def _mask(shape, p, seed=0, memory_format=torch.contiguous_format):
    torch.manual_seed(seed)
    return word_keep_mask(torch.empty(shape).contiguous(memory_format=memory_format), p)


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_every_piece_of_a_word_keeps_at_the_rounded_rate(p):
    n = 1 << 20
    mask = _mask((n,), p)
    keep = kept_units(p) / 65536
    kept = (mask > 0).reshape(-1, 4)  # element i of a row comes from piece i of one 64-bit word
    for piece in range(4):
        k = int(kept[:, piece].sum())
        assert stats.binomtest(k, n // 4, keep).pvalue > ALPHA, f"piece {piece}: {k / (n // 4):.4f} vs {keep:.4f}"
    # Neighbouring pieces are independent: the 2x2 table of (piece 0, piece 1) kept.
    a, b = kept[:, 0], kept[:, 1]
    table = [[int((a & b).sum()), int((a & ~b).sum())], [int((~a & b).sum()), int((~a & ~b).sum())]]
    assert stats.chi2_contingency(table).pvalue > ALPHA


def test_kept_values_are_scaled_so_the_expectation_is_the_input():
    p = 0.1
    mask = _mask((1 << 18,), p)
    keep = kept_units(p) / 65536
    values = mask.unique().tolist()
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(1 / keep, rel=1e-6)
    assert abs(keep - (1 - p)) <= 1e-3 * p  # p = 0.1 rounds to 6554/65536
    # Mean of the mask is 1 in expectation: a one-sample t-test against 1.
    assert stats.ttest_1samp(mask.double().numpy(), 1.0).pvalue > ALPHA


def test_mask_follows_the_input_layout_and_dtype():
    x = torch.randn(4, 8, 5, 5).contiguous(memory_format=torch.channels_last)
    m = word_keep_mask(x, 0.2)
    assert m.shape == x.shape and m.stride() == x.stride() and m.dtype == x.dtype
    bf = word_keep_mask(torch.randn(3, 7, dtype=torch.bfloat16), 0.2)
    assert bf.dtype == torch.bfloat16 and bf.shape == (3, 7)
    strided = torch.randn(6, 10)[:, ::2]  # not dense: masked through a contiguous copy
    assert word_keep_mask(strided, 0.2).shape == strided.shape
    odd = word_keep_mask(torch.randn(7), 0.5)  # not a multiple of four pieces
    assert odd.shape == (7,)


def test_rounding_is_allowed_only_where_it_hardly_moves_p():
    assert word_masks_apply(0.1) and word_masks_apply(0.5) and word_masks_apply(0.9)
    assert not word_masks_apply(0.0) and not word_masks_apply(1.0)
    assert not word_masks_apply(1e-4)  # would round to 7 / 65536 = 1.07e-4: torch's mask instead
    x = torch.randn(1000)
    torch.manual_seed(3)
    want = F.dropout(x, 1e-4, True)
    torch.manual_seed(3)
    assert torch.equal(dropout(x, 1e-4, True, "words"), want)


def test_the_layer_is_nn_dropout_with_torch_masks():
    x = torch.randn(8, 4, 6, 6)
    layer, ref = Dropout(0.3), torch.nn.Dropout(0.3)
    torch.manual_seed(5)
    want = ref(x)
    torch.manual_seed(5)
    assert torch.equal(layer(x), want)
    layer.eval()
    assert layer(x) is x
    with pytest.raises(ValueError):
        Dropout(1.5)


def test_word_masks_draw_another_stream_deterministically_and_backpropagate_the_mask():
    x = torch.randn(8, 4, 6, 6, requires_grad=True)
    layer = Dropout(0.3)
    layer.masks = "words"
    torch.manual_seed(5)
    out = layer(x)
    torch.manual_seed(5)
    again = layer(x)
    torch.manual_seed(5)
    torch_out = F.dropout(x, 0.3, True)
    assert torch.equal(out, again)
    assert not torch.equal(out, torch_out)
    out.sum().backward()
    scale = 65536 / kept_units(0.3)
    kept = out.detach() != 0
    assert torch.allclose(x.grad[kept], torch.full_like(x.grad[kept], scale))
    assert torch.all(x.grad[~kept] == 0)
    assert torch.allclose(out.detach()[kept], x.detach()[kept] * scale)


def test_use_dropout_masks_sets_every_layer_of_the_unet():
    model = tiny_unet(dropout=0.1)
    layers = [m for m in model.modules() if isinstance(m, Dropout)]
    assert layers and all(m.masks == "torch" for m in layers)
    assert use_dropout_masks(model, "words") == len(layers)
    assert all(m.masks == "words" for m in layers)
    assert not any(type(m) is torch.nn.Dropout for m in model.modules())
    with pytest.raises(ValueError, match="unknown dropout mask kind"):
        use_dropout_masks(model, "fast")


def test_unet_state_dict_is_unchanged_by_the_layer():
    # No parameters or buffers: the state dict equals that of the same U-Net built with nn.Dropout,
    # so checkpoints written before the layer existed load as they are.
    model = tiny_unet(dropout=0.1)
    keys = list(model.state_dict())
    for seq in [m for m in model.modules() if isinstance(m, torch.nn.Sequential)]:
        for i, layer in enumerate(seq):
            if isinstance(layer, Dropout):
                seq[i] = torch.nn.Dropout(layer.p)
    assert list(model.state_dict()) == keys
    assert not list(Dropout(0.1).parameters()) and not list(Dropout(0.1).buffers())


def test_auto_means_words_on_the_cpu_and_torch_on_cuda():
    cpu = resolve_precision(PerfConfig(), torch.device("cpu"))
    assert cpu.dropout_masks == "words" and cpu.as_dict()["dropout_masks"] == "words"
    assert "word dropout masks" in cpu.describe()
    assert resolve_precision(PerfConfig(dropout_masks="torch"), torch.device("cpu")).dropout_masks == "torch"
    cuda = resolve_precision(PerfConfig(amp="off"), torch.device("cuda"))
    assert cuda.dropout_masks == "torch"
    assert resolve_precision(PerfConfig(amp="off", dropout_masks="words"), torch.device("cuda")).dropout_masks == "words"


def test_the_cpu_train_step_uses_word_masks():
    from cbdm_core.objectives import EpsilonLoss
    from cbdm_core.schedules import LinearSchedule
    from cbdm_core.training.step import build_train_step

    model = tiny_unet(dropout=0.1)
    ema = tiny_unet(dropout=0.1).eval().requires_grad_(False)
    schedule = LinearSchedule(T=50)
    precision = resolve_precision(PerfConfig(amp="off"), torch.device("cpu"))
    step = build_train_step(model, ema, EpsilonLoss(schedule), [], schedule=schedule, num_classes=3,
                            precision=precision)
    assert all(m.masks == "words" for m in model.modules() if isinstance(m, Dropout))
    x0, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    result = step(0, x0, y, lr=1e-3)
    assert bool(result.finite)
