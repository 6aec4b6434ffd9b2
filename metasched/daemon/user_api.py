"""The Scheduler gRPC service: what msub and admins call. A thin adapter over Scheduler.

Each handler finds out who is calling, asks the scheduler, and turns the answer (or the
refusal) into protobuf (or a gRPC status with a one-line message).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc

from metasched import auth, jobspec, output_names
from metasched.daemon.identity import Identity
from metasched.daemon.scheduler import Scheduler
from metasched.daemon.settings import Refused
from metasched.placement.estimate import Estimate
from metasched.placement.policy import Request
from metasched.states import JobState, node_usable
from metasched.store import JobRow, NoSuchJob
from metasched.v1 import metasched_pb2 as pb
from metasched.v1 import metasched_pb2_grpc as pb_grpc

T = TypeVar("T")
# How long SubmitJob waits for the placement cycle to choose a site, so msub can say where.
SUBMIT_WAIT_S = 2.0
# JobState values a client may filter on (JOB_STATE_UNSPECIFIED and unknown numbers are not)
_KNOWN_STATES = frozenset(s.to_pb() for s in JobState)


def estimate_pb(e: Estimate | None) -> pb.Estimate | None:
    if e is None or e.start == math.inf:
        return None
    return pb.Estimate(
        start=e.start, start_p90=e.start_p90, site=e.site, partition=e.partition, basis=e.basis
    )


def job_estimate_pb(job: JobRow) -> pb.Estimate:
    """The estimate recorded with a job (empty when it has none); basis: why it is where it is."""
    if not (job.est_start and job.est_site):
        return pb.Estimate(basis=job.reason)
    return pb.Estimate(
        start=job.est_start,
        start_p90=job.est_p90,
        site=job.est_site,
        partition=job.est_partition,
        basis=job.reason,
    )


def job_pb(job: JobRow, events: list[Any] | None = None, with_spec: bool = True) -> pb.Job:
    spec = job.spec
    ids = output_names.Ids(
        job.id, spec.name or f"metasched-{job.id}", job.user, job.array_id, job.array_task
    )
    stdout = output_names.resolve(spec.output, ids, spec.workdir)
    out = pb.Job(
        id=job.id,
        user=job.user,
        spec=spec if with_spec else None,
        state=job.state.to_pb(),
        site=job.site,
        partition=job.partition,
        slurm_job_id=job.slurm_job_id,
        attempt=job.attempt,
        submitted_at=job.submitted_at,
        started_at=job.started_at,
        ended_at=job.ended_at,
        exit_code=job.exit_code,
        reason=job.reason,
        array_id=job.array_id,
        array_task=job.array_task,
        held=job.held,
        stdout_path=stdout,
        stderr_path=output_names.resolve(spec.error, ids, spec.workdir) if spec.error else stdout,
        recipe=job.recipe,
    )
    if job.est_start and job.est_site:
        out.estimate.CopyFrom(job_estimate_pb(job))
    for ev in events or []:
        out.events.append(
            pb.JobEvent(
                at=ev.at,
                state=ev.state.to_pb(),
                site=ev.site,
                slurm_job_id=ev.slurm_job_id,
                attempt=ev.attempt,
                detail=ev.detail,
            )
        )
    return out


class UserService(pb_grpc.SchedulerServicer):
    def __init__(
        self,
        scheduler: Scheduler,
        identity: Identity,
        submit_rate: float = 0.0,
        submit_burst: int = 1,
        max_request_bytes: int = 0,
    ) -> None:
        self.s = scheduler
        self.identity = identity
        self.rate = auth.RateLimiter(submit_rate, submit_burst)
        self.max_request_bytes = max_request_bytes

    # -- who is calling, and limits

    def _user(self, context: grpc.ServicerContext) -> str:
        return self.identity.who(context)

    def _is_admin(self, user: str) -> bool:
        return self.identity.is_admin(user)

    def _limit_size(self, request: Any, context: grpc.ServicerContext) -> None:
        size = request.ByteSize()
        if self.max_request_bytes and size > self.max_request_bytes:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"request is {size} bytes; the limit is {self.max_request_bytes}",
            )

    def _limit_rate(self, user: str, context: grpc.ServicerContext) -> None:
        wait = self.rate.take(user)
        if wait > 0:
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"user {user} submits too fast (limit {self.rate.rate:g}/s, bursts of "
                f"{self.rate.burst}): retry in {math.ceil(wait)} s",
            )

    def _guard(self, context: grpc.ServicerContext, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except Refused as e:
            context.abort(getattr(grpc.StatusCode, e.code), str(e))
        except NoSuchJob as e:
            context.abort(grpc.StatusCode.NOT_FOUND, str(e))
        raise AssertionError("unreachable")

    def _own_job(self, context: grpc.ServicerContext, job_id: int) -> JobRow:
        user = self._user(context)
        job = self.s.store.job(job_id)
        if job is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no job {job_id}")
        assert job is not None
        if job.user != user and not self._is_admin(user):
            context.abort(grpc.StatusCode.PERMISSION_DENIED, f"job {job_id} is not yours")
        return job

    # -- handlers

    def SubmitJob(
        self, request: pb.SubmitJobRequest, context: grpc.ServicerContext
    ) -> pb.SubmitJobResponse:
        user = self._user(context)
        self._limit_size(request, context)
        self._limit_rate(user, context)
        wait = 0.0 if request.no_wait else SUBMIT_WAIT_S
        job = self._guard(context, lambda: self.s.intake.submit(user, request.spec, wait))
        return pb.SubmitJobResponse(
            job_id=job.id, estimate=job_estimate_pb(job), state=job.state.to_pb()
        )

    def Plan(self, request: pb.PlanRequest, context: grpc.ServicerContext) -> pb.PlanResponse:
        user = self._user(context)
        self._limit_size(request, context)
        choices = self._guard(context, lambda: self.s.intake.plan(user, request.spec))
        out = pb.PlanResponse()
        for c in choices:
            sc = pb.SiteChoice(site=c.site, eligible=c.eligible, reason=c.reason, recipe=c.recipe)
            e = estimate_pb(c.estimate)
            if e is not None:
                sc.estimate.CopyFrom(e)
            elif c.eligible:
                sc.reason = "no slot found"
            out.choices.append(sc)
        return out

    def GetJob(self, request: pb.GetJobRequest, context: grpc.ServicerContext) -> pb.Job:
        job = self._own_job(context, request.job_id)
        return job_pb(job, self.s.store.events(job.id))

    def ListJobs(
        self, request: pb.ListJobsRequest, context: grpc.ServicerContext
    ) -> pb.ListJobsResponse:
        user = self._user(context)
        if request.all_users and not self._is_admin(user):
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "only admins may list all users")
        try:
            states = [JobState.from_pb(s) for s in request.states] or None
        except ValueError:
            bad = next(s for s in request.states if s not in _KNOWN_STATES)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown job state {bad}")
        limit = min(request.limit or 1000, 100_000)
        if request.array_id:
            tasks = self.s.store.array_tasks(request.array_id, include_final=request.include_final)
            wanted = set(states) if states else None
            jobs = [
                t
                for t in tasks
                if (request.all_users or t.user == user)
                and (wanted is None or t.state in wanted)
                and (request.include_final or wanted is not None or not t.state.is_final)
            ][:limit]
        else:
            jobs = self.s.store.jobs(
                user=None if request.all_users else user,
                states=states,
                include_final=request.include_final,
                limit=limit,
            )
        return pb.ListJobsResponse(jobs=[job_pb(j) for j in jobs])

    def CancelJobs(
        self, request: pb.CancelJobsRequest, context: grpc.ServicerContext
    ) -> pb.CancelJobsResponse:
        user = self._user(context)
        admin = self._is_admin(user)
        jobs = self._guard(
            context, lambda: self.s.intake.cancel_named(user, admin, list(request.jobs))
        )
        return pb.CancelJobsResponse(jobs=[job_pb(j, with_spec=False) for j in jobs])

    def HoldJobs(
        self, request: pb.HoldJobsRequest, context: grpc.ServicerContext
    ) -> pb.HoldJobsResponse:
        user = self._user(context)
        admin = self._is_admin(user)
        jobs = self._guard(
            context,
            lambda: self.s.intake.hold_named(user, admin, list(request.jobs), request.release),
        )
        return pb.HoldJobsResponse(jobs=[job_pb(j, with_spec=False) for j in jobs])

    def ReadOutput(
        self, request: pb.ReadOutputRequest, context: grpc.ServicerContext
    ) -> pb.ReadOutputResponse:
        user = self._user(context)
        # Output is its owner's alone (not even an admin's to read through metasched).
        jobs = self._guard(context, lambda: self.s.intake.named(user, False, [request.job]))
        if len(jobs) != 1:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{request.job} is an array of {len(jobs)} tasks: name one (e.g. {request.job}_1)",
            )
        job = jobs[0]
        data = self._guard(
            context,
            lambda: self.s.outputs.read(job, request.stderr, request.offset, request.max_bytes),
        )
        if data.error:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, data.error)
        now = self.s.store.job(job.id) or job
        return pb.ReadOutputResponse(
            data=data.data,
            offset=data.offset,
            size=data.size,
            path=data.path,
            state=now.state.to_pb(),
            site=job.site,
        )

    def CancelJob(self, request: pb.CancelJobRequest, context: grpc.ServicerContext) -> pb.Job:
        self._own_job(context, request.job_id)
        job = self._guard(context, lambda: self.s.intake.cancel(request.job_id))
        return job_pb(job)

    def WatchJob(
        self, request: pb.WatchJobRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.Job]:
        job = self._own_job(context, request.job_id)
        last: tuple[Any, ...] | None = None
        version = self.s.store.version
        while context.is_active():
            job_now = self.s.store.job(job.id)
            assert job_now is not None
            key = (job_now.state, job_now.updated_at, job_now.reason)
            if key != last:
                last = key
                yield job_pb(job_now, self.s.store.events(job.id))
                if job_now.state.is_final:
                    return
            version = self.s.store.wait_change(version, timeout=1.0)

    def ListSites(
        self, request: pb.ListSitesRequest, context: grpc.ServicerContext
    ) -> pb.ListSitesResponse:
        self._user(context)
        return pb.ListSitesResponse(sites=site_summaries(self.s, time.time()))


def site_summaries(s: Scheduler, now: float) -> list[pb.SiteSummary]:
    """Every site as users see it (ListSites, the status page): state, capacity and use
    from its last report, and the estimated wait of a one-core, one-hour job."""
    views = {v.name: v for v in s.views(now)}
    probe = Request(0, "", jobspec.shape_of(pb.JobSpec(time_limit_minutes=60)))
    out = []
    for site in s.sites.all():
        summary = pb.SiteSummary(name=site.name, state=site.state, last_seen=site.last_seen)
        rep = site.report
        if rep is not None:
            summary.partitions.extend(rep.partitions)
            summary.slurm_version = rep.slurm_version
            summary.offers.CopyFrom(rep.offers)
            for n in rep.nodes:
                summary.total_cpus += n.cpus
                total_g = sum(g.count for g in n.gpus)
                summary.total_gpus += total_g
                if site.state != "online" or not node_usable(n.state):
                    # drained, down, not responding..., or a site that is not taking
                    # jobs (its last picture may be old): nothing there is free
                    continue
                summary.free_cpus += max(0, n.cpus - n.alloc_cpus)
                summary.free_gpus += max(0, total_g - sum(g.count for g in n.alloc_gpus))
            summary.running_jobs = sum(1 for j in rep.jobs if j.state == "RUNNING")
            summary.pending_jobs = sum(1 for j in rep.jobs if j.state == "PENDING")
        view = views.get(site.name)
        if view is not None and view.partitions:
            choices = s.placer.plan(probe, [view], now)
            est = choices[0].estimate if choices and choices[0].eligible else None
            if est is not None and est.start != math.inf:
                summary.est_wait_seconds = max(0.0, est.start - now)
            else:
                summary.est_wait_seconds = -1
        out.append(summary)
    return out
