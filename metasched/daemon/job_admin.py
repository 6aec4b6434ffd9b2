"""What admins do to any user's jobs besides holding them (Intake.hold_named with as_admin):
requeue and priority (metasched-admin job requeue / priority; docs/admin.md).

requeue  pulls a job that has not started back to the global queue, as a recall does: the
         site is asked to cancel it only while it is still pending (slurmctld checks that
         atomically), and the job is QUEUED again only once the site confirms it never
         started. Running jobs are refused (a recall never stops running work: cancel them),
         and so are jobs that have ended: their record is final (their exit code was told,
         their dependents settled on it, their usage counted), and running one again is a
         new submission, its user's to make.
priority orders the global queue: higher first, then job id; negative behind every job.
         It is the federation's queue only: a job already at a site is in that site's
         Slurm queue, in the site's order.
"""

from __future__ import annotations

from metasched import log
from metasched.daemon import tasks
from metasched.daemon.core import Activity, Core
from metasched.daemon.intake import Intake
from metasched.daemon.placing import PlacementPass
from metasched.daemon.settings import Refused
from metasched.daemon.waiting import HELD_BY_ADMIN
from metasched.states import JobState
from metasched.store import Batch, JobRow

S = JobState
# Far beyond any use, well inside the API's int32 and SQLite's integers.
MAX_PRIORITY = 1_000_000


class JobAdmin(Activity):
    def __init__(self, core: Core, intake: Intake, placement: PlacementPass) -> None:
        super().__init__(core)
        self.intake = intake
        self.placement = placement
        self.log = log.get(component="job_admin")

    def requeue(self, admin: str, names: list[str], hold: bool) -> list[JobRow]:
        """Pull the named jobs that have not started back to the global queue (held by the
        admin once back, with hold); jobs already in the global queue stay (held, with
        hold). Returns the jobs as they now are; refused when none of them could be."""
        jobs = self.intake.named(admin, True, names)
        recalled: list[JobRow] = []

        def op(b: Batch) -> list[JobRow]:
            out: list[JobRow] = []
            refusals: list[str] = []
            for named in jobs:
                job = b.job(named.id)
                who = f"job {tasks.display_id(job)}"
                if job.state in (S.QUEUED, S.WAITING):
                    if hold and not job.admin_held:
                        job = b.move(
                            job.id,
                            S.WAITING,
                            "held by an admin",
                            held=True,
                            admin_held=True,
                            reason=HELD_BY_ADMIN,
                        )
                    out.append(job)
                elif job.state in (S.FORWARDING, S.PENDING) and not job.started_at:
                    job = b.move(
                        job.id,
                        S.RECALLING,
                        f"requeue asked by admin {admin}"
                        + (": to be held once back" if hold else ""),
                        reason=f"being pulled back from {job.site} (requeued by an admin)",
                        held=job.held or hold,
                        admin_held=job.admin_held or hold,
                    )
                    recalled.append(job)
                    out.append(job)
                elif job.state == S.RECALLING:
                    if hold and not job.admin_held:
                        job = b.move(job.id, S.RECALLING, "", held=True, admin_held=True)
                    out.append(job)
                elif job.state.is_final:
                    refusals.append(
                        f"{who} has ended ({job.state}): its record stays as it is; running "
                        "it again is a new submission"
                    )
                elif job.state == S.CANCELLING:
                    refusals.append(f"{who} is being cancelled")
                else:
                    refusals.append(
                        f"{who} has started at {job.site}: a requeue never stops running work "
                        "(cancel it instead)"
                    )
            if not out:
                raise Refused("FAILED_PRECONDITION", f"nothing requeued: {refusals[0]}")
            return out

        out = self.store.run(op)
        for job in recalled:
            self.dispatch.cancel(job)  # RECALLING: the agent cancels it only if still pending
        self.log.info(
            "jobs_requeued", by=admin, jobs=[j.id for j in out], recalled=len(recalled), hold=hold
        )
        return out

    def set_priority(self, admin: str, names: list[str], priority: int) -> list[JobRow]:
        """Set the named live jobs' priority; ended jobs are left out (refused if all are)."""
        if not -MAX_PRIORITY <= priority <= MAX_PRIORITY:
            raise Refused(
                "INVALID_ARGUMENT",
                f"priority {priority} is out of range (-{MAX_PRIORITY}..{MAX_PRIORITY})",
            )
        jobs = self.intake.named(admin, True, names)

        def op(b: Batch) -> list[JobRow]:
            out = []
            for named in jobs:
                job = b.job(named.id)
                if job.state.is_final:
                    continue
                if job.priority != priority:
                    job = b.move(
                        job.id,
                        job.state,
                        f"priority {priority} set by admin {admin}",
                        priority=priority,
                    )
                out.append(job)
            if not out:
                j = jobs[0]
                raise Refused(
                    "FAILED_PRECONDITION",
                    f"nothing changed: job {tasks.display_id(j)} has already ended ({j.state})",
                )
            return out

        out = self.store.run(op)
        self.placement.prioritize([j.id for j in out])
        self.log.info("job_priority_set", by=admin, jobs=[j.id for j in out], priority=priority)
        return out
