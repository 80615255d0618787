"""Property-based tests of the configuration models and the long-tail count function."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cbdm_core import long_tail_counts
from cbdm_core.config import TrainConfig, parse_train_config
from cbdm_core.errors import CbdmError


@settings(max_examples=200, deadline=None)
@given(n_max=st.integers(1, 10_000), classes=st.integers(1, 200), imb=st.floats(1e-4, 1.0))
def test_exp_counts_are_monotone_and_bounded(n_max, classes, imb):
    counts = long_tail_counts(n_max, classes, imb, "exp")
    assert len(counts) == classes
    assert counts[0] == n_max
    assert all(a >= b for a, b in zip(counts, counts[1:]))
    assert all(1 <= c <= n_max for c in counts)
    if classes > 1:
        assert abs(counts[-1] - max(1, int(n_max * imb))) <= 1


@settings(max_examples=100, deadline=None)
@given(n_max=st.integers(1, 10_000), classes=st.integers(2, 200), imb=st.floats(1e-4, 1.0))
def test_step_counts_have_two_levels(n_max, classes, imb):
    counts = long_tail_counts(n_max, classes, imb, "step")
    assert set(counts) <= {n_max, max(1, int(n_max * imb))}
    assert counts[0] == n_max


@settings(max_examples=50, deadline=None)
@given(imb=st.one_of(st.floats(max_value=0.0, allow_nan=False), st.floats(min_value=1.0000001, allow_infinity=False)))
def test_imbalance_outside_unit_interval_is_refused(imb):
    with pytest.raises(CbdmError):
        long_tail_counts(100, 10, imb)


@settings(max_examples=100, deadline=None)
@given(lr=st.floats(allow_nan=False), steps=st.integers(-10, 10), batch=st.integers(-5, 5),
       p=st.floats(-1, 2, allow_nan=False), ema=st.floats(-1, 2, allow_nan=False))
def test_config_accepts_exactly_the_valid_values(lr, steps, batch, p, ema):
    data = {"optim": {"lr": lr, "steps": steps, "batch_size": batch, "ema_decay": ema},
            "objective": {"p_uncond": p}}
    valid = 0 < lr <= 1 and steps >= 1 and batch >= 1 and 0 <= p <= 1 and 0 <= ema < 1
    if valid:
        cfg = parse_train_config(data)
        assert cfg.optim.lr == lr and cfg.optim.steps == steps
        # Round trip through the saved form.
        assert TrainConfig.model_validate(cfg.model_dump(mode="json")) == cfg
    else:
        with pytest.raises(CbdmError) as exc:
            parse_train_config(data)
        assert "\n" not in str(exc.value)


@settings(max_examples=50, deadline=None)
@given(key=st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12),
       section=st.sampled_from(["model", "diffusion", "data", "objective", "optim", "preview", None]))
def test_unknown_keys_are_errors(key, section):
    known = TrainConfig.model_fields if section is None else type(getattr(TrainConfig(), section)).model_fields
    if key in known:
        return
    data = {key: 1} if section is None else {section: {key: 1}}
    with pytest.raises(CbdmError, match="unknown key"):
        parse_train_config(data)
