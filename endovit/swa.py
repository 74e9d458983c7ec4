"""The SWA phase as EndoViT's code runs it (``swa_schedule: endovit``), as pure functions of the step.

EndoViT (``main_pretrain.py``, ``engine_pretrain.py``, ``util/lr_sched.py``) creates torch's ``SWALR`` at the start
of epoch ``swa_start_epoch`` with ``anneal_epochs = ceil(steps_per_epoch / swa_every_steps)`` and from then on touches
the lr only at averaging iterations (``(i + 1) % swa_every_steps == 0`` or the epoch's last ``i``): there it calls
``update_parameters`` (before that iteration's optimizer step), ``SWALR.step()`` and then ``adjust_learning_rate``,
whose SWA branch multiplies each group's lr by its ``lr_scale`` once more. ``SWALR`` recovers its start value from
the group's current lr, so the scale compounds while it anneals; afterwards every group holds ``swa_lr * lr_scale``.
Before the first averaging iteration the lr stays at its last pre-SWA value.

Here the lr of a group is computed from (step, settings) alone by replaying those averaging iterations (at most
``anneal_epochs`` of them matter), so a resumed run needs no scheduler state.
"""
from __future__ import annotations

import math

__all__ = ["averaging_calls", "endovit_swa_lr", "best_swa_counts"]


def _cos_anneal(t: float) -> float:
    return (1 - math.cos(math.pi * t)) / 2  # SWALR's cosine: 0 -> 1 over t in [0, 1]


def averaging_calls(*, step: int, steps_per_epoch: int, swa_start_epoch: int, swa_every_steps: int) -> int:
    """How many averaging iterations EndoViT has run up to and including iteration ``step`` (0-based), counted from
    the start of epoch ``swa_start_epoch``; 0 before it."""
    epoch, i = divmod(step, steps_per_epoch)
    if epoch < swa_start_epoch:
        return 0
    per_epoch = math.ceil(steps_per_epoch / swa_every_steps)
    in_epoch = (i + 1) // swa_every_steps + (1 if i == steps_per_epoch - 1 and steps_per_epoch % swa_every_steps
                                              else 0)
    return (epoch - swa_start_epoch) * per_epoch + in_epoch


def endovit_swa_lr(*, held: float, lr_scale: float, swa_lr: float, anneal_epochs: int, calls: int) -> float:
    """A group's lr after ``calls`` averaging iterations of EndoViT's SWA phase; ``held`` is its lr when ``SWALR`` was
    created (the last pre-SWA value). Replays ``SWALR.get_lr`` (its ``_step_count - 1`` is the call number) and the
    ``* lr_scale`` of ``adjust_learning_rate``'s SWA branch, operation for operation."""
    lr = held
    for k in range(1, min(calls, max(1, anneal_epochs)) + 1):  # from then on alpha is 1: swa_lr * lr_scale
        prev_alpha = _cos_anneal(max(0, min(1, (k - 1) / max(1, anneal_epochs))))
        start = swa_lr if prev_alpha == 1 else (lr - prev_alpha * swa_lr) / (1 - prev_alpha)
        alpha = _cos_anneal(max(0, min(1, k / max(1, anneal_epochs))))
        lr = (swa_lr * alpha + start * (1 - alpha)) * lr_scale
    if calls > max(1, anneal_epochs):
        lr = swa_lr * lr_scale
    return lr


def best_swa_counts(*, step: int, steps_per_epoch: int, best_swa_from_epoch: int) -> bool:
    """Whether a validation after ``step`` optimizer steps may make ``best_swa/``: it falls in epoch
    ``best_swa_from_epoch`` or later (the validation at an epoch's last step belongs to that epoch)."""
    return (step - 1) // steps_per_epoch >= best_swa_from_epoch
