"""Array tasks in the daemon: what a user's job names mean, and the % throttle.

A user names "17" (a job, or every task of array 17: the array's id is its first task's job
id, as in Slurm), "17_5" or "17_[1-100]". The throttle (--array=...%N) lets at most N tasks
of an array be at sites at once, whichever sites: a placement pass offers placement only
that many of its queued tasks, in task order.
"""

from __future__ import annotations

from metasched.arrays import ArrayError, JobRef, parse_job_ref
from metasched.states import AT_SITE_STATES, JobState
from metasched.store import JobRow, Store

MAX_REFS = 1000  # job names in one request
_UNLIMITED = 1 << 62
THROTTLE_REASON = "JobArrayTaskLimit: at most {n} tasks of array {a} at sites at once"


class BadRef(ValueError):
    """A name that is malformed or names nothing; the message is one line for the user."""


def parse_refs(texts: list[str]) -> list[JobRef]:
    if not texts:
        raise BadRef("no job named")
    if len(texts) > MAX_REFS:
        raise BadRef(f"more than {MAX_REFS} job names in one request")
    try:
        return [parse_job_ref(t) for t in texts]
    except ArrayError as e:
        raise BadRef(str(e)) from None


def jobs_named(store: Store, ref: JobRef, include_final: bool = True) -> list[JobRow]:
    """The jobs a name stands for (tasks in task order); raises BadRef if it names none."""
    info = store.array_info(ref.job_id)
    if info is None:
        if ref.tasks is not None:
            raise BadRef(f"job {ref.job_id} is not an array")
        job = store.job(ref.job_id)
        if job is None:
            raise BadRef(f"no job {ref.job_id}")
        return [job]
    tasks = store.array_tasks(ref.job_id, include_final=include_final)
    if ref.tasks is None:
        return tasks
    wanted = set(ref.tasks)
    found = [t for t in tasks if t.array_task in wanted]
    if not found and include_final:
        raise BadRef(f"array {ref.job_id} has no task {ref}")
    return found


def display_id(job: JobRow) -> str:
    """How users know a job: 17, or 17_5 for a task."""
    return f"{job.array_id}_{job.array_task}" if job.array_id else str(job.id)


class Throttle:
    """The % limits of live arrays (read once per array from the store)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._limits: dict[int, int] = {}

    def limit(self, array_id: int) -> int:
        n = self._limits.get(array_id)
        if n is None:
            info = self.store.array_info(array_id)
            n = info[1] if info else 0
            if len(self._limits) > 100_000:
                self._limits.clear()
            self._limits[array_id] = n
        return n

    def admit(self, queued: list[JobRow]) -> tuple[list[JobRow], dict[int, str]]:
        """The queued jobs placement may place now (in order), and why each other waits.
        Free while no live array has a limit; else one attribute test a job (~12 ms a pass
        at 100,000 queued jobs)."""
        if not any(self.limit(a) for a in self.store.live_arrays()):
            return queued, {}
        budget: dict[int, int] = {}
        out: list[JobRow] = []
        deferred: dict[int, str] = {}
        for job in queued:
            aid = job.array_id
            if aid:
                left = budget.get(aid)
                if left is None:
                    n = self.limit(aid)
                    left = n - self._at_sites(aid) if n else _UNLIMITED
                if left <= 0:
                    if not job.reason.startswith("JobArrayTaskLimit"):
                        deferred[job.id] = THROTTLE_REASON.format(n=self.limit(aid), a=aid)
                    budget[aid] = left
                    continue
                budget[aid] = left - 1
            out.append(job)
        return out, deferred

    def _at_sites(self, array_id: int) -> int:
        return sum(1 for t in self.store.live_tasks(array_id).values() if t.state in AT_SITE_STATES)


def counts_by_state(tasks: list[JobRow]) -> dict[JobState, int]:
    out: dict[JobState, int] = {}
    for t in tasks:
        out[t.state] = out.get(t.state, 0) + 1
    return out
