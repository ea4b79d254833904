"""The watchdog of a data-parallel job's collectives: a process waiting too long for the others ends the job."""
from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections import deque


class Watchdog:
    """A thread that calls ``on_timeout(what, seconds)`` when a watched collective has not completed within
    `timeout` seconds: one that blocks (``with watchdog.watch(what): ...``) or one queued on a device
    (``pending(what, done)``, `done` telling whether it has finished; such ones finish in the order given). It
    checks every `timeout` / 4 seconds (at most every second) and costs nothing in between."""

    def __init__(self, timeout: float, on_timeout):
        self.timeout, self.on_timeout = float(timeout), on_timeout
        self._lock = threading.Lock()
        self._blocking = {}
        self._queued = deque()
        self._ids = itertools.count()
        self._thread = None

    @contextlib.contextmanager
    def watch(self, what: str):
        key = next(self._ids)
        with self._lock:
            self._blocking[key] = (what, time.monotonic())
        self._start()
        try:
            yield
        finally:
            with self._lock:
                del self._blocking[key]

    def pending(self, what: str, done):
        with self._lock:
            self._queued.append((what, time.monotonic(), done))
        self._start()

    def _start(self):
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="gpucnn-watchdog", daemon=True)
            self._thread.start()

    def overdue(self, now: float | None = None):
        """(what, seconds) of a collective past its time, or None; forgets queued ones that have finished."""
        now = time.monotonic() if now is None else now
        with self._lock:
            while self._queued and self._queued[0][2]():
                self._queued.popleft()
            waiting = list(self._blocking.values()) + [(w, t) for w, t, _ in itertools.islice(self._queued, 1)]
        for what, started in waiting:
            if now - started > self.timeout:
                return what, now - started
        return None

    def _run(self):
        while True:
            time.sleep(min(1.0, self.timeout / 4))
            late = self.overdue()
            if late is not None:
                self.on_timeout(*late)
                return
