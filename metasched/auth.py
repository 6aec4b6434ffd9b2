"""Who is calling: the credentials users and agents present, and how they are checked.

Shared by metaschedd (issuing and checking), msub and metasched-admin (fetching and sending).
docs/security.md describes the whole model; in short:

  local users   msub connects to the daemon's ident socket (a plain Unix socket next to the
                gRPC socket); the daemon reads the caller's uid from the kernel (SO_PEERCRED)
                and answers with a short-lived token "msl1:<user>:<uid>:<expiry>:<hmac>",
                signed with a key that lives only in the daemon's memory. msub sends it as
                "authorization: Bearer ..." and the daemon accepts it only over its Unix socket.
  remote users  an admin creates "mst1_<id>_<secret>" (metasched-admin token create); the daemon
                stores sha256(secret) only, and checks expiry and revocation on every call.
  agents        mTLS (URI SAN metasched-site:<site>) and/or a site token, compared by sha256.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import pwd
import re
import secrets
import socket
import struct
import threading
import time
from dataclasses import dataclass

import grpc

from metasched import log

LOCAL_PREFIX = "msl1"
REMOTE_PREFIX = "mst1"
LOCAL_TTL_S = 120.0
SITE_URI_PREFIX = "metasched-site:"
# A user name as it may appear in a job: POSIX-portable user names (no ':' or whitespace).
USER_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")


class AuthError(Exception):
    """A refused credential; `code` is the gRPC status name to answer with."""

    def __init__(self, message: str, code: str = "UNAUTHENTICATED") -> None:
        super().__init__(message)
        self.code = code


def sha256_hex(text: str | bytes) -> str:
    data = text.encode() if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()


def valid_user(name: str) -> bool:
    return bool(USER_RE.match(name))


def ident_path(socket_path: str) -> str:
    """The ident socket that belongs to a daemon's gRPC Unix socket."""
    return socket_path + ".ident"


def bearer(md: dict[str, str | bytes]) -> str | None:
    """The token of an "authorization: Bearer <token>" metadata entry, if any."""
    raw = md.get("authorization")
    if raw is None:
        return None
    value = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("the authorization header must be 'Bearer <token>'")
    return token.strip()


# ---------------------------------------------------------------- local users


class LocalTokens:
    """Short-lived tokens for local users, signed with a key only this process knows.

    The key is made at start and never written anywhere: a restarted daemon simply refuses
    the old tokens, and msub fetches a new one for every command."""

    def __init__(self, ttl: float = LOCAL_TTL_S, key: bytes | None = None) -> None:
        self.ttl = ttl
        self._key = key or secrets.token_bytes(32)

    def _mac(self, body: str) -> str:
        return hmac.new(self._key, body.encode(), hashlib.sha256).hexdigest()

    def issue(self, user: str, uid: int, now: float | None = None) -> str:
        expiry = int((now or time.time()) + self.ttl)
        body = f"{LOCAL_PREFIX}:{user}:{uid}:{expiry}"
        return f"{body}:{self._mac(body)}"

    def verify(self, token: str, now: float | None = None) -> str:
        parts = token.split(":")
        if len(parts) != 5 or parts[0] != LOCAL_PREFIX:
            raise AuthError("malformed local token")
        body, mac = ":".join(parts[:4]), parts[4]
        if not hmac.compare_digest(self._mac(body), mac):
            raise AuthError(
                "local token not valid (forged, or issued before metaschedd restarted): "
                "run the command again"
            )
        user, expiry = parts[1], parts[3]
        if not expiry.isdigit() or int(expiry) < (now or time.time()):
            raise AuthError("local token expired: run the command again")
        return user


class IdentServer:
    """The ident socket: tells each local caller a signed token for its own uid.

    Reads nothing from the client: the answer depends only on the kernel's SO_PEERCRED, so a
    client can neither choose nor influence the identity it gets."""

    def __init__(self, path: str, tokens: LocalTokens) -> None:
        self.path = path
        self.tokens = tokens
        self.log = log.get(component="ident")
        self._stop = threading.Event()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        os.chmod(path, 0o666)  # every local user may ask who they are
        st = os.stat(path)
        self.inode = (st.st_dev, st.st_ino)  # what is ours at `path` (see stop)
        self.sock.listen(64)
        self.sock.settimeout(0.5)
        self._thread = threading.Thread(target=self._serve, name="ident", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()
        # only our own socket: a newer one may have taken the path (the daemon recreates a
        # deleted socket, then stops the old server)
        with contextlib.suppress(FileNotFoundError):
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self.inode:
                os.unlink(self.path)

    def answer(self, conn: socket.socket) -> str:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        try:
            user = pwd.getpwuid(uid).pw_name
        except KeyError:
            return f"ERR uid {uid} has no user name on this host\n"
        if not valid_user(user):
            return f"ERR user name {user!r} is not usable with metasched\n"
        return f"OK {self.tokens.issue(user, uid)}\n"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                time.sleep(0.1)
                continue
            with conn:
                try:
                    conn.settimeout(2.0)
                    conn.sendall(self.answer(conn).encode())
                except OSError as e:
                    self.log.warning("ident_failed", error=str(e))


def fetch_local_token(path: str, timeout: float = 5.0) -> str:
    """Ask the daemon's ident socket for a token for the calling process's own uid."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        data = b""
        while len(data) < 4096:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    line = data.decode(errors="replace").strip()
    if line.startswith("OK "):
        return line[3:]
    if line.startswith("ERR "):
        raise AuthError(line[4:])
    raise AuthError(f"unexpected answer from the ident socket {path}")


# ---------------------------------------------------------------- remote user tokens


def new_remote_token() -> tuple[str, str, str]:
    """(id, secret, token): a fresh user token; only sha256(secret) is ever stored."""
    tid = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return tid, secret, f"{REMOTE_PREFIX}_{tid}_{secret}"


def split_remote_token(token: str) -> tuple[str, str]:
    """(id, secret) of a remote token; AuthError when it is not one."""
    prefix, _, rest = token.partition("_")
    tid, _, secret = rest.partition("_")
    if prefix != REMOTE_PREFIX or len(tid) != 12 or not secret:
        raise AuthError("malformed token")
    return tid, secret


# ---------------------------------------------------------------- limits


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """One token bucket per key: `rate` per second sustained, bursts of `burst`."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def take(self, key: str, now: float | None = None) -> float:
        """0 if allowed (and counted); else how many seconds until it would be."""
        if self.rate <= 0:
            return 0.0
        t = time.monotonic() if now is None else now
        with self._lock:
            b = self._buckets.get(key)
            if b is None:
                b = self._buckets[key] = _Bucket(float(self.burst), t)
            b.tokens = min(float(self.burst), b.tokens + (t - b.at) * self.rate)
            b.at = t
            if b.tokens >= 1.0:
                b.tokens -= 1.0
                return 0.0
            if len(self._buckets) > 100_000:  # forget full buckets of idle users
                self._buckets = {k: v for k, v in self._buckets.items() if v.tokens < self.burst}
            return (1.0 - b.tokens) / self.rate


# ---------------------------------------------------------------- clients (msub, metasched-admin)


class Unreachable(Exception):
    """The daemon's ident socket cannot be reached (so neither can the daemon)."""


def client_channel(address: str) -> grpc.Channel:
    """A channel to metaschedd: TLS to a TCP address when METASCHED_CA names the CA file."""
    ca = os.environ.get("METASCHED_CA", "")
    if ca and not address.startswith("unix:"):
        with open(ca, "rb") as f:
            return grpc.secure_channel(address, grpc.ssl_channel_credentials(f.read()))
    return grpc.insecure_channel(address)


def client_metadata(address: str) -> tuple[tuple[str, str], ...]:
    """The caller's credential for metaschedd at `address`, as gRPC metadata.

    METASCHED_TOKEN (or the file METASCHED_TOKEN_FILE) if set: a user token from an admin.
    Otherwise, over the Unix socket, a fresh local token from the daemon's ident socket.
    Otherwise none (the daemon will say UNAUTHENTICATED, with what to do)."""
    token = os.environ.get("METASCHED_TOKEN", "").strip()
    path = os.environ.get("METASCHED_TOKEN_FILE", "")
    if not token and path:
        try:
            with open(os.path.expanduser(path)) as f:
                token = f.read().strip()
        except OSError as e:
            raise Unreachable(f"cannot read METASCHED_TOKEN_FILE {path}: {e.strerror}") from None
    if not token and address.startswith("unix:"):
        ident = ident_path(address.removeprefix("unix:"))
        try:
            token = fetch_local_token(ident)
        except OSError as e:
            raise Unreachable(f"ident socket {ident}: {e.strerror or e}") from None
    return (("authorization", f"Bearer {token}"),) if token else ()
