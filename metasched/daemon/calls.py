"""What one user's calls may hold of the daemon at once, and how a call's failure is answered.

The gRPC services run as coroutines on one asyncio event loop (grpc.aio, see main.py): an
open stream (a watch, an agent's connection) waits for news without holding a thread. What
cannot wait without one (reads of the SQLite file, waiting for the store's commit, planning)
runs in one small pool of threads, at most `threads` of them for any one user, so one user's
slow calls leave the rest of the pool to everybody else.

Per user, at once: `calls` unary calls in flight, `watches` open watches, `listings`
listings; one more is refused with RESOURCE_EXHAUSTED and a one-line message. A unary call
is answered within `call_timeout` seconds (DEADLINE_EXCEEDED otherwise), a watch lasts at
most `watch_seconds` (msub watch opens a new one), and replies are bounded by their
handlers (listings in pages, scripts by max_script_bytes).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import grpc

from metasched import auth, log
from metasched.daemon.settings import Refused
from metasched.store import DamagedRow, NoSuchJob, StoreError, StoreFull

T = TypeVar("T")
P = ParamSpec("P")
Context = grpc.aio.ServicerContext[Any, Any]


@dataclass(frozen=True)
class Limits:
    calls: int = 64  # unary calls in flight, per user
    watches: int = 256  # open WatchJob streams, per user
    listings: int = 4  # ListJobs calls in flight, per user
    threads: int = 4  # of the pool's threads, per user
    call_timeout: float = 60.0  # seconds a unary call may take
    watch_seconds: float = 24 * 3600.0  # a watch ends after this long (msub watch reopens it)


# what each limit counts, as a refusal says it
_WHAT = {"calls": "calls in flight", "watches": "open watches", "listings": "listings in flight"}


def status_of(e: BaseException) -> tuple[grpc.StatusCode, str] | None:
    """The gRPC status a refusal is answered with; None for an unexpected exception (a bug)."""
    if isinstance(e, Refused | auth.AuthError):
        return getattr(grpc.StatusCode, e.code), str(e)
    if isinstance(e, NoSuchJob):
        return grpc.StatusCode.NOT_FOUND, str(e)
    if isinstance(e, DamagedRow):
        return grpc.StatusCode.DATA_LOSS, f"{e}: it is quarantined (metasched-admin quarantine)"
    if isinstance(e, StoreFull):
        return (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "the daemon's disk is full: nothing was recorded; try again later",
        )
    if isinstance(e, StoreError):
        return grpc.StatusCode.UNAVAILABLE, f"the daemon cannot use its database: {e}"
    if isinstance(e, TimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED, "the daemon could not answer in time"
    return None


class Calls:
    """Per-user bounds on calls, and the pool that runs their blocking parts. Only the event
    loop's thread uses it (no locks).

    A unary call's deadline is kept by one sweeper task (once a second it cancels the calls
    past call_timeout), not by a timer per call: asyncio.timeout was ~5% of the event loop's
    time on the submission path (bench/submit_throughput.py)."""

    def __init__(self, limits: Limits, pool: ThreadPoolExecutor, component: str) -> None:
        self.limits = limits
        self.pool = pool
        self.log = log.get(component=component)
        self._held: dict[tuple[str, str], int] = {}  # (user, kind) -> how many
        self._threads: dict[str, asyncio.Semaphore] = {}
        self._deadlines: dict[asyncio.Task[Any], float] = {}  # unary calls in flight
        self._overdue: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.Task[None] | None = None

    def _take(self, user: str, kind: str) -> None:
        """One more of `kind` for `user`; Refused (RESOURCE_EXHAUSTED) over the limit. Every
        _take is matched by a _give."""
        key = (user, kind)
        n = self._held.get(key, 0)
        limit: int = getattr(self.limits, kind)
        if n >= limit:
            raise Refused(
                "RESOURCE_EXHAUSTED",
                f"user {user} already has {n} {_WHAT[kind]} (the limit); wait for one to end",
            )
        self._held[key] = n + 1

    def _give(self, user: str, kind: str) -> None:
        key = (user, kind)
        left = self._held[key] - 1
        if left:
            self._held[key] = left
        else:
            del self._held[key]

    @contextlib.contextmanager
    def hold(self, user: str, kind: str) -> Iterator[None]:
        """One more of `kind` for `user` while inside (see _take)."""
        self._take(user, kind)
        try:
            yield
        finally:
            self._give(user, kind)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = asyncio.get_running_loop().time()
            for task, deadline in list(self._deadlines.items()):
                if deadline < now and task not in self._overdue:
                    self._overdue.add(task)
                    task.cancel()

    async def blocking(self, user: str, fn: Callable[P, T], *args: P.args, **kw: P.kwargs) -> T:
        """fn(*args) on the pool, at most `threads` at once for this user. The user's thread
        is given back when fn returns, not when the caller stops waiting (a call past its
        deadline still holds it), so a user never has more than `threads` of the pool."""
        sem = self._threads.get(user)
        if sem is None:
            sem = self._threads[user] = asyncio.Semaphore(self.limits.threads)
        await sem.acquire()
        loop = asyncio.get_running_loop()
        try:
            fut = self.pool.submit(fn, *args, **kw)
        except BaseException:
            sem.release()
            raise
        fut.add_done_callback(lambda _: loop.call_soon_threadsafe(sem.release))
        return await asyncio.wrap_future(fut)

    async def unary(
        self,
        context: Context,
        who: Callable[[Context], str],
        body: Callable[[str], Awaitable[T]],
        kind: str = "",
    ) -> T:
        """Answer one unary call: who(context) is the caller; body(user) the answer, run with
        the caller's calls (and `kind`) held, within call_timeout. Refusals are answered with
        their status; anything else with INTERNAL, logged with its traceback."""
        task = asyncio.current_task()
        assert task is not None
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep())
        self._deadlines[task] = asyncio.get_running_loop().time() + self.limits.call_timeout
        try:
            user = who(context)
            self._take(user, "calls")
            try:
                if not kind:
                    return await body(user)
                self._take(user, kind)
                try:
                    return await body(user)
                finally:
                    self._give(user, kind)
            finally:
                self._give(user, "calls")
        except asyncio.CancelledError:
            if task not in self._overdue or task.uncancel():
                raise  # the client went away (too): there is no one to answer
            code, message = status_of(TimeoutError()) or (grpc.StatusCode.UNKNOWN, "")
        except Exception as e:
            code, message = self._failed(e, context)
        finally:
            del self._deadlines[task]
            self._overdue.discard(task)
        await context.abort(code, message)
        raise AssertionError("unreachable")  # abort raises

    async def stream(
        self,
        context: Context,
        who: Callable[[Context], str],
        body: Callable[[str], AsyncIterator[T]],
        kind: str,
    ) -> AsyncIterator[T]:
        """Answer one server stream: body(user)'s messages, with the caller's `kind` held for
        as long as it is open."""
        try:
            user = who(context)
            with self.hold(user, kind):
                async for item in body(user):
                    yield item
            return
        except Exception as e:
            code, message = self._failed(e, context)
        await context.abort(code, message)

    def _failed(self, e: Exception, context: Context) -> tuple[grpc.StatusCode, str]:
        known = status_of(e)
        if known is not None:
            return known
        self.log.exception("rpc_failed", peer=context.peer(), error=f"{type(e).__name__}: {e}")
        return grpc.StatusCode.INTERNAL, f"internal error in metaschedd ({type(e).__name__})"
