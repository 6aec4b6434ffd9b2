"""What the agents tell us, brought into the store: site reports, answers to our submit and
cancel commands, and jobs resolved from accounting. Runs per message, on the agent's
stream. Every change to a job is one transaction; a Slurm job of ours that is not the job's
current site and attempt is a stray and is cancelled.

What the daemon does not know it does not state as a fact: a job that left its site's
queue with no record anywhere (a slurmctld that lost its state, seen in the lab after a
SIGKILL: jobs that ran and exited 0 were never written to the completion log) is LOST, not
FAILED, and a record that turns up later still settles it. The site is asked again for a
while (LOST_RECHECK_S), as each of its reports arrives."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from metasched import log
from metasched.daemon.core import Activity, Core
from metasched.daemon.intake import never_runnable
from metasched.daemon.learning import Learning
from metasched.daemon.moves import requeue, retry_elsewhere
from metasched.daemon.placing import PlacementPass
from metasched.daemon.views import request_of
from metasched.states import INFRASTRUCTURE_FAILURES, JobState, final_reason, from_slurm
from metasched.store import Batch, JobRow, NoSuchJob
from metasched.v1 import metasched_pb2 as pb

S = JobState
LOST_RECHECK_S = 24 * 3600.0  # how long a LOST job's site is asked again for its record


class Reconciler(Activity):
    def __init__(self, core: Core, learning: Learning, placement: PlacementPass) -> None:
        super().__init__(core)
        self.learning = learning
        self.placement = placement
        self.log = log.get(component="reconcile")
        # site -> {job id: (the job, until when)}: LOST jobs whose record may still turn up
        self._lost: dict[str, dict[int, tuple[JobRow, float]]] = {}

    def on_report(self, site_name: str, report: pb.SiteReport) -> None:
        now = time.time()
        site, changed = self.sites.update(site_name, report, now)
        # The report is stored (what a restarted daemon plans from) only when it changed the
        # site's picture: an idle site sends the same one every 10 s.
        stored = report.SerializeToString() if changed and report.slurm_reachable else None
        self.store.save_site(site_name, site.admin_state, now, stored)
        self.learning.from_report(site, report)
        seen: set[int] = set()
        observations = []
        for sj in report.jobs:
            if not sj.job_id or sj.federation != self.store.federation:
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
                    self.dispatch.resolve(job)
            self._recheck_lost(site_name, now)
        self.placement.wake.set()

    def _recheck_lost(self, site_name: str, now: float) -> None:
        lost = self._lost.get(site_name)
        if not lost:
            return
        for job_id, (job, until) in list(lost.items()):
            if now > until:
                del lost[job_id]
            else:
                self.dispatch.resolve(job)

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
            if res.invalid_anywhere:
                # wrong in itself (its environment, a script sbatch refuses): every other
                # site would say the same, so it fails now with the site's reason
                why = f"{site_name} refused it: {res.error}"
                return ("failed", b.move(job.id, S.FAILED, why, reason=why))
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
            if res.permanent and never_runnable(self.sites, request_of(moved)) is not None:
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
            self.dispatch.cancel(job)
        if kind == "stray" and res.slurm_job_id and job is not None:
            self._cancel_stray(site_name, job, res.attempt, res.slurm_job_id)
        self.placement.replan()

    def on_cancel_result(self, site_name: str, res: pb.CancelResult) -> None:
        self.on_cancel_results(site_name, [res])

    def on_cancel_results(self, site_name: str, results: list[pb.CancelResult]) -> None:
        """The agent's answers to cancels (one, or a whole array's), in one transaction."""
        done = []
        for res in results:
            if res.done:
                done.append(res)
            else:
                # not (yet) done, and why: a recall of a job that has started, a job still
                # ending; the cancel is sent again, and the site's reports settle the job
                self.log.warning(
                    "cancel_not_done",
                    site=site_name,
                    job_id=res.job_id,
                    attempt=res.attempt,
                    error=res.error or "no reason given (an agent older than the daemon)",
                )
        if not done:
            return

        def op(b: Batch) -> None:
            for res in done:
                try:
                    job = b.job(res.job_id)
                except NoSuchJob:
                    self.log.warning("cancel_result_ignored", site=site_name, job_id=res.job_id)
                    continue
                if job.site != site_name or job.attempt != res.attempt:
                    continue
                if job.state == S.CANCELLING:
                    # a job cancelled while it ran ended now (its usage counts until then)
                    b.move(
                        job.id,
                        S.CANCELLED,
                        f"cancel confirmed by {site_name}",
                        ended_at=b.now if job.started_at else job.ended_at,
                    )
                elif job.state == S.RECALLING:
                    requeue(b, job, f"recalled from {site_name}")

        self.store.run(op)
        self.placement.replan()

    def on_job_update(self, site_name: str, upd: pb.JobUpdate) -> None:
        self._apply(
            site_name, [(upd.job_id, upd.attempt, upd.job, upd.resolved_from)], resolved=upd.final
        )
        self.placement.replan()

    def _apply(
        self,
        site_name: str,
        observations: list[tuple[int, int, pb.SlurmJobReport, str]],
        resolved: bool = False,
    ) -> None:
        """Bring our records in line with what a site shows of our jobs, in one transaction."""
        strays: list[tuple[JobRow, int, str]] = []
        cancels: list[JobRow] = []
        lost: list[JobRow] = []
        found: list[int] = []

        def op(b: Batch) -> None:
            for job_id, attempt, sj, source in observations:
                try:
                    job = b.job(job_id)
                except Exception:
                    continue
                ours = from_slurm(sj.state) if sj.state else None
                here = job.site == site_name and job.attempt == attempt
                if (
                    here
                    and job.state == S.LOST
                    and ours is not None
                    and ours.is_final
                    and not (ours == S.CANCELLED and _lost_to_a_hold(job))
                ):
                    found.append(job.id)  # a record after all: it settles what was unknown
                elif job.state.is_final and here:
                    if job.state == S.CANCELLED and ours is not None and not ours.is_final:
                        # Slurm took it back after the cancel was confirmed (a launch that
                        # failed as the scancel came in is requeued and held): what the user
                        # cancelled is cancelled again wherever it shows up
                        cancels.append(replace(job, slurm_job_id=sj.slurm_job_id))
                    elif _lost_to_a_hold(job) and ours == S.PENDING:
                        # lost because Slurm requeued and held it after it started: nobody
                        # here will release it (it may have run to the end), and a release
                        # by anyone else would run it twice; so it goes, and the site's
                        # queue does not keep it for ever
                        cancels.append(replace(job, slurm_job_id=sj.slurm_job_id))
                    continue  # already settled; squeue keeps showing it for a while
                if job.site != site_name or job.attempt != attempt:
                    if ours is not None and not ours.is_final and sj.slurm_job_id:
                        strays.append((job, attempt, sj.slurm_job_id))
                    continue
                if resolved and ours is None:
                    # No record anywhere: the agent looked and found nothing. A cancel the
                    # user asked for is done either way; a recall is not (the job may have
                    # run, and placing it again could run it twice).
                    if job.state == S.CANCELLING and not job.started_at:
                        self._finish_cancel(b, job, site_name)
                    elif job.state != S.FORWARDING:
                        why = _lost_evidence(job, site_name)
                        lost.append(b.move(job.id, S.LOST, why, reason=why))
                    continue
                if ours is None:
                    continue
                self._observe(b, job, ours, sj, source, cancels, lost)

        self.store.run(op)
        for job, attempt, sid in strays:
            self._cancel_stray(site_name, job, attempt, sid)
        for job in cancels:
            self.dispatch.cancel(job)
        if lost:
            until = time.time() + LOST_RECHECK_S
            self._lost.setdefault(site_name, {}).update((j.id, (j, until)) for j in lost)
        for job_id in found:
            self._lost.get(site_name, {}).pop(job_id, None)

    def _finish_cancel(self, b: Batch, job: JobRow, site_name: str, **fields: Any) -> None:
        if job.state == S.RECALLING:
            requeue(b, job, f"recalled from {site_name}")
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
        lost: list[JobRow],
    ) -> None:
        fields: dict[str, Any] = {}
        if job.held and job.state == S.RECALLING and ours != S.PENDING:
            # an admin's requeue --hold came too late: it will not be back to be held
            fields.update(held=False, admin_held=False)
        if sj.slurm_job_id and sj.slurm_job_id != job.slurm_job_id:
            fields["slurm_job_id"] = sj.slurm_job_id
            if job.state == S.CANCELLING:
                cancels.append(replace(job, slurm_job_id=sj.slurm_job_id))
        ran = ours == S.RUNNING or (ours.is_final and ours != S.CANCELLED)
        # Slurm's times have whole seconds, ours do not: a job is recorded as starting no
        # earlier than it was submitted and ending no earlier than it started, so what the API
        # shows, usage and the learned run times all read the same numbers
        if sj.start_time and ran and not job.started_at:
            fields["started_at"] = max(sj.start_time, job.submitted_at)
        if ours.is_final:
            started = fields.get("started_at", job.started_at)
            fields["ended_at"] = max(sj.end_time or time.time(), started)
            fields["exit_code"] = sj.exit_code
            # the pending reason (Resources, Priority...) no longer applies: say why it ended
            fields["reason"] = final_reason(ours, sj.exit_code)
        reason = sj.reason if sj.reason not in ("None", "") else ""
        if ours == S.PENDING and reason != job.reason:
            fields["reason"] = reason
        detail = f"seen in {source}" if source != "squeue" else ""
        if job.state == S.LOST:
            detail = f"its record turned up ({source}) after it was lost"

        if ours == S.PENDING and job.started_at and _held_after_start(reason):
            if job.state == S.CANCELLING:
                # The user's cancel crossed a failed launch (slurmd could not confirm it and
                # slurmctld requeued and held the job): a held job never starts again on its
                # own, so the cancel is sent again and settles it, not "lost".
                cancels.append(replace(job, **fields) if fields else job)
                return
            # Seen after a slurmctld SIGKILL: the restarted controller had the job as pending
            # in its saved state, launched it again onto the node it had run on, and held it
            # ("launch failed requeued held"). It may have run to the end: not re-run, not
            # stated as failed.
            why = (
                f"{job.site} {HELD_AFTER_START} ({sj.reason}; "
                f"{_last_seen(job)}); whether it ran to the end is unknown"
            )
            fields["reason"] = why
            lost.append(b.move(job.id, S.LOST, why, **fields))
            return
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
        if (
            ours in INFRASTRUCTURE_FAILURES
            and job.state != S.LOST  # it ended long ago: settled as it ended, never re-run
            and job.infra_retries < self.settings.max_infra_retries
        ):
            retry_elsewhere(
                b,
                job,
                f"{sj.state} at {job.site}: retrying elsewhere",
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
        self.dispatch.cancel_at(site_name, job.id, attempt, slurm_job_id)


# What a job LOST to a requeue-and-hold says (its reason): its held copy at the site is
# cancelled by us, so that copy's CANCELLED record says nothing of how the run ended.
HELD_AFTER_START = "requeued and held it after it had started"


def _lost_to_a_hold(job: JobRow) -> bool:
    return job.state == S.LOST and HELD_AFTER_START in job.reason


def _held_after_start(reason: str) -> bool:
    """A pending job's reason says Slurm holds it (squeue's JobHeldUser / JobHeldAdmin, or
    the text 'launch failed requeued held'): for a job that had started, Slurm requeued it."""
    return "held" in reason.lower()


def _last_seen(job: JobRow) -> str:
    seen = f"last seen {job.state.lower()}"
    if job.started_at:
        seen += f", started {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(job.started_at))}"
    return seen


def _lost_evidence(job: JobRow, site_name: str) -> str:
    """What is known of a job that left its site with no record anywhere."""
    return (
        f"no record at {site_name}: not in its queue, its accounting or its completion log "
        f"({_last_seen(job)}); whether it ran to the end is unknown"
    )
