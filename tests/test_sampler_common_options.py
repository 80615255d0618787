"""Issue 28 item 5: a sampler spec declares which common options (``eta``, ``clip_denoised``)
its ``run`` takes; ``sample()`` passes only those and refuses a set one the sampler lacks."""

from __future__ import annotations

import math
import re

import pytest
import torch

from cbdm_core.errors import CbdmError
from cbdm_core.interfaces import SamplerSpec
from cbdm_core.registry import lookup
from cbdm_core.sampling import api
from cbdm_core.schedules import LinearSchedule

SCHEDULE = LinearSchedule(T=10)


class _Zero:
    num_classes = 2

    def __call__(self, x, t, y):
        return torch.zeros_like(x)


def _inputs():
    return torch.zeros(2, 1, 2, 2), torch.tensor([0, 1])


def _recording(monkeypatch, **spec_kwargs) -> list[dict]:
    """Make every sampler name resolve to a spec whose run records the keywords it got."""
    seen: list[dict] = []

    def run(denoise_fn, schedule, x_T, y, **kwargs):
        seen.append(kwargs)
        return x_T

    monkeypatch.setattr(api, "_lookup", lambda kind, name: SamplerSpec(run=run, **spec_kwargs))
    return seen


def test_a_sampler_gets_only_the_common_options_it_declares(monkeypatch):
    seen = _recording(monkeypatch, common_options=("clip_denoised",))
    api.sample(_Zero(), SCHEDULE, *_inputs(), sampler="mine", steps=3, clip_denoised=True)
    assert "eta" not in seen[0] and seen[0]["clip_denoised"] is True
    assert seen[0]["steps"] == 3 and {"generator", "callback"} <= set(seen[0])


def test_a_spec_without_a_declaration_gets_every_common_option(monkeypatch):
    seen = _recording(monkeypatch)  # third-party specs written before the field existed
    api.sample(_Zero(), SCHEDULE, *_inputs(), sampler="mine", steps=3, eta=0.5)
    assert seen[0]["eta"] == 0.5 and seen[0]["clip_denoised"] is None


def test_a_set_option_the_sampler_lacks_is_refused_with_its_line(monkeypatch):
    _recording(monkeypatch, common_options=("eta",), refusals={"eta": "unused"})
    with pytest.raises(CbdmError, match=r"^the mine sampler takes no clip_denoised \(--clip/--no-clip\)$"):
        api.sample(_Zero(), SCHEDULE, *_inputs(), sampler="mine", steps=3, clip_denoised=False)
    _recording(monkeypatch, common_options=(), refusals={"eta": "why not, and what instead"})
    with pytest.raises(CbdmError, match="^why not, and what instead$"):
        api.sample(_Zero(), SCHEDULE, *_inputs(), sampler="mine", steps=3, eta=0.1)


@pytest.mark.parametrize("name, steps", [("ddpm", None), ("heun", 2)])
def test_ddpm_and_heun_take_clipping_but_no_eta(name, steps):
    spec = lookup("sampler", name)
    assert spec.common_options == ("clip_denoised",)
    for eta in (0.5, math.nan):  # NaN counts as set, as the samplers' own check treated it
        with pytest.raises(CbdmError, match=f"^{re.escape(spec.refusals['eta'])}$"):
            api.sample(_Zero(), SCHEDULE, *_inputs(), sampler=name, steps=steps, eta=eta)
    out = api.sample(_Zero(), SCHEDULE, *_inputs(), sampler=name, steps=steps, eta=0.0, clip_denoised=False,
                     generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 1, 2, 2) and torch.isfinite(out).all()


def test_ddim_takes_both():
    assert set(lookup("sampler", "ddim").common_options) == {"eta", "clip_denoised"}
