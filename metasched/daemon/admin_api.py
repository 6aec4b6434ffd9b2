"""The Admin gRPC service: what metasched-admin calls. Every RPC is for admins only.

tokens  create / list / revoke user tokens for remote access (stored hashed)
sites   drain (no new jobs), resume, retire (give up on a site for good: its jobs move away)
backup  an online, consistent copy of the database (SQLite's backup API), streamed back
quarantine  the jobs whose records cannot be decoded (left out of the queue, kept in the file)
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from metasched import auth, log
from metasched.daemon.calls import Calls, Context
from metasched.daemon.identity import Identity
from metasched.daemon.scheduler import Scheduler
from metasched.daemon.settings import Refused
from metasched.daemon.tokens import NoSuchToken, TokenRecord, TokenStore
from metasched.v1 import metasched_pb2 as pb
from metasched.v1 import metasched_pb2_grpc as pb_grpc

CHUNK = 1 << 20
MAX_TTL_S = 10 * 366 * 24 * 3600.0


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
