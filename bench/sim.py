"""A discrete-event model of several Slurm-like sites fed by one stream of jobs.

Each site is one partition of identical single-CPU nodes (SWF traces count processors; a
job takes whole nodes, one per processor), scheduled as Slurm does with
SchedulerType=sched/backfill reduced to EASY: jobs start in submission order while they fit;
when the head of the queue does not fit, it gets a reservation at the time enough nodes are
free if every running job runs to its limit (the "shadow time"), and later jobs (at most
BF_MAX_JOB_TEST of them, Slurm's bf_max_job_test) start now if they fit and either end by
their limit before the shadow time or use only nodes the reservation does not need.
A job runs for its true (trace) run time, cut at its limit.

A policy decides where each arriving job goes (or keeps it in the global queue and
forwards it later); the sites then schedule it by themselves, as Slurm would.
"""

from __future__ import annotations

import bisect
import heapq
import math
import sys
import time
from collections.abc import Callable
from typing import Protocol

BF_MAX_JOB_TEST = 500
T0 = 1_000_000.0  # simulated clock offset: time 0 would read as "not started" in a Work


class Job:
    __slots__ = (
        "est",
        "est90",
        "est_site",
        "id",
        "limit",
        "point",
        "prec",
        "procs",
        "run",
        "site",
        "start",
        "submit",
        "user",
        "work",
    )

    def __init__(
        self, jid: int, submit: float, run: float, limit: float, procs: int, user: str, prec: str
    ) -> None:
        self.id = jid
        self.submit = submit
        self.run = run
        self.limit = limit
        self.procs = procs
        self.user = user
        self.prec = prec
        self.site = -1
        self.start = math.nan
        self.est = math.nan  # estimated start given at submission (median)
        self.est90 = math.nan  # its 90% bound, when the policy gives one
        self.point = math.nan  # the uncalibrated point estimate (for calibration)
        self.est_site = ""  # the site that estimate is for (whose calibration learns from it)
        self.work: object = None  # cached view objects for policies that want them


class Site:
    def __init__(self, idx: int, name: str, nodes: int, precisions: tuple[str, ...]) -> None:
        self.idx = idx
        self.name = name
        self.nodes = nodes
        self.precisions = precisions
        self.free = nodes
        self.queue: list[Job] = []
        self.running: dict[int, Job] = {}
        self.by_limit_end: list[tuple[float, int, int]] = []  # (start + limit, id, procs)
        self.pending_charge = 0.0  # sum of procs x limit over the queue

    def enqueue(self, job: Job) -> None:
        job.site = self.idx
        self.queue.append(job)
        self.pending_charge += job.procs * job.limit

    def _start(self, job: Job, now: float, started: list[Job]) -> None:
        self.free -= job.procs
        job.start = now
        self.running[job.id] = job
        bisect.insort(self.by_limit_end, (now + job.limit, job.id, job.procs))
        self.pending_charge -= job.procs * job.limit
        started.append(job)

    def finish(self, job: Job) -> None:
        self.free += job.procs
        del self.running[job.id]
        key = (job.start + job.limit, job.id, job.procs)
        i = bisect.bisect_left(self.by_limit_end, key)
        del self.by_limit_end[i]

    def free_by_limits(self, procs: int, now: float) -> tuple[float, int]:
        """(when `procs` nodes are free if running jobs run to their limits, spare nodes then)."""
        avail = self.free
        if avail >= procs:
            return now, avail - procs
        for end, _, p in self.by_limit_end:
            avail += p
            if avail >= procs:
                return max(end, now), avail - procs
        return math.inf, 0

    def schedule(self, now: float) -> list[Job]:
        """One pass of the site's scheduler: FCFS, then EASY backfill."""
        started: list[Job] = []
        q = self.queue
        i = 0
        while i < len(q) and q[i].procs <= self.free:
            self._start(q[i], now, started)
            i += 1
        if i:
            del q[:i]
        if len(q) > 1 and self.free > 0:
            shadow, extra = self.free_by_limits(q[0].procs, now)
            taken: set[int] = set()
            for job in q[1 : 1 + BF_MAX_JOB_TEST]:
                if job.procs > self.free:
                    continue
                if now + job.limit <= shadow:
                    pass
                elif job.procs <= extra:
                    extra -= job.procs
                else:
                    continue
                self._start(job, now, started)
                taken.add(job.id)
                if self.free == 0:
                    break
            if taken:
                self.queue = [j for j in q if j.id not in taken]
        return started


class Policy(Protocol):
    name: str

    def arrive(self, sim: Sim, job: Job, now: float) -> None: ...

    def cycle(self, sim: Sim, now: float) -> None: ...

    def started(self, sim: Sim, job: Job, now: float) -> None: ...

    def finished(self, sim: Sim, job: Job, now: float) -> None: ...


class Sim:
    def __init__(self, sites: list[Site], jobs: list[Job]) -> None:
        self.sites = sites
        self.jobs = jobs
        self._ends: list[tuple[float, int, int]] = []  # (end, job id, site)
        self._by_id = {j.id: j for j in jobs}
        self._now = 0.0
        self._policy: Policy | None = None

    def forward(self, job: Job, site: int, now: float) -> None:
        """Submit `job` to `site` now; the site schedules it (and perhaps starts it) at once."""
        s = self.sites[site]
        s.enqueue(job)
        self._schedule(s, now)

    def _schedule(self, s: Site, now: float) -> None:
        assert self._policy is not None
        for job in s.schedule(now):
            heapq.heappush(self._ends, (now + job.run, job.id, s.idx))
            self._policy.started(self, job, now)

    def run(self, policy: Policy, progress: Callable[[int], None] | None = None) -> None:
        self._policy = policy
        jobs = self.jobs
        n = len(jobs)
        a = 0
        ends = self._ends
        while a < n or ends:
            t_arr = jobs[a].submit if a < n else math.inf
            if ends and ends[0][0] <= t_arr:
                now = ends[0][0]
                touched: set[int] = set()
                while ends and ends[0][0] == now:
                    _, jid, si = heapq.heappop(ends)
                    job = self._by_id[jid]
                    self.sites[si].finish(job)
                    policy.finished(self, job, now)
                    touched.add(si)
                for si in sorted(touched):
                    self._schedule(self.sites[si], now)
                policy.cycle(self, now)
            else:
                now = t_arr
                policy.arrive(self, jobs[a], now)
                a += 1
                if progress and a % 500 == 0:
                    progress(a)
        if progress and n % 500:
            progress(n)


class Progress:
    """A one-line progress bar on stderr (no dependency)."""

    def __init__(self, label: str, total: int, width: int = 30) -> None:
        self.label, self.total, self.width = label, max(1, total), width
        self.t0 = time.monotonic()

    def __call__(self, done: int) -> None:
        if done < self.total and done % max(1, self.total // 100) >= 500:
            return
        frac = min(1.0, done / self.total)
        bar = "#" * int(frac * self.width)
        el = time.monotonic() - self.t0
        sys.stderr.write(f"\r{self.label:<28} [{bar:<{self.width}}] {frac * 100:5.1f}% {el:6.1f}s")
        if done >= self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()
