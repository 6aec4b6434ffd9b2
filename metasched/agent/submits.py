"""Submit commands carried out several at a time.

Each sbatch costs a fork as the job's user and a round trip to slurmctld; one at a time, a
1,000-task array took ~100 s to reach three sites (bench/array_cancel.py). Submissions of
different tags are independent (each is exactly-once by its own journal row), so they run on
`workers` threads at once, with two rules that keep the command loop's old, serial meaning:
  - one tag is never in flight twice: a submit re-sent while the first is still running
    sbatch is dropped (the first one answers; were both to look for the tag in Slurm before
    either's sbatch returned, both would submit);
  - any other command (a cancel, a resolve) waits until no submission is in flight, so it
    never overtakes the submit it is about.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from metasched.v1 import metasched_pb2 as pb

Work = tuple[pb.DaemonMessage, Callable[[pb.DaemonMessage], None]]


class SubmitPool:
    """carry_out(msg) answers the command itself and must not raise (SiteAgent.handle does
    not: every failure is logged and left for the daemon to re-send)."""

    def __init__(self, workers: int) -> None:
        self.workers = max(1, workers)
        self._queue: queue.SimpleQueue[Work] = queue.SimpleQueue()
        self._in_flight: set[str] = set()
        self._changed = threading.Condition()
        self._started = False

    def add(self, msg: pb.DaemonMessage, carry_out: Callable[[pb.DaemonMessage], None]) -> bool:
        """Queue a submit command; False (and nothing queued) if its tag is in flight."""
        tag = msg.submit.tag
        with self._changed:
            if tag in self._in_flight:
                return False
            self._in_flight.add(tag)
            if not self._started:  # threads only for an agent that gets submissions
                self._started = True
                for n in range(self.workers):
                    # daemon threads: a stop never waits for sbatch (the journal's intent
                    # makes the next start look for the job before submitting it again)
                    threading.Thread(target=self._work, name=f"sbatch-{n}", daemon=True).start()
        self._queue.put((msg, carry_out))
        return True

    def in_flight(self) -> int:
        with self._changed:
            return len(self._in_flight)

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until no submission is queued or running; False if `timeout` came first."""
        with self._changed:
            return self._changed.wait_for(lambda: not self._in_flight, timeout)

    def _work(self) -> None:
        while True:
            msg, carry_out = self._queue.get()
            try:
                carry_out(msg)
            finally:
                with self._changed:
                    self._in_flight.discard(msg.submit.tag)
                    self._changed.notify_all()
