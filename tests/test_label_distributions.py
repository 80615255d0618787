import math

import pytest
import torch

from cbdm_core.errors import CbdmError
from cbdm_core.label_distributions import resolve_label_distribution

COUNTS = torch.tensor([400, 100, 25, 4])


def test_train_is_empirical_frequency():
    p = resolve_label_distribution("train", COUNTS)
    assert torch.allclose(p, COUNTS.float() / COUNTS.sum())


def test_bal_is_uniform():
    assert torch.allclose(resolve_label_distribution("bal", COUNTS), torch.full((4,), 0.25))


def test_sqrt_is_proportional_to_root_counts():
    p = resolve_label_distribution("sqrt", COUNTS)
    roots = torch.tensor([20.0, 10.0, 5.0, 2.0])
    assert torch.allclose(p, roots / roots.sum())


@pytest.mark.parametrize("q", [0.0, 0.25, 1.0, 2.0])
def test_pow(q):
    p = resolve_label_distribution(f"pow:{q}", COUNTS)
    w = COUNTS.double() ** q
    assert torch.allclose(p.double(), w / w.sum(), atol=1e-7)
    assert math.isclose(float(p.sum()), 1.0, rel_tol=1e-6)


def test_pow_needs_a_number():
    with pytest.raises(CbdmError):
        resolve_label_distribution("pow", COUNTS)
    with pytest.raises(CbdmError):
        resolve_label_distribution("pow:abc", COUNTS)


def test_empirical_draws_follow_probabilities():
    p = resolve_label_distribution("sqrt", COUNTS)
    g = torch.Generator().manual_seed(0)
    draws = torch.multinomial(p, 200_000, replacement=True, generator=g)
    freq = torch.bincount(draws, minlength=4).float() / 200_000
    assert torch.allclose(freq, p, atol=0.005)
