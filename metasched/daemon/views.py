"""What placement sees: each site as a SiteView (its last report plus our own jobs it does not
show yet) and each job as a Request. Intake, the placement pass, recall and ListSites all
look through these, so they all see the same federation."""

from __future__ import annotations

from dataclasses import replace

from metasched import jobspec
from metasched.daemon.sites import SiteRegistry
from metasched.placement.model import SiteView, Work
from metasched.placement.offers import AppNeeds
from metasched.placement.policy import Request
from metasched.states import JobState
from metasched.store import JobRow, Store
from metasched.v1 import metasched_pb2 as pb


def request_of(job: JobRow) -> Request:
    spec = job.spec
    return Request(
        job_id=job.id,
        user=job.user,
        shape=jobspec.shape_of(spec),
        partition=spec.partition,
        sites=frozenset(spec.sites),
        exclude=frozenset(spec.exclude_sites) | frozenset(job.avoid_sites),
        app=AppNeeds.of_spec(spec),
    )


def request_of_spec(user: str, spec: pb.JobSpec) -> Request:
    """A request not yet in the store (a submission being checked, or a plan)."""
    return request_of(JobRow(0, user, spec, JobState.QUEUED, 0, 0))


def work_of_job(job: JobRow, now: float) -> Work:
    shape = jobspec.shape_of(job.spec)
    return Work(
        partition=job.partition,
        nodes=shape.nodes,
        cpus=shape.total_cpus,
        gpus=shape.total_gpus,
        gpu_type=shape.gpu_type,
        time_limit_s=shape.time_limit_minutes * 60.0,
        submit_time=job.submitted_at,
        user=job.user,
        job_id=str(job.id),
    )


def site_views(sites: SiteRegistry, store: Store, now: float) -> list[SiteView]:
    """Every site as placement sees it, with our jobs it does not show yet as in-flight:
    sent and not yet in its report, and also those an agent has already told us are
    running when the site's last report predates them (else, until the next report, their
    nodes look free and a further job would be sent there to wait)."""
    views = []
    for site in sites.all():
        base = site.view_base
        if base is None:
            base = SiteView(site.name, False, [], {})
        sent = [j for j in store.live_at(site.name) if j.state != JobState.QUEUED]
        shown = (
            {j.slurm_job_id for j in site.report.jobs}
            if sent and site.report is not None
            else set()
        )
        inflight = [
            work_of_job(j, now) for j in sent if not (j.slurm_job_id and j.slurm_job_id in shown)
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
