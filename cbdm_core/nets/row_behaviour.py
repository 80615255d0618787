"""What a network in training mode does to the rows of one pass: random layers and coupled rows.

The objective leaves rows out of the shared pass when no loss reads them, and a method may
mark an extra row unread when it would repeat the main row (same ``x_t``, time and label).
Both are exact only for some networks: repeating needs a pass with no random layer (two
dropout masks give two predictions), and leaving rows out at all needs rows that do not see
each other (batch norm's statistics change with the rows in the batch).

Layers are recognised by type: torch's dropout layers and the project's
:class:`~cbdm_core.nets.dropout.Dropout` with ``p > 0``, timm's ``DropPath``/``DropBlock2d``
(``drop_prob > 0``) and ``PatchDropout`` (``prob > 0``), and torch's batch norm layers. A
backbone with a random layer of another kind sets ``cbdm_random_in_training = True`` on that
module (or on the backbone); one whose rows see each other otherwise sets
``cbdm_couples_rows = True``.
"""

from __future__ import annotations

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd

from .dropout import Dropout


def _is_random(module: nn.Module) -> bool:
    if getattr(module, "cbdm_random_in_training", False):
        return True
    if isinstance(module, (_DropoutNd, Dropout)):
        return float(module.p) > 0.0
    name = type(module).__name__
    if name in ("DropPath", "DropBlock2d"):
        return float(getattr(module, "drop_prob", 0.0) or 0.0) > 0.0
    if name in ("PatchDropout", "PatchDropoutWithIndices"):
        return float(getattr(module, "prob", 0.0) or 0.0) > 0.0
    return False


def _couples_rows(module: nn.Module) -> bool:
    if getattr(module, "cbdm_couples_rows", False):
        return True
    # In training mode batch norm normalises with the batch's statistics (eval uses running ones).
    return isinstance(module, _BatchNorm)


def has_active_random_layer(model: nn.Module) -> bool:
    """True when some layer of ``model`` in training mode draws random numbers (dropout with p > 0)."""
    return any(m.training and _is_random(m) for m in model.modules())


def has_active_row_coupling(model: nn.Module) -> bool:
    """True when some layer of ``model`` in training mode makes a row's output depend on the other rows."""
    return any(m.training and _couples_rows(m) for m in model.modules())

