"""An admin's drain (no new jobs), resume (online) or retire (give up a site for good)."""

from __future__ import annotations

from metasched import log
from metasched.daemon.core import Activity, Core
from metasched.daemon.moves import requeue, retry_elsewhere
from metasched.daemon.placing import PlacementPass
from metasched.daemon.settings import Refused
from metasched.states import JobState
from metasched.store import Batch, IllegalTransition, JobRow

S = JobState


class SiteAdmin(Activity):
    def __init__(self, core: Core, placement: PlacementPass) -> None:
        super().__init__(core)
        self.placement = placement
        self.log = log.get(component="site_admin")

    def set_state(self, name: str, state: str) -> tuple[list[int], list[int]]:
        """Set a site online, draining or retired.

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
            self.placement.replan()
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
                            retry_elsewhere(
                                b,
                                job,
                                f"{why} while running: retrying elsewhere",
                                reason=f"{why} while running",
                            )
                            requeued.append(job.id)
                        else:
                            b.move(job.id, S.NODE_FAIL, f"{why} while running; no retries left")
                            ended.append(job.id)
                    else:  # FORWARDING, PENDING, RECALLING: it never started there
                        requeue(b, job, f"{why} before it started")
                        requeued.append(job.id)
                except IllegalTransition:
                    continue

        self.store.run(op)
        for job in at_site:  # if the site still answers, nothing of it keeps running there
            self.dispatch.cancel(job)
        self.log.warning("site_retired", site=name, requeued=len(requeued), ended=len(ended))
        self.placement.replan()
        return requeued, ended
