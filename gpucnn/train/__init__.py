"""Training: :func:`fit` (:mod:`.fitting`) on the step loop (:mod:`.loop`), with the inputs it takes
(:mod:`.inputs`), metrics and History (:mod:`.metrics`), progress (:mod:`.progress`), the run folder and its
files (:mod:`.run_folder`, :mod:`.checkpoint`, :mod:`.plots`), and the command line's TrainConfig and
train() (:mod:`.config`)."""
from . import checkpoint, plots
from .config import TrainConfig, resume_config, train
from .fitting import DEFAULT_WEIGHT_DECAY, fit, make_optimizer, weight_decay_for
from .inputs import augmentations
from .loop import NONFINITE_MODES, NumericalFaultError, Trainer, evaluate
from .metrics import History
from .progress import Progress
from .run_folder import BEST, CHECKPOINT, CONFIG, METRICS, RESULTS, RunFolder

__all__ = ["checkpoint", "plots", "BEST", "CHECKPOINT", "CONFIG", "METRICS", "RESULTS", "DEFAULT_WEIGHT_DECAY",
           "NONFINITE_MODES", "History", "NumericalFaultError", "Progress", "RunFolder", "TrainConfig", "Trainer",
           "augmentations", "evaluate", "fit", "make_optimizer", "resume_config", "train", "weight_decay_for"]
