"""What placement learns from what the sites show: run times of finished jobs (every user's,
ours or not) and how far each start estimate was from the actual start (calibration)."""

from __future__ import annotations

from metasched.daemon.sites import Site, work_of
from metasched.placement.policy import Placer
from metasched.states import JobState, from_slurm
from metasched.store import JobRow, Store
from metasched.v1 import metasched_pb2 as pb


class Learning:
    def __init__(self, store: Store, placer: Placer) -> None:
        self.store = store
        self.placer = placer

    def from_report(self, site: Site, report: pb.SiteReport) -> None:
        """Each finished job a site shows feeds the run-time predictor once."""
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

    def from_history(self) -> None:
        """Calibration survives restarts: it is rebuilt from recorded predicted vs actual starts."""
        for job in self.store.jobs(include_final=True, limit=2000):
            self._observe_start(job)

    def on_changes(self, changes: list[tuple[JobRow, JobState, str]]) -> None:
        """Store listener: every job that starts tells calibration how its first estimate did."""
        for row, old, _ in changes:
            if row.state == JobState.RUNNING and old != JobState.RUNNING:
                self._observe_start(row)

    def _observe_start(self, job: JobRow) -> None:
        # Learned from the estimate given at submission (what the user was told), as the replay
        # does: the estimate of the pass that forwarded a late-bound job is ~0 and always right.
        if job.first_est_at and job.started_at and job.first_est_site and job.first_est_point:
            self.placer.calibration.observe(
                job.first_est_site,
                job.first_est_point - job.first_est_at,
                job.started_at - job.first_est_at,
            )
