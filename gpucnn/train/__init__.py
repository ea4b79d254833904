"""Training: the loop (:mod:`.loop`), checkpoints (:mod:`.checkpoint`) and pictures (:mod:`.plots`)."""
from . import checkpoint, plots
from .loop import (CHECKPOINT, METRICS, NONFINITE_MODES, NumericalFaultError, Progress, TrainConfig, augmentations,
                   evaluate, model_kwargs_for, resume_config, train, weight_decay_for)

__all__ = ["checkpoint", "plots", "CHECKPOINT", "METRICS", "NONFINITE_MODES", "NumericalFaultError", "Progress",
           "TrainConfig", "augmentations", "evaluate", "model_kwargs_for", "resume_config", "train",
           "weight_decay_for"]
