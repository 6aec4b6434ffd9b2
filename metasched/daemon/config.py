"""metaschedd's settings (config/metaschedd.toml is the commented example)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from metasched import auth, config
from metasched.config import ConfigError
from metasched.daemon.calls import Limits
from metasched.daemon.settings import Settings

T = TypeVar("T", int, float)


@dataclass(frozen=True)
class DaemonConfig:
    state_dir: Path = Path("/var/lib/metasched")
    listen: str = "127.0.0.1:7461"  # TCP, for agents and remote users; "" = none
    socket: str = "/run/metasched/metaschedd.sock"  # local users; "" = none
    report_interval: float = 10.0
    site_grace_seconds: float = 90.0
    log_level: str = "info"
    admins: frozenset[str] = frozenset({"root"})
    synchronous: str = "FULL"
    # site -> sha256 hex of its agent token ("" = none: the TLS certificate alone identifies it)
    site_tokens: dict[str, str] = field(default_factory=dict)
    plain_token_sites: tuple[str, ...] = ()  # sites configured with a plain `token` (warned)
    settings: Settings = field(default_factory=Settings)
    # TLS on `listen` (mTLS: agents must present a certificate from tls_client_ca)
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    users_listen: str = ""  # TCP for remote users (token auth; server-side TLS when configured)
    # limits
    submit_rate: float = 20.0  # per user, jobs per second sustained (0 = no limit)
    submit_burst: int = 1000
    max_request_bytes: int = 4 << 20  # one user request (SubmitJob, Plan)
    max_message_bytes: int = 64 << 20  # any gRPC message (agents' site reports are the largest)
    # HTTP: /metrics (Prometheus), /healthz and the status page; "" = none
    http_listen: str = ""
    status_public: bool = False  # the status page without a login (pool and queue; no job names)
    limits: Limits = field(default_factory=Limits)  # what one user's calls may hold at once

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert)

    @property
    def db_path(self) -> Path:
        return self.state_dir / "metasched.db"


def from_file(path: str | Path) -> DaemonConfig:
    raw = config.load(path)
    return from_dict(raw, str(path))


def from_dict(raw: dict[str, Any], where: str = "config") -> DaemonConfig:
    d = raw.get("daemon", {})
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: [daemon] must be a table")
    w = f"{where}: daemon"
    tls = {k: config.get(d, k, str, "", w) for k in ("tls_cert", "tls_key", "tls_client_ca")}
    if any(tls.values()) and not all(tls.values()):
        raise ConfigError(f"{w}: tls_cert, tls_key and tls_client_ca go together (mutual TLS)")
    sites_raw = raw.get("sites", {})
    if not isinstance(sites_raw, dict):
        raise ConfigError(f"{where}: [sites] must be a table of [sites.NAME] tables")
    tokens: dict[str, str] = {}
    plain: list[str] = []
    for name, table in sites_raw.items():
        ws = f"{where}: sites.{name}"
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: [sites.{name}] must be a table")
        if not auth.valid_user(name):
            raise ConfigError(f"{where}: bad site name {name!r}")
        token = config.get(table, "token", str, "", ws)
        digest = config.get(table, "token_sha256", str, "", ws).lower()
        if token and digest:
            raise ConfigError(f"{ws}: give token_sha256 or token, not both")
        if token:
            if len(token) < 16:
                raise ConfigError(f"{ws}.token must be at least 16 characters")
            digest = auth.sha256_hex(token)
            plain.append(name)
        elif digest and (len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest)):
            raise ConfigError(f"{ws}.token_sha256 must be 64 hex digits (sha256sum of the token)")
        if not digest and not tls["tls_cert"]:
            raise ConfigError(
                f"{ws}: needs token_sha256 (or token) when TLS is off: nothing would "
                "authenticate its agent"
            )
        tokens[name] = digest
    sync = config.get(d, "synchronous", str, "FULL", w).upper()
    if sync not in ("FULL", "NORMAL", "EXTRA"):
        raise ConfigError(f"{w}.synchronous must be FULL, EXTRA or NORMAL")
    settings = Settings(
        placement_interval=config.get(d, "placement_interval", float, 1.0, w),
        max_infra_retries=config.get(d, "max_infra_retries", int, 2, w),
        max_script_bytes=config.get(d, "max_script_bytes", int, 1 << 20, w),
        max_queued_per_user=config.get(d, "max_queued_per_user", int, 100_000, w),
        rebalance=config.get(d, "rebalance", bool, True, w),
        rebalance_interval=config.get(d, "rebalance_interval", float, 30.0, w),
        rebalance_grace_s=config.get(d, "rebalance_grace_seconds", float, 300.0, w),
        rebalance_min_gain_s=config.get(d, "rebalance_min_gain_seconds", float, 600.0, w),
        max_recalls=config.get(d, "max_recalls", int, 2, w),
        hold_horizon_s=_horizon(config.get(d, "hold_horizon_seconds", float, 0.0, w)),
    )
    return DaemonConfig(
        state_dir=Path(config.get(d, "state_dir", str, "/var/lib/metasched", w)),
        listen=config.get(d, "listen", str, "127.0.0.1:7461", w),
        socket=config.get(d, "socket", str, "/run/metasched/metaschedd.sock", w),
        report_interval=config.get(d, "report_interval", float, 10.0, w),
        site_grace_seconds=config.get(d, "site_grace_seconds", float, 90.0, w),
        log_level=config.get(d, "log_level", str, "info", w),
        admins=frozenset(config.get(d, "admins", list, ["root"], w)),
        synchronous=sync,
        site_tokens=tokens,
        plain_token_sites=tuple(plain),
        settings=settings,
        users_listen=config.get(d, "users_listen", str, "", w),
        http_listen=config.get(d, "http_listen", str, "", w),
        status_public=config.get(d, "status_public", bool, False, w),
        submit_rate=_at_least(config.get(d, "submit_rate", float, 20.0, w), 0, f"{w}.submit_rate"),
        submit_burst=_at_least(config.get(d, "submit_burst", int, 1000, w), 1, f"{w}.submit_burst"),
        max_request_bytes=_at_least(
            config.get(d, "max_request_bytes", int, 4 << 20, w), 1024, f"{w}.max_request_bytes"
        ),
        max_message_bytes=_at_least(
            config.get(d, "max_message_bytes", int, 64 << 20, w), 1 << 20, f"{w}.max_message_bytes"
        ),
        limits=_limits(d, w),
        **tls,
    )


def check_files(cfg: DaemonConfig) -> None:
    """What --check-config looks at beyond the config's syntax: the files it names can be
    read, and the addresses are host:port."""
    for what, path in (
        ("tls_cert", cfg.tls_cert),
        ("tls_key", cfg.tls_key),
        ("tls_client_ca", cfg.tls_client_ca),
    ):
        if path and not Path(path).is_file():
            raise ConfigError(f"{what} {path}: no such file")
        if path:
            with open(path, "rb"):
                pass
    for what, addr in (
        ("listen", cfg.listen),
        ("users_listen", cfg.users_listen),
        ("http_listen", cfg.http_listen),
    ):
        if addr and not addr.rpartition(":")[2].isdigit():
            raise ConfigError(f"{what} {addr!r}: use host:port")


# Limits' fields, by their key in [daemon]: each at least 1
_LIMIT_KEYS = (
    ("calls", "max_calls_per_user", int),
    ("watches", "max_watches_per_user", int),
    ("listings", "max_listings_per_user", int),
    ("threads", "threads_per_user", int),
    ("call_timeout", "call_timeout_seconds", float),
    ("watch_seconds", "watch_max_seconds", float),
)


def _limits(d: dict[str, Any], w: str) -> Limits:
    dflt = Limits()
    return Limits(
        **{
            name: _at_least(config.get(d, key, kind, getattr(dflt, name), w), 1, f"{w}.{key}")
            for name, key, kind in _LIMIT_KEYS
        }
    )


def _at_least(value: T, low: float, where: str) -> T:
    if value < low:  # type: ignore[operator]
        raise ConfigError(f"{where} must be at least {low}, not {value}")
    return value


def _horizon(seconds: float) -> float | None:
    """hold_horizon_seconds: a negative value turns late binding off (forward at once)."""
    return None if seconds < 0 else seconds
