"""Supervised contrastive loss (Khosla et al., NeurIPS 2020), with the conventions of
pytorch-metric-learning's ``SupConLoss`` (the implementation CORAL's released code uses).

For L2-normalised embeddings ``z`` and labels ``y``, anchor ``i`` with positives
``P(i) = {p != i : y_p = y_i}`` has

    l_i = -1/|P(i)| * sum_{p in P(i)} log( exp(z_i.z_p / tau) / sum_{a != i} exp(z_i.z_a / tau) ).

Conventions (pytorch-metric-learning's, checked against it in the tests):
- an anchor with no positive contributes nothing;
- the loss is the mean of ``l_i`` over the anchors with ``l_i > 0`` (its ``AvgNonZeroReducer``);
  this differs from "mean over anchors with a positive" only for an anchor whose sole
  other row is its one positive (then ``l_i = 0`` exactly and it is left out);
- a batch with no positive pair, or no pair of different labels, gives 0.
A zero result stays connected to ``z`` (``0 * z.sum()``) so every parameter upstream gets a
(zero) gradient, as distributed data-parallel training expects.
"""

from __future__ import annotations

import torch


def supcon_loss(z: torch.Tensor, y: torch.Tensor, tau: float) -> torch.Tensor:
    """SupCon over rows of ``z`` ``[N, D]`` (already L2-normalised) with labels ``y`` ``[N]``."""
    n = z.shape[0]
    zero = z.sum() * 0.0
    if n < 2:
        return zero
    same = y[:, None] == y[None, :]
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    pos = same & ~eye
    if not pos.any() or same.all():
        return zero
    logits = (z @ z.t() / tau).masked_fill(eye, float("-inf"))  # a != i in the denominator
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    n_pos = pos.sum(dim=1)
    per_anchor = -log_prob.masked_fill(~pos, 0.0).sum(dim=1) / n_pos.clamp(min=1)
    counted = per_anchor > 0
    if not counted.any():
        return zero
    return per_anchor[counted].mean() + zero
