"""Who is calling a user or admin RPC, and whether they are an admin.

A user is known by exactly one of:
  - a local token (from the ident socket, kernel-checked uid), only over the Unix socket;
  - a user token created by an admin (metasched-admin token create).
There is no other way: a claimed user name (the old x-metasched-user header) is ignored.
"""

from __future__ import annotations

from typing import Any

import grpc

from metasched import auth, log
from metasched.daemon.tokens import TokenStore

NO_CREDENTIALS = (
    "no credentials: local users run msub on the daemon's host (known by their Unix uid); "
    "remote users need a token from an admin (metasched-admin token create USER), "
    "sent as 'authorization: Bearer <token>' (msub: METASCHED_TOKEN)"
)


class Identity:
    def __init__(self, local: auth.LocalTokens, tokens: TokenStore, admins: frozenset[str]) -> None:
        self.local = local
        self.tokens = tokens
        self.admins = admins
        self.log = log.get(component="auth")

    def who(self, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        """The calling user's name; auth.AuthError (UNAUTHENTICATED) when there is none."""
        peer = context.peer()
        try:
            return self.check(dict(context.invocation_metadata() or ()), peer)
        except auth.AuthError as e:
            self.log.info("user_refused", peer=peer, reason=str(e))
            raise

    def check(self, md: dict[str, str | bytes], peer: str) -> str:
        token = auth.bearer(md)
        if token is None:
            raise auth.AuthError(NO_CREDENTIALS)
        if token.startswith(auth.LOCAL_PREFIX + ":"):
            if not peer.startswith("unix:"):
                raise auth.AuthError("a local token is only valid over the daemon's Unix socket")
            user = self.local.verify(token)
        elif token.startswith(auth.REMOTE_PREFIX + "_"):
            user = self.tokens.verify(token)
        else:
            raise auth.AuthError("not a metasched token")
        if not auth.valid_user(user):  # cannot happen with tokens we issued; stay strict
            raise auth.AuthError(f"user name {user!r} is not usable with metasched")
        return user

    def is_admin(self, user: str) -> bool:
        return user in self.admins

    def admin(self, context: grpc.aio.ServicerContext[Any, Any], what: str) -> str:
        """The calling user if an admin; else auth.AuthError (PERMISSION_DENIED)."""
        user = self.who(context)
        if not self.is_admin(user):
            self.log.warning("admin_refused", user=user, what=what)
            raise auth.AuthError(
                f"only admins may {what} (you are {user}; admins are set in metaschedd's config)",
                code="PERMISSION_DENIED",
            )
        return user
