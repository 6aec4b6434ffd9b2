"""The Scheduler gRPC service: what msub and admins call. A thin adapter over Scheduler.

Each handler finds out who is calling, asks the scheduler, and turns the answer (or the
refusal) into protobuf (or a gRPC status with a one-line message). Handlers are coroutines
(grpc.aio): what blocks (the SQLite file, a commit, planning) runs on the call pool within
the caller's share of it, and every call is bounded per user (calls.py). Listings come in
pages of bounded size and never carry scripts; a script is read from the file only for its
owner (GetJobScript) and for the site it is sent to.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator
from typing import Any

from metasched import auth, jobspec, output_names
from metasched.daemon import app_runs
from metasched.daemon.calls import Calls, Context
from metasched.daemon.identity import Identity
from metasched.daemon.intake import is_app_run
from metasched.daemon.scheduler import Scheduler
from metasched.daemon.settings import Refused
from metasched.daemon.watchers import Completions, JobWatchers
from metasched.placement.estimate import Estimate
from metasched.placement.policy import Request
from metasched.states import JobState, final_reason, node_usable
from metasched.store import MAX_JOB_ID, JobRow, NoSuchJob
from metasched.v1 import metasched_pb2 as pb
from metasched.v1 import metasched_pb2_grpc as pb_grpc

# How long SubmitJob waits for the placement cycle to choose a site, so msub can say where.
SUBMIT_WAIT_S = 2.0
# A page of a listing: at most this many jobs (1000 when the request says 0) and about this
# many bytes (a client's default limit for one message is 4 MB).
MAX_PAGE = 5000
DEFAULT_PAGE = 1000
PAGE_BYTES = 2 << 20
_CURSOR = "c1."  # opaque to clients; "c1." + the last job id listed
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


def _since(job: JobRow, t: float) -> bool:
    return job.submitted_at >= t or job.ended_at >= t or not job.state.is_final


def job_pb(job: JobRow, events: list[Any] | None = None, with_spec: bool = True) -> pb.Job:
    spec = job.spec
    ids = output_names.Ids(
        job.id, spec.name or f"metasched-{job.id}", job.user, job.array_id, job.array_task
    )
    workdir = spec.workdir or spec.submit_dir  # sbatch's default: where it was submitted
    stdout = output_names.resolve(spec.output, ids, workdir)
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
        # Sites' clocks are not ours: never show a start before the submission, or an end
        # before the start.
        started_at=max(job.started_at, job.submitted_at) if job.started_at else 0.0,
        ended_at=max(job.ended_at, job.started_at, job.submitted_at) if job.ended_at else 0.0,
        # A job that did not exit on its own (time limit, node failure, cancel) has no exit
        # code of its own: 0 there would read as success.
        exit_code=job.exit_code,
        reason=job.reason or final_reason(job.state, job.exit_code),
        array_id=job.array_id,
        array_task=job.array_task,
        held=job.held,
        held_by_admin=job.admin_held,
        priority=job.priority,
        stdout_path=stdout,
        stderr_path=output_names.resolve(spec.error, ids, workdir) if spec.error else stdout,
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
        calls: Calls,
        watchers: JobWatchers,
        completions: Completions,
        submit_rate: float = 0.0,
        submit_burst: int = 1,
        max_request_bytes: int = 0,
    ) -> None:
        self.s = scheduler
        self.identity = identity
        self.calls = calls
        self.watchers = watchers
        self.completions = completions
        self.rate = auth.RateLimiter(submit_rate, submit_burst)
        self.max_request_bytes = max_request_bytes

    # -- limits and ownership

    def _limit_size(self, request: Any) -> None:
        size = request.ByteSize()
        if self.max_request_bytes and size > self.max_request_bytes:
            raise Refused(
                "INVALID_ARGUMENT",
                f"request is {size} bytes; the limit is {self.max_request_bytes}",
            )

    def _limit_rate(self, user: str) -> None:
        wait = self.rate.take(user)
        if wait > 0:
            raise Refused(
                "RESOURCE_EXHAUSTED",
                f"user {user} submits too fast (limit {self.rate.rate:g}/s, bursts of "
                f"{self.rate.burst}): retry in {math.ceil(wait)} s",
            )

    async def _job(self, user: str, job_id: int) -> JobRow:
        """The job (live ones from memory, others from the file); NoSuchJob if there is none."""
        job = self.s.store.live.get(job_id)
        if job is None:
            job = await self.calls.blocking(user, self.s.store.job, job_id)
        if job is None:
            raise NoSuchJob(f"no job {job_id}")
        return job

    async def _own_job(self, user: str, job_id: int) -> JobRow:
        job = await self._job(user, job_id)
        if job.user != user and not self.identity.is_admin(user):
            raise Refused("PERMISSION_DENIED", f"job {job_id} is not yours")
        return job

    # -- handlers

    async def SubmitJob(
        self, request: pb.SubmitJobRequest, context: Context
    ) -> pb.SubmitJobResponse:
        async def body(user: str) -> pb.SubmitJobResponse:
            self._limit_size(request)
            self._limit_rate(user)
            job = self.s.intake.retried(user, request.spec)
            if job is None:
                if is_app_run(request.spec):  # it reads the shelf: on the pool
                    spec = await self.calls.blocking(user, self.s.intake.admit, user, request.spec)
                else:
                    spec = self.s.intake.admit(user, request.spec)
                job = await self.completions.wrap(self.s.intake.enqueue(user, spec))
            if not request.no_wait:
                job = await self._placed(user, job, SUBMIT_WAIT_S)
            return pb.SubmitJobResponse(
                job_id=job.id, estimate=job_estimate_pb(job), state=job.state.to_pb()
            )

        return await self.calls.unary(context, self.identity.who, body)

    async def _placed(self, user: str, job: JobRow, timeout: float) -> JobRow:
        """The job once placement has decided about it (sent it, or estimated its start), or
        as it is after `timeout` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        with self.watchers.watching(job.id) as changed:
            while True:
                changed.clear()
                job = await self._job(user, job.id)
                left = deadline - loop.time()
                if job.state != JobState.QUEUED or job.est_at > 0 or left <= 0:
                    return job
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(left):
                        await changed.wait()

    async def Plan(self, request: pb.PlanRequest, context: Context) -> pb.PlanResponse:
        async def body(user: str) -> pb.PlanResponse:
            self._limit_size(request)
            choices = await self.calls.blocking(user, self.s.intake.plan, user, request.spec)
            out = pb.PlanResponse()
            for c in choices:
                sc = pb.SiteChoice(
                    site=c.site, eligible=c.eligible, reason=c.reason, recipe=c.recipe
                )
                e = estimate_pb(c.estimate)
                if e is not None:
                    sc.estimate.CopyFrom(e)
                elif c.eligible:
                    sc.reason = "no slot found"
                out.choices.append(sc)
            return out

        return await self.calls.unary(context, self.identity.who, body)

    async def GetJob(self, request: pb.GetJobRequest, context: Context) -> pb.Job:
        async def body(user: str) -> pb.Job:
            job = await self._own_job(user, request.job_id)
            return job_pb(job, await self.calls.blocking(user, self.s.store.events, job.id))

        return await self.calls.unary(context, self.identity.who, body)

    async def GetJobScript(self, request: pb.GetJobScriptRequest, context: Context) -> pb.JobScript:
        async def body(user: str) -> pb.JobScript:
            job = await self._own_job(user, request.job_id)
            if job.spec.app and job.site:  # an app's run: its recipe's script, as sent
                script: str | None = app_runs.spec_to_send(job, job.spec, self.s.sites).script
            else:
                script = await self.calls.blocking(user, self.s.store.script, job.id)
            if script is None:
                raise Refused("DATA_LOSS", f"the script of job {job.id} is not in the database")
            return pb.JobScript(job_id=job.id, script=script)

        return await self.calls.unary(context, self.identity.who, body)

    async def ListJobs(self, request: pb.ListJobsRequest, context: Context) -> pb.ListJobsResponse:
        async def body(user: str) -> pb.ListJobsResponse:
            if request.all_users and not self.identity.is_admin(user):
                raise Refused("PERMISSION_DENIED", "only admins may list all users")
            bad = [s for s in request.states if s not in _KNOWN_STATES]
            if bad:
                raise Refused("INVALID_ARGUMENT", f"unknown job state {bad[0]}")
            states = [JobState.from_pb(s) for s in request.states] or None
            users = list(dict.fromkeys(request.users))
            if any(u != user for u in users) and not self.identity.is_admin(user):
                raise Refused("PERMISSION_DENIED", "only admins may list other users' jobs")
            owners: list[str | None] = [*users] or [None if request.all_users else user]
            after = cursor_id(request.cursor)
            limit = min(request.limit or DEFAULT_PAGE, MAX_PAGE)
            return await self.calls.blocking(
                user, self._page, request, owners, states, after, limit
            )

        return await self.calls.unary(context, self.identity.who, body, kind="listings")

    def _page(
        self,
        request: pb.ListJobsRequest,
        owners: list[str | None],
        states: list[JobState] | None,
        after: int,
        limit: int,
    ) -> pb.ListJobsResponse:
        """One page of a listing, at most PAGE_BYTES of jobs (at least one), built on the pool:
        thousands of jobs are milliseconds of work the event loop should not wait on.
        The filters are squeue's and sacct's: -u owners, -j ids (an array's id: its tasks),
        -n names, -S since; array_id: one array's tasks."""
        if request.job_ids or request.array_id:
            rows, more = self._named_page(request, owners, states, after, limit)
        else:
            rows, more = [], False
            for owner in owners:  # (one, unless squeue -u names several)
                got, got_more = self.s.store.page(
                    owner,
                    states,
                    request.include_final,
                    after,
                    limit,
                    names=request.names,
                    since=request.since,
                )
                rows += got
                more = more or got_more
            rows.sort(key=lambda j: j.id)
            more = more or len(rows) > limit
            rows = rows[:limit]
        out = pb.ListJobsResponse()
        size = 0
        for n, job in enumerate(rows):
            m = job_pb(job)
            size += m.ByteSize()
            if n and size > PAGE_BYTES:
                rows, more = rows[:n], True
                break
            out.jobs.append(m)
        if more and rows:
            out.next_cursor = f"{_CURSOR}{rows[-1].id}"
        return out

    def _named_page(
        self,
        request: pb.ListJobsRequest,
        owners: list[str | None],
        states: list[JobState] | None,
        after: int,
        limit: int,
    ) -> tuple[list[JobRow], bool]:
        """A page of the jobs a listing names (squeue -j, an array's tasks), filtered."""
        wanted = set(states) if states else None
        found: dict[int, JobRow] = {}
        if request.array_id:
            for t in self.s.store.array_tasks(request.array_id, include_final=True):
                found[t.id] = t
        for job_id in dict.fromkeys(request.job_ids):
            job = self.s.store.job(job_id)
            if job is not None and job.array_id == job_id:  # squeue -j ARRAY: its tasks
                found.update((t.id, t) for t in self.s.store.array_tasks(job_id))
            elif job is not None:
                found[job.id] = job
        names = set(request.names)
        rows = [
            job
            for job_id, job in sorted(found.items())
            if job_id > after
            and (owners == [None] or job.user in owners)
            and (wanted is None or job.state in wanted)
            and (
                request.include_final
                or wanted is not None
                or not job.state.is_final
                or bool(request.job_ids)
            )
            and (not names or job.spec.name in names)
            and (not request.since or _since(job, request.since))
        ]
        return rows[:limit], len(rows) > limit

    async def CancelJobs(
        self, request: pb.CancelJobsRequest, context: Context
    ) -> pb.CancelJobsResponse:
        async def body(user: str) -> pb.CancelJobsResponse:
            admin = self.identity.is_admin(user)
            names = list(request.jobs)
            jobs = await self.calls.blocking(user, self.s.intake.cancel_named, user, admin, names)
            return pb.CancelJobsResponse(jobs=[job_pb(j, with_spec=False) for j in jobs])

        return await self.calls.unary(context, self.identity.who, body)

    async def HoldJobs(self, request: pb.HoldJobsRequest, context: Context) -> pb.HoldJobsResponse:
        async def body(user: str) -> pb.HoldJobsResponse:
            admin = self.identity.is_admin(user)
            jobs = await self.calls.blocking(
                user, self.s.intake.hold_named, user, admin, list(request.jobs), request.release
            )
            return pb.HoldJobsResponse(jobs=[job_pb(j, with_spec=False) for j in jobs])

        return await self.calls.unary(context, self.identity.who, body)

    async def ReadOutput(
        self, request: pb.ReadOutputRequest, context: Context
    ) -> pb.ReadOutputResponse:
        async def body(user: str) -> pb.ReadOutputResponse:
            # Output is its owner's alone (not even an admin's to read through metasched).
            jobs = await self.calls.blocking(user, self.s.intake.named, user, False, [request.job])
            if len(jobs) != 1:
                raise Refused(
                    "INVALID_ARGUMENT",
                    f"{request.job} is an array of {len(jobs)} tasks: name one "
                    f"(e.g. {request.job}_1)",
                )
            job = jobs[0]
            data = await self.calls.blocking(
                user, self.s.outputs.read, job, request.stderr, request.offset, request.max_bytes
            )
            if data.error:
                raise Refused("FAILED_PRECONDITION", data.error)
            now = self.s.store.live.get(job.id) or job
            return pb.ReadOutputResponse(
                data=data.data,
                offset=data.offset,
                size=data.size,
                path=data.path,
                state=now.state.to_pb(),
                site=job.site,
            )

        return await self.calls.unary(context, self.identity.who, body)

    async def CancelJob(self, request: pb.CancelJobRequest, context: Context) -> pb.Job:
        async def body(user: str) -> pb.Job:
            await self._own_job(user, request.job_id)
            return job_pb(await self.calls.blocking(user, self.s.intake.cancel, request.job_id))

        return await self.calls.unary(context, self.identity.who, body)

    async def WatchJob(
        self, request: pb.WatchJobRequest, context: Context
    ) -> AsyncIterator[pb.Job]:
        watch = self.calls.stream(
            context, self.identity.who, lambda user: self._watch(user, request.job_id), "watches"
        )
        async for job in watch:
            yield job

    async def _watch(self, user: str, job_id: int) -> AsyncIterator[pb.Job]:
        """The job now, then again at every change that shows (state, reason), until it ends
        or the watch reaches watch_seconds. Waiting costs an asyncio.Event, not a thread."""
        await self._own_job(user, job_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.calls.limits.watch_seconds
        last: tuple[Any, ...] | None = None
        with self.watchers.watching(job_id) as changed:
            while True:
                changed.clear()
                job = await self._job(user, job_id)
                key = (job.state, job.updated_at, job.reason)
                if key != last:
                    last = key
                    yield job_pb(job, await self.calls.blocking(user, self.s.store.events, job_id))
                    if job.state.is_final:
                        return
                left = deadline - loop.time()
                if left <= 0:
                    return
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(left):
                        await changed.wait()

    async def ListSites(
        self, request: pb.ListSitesRequest, context: Context
    ) -> pb.ListSitesResponse:
        async def body(user: str) -> pb.ListSitesResponse:
            sites = await self.calls.blocking(user, site_summaries, self.s, time.time())
            return pb.ListSitesResponse(sites=sites)

        return await self.calls.unary(context, self.identity.who, body)


def site_summaries(s: Scheduler, now: float) -> list[pb.SiteSummary]:
    """Every site as users and admins see it (ListSites, metasched-admin site list, the status
    page): state, agent, capacity and use from its last report, and the estimated wait of a
    one-core, one-hour job there (0: it would start at once; -1: it could not run there)."""
    views = {v.name: v for v in s.views(now)}
    probe = Request(0, "", jobspec.shape_of(pb.JobSpec(time_limit_minutes=60)))
    out = []
    for site in s.sites.all():
        summary = pb.SiteSummary(
            name=site.name,
            state=site.state,
            last_seen=site.last_seen,
            agent_version=site.agent_version,
            report_age_seconds=max(0.0, now - site.last_seen) if site.last_seen else -1.0,
        )
        rep = site.report
        if rep is not None:
            summary.partitions.extend(rep.partitions)
            summary.slurm_version = rep.slurm_version
            summary.backend = rep.backend
            summary.nodes = len(rep.nodes)
            summary.offers.CopyFrom(rep.offers)
            for n in rep.nodes:
                summary.total_cpus += n.cpus
                total_g = sum(g.count for g in n.gpus)
                summary.total_gpus += total_g
                if not node_usable(n.state):
                    continue
                summary.usable_nodes += 1
                if site.state != "online":
                    continue  # a site not taking jobs (its last picture may be old): none free
                summary.free_cpus += max(0, n.cpus - n.alloc_cpus)
                summary.free_gpus += max(0, total_g - sum(g.count for g in n.alloc_gpus))
            summary.running_jobs = sum(1 for j in rep.jobs if j.state == "RUNNING")
            summary.pending_jobs = sum(1 for j in rep.jobs if j.state == "PENDING")
        view = views.get(site.name)
        if view is not None and view.partitions:
            choices = s.placer.plan(probe, [view], now)
            est = choices[0].estimate if choices and choices[0].eligible else None
            if est is None or est.start == math.inf:
                summary.est_wait_seconds = -1
            elif est.point <= now:
                # It fits now: it waits only for the site's next scheduling pass, which the
                # calibrated median (a few seconds) is not worth showing as a wait.
                summary.est_wait_seconds = 0.0
            else:
                # No room now: at least until something there ends. Never shown as no wait,
                # however soon that is expected (a full site said "none" when its running
                # jobs' predicted ends were under a minute away).
                summary.est_wait_seconds = max(1.0, est.start - now)
        out.append(summary)
    return out


def cursor_id(cursor: str) -> int:
    """The job id a listing's cursor continues after (0: from the start); Refused if bad."""
    if not cursor:
        return 0
    digits = cursor.removeprefix(_CURSOR)
    if digits == cursor or not (digits.isascii() and digits.isdigit()) or len(digits) > 19:
        raise Refused("INVALID_ARGUMENT", "bad cursor: pass a next_cursor the daemon gave")
    return min(int(digits), MAX_JOB_ID)
