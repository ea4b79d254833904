"""Progress of a phase of a run (an epoch's steps, an evaluation) on stderr, with elapsed time and time left.

On a terminal: tqdm's bar when tqdm is installed (optional), otherwise a bar redrawn in place; elsewhere (a
log file, a pipe): a line at most every `interval` seconds. Showing progress never reads the device: the
caller decides when numbers are worth a read-back (:meth:`Progress.due`).
"""
from __future__ import annotations

import sys
import time


def clock(seconds: float) -> str:
    """Seconds as m:ss, or h:mm:ss from an hour on."""
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def _tqdm():
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm


class Progress:
    """One phase at a time: ``begin(head, total)``, then ``show(done, stats)`` when :meth:`due`, then ``clear()``.

    `interval`: seconds between redraws (default 0.25 on a terminal, 10 otherwise); `use_tqdm`: None for tqdm
    whenever it is installed and the stream is a terminal.
    """

    def __init__(self, stream=None, interval: float | None = None, use_tqdm: bool | None = None):
        self.stream = stream or sys.stderr
        try:
            self.tty = self.stream.isatty()
        except (AttributeError, ValueError):
            self.tty = False
        self.interval = interval if interval is not None else (0.25 if self.tty else 10.0)
        self.tqdm = _tqdm() if (use_tqdm or use_tqdm is None) and self.tty else None
        self.head, self.total = "", 0
        self.started = self.last = time.perf_counter()
        self.drawn = False
        self._bar = None

    def due(self) -> bool:
        """True when the next redraw is due (the caller then reads its numbers and calls show)."""
        return time.perf_counter() - self.last >= self.interval

    def begin(self, head: str, total: int):
        """Start a phase of `total` items ("epoch 3/12", "epoch 3/12 evaluation"); the clock starts now."""
        self.clear()
        self.head, self.total = head, int(total)
        self.started = time.perf_counter()

    def show(self, done: int, stats: str = ""):
        """Draw the phase at `done` of `total` items, with the elapsed time, the time left and `stats`."""
        now = self.last = time.perf_counter()
        elapsed = now - self.started
        if self.tqdm is not None:
            if self._bar is None:
                self._bar = self.tqdm(total=self.total, desc=self.head, file=self.stream, leave=False,
                                      dynamic_ncols=True, mininterval=0)
            self._bar.update(done - self._bar.n)
            self._bar.set_postfix_str(stats)
            return
        left = f"<{clock(elapsed / done * (self.total - done))}" if 0 < done <= self.total else ""
        timing = f"{clock(elapsed)}{left}"
        if self.tty:
            filled = 20 * min(done, self.total) // max(self.total, 1)
            self.stream.write(f"\r\033[K{self.head} [{'#' * filled}{'.' * (20 - filled)}] {done}/{self.total} "
                              f"{timing} {stats}".rstrip())
            self.drawn = True
        else:
            self.stream.write(f"{self.head} {done}/{self.total} {timing} {stats}".rstrip() + "\n")
        self.stream.flush()

    def clear(self):
        """End the phase: erase the bar from the terminal (nothing to undo in a log)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self.drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.drawn = False
        self.last = time.perf_counter()
