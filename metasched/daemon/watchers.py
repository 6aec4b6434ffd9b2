"""Coroutines waiting for a job to change (WatchJob, SubmitJob waiting for placement), woken
by the store's commits.

The store's writer thread calls `committed` with every job a commit changed; the jobs someone
waits on are looked up there and their waiters woken on the event loop. A waiter costs an
asyncio.Event, not a thread; a commit costs one look-up per job waited on (or per changed
job, whichever is fewer), and nothing at all while nobody waits.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Mapping
from typing import Any


class JobWatchers:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._waiting: dict[int, set[asyncio.Event]] = {}  # event loop's thread only
        # the ids waited on, as the writer thread reads them: replaced, never changed in place
        self._ids: frozenset[int] = frozenset()

    @contextlib.contextmanager
    def watching(self, job_id: int) -> Iterator[asyncio.Event]:
        """An event set whenever a commit changes the job (clear it before each look at the
        job: a change after the clear wakes the next wait)."""
        event = asyncio.Event()
        waiters = self._waiting.setdefault(job_id, set())
        waiters.add(event)
        if len(waiters) == 1:
            self._ids = self._ids | {job_id}
        try:
            yield event
        finally:
            waiters.discard(event)
            if not waiters:
                del self._waiting[job_id]
                self._ids = self._ids - {job_id}

    def committed(self, changed: Mapping[int, Any]) -> None:
        """Store change hook (writer thread): wake whoever waits on a job this commit changed."""
        ids = self._ids
        if not ids:
            return
        if len(ids) <= len(changed):
            hit = [i for i in ids if i in changed]
        else:
            hit = [i for i in changed if i in ids]
        if hit:
            self._loop.call_soon_threadsafe(self._wake, hit)

    def _wake(self, job_ids: list[int]) -> None:
        for job_id in job_ids:
            for event in self._waiting.get(job_id, ()):
                event.set()

    def count(self) -> int:
        return sum(len(w) for w in self._waiting.values())
