"""metaschedd's settings (config/metaschedd.toml is the commented example)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metasched import config
from metasched.config import ConfigError
from metasched.daemon.scheduler import Settings


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
    site_tokens: dict[str, str] = field(default_factory=dict)
    settings: Settings = field(default_factory=Settings)

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
    sites_raw = raw.get("sites", {})
    tokens: dict[str, str] = {}
    for name, table in sites_raw.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: [sites.{name}] must be a table")
        token = config.get(table, "token", str, "", f"{where}: sites.{name}")
        if len(token) < 16:
            raise ConfigError(f"{where}: sites.{name}.token must be at least 16 characters")
        tokens[name] = token
    sync = config.get(d, "synchronous", str, "FULL", w).upper()
    if sync not in ("FULL", "NORMAL", "EXTRA"):
        raise ConfigError(f"{w}.synchronous must be FULL, EXTRA or NORMAL")
    settings = Settings(
        placement_interval=config.get(d, "placement_interval", float, 1.0, w),
        max_infra_retries=config.get(d, "max_infra_retries", int, 2, w),
        max_script_bytes=config.get(d, "max_script_bytes", int, 1 << 20, w),
        max_queued_per_user=config.get(d, "max_queued_per_user", int, 100_000, w),
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
        settings=settings,
    )
