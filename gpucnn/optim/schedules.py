"""Learning-rate schedules: pure functions of the global step, so a resumed run gets the same rates without state."""
from __future__ import annotations

import math
import operator

import numpy as np

from .optimizers import Optimizer, _real

class Schedule:
    """A learning rate as a pure function of the global step (0 = the first update)."""

    base_lr: float

    def lr_at(self, step: int) -> float:
        raise NotImplementedError

    def apply(self, optimizer: Optimizer, step: int) -> float:
        """Set optimizer.lr for the update about to be made at `step`; returns the rate."""
        optimizer.lr = self.lr_at(step)
        return optimizer.lr

    def _check_step(self, step):
        try:
            s = operator.index(step)
        except TypeError:
            raise TypeError(f"{type(self).__name__}: step must be an integer, got {step!r}") from None
        if s < 0:
            raise ValueError(f"{type(self).__name__}: step must be >= 0, got {s}")
        return s

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class ConstantLR(Schedule):
    """The same rate at every step."""

    def __init__(self, base_lr):
        self.base_lr = _real("ConstantLR", "base_lr", base_lr)

    def lr_at(self, step):
        self._check_step(step)
        return self.base_lr


class StepLR(Schedule):
    """base_lr * gamma ** (step // step_size), as torch.optim.lr_scheduler.StepLR."""

    def __init__(self, base_lr, step_size, gamma=0.1):
        self.base_lr = _real("StepLR", "base_lr", base_lr)
        if isinstance(step_size, bool) or not isinstance(step_size, (int, np.integer)) or step_size < 1:
            raise ValueError(f"StepLR: step_size must be an integer >= 1, got {step_size!r}")
        self.step_size = int(step_size)
        self.gamma = _real("StepLR", "gamma", gamma)

    def lr_at(self, step):
        return self.base_lr * self.gamma ** (self._check_step(step) // self.step_size)


class _Annealing(Schedule):
    """A fall from base_lr to min_lr over total_steps, then min_lr: subclasses give its shape, the fraction
    `_remaining(t, total_steps)` of the fall still ahead after t steps (1 at t = 0, 0 at t = total_steps)."""

    def __init__(self, base_lr, total_steps, min_lr=0.0):
        name = type(self).__name__
        self.base_lr = _real(name, "base_lr", base_lr)
        if isinstance(total_steps, bool) or not isinstance(total_steps, (int, np.integer)) or total_steps < 1:
            raise ValueError(f"{name}: total_steps must be an integer >= 1, got {total_steps!r}")
        self.total_steps = int(total_steps)
        self.min_lr = _real(name, "min_lr", min_lr, hi=self.base_lr)

    def lr_at(self, step):
        t = min(self._check_step(step), self.total_steps)
        return self.min_lr + (self.base_lr - self.min_lr) * self._remaining(t, self.total_steps)

    def _remaining(self, t: int, total: int) -> float:
        raise NotImplementedError


class CosineLR(_Annealing):
    """Half a cosine from base_lr down to min_lr over total_steps, then min_lr, as torch's CosineAnnealingLR
    with T_max=total_steps, eta_min=min_lr (which would rise again after T_max)."""

    def _remaining(self, t, total):
        return (1.0 + math.cos(math.pi * t / total)) / 2.0


class LinearLR(_Annealing):
    """A straight line from base_lr down to min_lr over total_steps, then min_lr: torch's LinearLR with
    start_factor=1, end_factor=min_lr/base_lr, total_iters=total_steps. For runs of a few epochs a linear decay
    to zero does as well as or better than cosine (Li, Yumer and Ramanan, "Budgeted Training", ICLR 2020)."""

    def _remaining(self, t, total):
        return 1.0 - t / total


class WarmupLR(Schedule):
    """A schedule (or a constant rate) scaled by min(1, (step + 1) / warmup_steps): a linear ramp from
    base/warmup_steps at step 0 to the full schedule at step warmup_steps - 1 (torch's LinearLR with
    start_factor=1/warmup_steps, total_iters=warmup_steps-1)."""

    def __init__(self, schedule_or_base_lr, warmup_steps):
        if isinstance(schedule_or_base_lr, Schedule):
            self.schedule = schedule_or_base_lr
        else:
            self.schedule = ConstantLR(schedule_or_base_lr)
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, (int, np.integer)) or warmup_steps < 0:
            raise ValueError(f"WarmupLR: warmup_steps must be an integer >= 0, got {warmup_steps!r}")
        self.warmup_steps = int(warmup_steps)
        self.base_lr = self.schedule.base_lr

    def lr_at(self, step):
        step = self._check_step(step)
        lr = self.schedule.lr_at(step)
        if step + 1 < self.warmup_steps:
            lr *= (step + 1) / self.warmup_steps
        return lr


_SCHEDULES = ("constant", "step", "cosine", "linear")


def schedule_names() -> list[str]:
    """Schedule names accepted by make_schedule() (and the CLI)."""
    return list(_SCHEDULES)


def make_schedule(name: str, base_lr: float, total_steps: int, warmup_steps: int = 0, *, step_size=None,
                  gamma=0.1, min_lr=0.0) -> Schedule:
    """A schedule by name over a run of total_steps updates, with an optional linear warm-up.

    "step" decays by gamma every step_size updates (default: a third of the run); "cosine" and "linear" fall
    from base_lr to min_lr over total_steps.
    """
    key = str(name).strip().lower()
    if key == "constant":
        sched = ConstantLR(base_lr)
    elif key == "step":
        sched = StepLR(base_lr, step_size if step_size is not None else max(1, int(total_steps) // 3), gamma)
    elif key == "cosine":
        sched = CosineLR(base_lr, total_steps, min_lr)
    elif key == "linear":
        sched = LinearLR(base_lr, total_steps, min_lr)
    else:
        raise ValueError(f"unknown learning-rate schedule {name!r}: expected one of {', '.join(_SCHEDULES)}")
    return WarmupLR(sched, warmup_steps) if warmup_steps else sched


