"""Which class each generated sample gets: a label list fixed up front.

``--classes`` takes ``balanced`` (equal counts, the paper's evaluation
protocol), ``train`` (the training class frequencies) or an explicit comma list
of class indices (balanced over those). Counts are apportioned exactly, with
integer arithmetic, by largest remainder; ties go to the lower class index (for
``balanced`` this means the remainder goes to the first classes).
"""

from __future__ import annotations

from typing import Optional, Sequence

from ..errors import CbdmError

BALANCED = ("balanced", "bal")
TRAIN = ("train",)


def apportion(num: int, weights: Sequence[int]) -> list[int]:
    """Split ``num`` into integer counts proportional to non-negative integer ``weights``.

    Largest-remainder (Hamilton) rounding: every class gets ``floor(num * w / W)``,
    then the leftover samples go one each to the largest remainders, ties to the
    lower index. The counts sum to ``num``.
    """
    num = int(num)
    weights = [int(w) for w in weights]
    if num < 0:
        raise CbdmError(f"cannot apportion a negative number of samples ({num})")
    if any(w < 0 for w in weights):
        raise CbdmError("class weights must be non-negative")
    total = sum(weights)
    if total <= 0:
        raise CbdmError("no class has a positive weight: cannot choose labels")
    counts = [num * w // total for w in weights]
    rema = [num * w % total for w in weights]
    left = num - sum(counts)
    for k in sorted(range(len(weights)), key=lambda k: (-rema[k], k))[:left]:
        counts[k] += 1
    return counts


def parse_class_list(text: str, num_classes: int) -> list[int]:
    """``"0,3,7"`` -> ``[0, 3, 7]``, each index checked against ``num_classes``."""
    parts = [p.strip() for p in text.split(",")]
    if not parts or any(p == "" for p in parts):
        raise CbdmError(f"--classes {text!r}: use balanced, train, or a comma list of class indices like 0,3,7")
    out: list[int] = []
    for p in parts:
        try:
            k = int(p)
        except ValueError:
            raise CbdmError(f"--classes {text!r}: {p!r} is not a class index; "
                            "use balanced, train, or a comma list like 0,3,7") from None
        if not 0 <= k < num_classes:
            raise CbdmError(f"class index {k} is out of range: the model has {num_classes} classes "
                            f"(0..{num_classes - 1})")
        if k in out:
            raise CbdmError(f"--classes {text!r}: class {k} is listed twice")
        out.append(k)
    return out


def class_sample_counts(spec: str, num: int, num_classes: int,
                        class_counts: Optional[Sequence[int]] = None) -> list[int]:
    """Samples per class (length ``num_classes``, summing to ``num``) for a ``--classes`` spec."""
    num, num_classes = int(num), int(num_classes)
    if num <= 0:
        raise CbdmError(f"the number of samples must be positive, got {num}")
    if num_classes <= 0:
        raise CbdmError("the model has no classes")
    key = str(spec).strip().lower()
    if key in BALANCED:
        return apportion(num, [1] * num_classes)
    if key in TRAIN:
        if class_counts is None:
            raise CbdmError("--classes train needs the training class counts, which this checkpoint lacks; "
                            "use --classes balanced")
        counts = [int(c) for c in class_counts]
        if len(counts) != num_classes:
            raise CbdmError(f"the checkpoint lists {len(counts)} class counts for {num_classes} classes")
        return apportion(num, counts)
    chosen = parse_class_list(str(spec), num_classes)
    # Balanced over the listed classes; the remainder goes to the classes listed first.
    per = apportion(num, [1] * len(chosen))
    counts = [0] * num_classes
    for k, n in zip(chosen, per):
        counts[k] = n
    return counts


def labels_from_counts(counts: Sequence[int]) -> list[int]:
    """``[2, 1]`` -> ``[0, 0, 1]``: the label list sorted by class."""
    return [k for k, n in enumerate(counts) for _ in range(int(n))]


def plan_labels(spec: str, num: int, num_classes: int,
                class_counts: Optional[Sequence[int]] = None) -> list[int]:
    """The label of every sample, sorted by class; see :func:`class_sample_counts`.

    An unconditional model (no classes) gets the null label, index 0, for every sample.
    """
    if int(num_classes) == 0:
        if str(spec).strip().lower() not in BALANCED:
            raise CbdmError("the model is unconditional: --classes does not apply")
        if int(num) <= 0:
            raise CbdmError(f"the number of samples must be positive, got {num}")
        return [0] * int(num)
    return labels_from_counts(class_sample_counts(spec, num, num_classes, class_counts))
