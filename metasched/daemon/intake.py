"""Users' requests: submit, plan, cancel. Runs per call, on the caller's RPC thread.

A submission is checked (the spec itself, then whether any known site could ever run it and
the user has an account there), written QUEUED in one durable transaction, and only then
acknowledged; placement takes it from there.
"""

from __future__ import annotations

import time

from metasched import jobspec
from metasched.daemon.core import Activity, Core
from metasched.daemon.placing import PlacementPass
from metasched.daemon.settings import Refused
from metasched.daemon.sites import SiteRegistry
from metasched.daemon.views import request_of_spec, site_views
from metasched.placement.policy import Choice, Request, site_refusal
from metasched.states import JobState
from metasched.store import Batch, JobRow
from metasched.v1 import metasched_pb2 as pb

S = JobState


def never_runnable(sites: SiteRegistry, req: Request) -> str | None:
    """None if some known site could run this shape some day; else why none can."""
    why: dict[str, str] = {}
    any_site = False
    for site in sites.all():
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


def no_account(sites: SiteRegistry, req: Request) -> str | None:
    """None if the user has an account at some site that could run this shape; else why not.

    Sites map global users to local accounts (the agent's [users]); a job whose user is
    mapped nowhere it could run would wait forever, so it is refused with the reason."""
    why: dict[str, str] = {}
    for site in sites.all():
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


class Intake(Activity):
    def __init__(self, core: Core, placement: PlacementPass) -> None:
        super().__init__(core)
        self.placement = placement

    def _valid(self, spec: pb.JobSpec) -> pb.JobSpec:
        try:
            return jobspec.validate(spec, self.settings.max_script_bytes)
        except jobspec.SpecError as e:
            raise Refused("INVALID_ARGUMENT", str(e)) from None

    def submit(self, user: str, spec: pb.JobSpec, wait_placement: float = 0.0) -> JobRow:
        spec = self._valid(spec)
        for name in [*spec.sites, *spec.exclude_sites]:
            if self.sites.get(name) is None:
                raise Refused("INVALID_ARGUMENT", f"unknown site {name!r}")
        req = request_of_spec(user, spec)
        reasons = never_runnable(self.sites, req) or no_account(self.sites, req)
        if reasons is not None:
            raise Refused("FAILED_PRECONDITION", reasons)
        if self.store.count_live(user) >= self.settings.max_queued_per_user:
            raise Refused(
                "RESOURCE_EXHAUSTED",
                f"user {user} already has {self.settings.max_queued_per_user} jobs queued",
            )
        job = self.store.insert(user, spec).result(60)
        self.placement.wake.set()
        if wait_placement > 0:
            job = self.placement.wait_placed(job.id, wait_placement)
        return job

    def plan(self, user: str, spec: pb.JobSpec) -> list[Choice]:
        req = request_of_spec(user, self._valid(spec))
        now = time.time()
        return self.placer.plan(req, site_views(self.sites, self.store, now), now)

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
            self.dispatch.cancel(job)
        return job
