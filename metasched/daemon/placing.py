"""The placement pass: which queued jobs go to which site now, and what the rest are told.

Woken by every change placement depends on (a submission, a report, a job ending), run at
least every placement_interval. A full pass re-plans the whole queue from fresh site views;
in between, a pass places only the jobs submitted since, by continuing the last plan (see
run_cycle). Each forwarded job becomes FORWARDING(site, attempt) durably, in one transaction
with the pass's other decisions, before its submit command is sent.

The queue is placed in priority order: job id (first come, first served), except for the few
jobs an admin gave a priority (metasched-admin job priority): those with a higher one go
first, those with a negative one after every other job.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from metasched.daemon.core import Activity, Core
from metasched.daemon.tasks import Throttle
from metasched.daemon.views import request_of, site_views
from metasched.daemon.waiting import WaitingJobs
from metasched.placement.model import SiteView
from metasched.placement.policy import Decision, Request, recipe_for, site_refusal
from metasched.states import JobState
from metasched.store import Batch, HeldEstimate, IllegalTransition, JobRow

S = JobState


class PlacementPass(Activity):
    def __init__(self, core: Core) -> None:
        super().__init__(core)
        self.wake = threading.Event()  # set by anything that may let a job be placed
        # Jobs not placeable yet (dependencies, begin times, holds): settled before each pass.
        self.waiting = WaitingJobs(self.store, self.wake.set)
        self.throttle = Throttle(self.store)
        self._placed = threading.Condition()
        self._requests: dict[int, tuple[tuple[str, ...], Request]] = {}
        # What the last full pass planned from: a pass in between only places jobs
        # submitted since, unless something placement depends on has changed.
        self._replan_due = True
        self._requeued = False  # a job went back to the queue, behind newer ones in id order
        self._full_sites_version = -1
        self._full_at = 0.0  # when the last full pass took its views
        self._full_end = 0.0  # when it ended
        self._full_views: list[SiteView] = []
        self._placed_upto = 0  # highest job id any pass has planned
        # Jobs queued since (fed by the store listener; thread-safe appends): a pass between
        # full ones takes its new jobs from here instead of scanning every live job.
        self._arrivals: deque[int] = deque()
        self.store.add_listener(self._on_changes)
        # Jobs an admin gave a priority (a few): told by prioritize(), not found by a scan
        # of every job each pass.
        self._ranked: set[int] = {j.id for j in list(self.store.live.values()) if j.priority}
        self._behind = False  # the last full pass planned jobs ranked behind new ones

    def prioritize(self, job_ids: list[int]) -> None:
        """An admin set these jobs' priority: the next pass re-plans the queue in its order."""
        self._ranked.update(job_ids)
        self.replan()

    def replan(self) -> None:
        """Something placement depends on changed (besides site reports, which move
        SiteRegistry.version): the next pass re-plans the whole queue."""
        self._replan_due = True
        self.wake.set()

    def wait_placed(self, job_id: int, timeout: float) -> JobRow:
        """The job once a pass has decided about it (sent, or held with an estimate), or as it
        is when `timeout` runs out."""
        deadline = time.monotonic() + timeout
        with self._placed:
            while True:
                job = self.store.job(job_id)
                assert job is not None
                if job.state != S.QUEUED or job.est_at > 0:
                    return job
                left = deadline - time.monotonic()
                if left <= 0:
                    return job
                self._placed.wait(left)

    def run_cycle(self) -> int:
        """One placement pass: place what can be placed, send it; return how many were sent.

        A full pass re-plans the whole queue from fresh site views: at once when a job went
        back to the queue; when anything else placement depends on has changed (a different
        report, a site coming or going, a job ending, an admin's site state) and at least
        every placement_interval, but then never sooner after the last one than that one
        took, so re-planning a long queue takes at most half the CPU. In between, a pass only
        places the jobs submitted since: they come after every planned job in priority order
        (job id), so continuing the last plan gives them what a full pass over the same views
        would, at the cost of the new jobs alone, and a stream of submissions never waits
        behind re-plans of a long queue (bench/submit_throughput.py).
        """
        now = time.time()
        self.waiting.settle(now)  # released jobs make this pass a full one (_on_changes)
        version = self.sites.version
        since = now - self._full_end
        took = self._full_end - self._full_at
        changed = self._replan_due or version != self._full_sites_version
        full = self._requeued or (
            since >= took and (changed or since >= self.settings.placement_interval)
        )
        arrived = self._take_arrivals()
        if not full and self._behind:
            # New jobs go ahead of jobs ranked behind every other, which the last plan has
            # already placed: only a full pass places them in their turn (as soon as one may
            # run; until then they wait, as behind a re-plan of a long queue).
            self._replan_due = self._replan_due or bool(arrived)
            return 0
        if not full:
            live = self.store.live
            new = sorted(
                (
                    j
                    for j in (live.get(i) for i in arrived if i > self._placed_upto)
                    if j is not None and j.state == S.QUEUED
                ),
                key=lambda j: j.id,
            )
            if not new:
                return 0
            admitted, deferred = self.throttle.admit(new)
            decisions = self.placer.place_more([self._request(j) for j in admitted])
            if decisions is not None:
                self._placed_upto = new[-1].id
                return self._commit(decisions, new, self._full_views, self._full_at, deferred)
        # Cleared before the views are taken: a change from here on makes a later pass full.
        self._replan_due = self._requeued = False
        self._full_sites_version = version
        self._full_at = now
        try:
            return self._full_pass(now)
        finally:
            self._full_end = time.time()

    def force_full(self) -> None:
        """The next pass is a full one, whenever the last one ended (tests, benchmarks)."""
        self._replan_due = True
        self._full_end = self._full_at = 0.0

    def _full_pass(self, now: float) -> int:
        queued = sorted(
            (j for j in list(self.store.live.values()) if j.state == S.QUEUED),
            key=lambda j: j.id,
        )
        views = site_views(self.sites, self.store, now)
        self._full_views = views
        self._placed_upto = queued[-1].id if queued else self._placed_upto
        queued = self._in_priority_order(queued)
        admitted, deferred = self.throttle.admit(queued)
        decisions = self.placer.place([self._request(j) for j in admitted], views, now)
        return self._commit(decisions, queued, views, now, deferred)

    def _in_priority_order(self, queued: list[JobRow]) -> list[JobRow]:
        """The queued jobs (in id order) in priority order: the ranked ones moved to the
        front (higher priority first) or the back; the rest, the bulk, keep their order."""
        self._behind = False
        if not self._ranked:
            return queued
        live = self.store.live
        self._ranked = {i for i in self._ranked if (j := live.get(i)) is not None and j.priority}
        ranked = sorted(
            (j for i in self._ranked if (j := live.get(i)) is not None and j.state == S.QUEUED),
            key=lambda j: (-j.priority, j.id),
        )
        if not ranked:
            return queued
        ids = {j.id for j in ranked}
        ahead = [j for j in ranked if j.priority > 0]
        behind = [j for j in ranked if j.priority < 0]
        self._behind = bool(behind)
        return [*ahead, *(j for j in queued if j.id not in ids), *behind]

    def _commit(
        self,
        decisions: list[Decision],
        queued: list[JobRow],
        views: list[SiteView],
        now: float,
        deferred: dict[int, str],
    ) -> int:
        """Record a pass's decisions over these queued jobs (estimates as of now) in one
        transaction, then send the forwarded jobs to their sites; return how many were sent.
        deferred: array tasks held back by their array's % limit, and why."""
        if not queued:
            return 0
        placed = {d.job_id for d in decisions}
        # Why each newly queued job waits (what msub shows), worked out here and not inside the
        # write transaction, which holds up every submission behind it.
        waiting = {
            j.id: self._why_waiting(j, views)
            for j in queued
            if j.id not in placed and j.est_at == 0 and j.id not in deferred
        }
        waiting.update(deferred)
        by_id = {j.id: j for j in queued}
        recipes = self._recipes(decisions, by_id, views)

        def op(b: Batch) -> list[JobRow]:
            out = []
            held = []
            for d in decisions:
                if d.hold:
                    old = by_id[d.job_id]
                    # Late binding: it stays here, with a current estimate for msub; written
                    # only when its start moved enough to tell the user. (Which of several
                    # equally good sites is "best" flips from pass to pass; writing every flip
                    # cost ~50k updates per pass at 100k held jobs: bench/daemon_cycle.py.)
                    if not old.first_est_at or abs(old.est_start - d.estimate.start) >= max(
                        60.0, 0.1 * (d.estimate.start - now)
                    ):
                        held.append(
                            HeldEstimate(
                                d.job_id,
                                f"held in the global queue; best site now {d.site}",
                                d.estimate.start,
                                d.estimate.start_p90,
                                d.site,
                                d.partition,
                                d.estimate.point,
                            )
                        )
                    continue
                try:
                    job = b.job(d.job_id)
                    out.append(
                        b.move(
                            d.job_id,
                            S.FORWARDING,
                            f"placed: expected start in {max(0, d.estimate.start - now):.0f}s",
                            expect=[S.QUEUED],
                            site=d.site,
                            partition=d.partition,
                            attempt=job.attempt + 1,
                            slurm_job_id="",
                            reason="",
                            est_start=d.estimate.start,
                            est_p90=d.estimate.start_p90,
                            est_site=d.site,
                            est_partition=d.partition,
                            est_at=now,
                            est_point=d.estimate.point,
                            recipe=recipes.get(d.job_id, ""),
                        )
                    )
                except IllegalTransition:
                    continue  # cancelled meanwhile
            b.note_held(held, est_at=now)
            b.note_waiting(waiting, est_at=now)
            return out

        forwarded = self.store.run(op)
        for job in forwarded:
            self.dispatch.submit(job)
        with self._placed:
            self._placed.notify_all()
        return len(forwarded)

    def _recipes(
        self, decisions: list[Decision], by_id: dict[int, JobRow], views: list[SiteView]
    ) -> dict[int, str]:
        """The recipe each app's run sent now runs with at its partition (the first of the
        app's that can run there), chosen at forwarding and recorded with the move."""
        out: dict[int, str] = {}
        by_name: dict[str, SiteView] | None = None
        for d in decisions:
            if d.hold:
                continue
            app = self._request(by_id[d.job_id]).app
            if app is None:
                continue
            by_name = by_name or {v.name: v for v in views}
            view = by_name.get(d.site)
            part = view.partition(d.partition) if view is not None else None
            if view is not None and part is not None:
                out[d.job_id] = recipe_for(view, part, app)[0]
        return out

    def _request(self, job: JobRow) -> Request:
        """request_of(job), cached: a queued job is re-planned every pass; its spec is fixed."""
        hit = self._requests.get(job.id)
        if hit is not None and hit[0] == job.avoid_sites:
            return hit[1]
        req = request_of(job)
        self._requests[job.id] = (job.avoid_sites, req)
        if len(self._requests) > 2 * len(self.store.live) + 1000:
            live = self.store.live
            self._requests = {k: v for k, v in self._requests.items() if k in live}
        return req

    def _why_waiting(self, job: JobRow, views: list[SiteView]) -> str:
        req = self._request(job)
        reasons = []
        for v in views:
            _parts, why = site_refusal(v, req)
            reasons.append(f"{v.name}: {why or 'no slot now'}")
        return "waiting: " + "; ".join(reasons) if reasons else "waiting: no site has reported"

    def _on_changes(self, changes: list[tuple[JobRow, JobState, str]]) -> None:
        """Store listener: note new jobs for the next pass; a job back in the queue (requeued,
        retried, recalled) sits among jobs already planned, so only a full pass places it in
        its turn."""
        for row, old, _ in changes:
            if row.state != S.QUEUED:
                continue
            if old != S.QUEUED:
                self._requeued = True
                self.wake.set()
            elif row.id > self._placed_upto:
                self._arrivals.append(row.id)

    def _take_arrivals(self) -> list[int]:
        # as many as are there now; the listener may append more meanwhile (next pass's)
        return [self._arrivals.popleft() for _ in range(len(self._arrivals))]
