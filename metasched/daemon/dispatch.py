"""Commands to the agents: submit, cancel, resolve. Every command is idempotent at the agent
(by tag), so sending one again is always safe; what is unanswered is sent again after
resend_after, and everything a site may have missed is replayed when its agent reconnects."""

from __future__ import annotations

import time

from metasched import tags
from metasched.daemon import app_runs
from metasched.daemon.settings import Settings
from metasched.daemon.sites import SiteRegistry
from metasched.states import JobState
from metasched.store import JobRow, Store
from metasched.v1 import metasched_pb2 as pb

S = JobState


class Dispatcher:
    def __init__(self, store: Store, sites: SiteRegistry, settings: Settings) -> None:
        self.store = store
        self.sites = sites
        self.settings = settings
        self._last_sent: dict[tuple[int, int, str], float] = {}  # (job, attempt, kind) -> when

    def tag(self, job_id: int, attempt: int) -> str:
        return str(tags.Tag(self.store.federation, job_id, attempt))

    def submit(self, job: JobRow) -> None:
        msg = pb.DaemonMessage(
            submit=pb.SubmitCommand(
                job_id=job.id,
                attempt=job.attempt,
                spec=app_runs.spec_to_send(job, job.spec, self.sites),
                partition=job.partition,
                user=job.user,
                tag=self.tag(job.id, job.attempt),
                array_id=job.array_id,
                array_task=job.array_task,
            )
        )
        self._last_sent[(job.id, job.attempt, "submit")] = time.time()
        self.sites.send(job.site, msg)

    def cancel(self, job: JobRow, slurm_job_id: str = "", attempt: int = 0) -> None:
        """Cancel the job's current attempt (or `attempt`) at its site; a recall when the job
        is RECALLING (the agent then cancels only if it has not started)."""
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

    def cancel_many(self, jobs: list[JobRow]) -> None:
        """cancel() for many jobs (an array, a task range): one command per site (per
        thousand jobs), which the agent carries out with one scancel."""
        by_site: dict[str, list[pb.CancelCommand]] = {}
        now = time.time()
        for job in jobs:
            by_site.setdefault(job.site, []).append(
                pb.CancelCommand(
                    job_id=job.id,
                    attempt=job.attempt,
                    slurm_job_id=job.slurm_job_id,
                    tag=self.tag(job.id, job.attempt),
                )
            )
            self._last_sent[(job.id, job.attempt, "cancel")] = now
        for site, commands in by_site.items():
            for at in range(0, len(commands), 1000):
                part = commands[at : at + 1000]
                self.sites.send(site, pb.DaemonMessage(cancel_jobs=pb.CancelJobsCommand(jobs=part)))

    def cancel_at(self, site: str, job_id: int, attempt: int, slurm_job_id: str) -> None:
        """Cancel one Slurm job of ours at a site, whatever the job's current attempt (a stray)."""
        self.sites.send(
            site,
            pb.DaemonMessage(
                cancel=pb.CancelCommand(
                    job_id=job_id,
                    attempt=attempt,
                    slurm_job_id=slurm_job_id,
                    tag=self.tag(job_id, attempt),
                )
            ),
        )

    def resolve(self, job: JobRow) -> None:
        """Ask the site how a job that left its queue ended (at most every resolve_after)."""
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

    def resend_stale(self, now: float) -> None:
        """Send again every submit and cancel left unanswered for resend_after."""
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
                (self.submit if kind == "submit" else self.cancel)(job)
        if len(self._last_sent) > 4 * len(self.store.live) + 10_000:
            live = self.store.live
            self._last_sent = {k: v for k, v in self._last_sent.items() if k[0] in live}

    def replay(self, site: str) -> None:
        """A (re)connected agent gets every command it may have missed."""
        # Its own jobs only: after a daemon restart every agent reconnects at once, and a scan
        # of every live job per agent is 1,000 x 100,000 rows.
        for job in self.store.live_at(site):
            if job.state == S.FORWARDING:
                self.submit(job)
            elif job.state in (S.CANCELLING, S.RECALLING):
                self.cancel(job)
