"""Optimizers (torch.optim's update rules), learning-rate schedules and gradient utilities.

:mod:`.optimizers` (SGD, AdaGrad, RMSprop, Adam, AdamW and the registry ``get``/``names``), :mod:`.schedules`
(constant, step, cosine, linear, warm-up), :mod:`.groups` (parameter groups with their own hyper-parameters) and
:mod:`.gradients` (clip_grad_norm, grads_finite, note_nonfinite).
"""
from .gradients import clip_grad_norm, grads_finite, note_nonfinite
from .groups import no_weight_decay
from .optimizers import SGD, AdaGrad, Adam, AdamW, Optimizer, RMSprop, get, names
from .schedules import ConstantLR, CosineLR, LinearLR, Schedule, StepLR, WarmupLR, make_schedule, schedule_names

__all__ = ["Optimizer", "SGD", "AdaGrad", "RMSprop", "Adam", "AdamW", "get", "names", "Schedule", "ConstantLR",
           "StepLR", "CosineLR", "LinearLR", "WarmupLR", "make_schedule", "schedule_names", "clip_grad_norm", "grads_finite",
           "note_nonfinite", "no_weight_decay"]
