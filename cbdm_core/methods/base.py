"""The training-method seam: what a method plugin (kind ``method``) implements.

A *method* is everything a long-tail training recipe adds to plain conditional DDPM
training (CBDM's y' regulariser, T2H's transferred target, CORAL's contrastive head,
CM's low-rank adapters). The objective composes any number of methods, in config order,
and talks to them only through the hooks below; the CLI, trainer and sweeps name none.

Order of one training step (see :class:`cbdm_core.objectives.DiffusionObjective`):

1. the base loss draws ``t``, the noise and ``x_t`` (:class:`StepContext`);
2. ``target(ctx)`` of each method may replace the regression target (at most one
   method may do so in a run);
3. ``extra_labels(ctx)`` of each method asks for extra predictions on the same ``x_t``
   under other labels; the main rows and every method's extra rows run in ONE forward
   pass, and ``begin_pass(rows, total)`` tells each method which rows of that pass are
   its own (e.g. to switch its adapters off on them) before it runs;
4. ``sample_weight(ctx)`` of each method may return a per-row weight ``[B]`` of the base
   loss; the weights of all methods multiply, and the logged ``diffusion`` term is
   ``mean(w_i * lambda_i * (pred - target)^2)`` over every element (``lambda`` = ``ctx.weight``);
5. ``loss(ctx, out)`` of each method returns named terms (logged) and its contribution
   to the total; ``out.predict`` runs a further forward pass with gradients if needed.

Construction: cbdm only ever calls the factory ``MethodSpec.build(options, ctx)`` (with
the validated options model and a :class:`MethodBuildContext`); the subclass's
constructor is the plugin's own business. ``TrainingMethod.__init__`` takes no
arguments, so ``super().__init__()`` (with none) is all a subclass may call.

Modules a method attaches in ``attach(model)`` become submodules of the backbone, so
checkpoints save and restore them and ``cbdm sample``/``--resume``/``--init-from``
work with no extra flags (``load_run`` re-attaches every method of the stored config).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from pydantic import BaseModel


@dataclass
class StepContext:
    """What a method sees of the current batch (all tensors on the training device).

    Attributes:
        x0: clean images ``[B, C, H, W]`` after augmentation.
        y: the true labels ``[B]`` (also on rows whose label was dropped).
        y_in: the labels as fed to the network (``num_classes`` = null on dropped rows).
        keep: bool ``[B]``; False where the label was dropped for classifier-free training.
        x_t: the network input ``[B, C, H, W]``.
        time: what the network receives as its time input: the integer ``t`` for ``ddpm``, the
            noise level sigma (float) for ``edm``. Pass it on to ``out.predict``.
        t: the equivalent integer timestep ``[B]`` (0..T-1) on the discrete schedule, for
            any loss: use it for weights or gates that depend on the noise level.
        noise: the noise used to build ``x_t``.
        target: the regression target of the base loss (after any method replaced it).
        schedule: the noise schedule.
        num_classes: number of real classes (also the null label index).
        class_counts: training images per class ``[C]``.
        weight: per-row weight of the base loss ``[B]`` set by the base loss itself (EDM's
            lambda(sigma)), or None (``ddpm``: unweighted). Read-only for methods: a method
            reweights the base loss with :meth:`TrainingMethod.sample_weight`.
        prediction: what the base loss regresses on: ``eps`` (the noise, ddpm) or ``x0`` (edm).
        step: the 0-based training step this batch trains (the trainer's, so a resumed run sees
            the same steps), or None outside a training loop (``cbdm_loss``, custom loops). For
            methods whose weight follows the training schedule.
        repeatable: True when the shared pass gives two rows with the same ``x_t``, time and
            label the same prediction (no active dropout or other random layer, no batch norm
            in training mode; :mod:`cbdm_core.nets.row_behaviour`), set by the objective before
            the pass when it may leave rows out (``skip_unread_rows``: the CPU trainer), else False.
            Then an extra row under the main row's label repeats the main row.

    Under ``torchrun`` the objective builds this context (and calls ``target`` and
    ``extra_labels``) on the GLOBAL batch, then hands each rank its rows
    (:meth:`rows`) for the pass and ``loss``.
    """

    x0: torch.Tensor
    y: torch.Tensor
    y_in: torch.Tensor
    keep: torch.Tensor
    x_t: torch.Tensor
    time: torch.Tensor
    t: torch.Tensor
    noise: torch.Tensor
    target: torch.Tensor
    schedule: Any
    num_classes: int
    class_counts: torch.Tensor
    weight: Optional[torch.Tensor] = None
    prediction: str = "eps"
    step: Optional[int] = None
    repeatable: bool = False

    def rows(self, lo: int, hi: int) -> "StepContext":
        """The same context restricted to rows ``[lo, hi)``."""
        def cut(v: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
            return None if v is None else v[lo:hi]

        return StepContext(x0=self.x0[lo:hi], y=self.y[lo:hi], y_in=self.y_in[lo:hi], keep=self.keep[lo:hi],
                           x_t=self.x_t[lo:hi], time=self.time[lo:hi], t=self.t[lo:hi], noise=self.noise[lo:hi],
                           target=self.target[lo:hi], schedule=self.schedule, num_classes=self.num_classes,
                           class_counts=self.class_counts, weight=cut(self.weight),
                           prediction=self.prediction, step=self.step, repeatable=self.repeatable)


@dataclass
class PassOutputs:
    """What the shared forward pass produced, as seen by one method.

    Attributes:
        pred: the main prediction ``[B, ...]`` (float32).
        extra: this method's extra predictions ``[S, B, ...]`` or None.
        predict: ``predict(x, time, y) -> pred`` runs one more forward pass (with gradients)
            through the same (possibly DDP-wrapped/compiled) network.
    """

    pred: torch.Tensor
    extra: Optional[torch.Tensor]
    predict: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class TrainingMethod:
    """Base class of a built method; every hook has a no-op default."""

    #: registered name (set by the factory); used in logs and term names.
    name: str = ""

    def __init__(self) -> None:
        """Nothing to set up: a subclass's constructor takes whatever its ``build`` passes."""
        super().__init__()  # cooperative, for subclasses that also derive from e.g. nn.Module

    def attach(self, model: torch.nn.Module) -> None:
        """Add trainable modules or forward hooks to the backbone (before weights load)."""

    def for_sampling(self, model: torch.nn.Module) -> None:
        """Change the network for sampling (e.g. merge or switch adapters); default: as trained."""

    def target(self, ctx: StepContext) -> Optional[torch.Tensor]:
        """A replaced regression target (no gradient flows into it), or None."""
        return None

    def extra_labels(self, ctx: StepContext) -> Optional[torch.Tensor]:
        """Labels ``[S, B]`` for extra predictions on the same ``x_t`` in the shared pass, or None."""
        return None

    def extra_rows_read(self, ctx: StepContext, extra: torch.Tensor) -> Optional[torch.Tensor]:
        """Bool ``[S, B]``: which of the ``extra`` rows (``extra_labels``' output) the loss reads, or None (all).

        A row marked False must leave the loss and its gradients unchanged whatever its prediction
        (a zero loss weight), or, when ``ctx.repeatable``, unchanged if its prediction is the main
        row's (an extra label equal to ``ctx.y_in``): the trainer's CPU pass then skips it and hands
        :meth:`loss` the main row's prediction, detached, in its place.
        """
        return None

    def begin_pass(self, rows: slice, total: int) -> None:
        """Called before the shared pass: ``rows`` are this method's extra rows of ``total``."""

    def end_pass(self) -> None:
        """Called after the shared pass (also when it raised)."""

    def sample_weight(self, ctx: StepContext) -> Optional[torch.Tensor]:
        """A weight ``[B]`` per row of the base loss (min-SNR, P2, focal-in-t, ...), or None.

        Multiplied into the per-element squared error before its mean (with the other
        methods' weights and ``ctx.weight``), so ``diffusion`` is the weighted loss. Called
        on the rows this process evaluates (a rank's rows under ``torchrun``): return a
        function of each row alone, drawing no random numbers. Gradients flow through it.
        """
        return None

    def loss(self, ctx: StepContext, out: PassOutputs) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Named terms (for logging) and the contribution to the total loss."""
        zero = out.pred.new_zeros(())
        return {}, zero


@dataclass(frozen=True)
class MethodBuildContext:
    """What a method factory may use to build itself.

    Attributes:
        class_counts: training images per class ``[C]`` (stored in checkpoints, so the
            same method can be rebuilt when a run is loaded for sampling).
        num_classes: number of real classes.
        schedule: the noise schedule.
        backbone: registered backbone name of the run.
        label_distribution: ``(name, class_counts) -> probabilities [C]`` for a registered
            label distribution (``"bal"``, ``"pow:0.5"``), resolved by the edge that builds the
            run (``build.build_methods``), so a method never reads the registry itself.
    """

    class_counts: torch.Tensor
    num_classes: int
    schedule: Any
    backbone: str = "unet"
    label_distribution: Optional[Callable[[str, torch.Tensor], torch.Tensor]] = None

    def probs(self, name: str) -> torch.Tensor:
        """Probabilities of the label distribution ``name`` over this run's class counts."""
        if self.label_distribution is None:
            # A context built by hand (own training loop, tests): the public name helper, which
            # reads the registry; runs built by cbdm always carry the edge's resolver.
            from ..label_distributions import resolve_label_distribution

            return resolve_label_distribution(name, self.class_counts)
        return self.label_distribution(name, self.class_counts)


@dataclass(frozen=True)
class MethodSpec:
    """A training method as registered (kind ``method``).

    Attributes:
        options_model: pydantic model of its options (``extra="forbid"``).
        build: ``build(options, ctx: MethodBuildContext) -> TrainingMethod``.
        paper: short citation shown by ``cbdm methods``.
        code: URL of the authors' released code.
        sweepable: option names that make sense to sweep (``cbdm sweep option NAME.KEY``);
            empty means every numeric option.
        check: ``check(options) -> None`` raising :class:`~cbdm_core.errors.CbdmError` on
            options that validate but cannot work (e.g. an unregistered y' distribution);
            ``cbdm train`` runs it before loading any data. None: validation only.
        requires: the backbone capabilities it needs, as runtime-checkable protocols of
            :mod:`cbdm_core.interfaces` (``HasFeatureTap``, ``HasConvParts``, ``HasGeometry``,
            or a plugin's own); a run whose backbone lacks one is refused with one line when
            the model is built, before :meth:`TrainingMethod.attach` is called.
        label_distribution_options: names of options holding a registered label distribution
            (CBDM's ``y_dist``); an unregistered one is refused before any data is loaded (one
            line listing the choices), before ``check`` runs. ``build`` resolves them with
            ``ctx.probs(name)``.
    """

    options_model: type[BaseModel]
    build: Callable[..., TrainingMethod]
    paper: str = ""
    code: str = ""
    sweepable: tuple[str, ...] = field(default_factory=tuple)
    check: Optional[Callable[[Any], None]] = None
    requires: tuple[type, ...] = field(default_factory=tuple)
    label_distribution_options: tuple[str, ...] = field(default_factory=tuple)
