"""The Admin gRPC service: what metasched-admin calls. Every RPC is for admins only.

tokens  create / list / revoke user tokens for remote access (stored hashed)
sites   drain (no new jobs), resume, retire (give up on a site for good: its jobs move away)
backup  an online, consistent copy of the database (SQLite's backup API), streamed back
jobs    any user's: hold / release (an admin's hold), requeue, priority
usage   core-hours and GPU-hours by user, site or precision, from the queue's history
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc

from metasched import auth, log
from metasched.daemon.identity import Identity
from metasched.daemon.scheduler import Scheduler
from metasched.daemon.settings import Refused
from metasched.daemon.tokens import NoSuchToken, TokenRecord, TokenStore
from metasched.daemon.usage import BY, usage
from metasched.daemon.user_api import job_pb
from metasched.store import JobRow, NoSuchJob
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
        self, scheduler: Scheduler, identity: Identity, tokens: TokenStore, state_dir: Path
    ) -> None:
        self.s = scheduler
        self.identity = identity
        self.tokens = tokens
        self.state_dir = state_dir
        self.log = log.get(component="admin")

    def CreateToken(
        self, request: pb.CreateTokenRequest, context: grpc.ServicerContext
    ) -> pb.CreateTokenResponse:
        admin = self.identity.admin(context, "create tokens")
        if not auth.valid_user(request.user):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad user name {request.user!r}")
        ttl = request.ttl_seconds
        if not (0 <= ttl <= MAX_TTL_S):  # also refuses NaN
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "ttl must be between 0 (never) and 10 years"
            )
        rec, token = self.tokens.create(request.user, ttl, admin, request.note)
        self.log.info(
            "token_created", token_id=rec.id, user=rec.user, by=admin, expires_at=rec.expires_at
        )
        return pb.CreateTokenResponse(info=token_pb(rec), token=token)

    def ListTokens(
        self, request: pb.ListTokensRequest, context: grpc.ServicerContext
    ) -> pb.ListTokensResponse:
        self.identity.admin(context, "list tokens")
        recs = self.tokens.list(request.user, request.include_revoked)
        return pb.ListTokensResponse(tokens=[token_pb(r) for r in recs])

    def RevokeToken(
        self, request: pb.RevokeTokenRequest, context: grpc.ServicerContext
    ) -> pb.TokenInfo:
        admin = self.identity.admin(context, "revoke tokens")
        try:
            rec = self.tokens.revoke(request.id)
        except NoSuchToken as e:
            context.abort(grpc.StatusCode.NOT_FOUND, str(e))
        self.log.info("token_revoked", token_id=rec.id, user=rec.user, by=admin)
        return token_pb(rec)

    def SetSiteState(
        self, request: pb.SetSiteStateRequest, context: grpc.ServicerContext
    ) -> pb.SetSiteStateResponse:
        admin = self.identity.admin(context, "change a site's state")
        try:
            requeued, ended = self.s.site_admin.set_state(request.site, request.state)
        except Refused as e:
            context.abort(getattr(grpc.StatusCode, e.code), str(e))
        self.log.info("site_state_changed", site=request.site, state=request.state, by=admin)
        return pb.SetSiteStateResponse(
            site=request.site, state=request.state, requeued=requeued, ended=ended
        )

    def Backup(
        self, request: pb.BackupRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.BackupChunk]:
        admin = self.identity.admin(context, "back up the database")
        fd, name = tempfile.mkstemp(prefix=".backup-", suffix=".db", dir=self.state_dir)
        os.close(fd)
        try:
            self.s.store.backup(name)
            total = os.path.getsize(name)
            self.log.info("backup_taken", by=admin, bytes=total)
            with open(name, "rb") as f:
                first = True
                while True:
                    data = f.read(CHUNK)
                    if not data and not first:
                        return
                    yield pb.BackupChunk(data=data, total_bytes=total if first else 0)
                    first = False
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)

    # ---------------------------------------------------------------- any user's jobs

    def _jobs(
        self, context: grpc.ServicerContext, what: str, fn: Callable[[str], list[JobRow]]
    ) -> list[pb.Job]:
        admin = self.identity.admin(context, what)
        try:
            jobs = fn(admin)
        except Refused as e:
            context.abort(getattr(grpc.StatusCode, e.code), str(e))
        except NoSuchJob as e:
            context.abort(grpc.StatusCode.NOT_FOUND, str(e))
        return [job_pb(j, with_spec=False) for j in jobs]

    def HoldJobs(
        self, request: pb.HoldJobsRequest, context: grpc.ServicerContext
    ) -> pb.HoldJobsResponse:
        jobs = self._jobs(
            context,
            "hold or release other users' jobs",
            lambda admin: self.s.intake.hold_named(
                admin, True, list(request.jobs), request.release, as_admin=True
            ),
        )
        return pb.HoldJobsResponse(jobs=jobs)

    def RequeueJobs(
        self, request: pb.RequeueJobsRequest, context: grpc.ServicerContext
    ) -> pb.RequeueJobsResponse:
        jobs = self._jobs(
            context,
            "requeue jobs",
            lambda admin: self.s.job_admin.requeue(admin, list(request.jobs), request.hold),
        )
        return pb.RequeueJobsResponse(jobs=jobs)

    def SetJobPriority(
        self, request: pb.SetJobPriorityRequest, context: grpc.ServicerContext
    ) -> pb.SetJobPriorityResponse:
        jobs = self._jobs(
            context,
            "set jobs' priority",
            lambda admin: self.s.job_admin.set_priority(
                admin, list(request.jobs), request.priority
            ),
        )
        return pb.SetJobPriorityResponse(jobs=jobs)

    def Usage(self, request: pb.UsageRequest, context: grpc.ServicerContext) -> pb.UsageResponse:
        self.identity.admin(context, "read usage")
        until = request.until or time.time()
        since = request.since
        if request.by not in BY:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"usage by {request.by!r}: use one of {', '.join(BY)}",
            )
        if not (math.isfinite(since) and math.isfinite(until)) or since < 0 or until <= since:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "the window must have since < until (seconds)"
            )
        if until - since > MAX_USAGE_WINDOW_S:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "the window is over 5 years: ask in parts"
            )
        rows = usage(self.s.store.history(since, until), request.by)
        return pb.UsageResponse(
            since=since,
            until=until,
            by=request.by,
            rows=[
                pb.UsageRow(key=r.key, jobs=r.jobs, core_hours=r.core_hours, gpu_hours=r.gpu_hours)
                for r in rows
            ],
        )
