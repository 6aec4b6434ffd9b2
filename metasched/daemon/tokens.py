"""User tokens for remote access, kept in the daemon's SQLite database (table user_tokens).

Only sha256 of each token's secret is stored: a copy of the database (a backup) gives no
usable token. Tokens are read once at start into memory and every change is written through
the store's writer first, so the in-memory view never runs ahead of the database.
"""

from __future__ import annotations

import hmac
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

from metasched import auth
from metasched.store import Batch, Store

SCHEMA = """CREATE TABLE IF NOT EXISTS user_tokens (
    id TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    secret_sha256 TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL DEFAULT 0,
    revoked_at REAL NOT NULL DEFAULT 0,
    created_by TEXT NOT NULL DEFAULT '',
    note TEXT NOT NULL DEFAULT ''
)"""
MAX_NOTE = 200


@dataclass(frozen=True)
class TokenRecord:
    id: str
    user: str
    secret_sha256: str
    created_at: float
    expires_at: float = 0.0
    revoked_at: float = 0.0
    created_by: str = ""
    note: str = ""


class NoSuchToken(Exception):
    pass


class TokenStore:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.Lock()

        def load(b: Batch) -> list[Any]:
            b.conn.execute(SCHEMA)
            return list(b.conn.execute("SELECT * FROM user_tokens"))

        self._tokens = {
            r["id"]: TokenRecord(**{k: r[k] for k in r.keys()})  # noqa: SIM118 - sqlite3.Row
            for r in store.run(load)
        }

    def create(
        self, user: str, ttl_seconds: float, created_by: str, note: str = ""
    ) -> tuple[TokenRecord, str]:
        now = time.time()
        tid, secret, token = auth.new_remote_token()
        rec = TokenRecord(
            id=tid,
            user=user,
            secret_sha256=auth.sha256_hex(secret),
            created_at=now,
            expires_at=now + ttl_seconds if ttl_seconds > 0 else 0.0,
            created_by=created_by,
            note=note[:MAX_NOTE],
        )

        def op(b: Batch) -> None:
            b.conn.execute(
                "INSERT INTO user_tokens (id, user, secret_sha256, created_at, expires_at,"
                " revoked_at, created_by, note) VALUES (?,?,?,?,?,?,?,?)",
                (
                    rec.id,
                    rec.user,
                    rec.secret_sha256,
                    rec.created_at,
                    rec.expires_at,
                    rec.revoked_at,
                    rec.created_by,
                    rec.note,
                ),
            )

        self.store.run(op)
        with self._lock:
            self._tokens[tid] = rec
        return rec, token

    def revoke(self, tid: str) -> TokenRecord:
        with self._lock:
            rec = self._tokens.get(tid)
        if rec is None:
            raise NoSuchToken(f"no token {tid!r}")
        if rec.revoked_at:
            return rec
        rec = replace(rec, revoked_at=time.time())
        self.store.run(
            lambda b: b.conn.execute(
                "UPDATE user_tokens SET revoked_at=? WHERE id=?", (rec.revoked_at, tid)
            )
        )
        with self._lock:
            self._tokens[tid] = rec
        return rec

    def list(self, user: str = "", include_revoked: bool = False) -> list[TokenRecord]:
        with self._lock:
            recs = list(self._tokens.values())
        return sorted(
            (
                r
                for r in recs
                if (not user or r.user == user) and (include_revoked or not r.revoked_at)
            ),
            key=lambda r: r.created_at,
        )

    def verify(self, token: str, now: float | None = None) -> str:
        """The user a token stands for; AuthError (UNAUTHENTICATED) if it does not."""
        tid, secret = auth.split_remote_token(token)
        with self._lock:
            rec = self._tokens.get(tid)
        # One message for an unknown id and a wrong secret: which ids exist is not told.
        digest = auth.sha256_hex(secret)
        if rec is None or not hmac.compare_digest(rec.secret_sha256, digest):
            raise auth.AuthError("unknown or wrong token")
        t = time.time() if now is None else now
        if rec.revoked_at:
            raise auth.AuthError(f"token {tid} was revoked at {_stamp(rec.revoked_at)}")
        if rec.expires_at and rec.expires_at < t:
            raise auth.AuthError(f"token {tid} expired at {_stamp(rec.expires_at)}")
        return rec.user


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(t))
