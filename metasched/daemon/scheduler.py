"""The daemon's heart: accept jobs, place them, follow them at the sites, keep them honest.

Everything here that changes a job goes through the store in one transaction, and only
after it is committed is anything sent to an agent or answered to a user. The rules that
make forwarding exactly-once:
  - a job is sent to a site only as FORWARDING(site, attempt), durably, first;
  - every Slurm job carries the tag metasched:<federation>:<job>:<attempt>, and the agent's
    submit is idempotent per tag (it looks for the tag before calling sbatch);
  - a Slurm job whose tag does not match the job's current site and attempt is a stray and
    is cancelled; a job already at a site is never placed again unless that site confirmed
    it is gone (cancelled, or finished).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import Any

from metasched import jobspec, log, tags
from metasched.daemon.sites import Site, SiteRegistry, work_of
from metasched.placement.model import SiteView, Work
from metasched.placement.policy import Choice, Decision, Placer, Request, site_refusal
from metasched.states import INFRASTRUCTURE_FAILURES, JobState, from_slurm
from metasched.store import Batch, HeldEstimate, IllegalTransition, JobRow, NoSuchJob, Store
from metasched.v1 import metasched_pb2 as pb

S = JobState


class Refused(Exception):
    """A request we will not take; `code` is the gRPC status name to answer with."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Settings:
    placement_interval: float = 1.0
    max_infra_retries: int = 2
    resend_after: float = 30.0  # re-send an unanswered submit/cancel after this long
    resolve_after: float = 10.0  # a job missing from reports this long is looked up
    max_script_bytes: int = jobspec.MAX_SCRIPT_BYTES
    max_queued_per_user: int = 100_000
    # Rebalancing: a job still pending at a site rebalance_grace_s past its expected start is
    # pulled back (cancelled while still pending, confirmed by the agent) and placed again when
    # another site would start it at least rebalance_min_gain_s sooner, and sooner by at least
    # half its remaining expected wait. At most max_recalls times per job.
    rebalance: bool = True
    rebalance_interval: float = 30.0
    rebalance_grace_s: float = 300.0
    rebalance_min_gain_s: float = 600.0
    max_recalls: int = 2
    # Late binding: a job whose best planned start is more than this many seconds away stays
    # in the global queue (re-planned every pass) instead of joining one site's queue; it is
    # forwarded once a site can start it. None: forward every placeable job at once. The
    # replay benchmark (bench/README.md) measured 0 s as best: mean wait 0.42x of sbatch -M's
    # choice on LANL-CM5, against 0.84x for forwarding at once.
    hold_horizon_s: float | None = 0.0


def request_of(job: JobRow) -> Request:
    spec = job.spec
    return Request(
        job_id=job.id,
        user=job.user,
        shape=jobspec.shape_of(spec),
        partition=spec.partition,
        sites=frozenset(spec.sites),
        exclude=frozenset(spec.exclude_sites) | frozenset(job.avoid_sites),
    )


class Scheduler:
    def __init__(self, store: Store, sites: SiteRegistry, settings: Settings) -> None:
        self.store = store
        self.sites = sites
        self.settings = settings
        self.placer = Placer(hold_horizon_s=settings.hold_horizon_s)
        self.log = log.get(component="scheduler")
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._placed = threading.Condition()
        self._last_sent: dict[tuple[int, int, str], float] = {}  # (job, attempt, kind) -> when
        self._thread: threading.Thread | None = None
        self._last_rebalance = 0.0
        self._requests: dict[int, tuple[tuple[str, ...], Request]] = {}
        # What the last full pass planned from (see run_cycle): a pass in between only places
        # jobs submitted since, unless something placement depends on has changed.
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
        for name, state, last_seen, report in store.sites():
            sites.restore(name, state, last_seen, report)
        store.add_listener(self._on_changes)
        self._learn_from_history()

    @property
    def federation(self) -> str:
        return self.store.federation

    def tag(self, job_id: int, attempt: int) -> str:
        return str(tags.Tag(self.federation, job_id, attempt))

    # ---------------------------------------------------------------- users

    def submit(self, user: str, spec: pb.JobSpec, wait_placement: float = 0.0) -> JobRow:
        try:
            spec = jobspec.validate(spec, self.settings.max_script_bytes)
        except jobspec.SpecError as e:
            raise Refused("INVALID_ARGUMENT", str(e)) from None
        for name in [*spec.sites, *spec.exclude_sites]:
            if self.sites.get(name) is None:
                raise Refused("INVALID_ARGUMENT", f"unknown site {name!r}")
        req = request_of(JobRow(0, user, spec, S.QUEUED, 0, 0))
        reasons = self._never_runnable(req) or self._no_account(req)
        if reasons is not None:
            raise Refused("FAILED_PRECONDITION", reasons)
        if self.store.count_live(user) >= self.settings.max_queued_per_user:
            raise Refused(
                "RESOURCE_EXHAUSTED",
                f"user {user} already has {self.settings.max_queued_per_user} jobs queued",
            )
        job = self.store.insert(user, spec).result(60)
        self._wake.set()
        if wait_placement > 0:
            job = self.wait_placed(job.id, wait_placement)
        return job

    def _never_runnable(self, req: Request) -> str | None:
        """None if some known site could run this shape some day; else why none can."""
        why: dict[str, str] = {}
        any_site = False
        for site in self.sites.all():
            if site.view_base is None or site.admin_state == "retired":
                continue
            any_site = True
            parts, reason = site_refusal(site.view_base, req, shape_only=True)
            if parts:
                return None
            why[site.name] = reason
        if not any_site:
            return None  # no site has reported yet: keep it, placement will tell
        detail = "; ".join(f"{s}: {r}" for s, r in sorted(why.items()))
        return f"no site can ever run this job ({detail})"

    def wait_placed(self, job_id: int, timeout: float) -> JobRow:
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

    def cancel(self, job_id: int) -> JobRow:
        def op(b: Batch) -> JobRow:
            job = b.job(job_id)
            if job.state.is_final:
                raise Refused(
                    "FAILED_PRECONDITION", f"job {job_id} has already ended ({job.state})"
                )
            if job.state == S.QUEUED:
                return b.move(job_id, S.CANCELLED, "cancelled by the user before placement")
            if job.state == S.CANCELLING:
                return job
            return b.move(job_id, S.CANCELLING, "cancel requested", cancel_requested=True)

        job = self.store.run(op)
        if job.state == S.CANCELLING:
            self._send_cancel(job)
        return job

    def plan(self, user: str, spec: pb.JobSpec) -> list[Choice]:
        try:
            spec = jobspec.validate(spec, self.settings.max_script_bytes)
        except jobspec.SpecError as e:
            raise Refused("INVALID_ARGUMENT", str(e)) from None
        req = request_of(JobRow(0, user, spec, S.QUEUED, 0, 0))
        now = time.time()
        return self.placer.plan(req, self._views(now), now)

    def _no_account(self, req: Request) -> str | None:
        """None if the user has an account at some site that could run this shape; else why not.

        Sites map global users to local accounts (the agent's [users]); a job whose user is
        mapped nowhere it could run would wait forever, so it is refused with the reason."""
        why: dict[str, str] = {}
        for site in self.sites.all():
            base = site.view_base
            if base is None or site.admin_state == "retired":
                continue
            parts, reason = site_refusal(base, req, shape_only=True)
            if not parts:
                why[site.name] = reason
            elif base.mapped_users is None or req.user in base.mapped_users:
                return None
            else:
                why[site.name] = "not mapped"
        if "not mapped" not in why.values():
            return None  # nothing reported yet, or no site fits at all (said elsewhere)
        detail = "; ".join(f"{s}: {r}" for s, r in sorted(why.items()))
        return f"user {req.user} has no account at any site that could run this job ({detail})"

    # ---------------------------------------------------------------- admins

    def set_site_state(self, name: str, state: str) -> tuple[list[int], list[int]]:
        """An admin's drain (no new jobs), resume (online) or retire (give up for good).

        Retiring moves the site's live jobs away, each in one transaction with the site state:
        never started (FORWARDING, PENDING, RECALLING) -> QUEUED, placed elsewhere; RUNNING ->
        an infrastructure failure (QUEUED while infra retries last, else NODE_FAIL);
        CANCELLING -> CANCELLED. A best-effort cancel still goes to the site, and any Slurm job
        of an old attempt that it shows later is a stray and is cancelled then.
        Returns (requeued job ids, ended job ids)."""
        if state not in ("online", "draining", "retired"):
            raise Refused("INVALID_ARGUMENT", "site state must be online, draining or retired")
        site = self.sites.get(name)
        if site is None:
            raise Refused("NOT_FOUND", f"unknown site {name!r}")
        site.admin_state = state
        self.store.save_site(name, state, site.last_seen, None)
        self.log.info("site_state_set", site=name, admin_state=state)
        if state != "retired":
            self._replan()
            return [], []
        requeued: list[int] = []
        ended: list[int] = []
        at_site: list[JobRow] = []

        def op(b: Batch) -> None:
            for job in self.store.live_at(name):
                try:
                    job = b.job(job.id)
                    if job.site != name or job.state.is_final:
                        continue
                    at_site.append(job)
                    why = f"site {name} retired by an admin"
                    if job.state == S.CANCELLING:
                        b.move(job.id, S.CANCELLED, f"{why}; cancel taken as done")
                        ended.append(job.id)
                    elif job.state == S.RUNNING:
                        if job.infra_retries < self.settings.max_infra_retries:
                            b.move(
                                job.id,
                                S.QUEUED,
                                f"{why} while running: retrying elsewhere",
                                site="",
                                partition="",
                                slurm_job_id="",
                                est_at=0.0,
                                infra_retries=job.infra_retries + 1,
                                avoid_sites=(*job.avoid_sites, name),
                                reason=f"{why} while running",
                            )
                            requeued.append(job.id)
                        else:
                            b.move(job.id, S.NODE_FAIL, f"{why} while running; no retries left")
                            ended.append(job.id)
                    else:  # FORWARDING, PENDING, RECALLING: it never started there
                        self._requeue(b, job, f"{why} before it started")
                        requeued.append(job.id)
                except IllegalTransition:
                    continue

        self.store.run(op)
        for job in at_site:  # if the site still answers, nothing of it keeps running there
            self._send_cancel(job)
        self.log.warning("site_retired", site=name, requeued=len(requeued), ended=len(ended))
        self._replan()
        return requeued, ended

    # ---------------------------------------------------------------- placement

    def _views(self, now: float) -> list[SiteView]:
        """Every site as placement sees it, with our jobs it does not show yet as in-flight:
        sent and not yet in its report, and also those an agent has already told us are
        running when the site's last report predates them (else, until the next report, their
        nodes look free and a further job would be sent there to wait)."""
        views = []
        for site in self.sites.all():
            base = site.view_base
            if base is None:
                base = SiteView(site.name, False, [], {})
            sent = [j for j in self.store.live_at(site.name) if j.state != S.QUEUED]
            shown = (
                {j.slurm_job_id for j in site.report.jobs}
                if sent and site.report is not None
                else set()
            )
            inflight = [
                _work_of_job(j, now)
                for j in sent
                if not (j.slurm_job_id and j.slurm_job_id in shown)
            ]
            views.append(
                replace(
                    base,
                    online=site.online and site.link is not None,
                    state=site.state,
                    inflight=inflight,
                )
            )
        return views

    def _replan(self) -> None:
        """Something placement depends on changed (besides site reports, which move
        SiteRegistry.version): the next pass re-plans the whole queue."""
        self._replan_due = True
        self._wake.set()

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
        for name in self.sites.check_liveness(now):
            self.store.save_site(name, self.sites.ensure(name).admin_state, now, None)
        version = self.sites.version
        since = now - self._full_end
        took = self._full_end - self._full_at
        changed = self._replan_due or version != self._full_sites_version
        full = self._requeued or (
            since >= took and (changed or since >= self.settings.placement_interval)
        )
        arrived = self._take_arrivals()
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
            decisions = self.placer.place_more([self._request(j) for j in new])
            if decisions is not None:
                self._placed_upto = new[-1].id
                return self._commit(decisions, new, self._full_views, self._full_at)
        # Cleared before the views are taken: a change from here on makes a later pass full.
        self._replan_due = self._requeued = False
        self._full_sites_version = version
        self._full_at = now
        try:
            return self._full_pass(now)
        finally:
            self._full_end = time.time()

    def _full_pass(self, now: float) -> int:
        self._resend_stale(now)
        self._rebalance(now)
        queued = sorted(
            (j for j in list(self.store.live.values()) if j.state == S.QUEUED),
            key=lambda j: j.id,
        )
        views = self._views(now)
        self._full_views = views
        self._placed_upto = queued[-1].id if queued else self._placed_upto
        decisions = self.placer.place([self._request(j) for j in queued], views, now)
        return self._commit(decisions, queued, views, now)

    def _commit(
        self, decisions: list[Decision], queued: list[JobRow], views: list[SiteView], now: float
    ) -> int:
        """Record a pass's decisions over these queued jobs (estimates as of now) in one
        transaction, then send the forwarded jobs to their sites; return how many were sent."""
        if not queued:
            return 0
        placed = {d.job_id for d in decisions}
        # Why each newly queued job waits (what msub shows), worked out here and not inside the
        # write transaction, which holds up every submission behind it.
        waiting = {
            j.id: self._why_waiting(j, views)
            for j in queued
            if j.id not in placed and j.est_at == 0
        }
        by_id = {j.id: j for j in queued}

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
                est = {
                    "est_start": d.estimate.start,
                    "est_p90": d.estimate.start_p90,
                    "est_site": d.site,
                    "est_partition": d.partition,
                    "est_at": now,
                    "est_point": d.estimate.point,
                }
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
                            **est,
                        )
                    )
                except IllegalTransition:
                    continue  # cancelled meanwhile
            b.note_held(held, est_at=now)
            b.note_waiting(waiting, est_at=now)
            return out

        forwarded = self.store.run(op)
        for job in forwarded:
            self._send_submit(job)
        with self._placed:
            self._placed.notify_all()
        return len(forwarded)

    def _rebalance(self, now: float) -> None:
        """Pull back jobs stuck pending at one site when another would start them much sooner."""
        st = self.settings
        if not st.rebalance or now - self._last_rebalance < st.rebalance_interval:
            return
        self._last_rebalance = now
        stale = [
            j
            for j in list(self.store.live.values())
            if j.state == S.PENDING
            and not j.started_at
            and j.est_start
            and j.slurm_job_id
            and now > j.est_start + st.rebalance_grace_s
            and j.recalls < st.max_recalls
        ]
        if not stale:
            return
        views = {v.name: v for v in self._views(now)}
        recalls: list[tuple[int, str]] = []
        for job in stale:
            here = views.get(job.site)
            if here is None or not here.online:
                continue
            req = request_of(job)
            # where it stands at its own site: the queue without itself, it last in line
            alone = replace(here, pending=[w for w in here.pending if w.job_id != job.slurm_job_id])
            cur = self.placer.plan(replace(req, sites=frozenset()), [alone], now)[0].estimate
            others = [v for v in views.values() if v.name != job.site]
            choices = self.placer.plan(replace(req, sites=req.sites), others, now)
            best = choices[0].estimate if choices and choices[0].eligible else None
            if cur is None or best is None:
                continue
            # The site has already kept it waiting `overdue` past our estimate: whatever holds
            # it there (memory, a reservation, someone's priority) is invisible to us, so
            # expect at least as long again rather than trusting the same profile twice.
            overdue = now - job.est_start
            cur_start = max(cur.start, now + overdue)
            gain = cur_start - best.start
            if gain >= st.rebalance_min_gain_s and gain >= 0.5 * (cur_start - now):
                recalls.append(
                    (
                        job.id,
                        f"recalling from {job.site}: {best.site} would start it {gain:.0f}s sooner",
                    )
                )

        def op(b: Batch) -> list[JobRow]:
            out = []
            for job_id, why in recalls:
                try:
                    job = b.job(job_id)
                    out.append(
                        b.move(
                            job_id,
                            S.RECALLING,
                            why,
                            expect=[S.PENDING],
                            recalls=job.recalls + 1,
                            # a site that kept it waiting past its estimate is not tried again
                            avoid_sites=(*job.avoid_sites, job.site),
                        )
                    )
                except IllegalTransition:
                    continue  # it started or was cancelled meanwhile
            return out

        for job in self.store.run(op) if recalls else []:
            self._send_cancel(job)

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

    def _send_submit(self, job: JobRow) -> None:
        msg = pb.DaemonMessage(
            submit=pb.SubmitCommand(
                job_id=job.id,
                attempt=job.attempt,
                spec=job.spec,
                partition=job.partition,
                user=job.user,
                tag=self.tag(job.id, job.attempt),
            )
        )
        self._last_sent[(job.id, job.attempt, "submit")] = time.time()
        self.sites.send(job.site, msg)

    def _send_cancel(self, job: JobRow, slurm_job_id: str = "", attempt: int = 0) -> None:
        attempt = attempt or job.attempt
        msg = pb.DaemonMessage(
            cancel=pb.CancelCommand(
                job_id=job.id,
                attempt=attempt,
                slurm_job_id=slurm_job_id or job.slurm_job_id,
                tag=self.tag(job.id, attempt),
                only_if_pending=job.state == S.RECALLING,
            )
        )
        self._last_sent[(job.id, attempt, "cancel")] = time.time()
        self.sites.send(job.site, msg)

    def _send_resolve(self, job: JobRow) -> None:
        key = (job.id, job.attempt, "resolve")
        now = time.time()
        if now - self._last_sent.get(key, 0.0) < self.settings.resolve_after:
            return
        self._last_sent[key] = now
        self.sites.send(
            job.site,
            pb.DaemonMessage(
                resolve=pb.ResolveCommand(
                    job_id=job.id,
                    attempt=job.attempt,
                    slurm_job_id=job.slurm_job_id,
                    tag=self.tag(job.id, job.attempt),
                )
            ),
        )

    def _resend_stale(self, now: float) -> None:
        for job in list(self.store.live.values()):
            if job.state == S.FORWARDING:
                kind = "submit"
            elif job.state in (S.CANCELLING, S.RECALLING):
                kind = "cancel"
            else:
                continue
            if (
                now - self._last_sent.get((job.id, job.attempt, kind), 0.0)
                > self.settings.resend_after
            ):
                (self._send_submit if kind == "submit" else self._send_cancel)(job)

    def agent_connected(self, site: str) -> None:
        """A (re)connected agent gets every command it may have missed."""
        # Its own jobs only: after a daemon restart every agent reconnects at once, and a scan
        # of every live job per agent is 1,000 x 100,000 rows.
        for job in self.store.live_at(site):
            if job.state == S.FORWARDING:
                self._send_submit(job)
            elif job.state in (S.CANCELLING, S.RECALLING):
                self._send_cancel(job)

    # ---------------------------------------------------------------- what the agents tell us

    def on_report(self, site_name: str, report: pb.SiteReport) -> None:
        now = time.time()
        site, changed = self.sites.update(site_name, report, now)
        # The report is stored (what a restarted daemon plans from) only when it changed the
        # site's picture: an idle site sends the same one every 10 s.
        stored = report.SerializeToString() if changed and report.slurm_reachable else None
        self.store.save_site(site_name, site.admin_state, now, stored)
        self._learn_runtimes(site, report)
        seen: set[int] = set()
        observations = []
        for sj in report.jobs:
            if not sj.job_id or sj.federation != self.federation:
                continue  # not ours (or another federation's)
            seen.add(sj.job_id)
            observations.append((sj.job_id, sj.attempt, sj, "squeue"))
        if observations:
            self._apply(site_name, observations)
        if report.slurm_reachable:
            for job in self.store.live_at(site_name):
                if (
                    job.slurm_job_id
                    and job.id not in seen
                    and job.state in (S.PENDING, S.RUNNING, S.CANCELLING, S.RECALLING)
                    and now - job.updated_at > self.settings.resolve_after / 2
                ):
                    self._send_resolve(job)
        self._wake.set()

    def on_submit_result(self, site_name: str, res: pb.SubmitResult) -> None:
        def op(b: Batch) -> tuple[str, JobRow | None]:
            job = b.job(res.job_id)
            if job.site != site_name or job.attempt != res.attempt:
                return ("stray", job)
            if res.slurm_job_id:
                if job.state == S.FORWARDING:
                    return (
                        "ok",
                        b.move(
                            job.id, S.PENDING, "submitted to Slurm", slurm_job_id=res.slurm_job_id
                        ),
                    )
                if not job.slurm_job_id:
                    return ("ok", b.move(job.id, job.state, "", slurm_job_id=res.slurm_job_id))
                return ("ok", job)
            if job.state != S.FORWARDING:
                return ("ignored", job)
            avoid = (*job.avoid_sites, site_name) if res.permanent else job.avoid_sites
            moved = b.move(
                job.id,
                S.QUEUED,
                f"{site_name} refused it: {res.error}",
                site="",
                partition="",
                reason=f"{site_name} refused it: {res.error}",
                avoid_sites=avoid,
                est_at=0.0,
            )
            if res.permanent and self._never_runnable(request_of(moved)) is not None:
                return (
                    "failed",
                    b.move(job.id, S.FAILED, f"no other site can run it; {site_name}: {res.error}"),
                )
            return ("requeued", moved)

        try:
            kind, job = self.store.run(op)
        except Exception as e:
            self.log.warning(
                "submit_result_ignored", site=site_name, job_id=res.job_id, error=str(e)
            )
            return
        if kind == "ok" and job is not None and job.state == S.CANCELLING:
            self._send_cancel(job)
        if kind == "stray" and res.slurm_job_id and job is not None:
            self._cancel_stray(site_name, job, res.attempt, res.slurm_job_id)
        self._replan()

    def on_cancel_result(self, site_name: str, res: pb.CancelResult) -> None:
        if not res.done:
            self.log.warning(
                "cancel_not_done",
                site=site_name,
                job_id=res.job_id,
                attempt=res.attempt,
                error=res.error,
            )
            return

        def op(b: Batch) -> JobRow | None:
            try:
                job = b.job(res.job_id)
            except NoSuchJob:
                self.log.warning("cancel_result_ignored", site=site_name, job_id=res.job_id)
                return None
            if job.site != site_name or job.attempt != res.attempt:
                return None
            if job.state == S.CANCELLING:
                return b.move(job.id, S.CANCELLED, f"cancel confirmed by {site_name}")
            if job.state == S.RECALLING:
                return self._requeue(b, job, f"recalled from {site_name}")
            return None

        self.store.run(op)
        self._replan()

    def on_job_update(self, site_name: str, upd: pb.JobUpdate) -> None:
        self._apply(
            site_name, [(upd.job_id, upd.attempt, upd.job, upd.resolved_from)], resolved=upd.final
        )
        self._replan()

    def _requeue(self, b: Batch, job: JobRow, detail: str) -> JobRow:
        return b.move(
            job.id,
            S.QUEUED,
            detail,
            site="",
            partition="",
            slurm_job_id="",
            est_at=0.0,
            reason=detail,
        )

    def _apply(
        self,
        site_name: str,
        observations: list[tuple[int, int, pb.SlurmJobReport, str]],
        resolved: bool = False,
    ) -> None:
        """Bring our records in line with what a site shows of our jobs, in one transaction."""
        strays: list[tuple[JobRow, int, str]] = []
        cancels: list[JobRow] = []

        def op(b: Batch) -> None:
            for job_id, attempt, sj, source in observations:
                try:
                    job = b.job(job_id)
                except Exception:
                    continue
                ours = from_slurm(sj.state) if sj.state else None
                if job.state.is_final and job.site == site_name and job.attempt == attempt:
                    continue  # already settled; squeue keeps showing it for a while
                if job.site != site_name or job.attempt != attempt:
                    if ours is not None and not ours.is_final and sj.slurm_job_id:
                        strays.append((job, attempt, sj.slurm_job_id))
                    continue
                if resolved and ours is None:
                    # no record anywhere: the agent looked and found nothing
                    if job.state in (S.CANCELLING, S.RECALLING) and not job.started_at:
                        self._finish_cancel(b, job, site_name)
                    elif job.state != S.FORWARDING:
                        b.move(
                            job.id,
                            S.FAILED,
                            f"vanished from {site_name} without a record",
                            reason="no accounting record",
                        )
                    continue
                if ours is None:
                    continue
                self._observe(b, job, ours, sj, source, cancels)

        self.store.run(op)
        for job, attempt, sid in strays:
            self._cancel_stray(site_name, job, attempt, sid)
        for job in cancels:
            self._send_cancel(job)

    def _finish_cancel(self, b: Batch, job: JobRow, site_name: str, **fields: Any) -> None:
        if job.state == S.RECALLING:
            self._requeue(b, job, f"recalled from {site_name}")
        else:
            b.move(job.id, S.CANCELLED, f"cancel confirmed by {site_name}", **fields)

    def _observe(
        self,
        b: Batch,
        job: JobRow,
        ours: JobState,
        sj: pb.SlurmJobReport,
        source: str,
        cancels: list[JobRow],
    ) -> None:
        fields: dict[str, Any] = {}
        if sj.slurm_job_id and sj.slurm_job_id != job.slurm_job_id:
            fields["slurm_job_id"] = sj.slurm_job_id
            if job.state == S.CANCELLING:
                cancels.append(replace(job, slurm_job_id=sj.slurm_job_id))
        ran = ours == S.RUNNING or (ours.is_final and ours != S.CANCELLED)
        if sj.start_time and ran and not job.started_at:
            fields["started_at"] = sj.start_time
        if ours.is_final:
            fields["ended_at"] = sj.end_time or time.time()
            fields["exit_code"] = sj.exit_code
        reason = sj.reason if sj.reason not in ("None", "") else ""
        if ours == S.PENDING and reason != job.reason:
            fields["reason"] = reason
        detail = f"seen in {source}" if source != "squeue" else ""

        if ours in (S.PENDING, S.RUNNING):
            target: JobState
            if job.state == S.CANCELLING:
                target = job.state
            elif job.state == S.RECALLING:
                target = S.RUNNING if ours == S.RUNNING else S.RECALLING
            else:
                target = ours
            if target != job.state or fields:
                b.move(
                    job.id,
                    target,
                    detail or (f"{ours.lower()} at {job.site}" if target != job.state else ""),
                    **fields,
                )
            return
        # final at the site
        if ours == S.CANCELLED and job.state in (S.CANCELLING, S.RECALLING):
            self._finish_cancel(b, job, job.site, **fields)
            return
        if ours in INFRASTRUCTURE_FAILURES and job.infra_retries < self.settings.max_infra_retries:
            b.move(
                job.id,
                S.QUEUED,
                f"{sj.state} at {job.site}: retrying elsewhere",
                site="",
                partition="",
                slurm_job_id="",
                est_at=0.0,
                infra_retries=job.infra_retries + 1,
                avoid_sites=(*job.avoid_sites, job.site),
                reason=f"{sj.state} at {job.site}",
            )
            return
        detail = detail or f"{sj.state.lower()} at {job.site}"
        if ours == S.CANCELLED and job.state not in (S.CANCELLING,):
            detail = f"cancelled at {job.site} (not by metasched)"
        b.move(job.id, ours, detail, **fields)

    def _cancel_stray(self, site_name: str, job: JobRow, attempt: int, slurm_job_id: str) -> None:
        """A Slurm job of ours that is not the job's current attempt there: it must not run."""
        self.log.warning(
            "stray_job_cancelled",
            job_id=job.id,
            site=site_name,
            slurm_job_id=slurm_job_id,
            attempt=attempt,
            current_attempt=job.attempt,
            current_site=job.site or None,
        )
        self.sites.send(
            site_name,
            pb.DaemonMessage(
                cancel=pb.CancelCommand(
                    job_id=job.id,
                    attempt=attempt,
                    slurm_job_id=slurm_job_id,
                    tag=self.tag(job.id, attempt),
                )
            ),
        )

    # ---------------------------------------------------------------- learning

    def _learn_runtimes(self, site: Site, report: pb.SiteReport) -> None:
        for sj in report.jobs:
            if sj.slurm_job_id in site.seen_final:
                continue
            st = from_slurm(sj.state)
            if st is None or not st.is_final or not sj.start_time or not sj.end_time:
                continue
            site.seen_final.add(sj.slurm_job_id)
            w = work_of(sj)
            self.placer.runtimes.observe(sj.user, sj.end_time - sj.start_time, w.time_limit_s)
        if len(site.seen_final) > 100_000:
            site.seen_final.clear()

    def _learn_from_history(self) -> None:
        """Calibration survives restarts: it is rebuilt from recorded predicted vs actual starts."""
        for job in self.store.jobs(include_final=True, limit=2000):
            if job.first_est_at and job.started_at and job.first_est_site and job.first_est_point:
                self.placer.calibration.observe(
                    job.first_est_site,
                    job.first_est_point - job.first_est_at,
                    job.started_at - job.first_est_at,
                )

    def _on_changes(self, changes: list[tuple[JobRow, JobState, str]]) -> None:
        """Store listener: note new jobs for the next pass; a job back in the queue (requeued,
        retried, recalled) sits among jobs already planned, so only a full pass places it in
        its turn."""
        for row, old, _ in changes:
            if row.state != S.QUEUED:
                continue
            if old != S.QUEUED:
                self._requeued = True
                self._wake.set()
            elif row.id > self._placed_upto:
                self._arrivals.append(row.id)

    def _take_arrivals(self) -> list[int]:
        # as many as are there now; the listener may append more meanwhile (next pass's)
        return [self._arrivals.popleft() for _ in range(len(self._arrivals))]

    def on_started(self, changes: list[tuple[JobRow, JobState, str]]) -> None:
        """Store listener: feed calibration with every job's predicted vs actual start."""
        for row, old, _ in changes:
            if (
                row.state == S.RUNNING
                and old != S.RUNNING
                and row.first_est_point
                and row.started_at
            ):
                self.placer.calibration.observe(
                    row.first_est_site,
                    row.first_est_point - row.first_est_at,
                    row.started_at - row.first_est_at,
                )

    # ---------------------------------------------------------------- the loop

    def start(self) -> None:
        self.store.add_listener(self.on_started)
        self._thread = threading.Thread(target=self._loop, name="placement", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.settings.placement_interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.run_cycle()
            except Exception:
                self.log.exception("placement_cycle_failed")
                time.sleep(0.5)
            # Under a stream of submissions and reports the wake-ups never stop: a short rest
            # lets new jobs gather into one pass (run_cycle spaces out the full passes).
            self._stop.wait(0.05)


def _work_of_job(job: JobRow, now: float) -> Work:
    shape = jobspec.shape_of(job.spec)
    return Work(
        partition=job.partition,
        nodes=shape.nodes,
        cpus=shape.total_cpus,
        gpus=shape.gpus_per_node * shape.nodes,
        gpu_type=shape.gpu_type,
        time_limit_s=shape.time_limit_minutes * 60.0,
        submit_time=job.submitted_at,
        user=job.user,
        job_id=str(job.id),
    )
