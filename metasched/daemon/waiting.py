"""Jobs in the global queue that may not be placed yet: dependencies, begin times, holds.

Such a job is WAITING (never seen by placement) until nothing holds it, then QUEUED. Nothing
here scans the queue: the jobs that wait on another job are indexed by what they wait on,
begin times sit in a heap, and a store listener marks the dependents of every job that
starts or ends as due. Each placement pass settles only the due ones, in one transaction:
released (-> QUEUED), cancelled when their dependency can never be satisfied (sbatch's
--kill-on-invalid-dep=yes: a pipeline whose step failed does not leave its later steps
waiting forever in every user's queue), or left waiting with the reason (Slurm's words:
Dependency, DependencyNeverSatisfied, BeginTime, JobHeldUser).

What the conditions mean (sbatch(1)): after = started or ended (+MIN minutes after),
afterany = ended, afterok = COMPLETED, afternotok = ended otherwise, aftercorr = the same
task of another array COMPLETED; an array named whole counts once all its tasks have ended
(after: once none is still to start); singleton = no other job of the user by that name is
queued or at a site.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable
from typing import Literal

from metasched import log
from metasched.dependency import Condition, Dependency, parse_dependency
from metasched.states import FINAL_STATES, JobState
from metasched.store import Batch, JobRow, NoSuchJob, Store

S = JobState
Verdict = Literal["ready", "wait", "never"]
Key = tuple[int, int | None]  # (job or array id, task or None)

_FINAL = tuple(str(s) for s in FINAL_STATES)
# Why a held job waits, in Slurm's words (squeue's reasons JobHeldUser / JobHeldAdmin).
HELD_BY_USER = "JobHeldUser: held by its user (msub release)"
HELD_BY_ADMIN = "JobHeldAdmin: held by an admin (only an admin releases it)"


def _keys_of(row: JobRow) -> tuple[Key, ...]:
    """The index keys under which jobs waiting on this row are found."""
    if row.array_id:
        return ((row.array_id, row.array_task), (row.array_id, None))
    return ((row.id, None),)


class WaitingJobs:
    def __init__(self, store: Store, wake: Callable[[], None]) -> None:
        self.store = store
        self.wake = wake
        self.log = log.get(component="waiting")
        self._lock = threading.Lock()
        self._by_parent: dict[Key, set[int]] = {}
        self._keys_of_waiter: dict[int, tuple[Key, ...]] = {}
        self._singletons: dict[tuple[str, str], set[int]] = {}  # (user, name) -> waiters
        self._begins: list[tuple[float, int]] = []  # (when, job id) heap
        self._due: set[int] = set()
        self._parsed: dict[str, Dependency] = {}
        for job in list(store.live.values()):
            if job.state == S.WAITING:
                self._register(job)
                self._due.add(job.id)  # whatever happened while the daemon was down
        store.add_listener(self._on_changes)

    # ---------------------------------------------------------------- the index

    def dependency(self, spec_text: str) -> Dependency | None:
        if not spec_text:
            return None
        dep = self._parsed.get(spec_text)
        if dep is None:
            if len(self._parsed) > 10_000:
                self._parsed.clear()
            dep = self._parsed[spec_text] = parse_dependency(spec_text)
        return dep

    def _register(self, job: JobRow) -> None:
        keys: list[Key] = []
        dep = self.dependency(job.spec.dependency)
        for c in dep.conditions if dep else ():
            if c.kind == "singleton":
                self._singletons.setdefault((job.user, job.spec.name), set()).add(job.id)
            elif c.job is not None:
                task = c.job.tasks[0] if c.job.tasks else None
                keys.append((c.job.job_id, task))
                if c.kind == "aftercorr" and task is None and job.array_id:
                    keys.append((c.job.job_id, job.array_task))
        for k in keys:
            self._by_parent.setdefault(k, set()).add(job.id)
        self._keys_of_waiter[job.id] = tuple(keys)
        if job.spec.begin_time:
            heapq.heappush(self._begins, (job.spec.begin_time, job.id))

    def _unregister(self, job: JobRow) -> None:
        for k in self._keys_of_waiter.pop(job.id, ()):
            waiters = self._by_parent.get(k)
            if waiters is not None:
                waiters.discard(job.id)
                if not waiters:
                    del self._by_parent[k]
        waiters = self._singletons.get((job.user, job.spec.name))
        if waiters is not None:
            waiters.discard(job.id)
            if not waiters:
                del self._singletons[(job.user, job.spec.name)]
        # a begin time left in the heap is dropped when it comes due

    def _on_changes(self, changes: list[tuple[JobRow, JobState, str]]) -> None:
        """Store listener (writer thread): keep the index, and mark as due the waiters of
        every job that started or ended."""
        woke = False
        with self._lock:
            for row, old, _ in changes:
                if row.state == S.WAITING:
                    if row.id not in self._keys_of_waiter:
                        # new, or held: settled once (an array's tasks are each evaluated
                        # there, and settle says why it waits)
                        self._register(row)
                        self._due.add(row.id)
                        woke = True
                    continue
                if old == S.WAITING:
                    self._unregister(row)
                started = row.state == S.RUNNING and old != S.RUNNING
                if not (started or row.state in FINAL_STATES):
                    continue
                for k in _keys_of(row):
                    waiters = self._by_parent.get(k)
                    if waiters:
                        self._due |= waiters
                        woke = True
                if self._singletons:
                    waiters = self._singletons.get((row.user, row.spec.name))
                    if waiters:
                        self._due |= waiters
                        woke = True
        if woke:
            self.wake()

    def mark_due(self, job_ids: list[int]) -> None:
        with self._lock:
            self._due.update(job_ids)
        self.wake()

    @property
    def waiting(self) -> int:
        return len(self._keys_of_waiter)

    # ---------------------------------------------------------------- settling

    def settle(self, now: float | None = None) -> tuple[list[int], list[int]]:
        """Release or cancel the waiting jobs that are due; returns (released, cancelled)."""
        now = time.time() if now is None else now
        with self._lock:
            due = self._due
            self._due = set()
            while self._begins and self._begins[0][0] <= now:
                due.add(heapq.heappop(self._begins)[1])
        if not due:
            return [], []
        released: list[int] = []
        cancelled: list[int] = []
        recheck: list[tuple[float, int]] = []

        def op(b: Batch) -> None:
            for job_id in sorted(due):
                try:
                    job = b.job(job_id)
                except NoSuchJob:
                    continue
                if job.state != S.WAITING:
                    continue
                verdict, reason, again = self.evaluate(b, job, now)
                if again:
                    recheck.append((again, job.id))
                if verdict == "ready":
                    b.move(job.id, S.QUEUED, "released: " + (job.reason or "ready"), reason="")
                    released.append(job.id)
                elif verdict == "never" and not job.spec.keep_invalid_dependency:
                    b.move(job.id, S.CANCELLED, reason, reason=reason)
                    cancelled.append(job.id)
                elif reason != job.reason:
                    b.move(job.id, S.WAITING, "", reason=reason)

        self.store.run(op)
        if recheck:
            with self._lock:
                for item in recheck:
                    heapq.heappush(self._begins, item)
        return released, cancelled

    def evaluate(self, b: Batch, job: JobRow, now: float) -> tuple[Verdict, str, float]:
        """(verdict, reason, when to look again (0: when a parent changes)) for a job that
        would wait, evaluated inside transaction b."""
        dep = self.dependency(job.spec.dependency)
        again = 0.0
        if dep is not None:
            results = [self._condition(b, job, c, now) for c in dep.conditions]
            verdicts = [v for v, _, _ in results]
            again = min((t for _, _, t in results if t), default=0.0)
            if dep.any_of:
                verdict: Verdict = (
                    "ready"
                    if "ready" in verdicts
                    else ("never" if all(v == "never" for v in verdicts) else "wait")
                )
            else:
                verdict = (
                    "never"
                    if "never" in verdicts
                    else ("ready" if all(v == "ready" for v in verdicts) else "wait")
                )
            if verdict == "never":
                why = "; ".join(w for v, w, _ in results if v == "never")
                return "never", f"DependencyNeverSatisfied: {why}", 0.0
            if verdict == "wait":
                return "wait", f"Dependency: waiting for {dep}", again
        if job.held:
            return "wait", HELD_BY_ADMIN if job.admin_held else HELD_BY_USER, 0.0
        if job.spec.begin_time > now:
            when = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(job.spec.begin_time))
            return "wait", f"BeginTime: not before {when}", job.spec.begin_time
        return "ready", "", 0.0

    def _condition(
        self, b: Batch, job: JobRow, c: Condition, now: float
    ) -> tuple[Verdict, str, float]:
        if c.kind == "singleton":
            return self._singleton(b, job)
        assert c.job is not None
        ref = c.job
        kind = c.kind
        corresponding = ref.tasks is None and kind == "aftercorr" and job.array_id
        if corresponding and self.store.array_info(ref.job_id) is not None:
            parent = _task(b, ref.job_id, job.array_task)
            if parent is None:  # the other array has no such task: nothing to wait for
                return "ready", "", 0.0
            return _one(parent, "afterok", 0, now, f"{c}")
        if kind == "aftercorr":
            kind = "afterok"
        if ref.tasks is None:
            if self.store.array_info(ref.job_id) is not None:
                return _whole_array(b, ref.job_id, kind, f"{c}")
            try:
                parent = b.job(ref.job_id)
            except NoSuchJob:
                return "never", f"{c}: no job {ref.job_id}", 0.0
        else:
            found = _task(b, ref.job_id, ref.tasks[0])
            if found is None:
                return "never", f"{c}: no task {ref}", 0.0
            parent = found
        return _one(parent, kind, c.after_minutes, now, f"{c}")

    def _singleton(self, b: Batch, job: JobRow) -> tuple[Verdict, str, float]:
        name = job.spec.name
        mine = dict(self.store.live_of(job.user))
        mine.update((k, r) for k, r in b.changed.items() if r.user == job.user)
        for other in mine.values():
            if (
                other.id != job.id
                and other.spec.name == name
                and other.state not in FINAL_STATES
                and other.state != S.WAITING
            ):
                return "wait", "", 0.0
        return "ready", "", 0.0


def _task(b: Batch, array_id: int, task: int) -> JobRow | None:
    r = b.conn.execute(
        "SELECT id FROM jobs WHERE array_id=? AND array_task=?", (array_id, task)
    ).fetchone()
    return b.job(r[0]) if r else None


def _one(
    parent: JobRow, kind: str, minutes: int, now: float, what: str
) -> tuple[Verdict, str, float]:
    st = parent.state
    if kind == "after":
        began = parent.started_at or (parent.ended_at if st.is_final else 0.0)
        if not began and st != S.RUNNING:
            return "wait", "", 0.0
        at = (began or now) + 60 * minutes
        return ("ready", "", 0.0) if at <= now else ("wait", "", at)
    if not st.is_final:
        return "wait", "", 0.0
    if kind == "afterany":
        return "ready", "", 0.0
    ok = st == S.COMPLETED
    if kind == "afterok":
        return ("ready", "", 0.0) if ok else ("never", f"{what}: job ended {st}", 0.0)
    # afternotok
    return ("never", f"{what}: job completed", 0.0) if ok else ("ready", "", 0.0)


def _whole_array(b: Batch, array_id: int, kind: str, what: str) -> tuple[Verdict, str, float]:
    counts = dict(
        b.conn.execute(
            "SELECT state, count(*) FROM jobs WHERE array_id=? GROUP BY state", (array_id,)
        ).fetchall()
    )
    if kind == "after":
        unstarted = b.conn.execute(
            "SELECT count(*) FROM jobs WHERE array_id=? AND (started_at IS NULL OR started_at=0)"
            " AND state IN ('QUEUED','WAITING','FORWARDING','PENDING','RECALLING')",
            (array_id,),
        ).fetchone()[0]
        return ("ready", "", 0.0) if not unstarted else ("wait", "", 0.0)
    if any(state not in _FINAL for state in counts):
        return "wait", "", 0.0
    if kind == "afterany":
        return "ready", "", 0.0
    failed = sum(n for state, n in counts.items() if state != str(S.COMPLETED))
    if kind == "afterok":
        if failed:
            return "never", f"{what}: {failed} of its tasks did not complete", 0.0
        return "ready", "", 0.0
    return ("ready", "", 0.0) if failed else ("never", f"{what}: every task completed", 0.0)
