"""The README.md (model card) of a diffusers export: what the model is, its classes, how to load it."""

from __future__ import annotations

from typing import Any


def _class_table(names: list[str], counts: list[Any]) -> str:
    rows = ["| label | class | training images |", "|---:|---|---:|"]
    for i, name in enumerate(names):
        rows.append(f"| {i} | {name} | {counts[i] if i < len(counts) else '?'} |")
    rows.append(f"| {len(names)} | (null label: unconditional) | - |")
    return "\n".join(rows)


def model_card(run: Any, weights: str) -> str:
    """Markdown model card of the exported run."""
    cfg, meta, n = run.config, run.meta, run.num_classes
    names = [str(x) for x in meta.class_names or range(n)]
    counts = list(meta.class_counts or [])
    dataset = meta.dataset if meta.dataset is not None else cfg.data.dataset
    methods = ", ".join(m.name for m in cfg.objective.methods) or "ddpm (plain)"
    d = cfg.diffusion
    return f"""---
library_name: diffusers
tags: [class-conditional, image-generation, cbdm, long-tailed]
---

# Class-conditional DDPM U-Net exported from cbdm

- dataset: `{dataset}`, {n} classes, {meta.image_size}x{meta.image_size}, \
{meta.channels} channel(s)
- training: methods {methods}, label dropout p_uncond = {cfg.objective.p_uncond}, step {run.step}
- weights: {'EMA' if weights == 'ema' else 'raw (non-EMA)'}
- schedule: {d.schedule}, T = {d.T} (scheduler/scheduler_config.json); epsilon prediction

## Classes

{_class_table(names, counts)}

## Usage

```python
from diffusers import DiffusionPipeline

# pipeline.py (in this folder) holds the class-conditional pipeline; trust_remote_code runs it.
pipe = DiffusionPipeline.from_pretrained("PATH", trust_remote_code=True)
images = pipe(class_labels=[0, 1, 2], guidance_scale=1.0, num_inference_steps=100).images
```

Guidance is classifier-free in cbdm's form: `eps = (1 + w) eps(x, y) - w eps(x, null)`;
`guidance_scale=0` is plain conditional sampling, label {n} is unconditional. The scheduler is
DDIM with eta 0 (deterministic), as `cbdm sample --sampler ddim` samples.
"""
