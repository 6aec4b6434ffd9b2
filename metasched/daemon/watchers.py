"""Coroutines woken by the store's writer thread: those waiting for their own commit (a
submission, Completions) and those waiting for a job to change (WatchJob, SubmitJob waiting
for placement: JobWatchers).

Waking the event loop from another thread is a write to the loop's socket, during which the
writer thread lets go of Python's GIL and may wait a switch interval (5 ms) to get it back
from the busy loop: so the writer wakes the loop once per commit, never once per job.

The store's writer thread calls `JobWatchers.committed` with every job a commit changed; the
jobs someone waits on are looked up there and their waiters woken on the event loop. A waiter
costs an asyncio.Event, not a thread; a commit costs one look-up per job waited on (or per
changed job, whichever is fewer), and nothing at all while nobody waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import Iterator, Mapping
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


class Completions:
    """asyncio futures for futures another thread resolves (the store's commits), handed to the
    event loop in bunches: the first to complete wakes the loop, the rest of the same commit
    join it (asyncio.wrap_future wakes the loop once per future)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._done: deque[tuple[asyncio.Future[Any], Future[Any]]] = deque()
        self._lock = threading.Lock()
        self._woken = False

    def wrap(self, fut: Future[T]) -> asyncio.Future[T]:
        """(event loop's thread) An asyncio future with fut's outcome."""
        mine: asyncio.Future[T] = self._loop.create_future()
        fut.add_done_callback(lambda f: self._arrived(mine, f))
        return mine

    def _arrived(self, mine: asyncio.Future[Any], fut: Future[Any]) -> None:
        self._done.append((mine, fut))
        with self._lock:
            if self._woken:
                return
            self._woken = True
        self._loop.call_soon_threadsafe(self._hand_over)

    def _hand_over(self) -> None:
        with self._lock:
            self._woken = False  # a future done from here on wakes the loop again
        while self._done:
            mine, fut = self._done.popleft()
            if mine.done():  # the caller gave up (its deadline)
                continue
            err = fut.exception()
            if err is not None:
                mine.set_exception(err)
            else:
                mine.set_result(fut.result())


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
