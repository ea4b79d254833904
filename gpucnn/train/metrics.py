"""Metrics of a run: the one read-back of device numbers, the per-epoch rows, the choice of the best epoch and
the History that :func:`gpucnn.fit` returns.

A row of ``metrics.jsonl`` holds ``epoch, train_loss, train_acc``, then ``val_loss, val_acc`` when there is
validation data, ``test_loss, test_acc`` when the test split is scored that epoch, and ``seconds,
images_per_second, lr, skipped_steps``. Timing (``seconds``, ``images_per_second``) differs between identical
runs, so checkpoints keep the rows without it (their bytes depend only on the run) and metrics.jsonl with it.
"""
from __future__ import annotations

from .. import devices
from ..devices import to_cpu

TIMING_KEYS = ("seconds", "images_per_second")
SELECT = {"loss": ("val_loss", "lower"), "acc": ("val_acc", "higher")}


def read(*values) -> list[float]:
    """Device scalars (0-d arrays) -> host floats with one device-to-host transfer.

    Every number the loop shows or records passes here once: a data-parallel run sums them across processes
    at this one place before reading.
    """
    xp = devices.get_array_module(*values)
    host = to_cpu(xp.stack([xp.asarray(v, dtype=xp.float64).reshape(()) for v in values]))
    return [float(v) for v in host]


def without_timing(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in TIMING_KEYS}


def with_timing(rows: list[dict], logged: list[dict]) -> list[dict]:
    """The checkpoint's rows (authoritative) with the timing of the same epochs from metrics.jsonl, where the
    rows agree; used on --resume, since checkpoints keep no timing."""
    by_epoch = {r.get("epoch"): r for r in logged if isinstance(r, dict)}
    out = []
    for row in rows:
        old = by_epoch.get(row.get("epoch"))
        if old is not None and without_timing(old) == without_timing(row):
            row = {**row, **{k: old[k] for k in TIMING_KEYS if k in old}}
        out.append(row)
    return out


def plural(n: int, word: str) -> str:
    """'1 epoch', '2 epochs'."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


# -------------------------------------------------------------------------------------------- selection

def better(select: str, value, best) -> bool:
    """Whether `value` of the selection metric improves on `best` (strictly; None is never better)."""
    if value is None:
        return False
    if best is None:
        return True
    return value < best if SELECT[select][1] == "lower" else value > best


def best_row(rows: list[dict], select: str) -> dict | None:
    """The earliest row with the best selection metric (val_loss lowest or val_acc highest), or None."""
    key = SELECT[select][0]
    best = None
    for row in rows:
        if better(select, row.get(key), None if best is None else best[key]):
            best = row
    return best


def early_stop_due(rows: list[dict], select: str, patience: int | None) -> bool:
    """True when the last `patience` epochs brought no improvement over the best epoch before them."""
    if not patience or not rows:
        return False
    best = best_row(rows, select)
    return best is not None and rows[-1]["epoch"] - best["epoch"] >= patience


# ----------------------------------------------------------------------------------------------- history

class History:
    """What :func:`gpucnn.fit` returns: the per-epoch rows and how the run ended.

    ``rows``: one dict per epoch (see the module docstring); ``history["val_loss"]`` is that column as a list
    (None where an epoch lacks it). ``best_epoch``/``best``: the epoch chosen by validation (None without
    validation data); ``select``: "loss" or "acc"; ``test``: the test split's {"loss", "acc", "epoch"} scored
    once at the end on the chosen weights, or per epoch in the rows when there is no validation data;
    ``stopped_early``; ``model`` (trained, in eval mode, holding the chosen epoch's weights); ``out``
    (the run folder or None); ``confusion``: the confusion matrix (rows true, columns predicted) of the last
    evaluation (test if scored, else validation), or None.
    """

    def __init__(self, rows=None, *, select="loss", model=None, out=None, device=None, classes=None):
        self.rows = list(rows or [])
        self.select = select
        self.model, self.out, self.device, self.classes = model, out, device, classes
        self.test = None
        self.stopped_early = False
        self.confusion = None
        self.seconds = 0.0

    def __len__(self):
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def __getitem__(self, key):
        if isinstance(key, int):
            return self.rows[key]
        return [row.get(key) for row in self.rows]

    @property
    def epochs(self) -> list[int]:
        return [row["epoch"] for row in self.rows]

    @property
    def best(self) -> dict | None:
        return best_row(self.rows, self.select)

    @property
    def best_epoch(self) -> int | None:
        best = self.best
        return None if best is None else best["epoch"]

    def summary(self) -> str:
        """One line saying how the run scored (test if scored, else validation, else training)."""
        if not self.rows:
            return "no epoch was trained"
        last = self.rows[-1]
        best = self.best
        if best is not None:
            chosen = (f"epoch {best['epoch']} of {last['epoch']}, chosen by validation "
                      f"{'loss' if self.select == 'loss' else 'accuracy'}"
                      + (", stopped early" if self.stopped_early else ""))
            if self.test is not None:
                return f"test accuracy {100 * self.test['acc']:.2f}% (loss {self.test['loss']:.4f}) at {chosen}"
            return f"validation accuracy {100 * best['val_acc']:.2f}% (loss {best['val_loss']:.4f}) at {chosen}"
        if last.get("test_acc") is not None:
            return f"test accuracy {100 * last['test_acc']:.2f}% after epoch {last['epoch']}"
        acc = last.get("train_acc")
        return (f"training accuracy {100 * acc:.2f}% after epoch {last['epoch']} (no validation or test data)"
                if acc is not None else f"epoch {last['epoch']} had no finite step")

    def __repr__(self):
        return f"History({len(self.rows)} epochs, best_epoch={self.best_epoch}, test={self.test})"


def epoch_line(row: dict, epochs: int) -> str:
    """The log line of an epoch: its losses and accuracies, rate, time and throughput."""
    def pair(split):
        loss, acc = row.get(f"{split}_loss"), row.get(f"{split}_acc")
        if loss is None and acc is None:
            return None
        return (f"{split} loss {loss:.4f} acc {100 * acc:.2f}%" if loss is not None and acc is not None
                else f"{split} loss - acc -")
    parts = [pair(s) for s in ("train", "val", "test")]
    text = f"epoch {row['epoch']}/{epochs}  " + "  ".join(p for p in parts if p)
    text += f"  lr {row['lr']:.2e}  {row['seconds']:.1f} s  {row['images_per_second']:.0f} img/s"
    if row.get("skipped_steps"):
        text += f"  skipped {plural(row['skipped_steps'], 'non-finite step')}"
    return text
