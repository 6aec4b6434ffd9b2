"""The Admin gRPC service: what metasched-admin calls. Every RPC is for admins only.

tokens  create / list / revoke user tokens for remote access (stored hashed)
sites   drain (no new jobs), resume, retire (give up on a site for good: its jobs move away)
backup  an online, consistent copy of the database (SQLite's backup API), streamed back
quarantine  the jobs whose records cannot be decoded (left out of the queue, kept in the file)
jobs    any user's: hold / release (an admin's hold), requeue, priority
usage   core-hours and GPU-hours by user, site or precision, from the queue's history
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from metasched import auth, log
from metasched.daemon.calls import Calls, Context
from metasched.daemon.identity import Identity
from metasched.daemon.scheduler import Scheduler
from metasched.daemon.settings import Refused
from metasched.daemon.tokens import NoSuchToken, TokenRecord, TokenStore
from metasched.daemon.usage import BY, usage
from metasched.daemon.user_api import job_pb
from metasched.store import JobRow
from metasched.v1 import metasched_pb2 as pb
from metasched.v1 import metasched_pb2_grpc as pb_grpc

CHUNK = 1 << 20
MAX_TTL_S = 10 * 366 * 24 * 3600.0
# The widest usage window one call reads (the history is read whole, off the writer).
MAX_USAGE_WINDOW_S = 5 * 366 * 24 * 3600.0


def token_pb(r: TokenRecord) -> pb.TokenInfo:
    return pb.TokenInfo(
        id=r.id,
        user=r.user,
        created_at=r.created_at,
        expires_at=r.expires_at,
        revoked_at=r.revoked_at,
        created_by=r.created_by,
        note=r.note,
    )


class AdminService(pb_grpc.AdminServicer):
    def __init__(
        self,
        scheduler: Scheduler,
        identity: Identity,
        tokens: TokenStore,
        state_dir: Path,
        calls: Calls,
    ) -> None:
        self.s = scheduler
        self.identity = identity
        self.tokens = tokens
        self.state_dir = state_dir
        self.calls = calls
        self.log = log.get(component="admin")

    def _admin(self, what: str) -> Callable[[Context], str]:
        return lambda context: self.identity.admin(context, what)

    async def CreateToken(
        self, request: pb.CreateTokenRequest, context: Context
    ) -> pb.CreateTokenResponse:
        async def body(admin: str) -> pb.CreateTokenResponse:
            if not auth.valid_user(request.user):
                raise Refused("INVALID_ARGUMENT", f"bad user name {request.user!r}")
            ttl = request.ttl_seconds
            if not (0 <= ttl <= MAX_TTL_S):  # also refuses NaN
                raise Refused("INVALID_ARGUMENT", "ttl must be between 0 (never) and 10 years")
            rec, token = await self.calls.blocking(
                admin, self.tokens.create, request.user, ttl, admin, request.note
            )
            self.log.info(
                "token_created",
                token_id=rec.id,
                user=rec.user,
                by=admin,
                expires_at=rec.expires_at,
            )
            return pb.CreateTokenResponse(info=token_pb(rec), token=token)

        return await self.calls.unary(context, self._admin("create tokens"), body)

    async def ListTokens(
        self, request: pb.ListTokensRequest, context: Context
    ) -> pb.ListTokensResponse:
        async def body(admin: str) -> pb.ListTokensResponse:
            recs = self.tokens.list(request.user, request.include_revoked)
            return pb.ListTokensResponse(tokens=[token_pb(r) for r in recs])

        return await self.calls.unary(context, self._admin("list tokens"), body)

    async def RevokeToken(self, request: pb.RevokeTokenRequest, context: Context) -> pb.TokenInfo:
        async def body(admin: str) -> pb.TokenInfo:
            try:
                rec = await self.calls.blocking(admin, self.tokens.revoke, request.id)
            except NoSuchToken as e:
                raise Refused("NOT_FOUND", str(e)) from None
            self.log.info("token_revoked", token_id=rec.id, user=rec.user, by=admin)
            return token_pb(rec)

        return await self.calls.unary(context, self._admin("revoke tokens"), body)

    async def SetSiteState(
        self, request: pb.SetSiteStateRequest, context: Context
    ) -> pb.SetSiteStateResponse:
        async def body(admin: str) -> pb.SetSiteStateResponse:
            requeued, ended = await self.calls.blocking(
                admin, self.s.site_admin.set_state, request.site, request.state
            )
            self.log.info("site_state_changed", site=request.site, state=request.state, by=admin)
            return pb.SetSiteStateResponse(
                site=request.site, state=request.state, requeued=requeued, ended=ended
            )

        return await self.calls.unary(context, self._admin("change a site's state"), body)

    async def ListQuarantined(
        self, request: pb.ListQuarantinedRequest, context: Context
    ) -> pb.ListQuarantinedResponse:
        async def body(admin: str) -> pb.ListQuarantinedResponse:
            found = sorted(self.s.store.quarantined.values(), key=lambda q: q.job_id)
            return pb.ListQuarantinedResponse(
                jobs=[
                    pb.QuarantinedJob(job_id=q.job_id, user=q.user, state=q.state, error=q.why)
                    for q in found
                ]
            )

        return await self.calls.unary(context, self._admin("list quarantined jobs"), body)

    async def Backup(
        self, request: pb.BackupRequest, context: Context
    ) -> AsyncIterator[pb.BackupChunk]:
        who = self._admin("back up the database")
        async for chunk in self.calls.stream(context, who, self._backup, "calls"):
            yield chunk

    async def _backup(self, admin: str) -> AsyncIterator[pb.BackupChunk]:
        """The copy is taken to a private temporary file (mkstemp: 0600, a name nobody can
        guess) in the state directory, and streamed from there a chunk at a time."""
        fd, name = tempfile.mkstemp(prefix=".backup-", suffix=".db", dir=self.state_dir)
        os.close(fd)
        try:
            await self.calls.blocking(admin, self.s.store.backup, name)
            total = os.path.getsize(name)
            self.log.info("backup_taken", by=admin, bytes=total)
            with open(name, "rb") as f:
                first = True
                while True:
                    data = await self.calls.blocking(admin, f.read, CHUNK)
                    if not data and not first:
                        return
                    yield pb.BackupChunk(data=data, total_bytes=total if first else 0)
                    first = False
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)

    # ---------------------------------------------------------------- any user's jobs

    async def _jobs(
        self, context: Context, what: str, fn: Callable[[str], list[JobRow]]
    ) -> list[pb.Job]:
        async def body(admin: str) -> list[pb.Job]:
            jobs = await self.calls.blocking(admin, fn, admin)
            return [job_pb(j, with_spec=False) for j in jobs]

        return await self.calls.unary(context, self._admin(what), body)

    async def HoldJobs(self, request: pb.HoldJobsRequest, context: Context) -> pb.HoldJobsResponse:
        jobs = await self._jobs(
            context,
            "hold or release other users' jobs",
            lambda admin: self.s.intake.hold_named(
                admin, True, list(request.jobs), request.release, as_admin=True
            ),
        )
        return pb.HoldJobsResponse(jobs=jobs)

    async def RequeueJobs(
        self, request: pb.RequeueJobsRequest, context: Context
    ) -> pb.RequeueJobsResponse:
        jobs = await self._jobs(
            context,
            "requeue jobs",
            lambda admin: self.s.job_admin.requeue(admin, list(request.jobs), request.hold),
        )
        return pb.RequeueJobsResponse(jobs=jobs)

    async def SetJobPriority(
        self, request: pb.SetJobPriorityRequest, context: Context
    ) -> pb.SetJobPriorityResponse:
        jobs = await self._jobs(
            context,
            "set jobs' priority",
            lambda admin: self.s.job_admin.set_priority(
                admin, list(request.jobs), request.priority
            ),
        )
        return pb.SetJobPriorityResponse(jobs=jobs)

    async def Usage(self, request: pb.UsageRequest, context: Context) -> pb.UsageResponse:
        async def body(admin: str) -> pb.UsageResponse:
            until = request.until or time.time()
            since = request.since
            if request.by not in BY:
                raise Refused(
                    "INVALID_ARGUMENT", f"usage by {request.by!r}: use one of {', '.join(BY)}"
                )
            if not (math.isfinite(since) and math.isfinite(until)) or since < 0 or until <= since:
                raise Refused("INVALID_ARGUMENT", "the window must have since < until (seconds)")
            if until - since > MAX_USAGE_WINDOW_S:
                raise Refused("INVALID_ARGUMENT", "the window is over 5 years: ask in parts")
            rows = await self.calls.blocking(
                admin, lambda: usage(self.s.store.history(since, until), request.by)
            )
            return pb.UsageResponse(
                since=since,
                until=until,
                by=request.by,
                rows=[
                    pb.UsageRow(
                        key=r.key, jobs=r.jobs, core_hours=r.core_hours, gpu_hours=r.gpu_hours
                    )
                    for r in rows
                ],
            )

        return await self.calls.unary(context, self._admin("read usage"), body)
