"""The run folder: the one place a run writes files, and the rule that an existing run is never overwritten.

Files: ``config.json`` (the run's settings, rewritten on resume), ``metrics.jsonl`` (a row per epoch, see
:mod:`.metrics`), ``checkpoint.npz`` (the last epoch: model, optimizer, step, random state; for --resume),
``best.npz`` (the epoch chosen by validation, same format without optimizer state), ``results.json`` (how
the run ended: best epoch, final test score), ``curves.png`` and ``filters.png``. Checkpoints and JSON files
are written atomically (a temp file renamed over the old one).

A folder that already holds any of these files is refused unless the run resumes it (``--resume``) or
starts over (``--overwrite``, which deletes those files, and only those, first). A folder object made with
``writes=False`` (a data-parallel run's other processes) checks and reads but writes nothing.
"""
from __future__ import annotations

import json
import os

from . import checkpoint, plots
from ..devices import to_cpu

CHECKPOINT = "checkpoint.npz"
BEST = "best.npz"
METRICS = "metrics.jsonl"
CONFIG = "config.json"
RESULTS = "results.json"
CURVES = "curves.png"
FILTERS = "filters.png"
RUN_FILES = (CONFIG, METRICS, CHECKPOINT, BEST, RESULTS, CURVES, FILTERS)


class RunFolder:
    """Where one run's files go; every write of the trainer goes through it."""

    def __init__(self, path, *, resume: bool = False, overwrite: bool = False, writes: bool = True):
        self.path = os.fspath(path)
        self.resume, self.overwrite, self.writes = bool(resume), bool(overwrite), bool(writes)
        self._warned_no_matplotlib = False

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    @property
    def checkpoint(self) -> str:
        return self.file(CHECKPOINT)

    @property
    def best(self) -> str:
        return self.file(BEST)

    def existing_run_files(self) -> list[str]:
        if not os.path.isdir(self.path):
            return []
        return [name for name in RUN_FILES if os.path.exists(self.file(name))]

    def check(self):
        """ValueError, before anything runs, for a path that cannot be a run folder or an existing run that
        would be overwritten; CheckpointError for --resume without a checkpoint."""
        if not self.path.strip():
            raise ValueError(f"out must be a folder path, got {self.path!r}")
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise ValueError(f"out {self.path}: exists and is not a folder")
        if self.resume and self.overwrite:
            raise ValueError("--resume continues the run in the folder and --overwrite starts it over: "
                             "pass one of them")
        found = self.existing_run_files()
        if self.resume:
            if not os.path.exists(self.checkpoint):
                raise checkpoint.CheckpointError(f"checkpoint {self.checkpoint}: no such file (nothing to "
                                                 f"--resume; start the run without --resume)")
        elif found and not self.overwrite:
            raise ValueError(f"{self.path} already holds a run ({', '.join(found)}): pass --resume to continue "
                             f"it, --overwrite to delete it and start over, or another --out folder")

    def open(self):
        """Create the folder (only now: a run that cannot start leaves nothing behind); with overwrite, delete
        the old run's files; remove temp files a killed writer left."""
        if not self.writes:
            return
        os.makedirs(self.path, exist_ok=True)
        if self.overwrite:
            for name in self.existing_run_files():
                os.unlink(self.file(name))
        checkpoint.remove_stale_temps(self.path)

    # ------------------------------------------------------------------------------------------ writes

    def write_json(self, name: str, obj):
        if self.writes:
            text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
            checkpoint.atomic_write(self.file(name), lambda f: f.write(text.encode()))

    def write_metrics(self, rows: list[dict]):
        """Rewrite metrics.jsonl from the rows (atomically): when a run starts or resumes."""
        if self.writes:
            text = "".join(json.dumps(row) + "\n" for row in rows)
            checkpoint.atomic_write(self.file(METRICS), lambda f: f.write(text.encode()))

    def append_metrics(self, row: dict):
        if self.writes:
            with open(self.file(METRICS), "a") as f:
                f.write(json.dumps(row) + "\n")
                f.flush()
                os.fsync(f.fileno())

    def read_metrics(self) -> list[dict]:
        """The rows of metrics.jsonl that parse (a killed writer may have left half a line)."""
        rows = []
        try:
            with open(self.file(METRICS)) as f:
                for line in f:
                    try:
                        rows.append(json.loads(line))
                    except ValueError:
                        pass
        except OSError:
            pass
        return rows

    def save_checkpoint(self, name: str = CHECKPOINT, **contents):
        """checkpoint.npz (or best.npz) with `contents` as :func:`checkpoint.save` takes them."""
        if self.writes:
            checkpoint.save(self.file(name), **contents)

    def pictures(self, rows: list[dict], model, title: str, log, best_epoch: int | None = None):
        """curves.png (`best_epoch` marked) and filters.png (the first 4-D parameter), or one log line if
        matplotlib is missing."""
        if not self.writes or not rows:
            return
        if not plots.available():
            if not self._warned_no_matplotlib:
                log("matplotlib is not installed: skipping curves.png and filters.png (pip install 'gpucnn[plots]')")
                self._warned_no_matplotlib = True
            return
        plots.plot_curves(rows, self.file(CURVES), title=title, best_epoch=best_epoch)
        name, w = next(((k, p) for k, p in model.params.items() if p.ndim == 4), (None, None))
        if w is not None:
            plots.plot_filters(to_cpu(w), self.file(FILTERS), title=f"{title}, first conv layer ({name})")
