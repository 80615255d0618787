"""Gaussian noise for samplers, reproducible per sample.

With a list of per-sample generators every image draws its noise (``x_T`` and
each step's noise) from its own stream, so a given seed and sample index give
the same image whatever the batch size or batch position. Noise is drawn on the
generator's device (the CPU for :func:`sample_generators`) in float32 and then
moved and cast, so CPU and CUDA runs, and fp32/fp16/bf16 runs, see the same
noise values.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch

from ..errors import CbdmError

GeneratorArg = Union[None, torch.Generator, Sequence[torch.Generator]]

_MASK64 = (1 << 64) - 1
# A multiplier keeping (seed, index) pairs apart before mixing: distinct for
# every index below 1_000_003 within one seed.
_SEED_STRIDE = 1_000_003


def _splitmix64(x: int) -> int:
    """SplitMix64 finaliser: nearby inputs map to unrelated 64-bit outputs."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def sample_seed(seed: int, index: int) -> int:
    """The generator seed of global sample ``index`` under run seed ``seed``.

    ``splitmix64((seed * 1_000_003 + index) mod 2**64)``, kept to 63 bits. Mixing
    matters: torch's Mersenne Twister seeded with consecutive integers gives
    streams that are fine in practice, but the mixed seeds also keep different
    runs (``seed`` vs ``seed + 1``) from sharing a shifted set of streams.
    """
    if index < 0:
        raise CbdmError(f"sample indices must be >= 0, got {index}")
    return _splitmix64((int(seed) * _SEED_STRIDE + int(index)) & _MASK64) & ((1 << 63) - 1)


def sample_generators(seed: int, indices: Sequence[int] | range) -> list[torch.Generator]:
    """One CPU generator per global sample index, seeded by :func:`sample_seed`.

    Pass the result as ``generator=`` to a sampler, and to
    :func:`randn_like_per_sample` for ``x_T``; the same ``(seed, index)`` then
    gives the same image in any batch.
    """
    gens = []
    for i in indices:
        g = torch.Generator(device="cpu")
        g.manual_seed(sample_seed(seed, int(i)))
        gens.append(g)
    return gens


def randn_like_per_sample(shape_per_sample: Sequence[int], generators: Sequence[torch.Generator],
                          device: torch.device | str | None = None,
                          dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[len(generators), *shape_per_sample]`` standard normal noise, row ``i`` from ``generators[i]``.

    Drawn in float32 on each generator's device, then moved to ``device`` and cast to ``dtype``.
    """
    if len(generators) == 0:
        raise CbdmError("need at least one generator to draw per-sample noise")
    shape = tuple(int(s) for s in shape_per_sample)
    rows = [torch.randn(shape, generator=g, device=g.device, dtype=torch.float32) for g in generators]
    return torch.stack([r.to(device=device) for r in rows]).to(dtype=dtype)


def randn_noise(shape: Sequence[int], generator: GeneratorArg, device: torch.device,
                dtype: torch.dtype) -> torch.Tensor:
    """Noise of ``shape`` (batch first) from no generator, one generator, or one per sample."""
    shape = tuple(int(s) for s in shape)
    if generator is None:
        return torch.randn(shape, device=device, dtype=dtype)
    if isinstance(generator, torch.Generator):
        # Drawn where the generator lives, so a CPU generator gives the same
        # numbers whatever device the sampler runs on.
        z = torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32)
        return z.to(device=device, dtype=dtype)
    gens = list(generator)
    if len(gens) != shape[0]:
        raise CbdmError(f"got {len(gens)} per-sample generators for a batch of {shape[0]}")
    return randn_like_per_sample(shape[1:], gens, device, dtype)


def check_generator(generator: GeneratorArg, batch: int) -> None:
    """Fail early (before any network call) on a generator list of the wrong length or type."""
    if generator is None or isinstance(generator, torch.Generator):
        return
    try:
        gens = list(generator)
    except TypeError:
        raise CbdmError(
            f"generator must be a torch.Generator or a list of them, got {type(generator).__name__}"
        ) from None
    if len(gens) != batch:
        raise CbdmError(f"got {len(gens)} per-sample generators for a batch of {batch}")
    if not all(isinstance(g, torch.Generator) for g in gens):
        raise CbdmError("every entry of the generator list must be a torch.Generator")


__all__ = [
    "GeneratorArg",
    "sample_seed",
    "sample_generators",
    "randn_like_per_sample",
    "randn_noise",
    "check_generator",
]
