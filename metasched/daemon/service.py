"""The loop every daemon activity runs in (Balsam's site services): run_cycle() on a thread
of its own every `period` seconds, or sooner when woken; a cycle that fails is logged and
the loop goes on, so one bad cycle never stops an activity for good."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class Service:
    def __init__(
        self,
        name: str,
        period: float,
        run_cycle: Callable[[], object],
        log: Any,
        rest: float = 0.0,
        wake: threading.Event | None = None,
    ) -> None:
        self.name = name
        self.period = period
        self.run_cycle = run_cycle
        self.log = log
        # After each cycle: under a stream of wake-ups (submissions, reports) a short rest
        # lets the work that arrives meanwhile gather into one cycle.
        self.rest = rest
        self._wake = wake or threading.Event()  # shared with whoever has work for it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.period)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.run_cycle()
            except Exception:
                self.log.exception("cycle_failed", service=self.name)
                self._stop.wait(0.5)
            if self.rest:
                self._stop.wait(self.rest)
