"""metasched-agent's settings (config/agent.toml is the commented example)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metasched import catalog, config, precision
from metasched.agent.offers import OfferConfig
from metasched.config import ConfigError
from metasched.v1 import metasched_pb2 as pb


@dataclass(frozen=True)
class UserMap:
    """Global user -> local account at this site. "*" = "*" maps everyone to the same name."""

    accounts: dict[str, str] = field(default_factory=dict)
    identity: bool = False

    def local(self, user: str) -> str | None:
        if user in self.accounts:
            return self.accounts[user]
        return user if self.identity else None


@dataclass(frozen=True)
class AgentConfig:
    site: str
    daemon: str  # host:port, or unix:/path
    token: str  # the site's shared secret ("" when the certificate alone identifies the site)
    state_dir: Path = Path("/var/lib/metasched-agent")
    poll_interval: float = 5.0
    backend: str = "auto"
    slurm_conf: str = ""
    # The site's Slurm client commands (sbatch, squeue, ...): "" = the first on PATH. Sites
    # often have several Slurm installs; a client of another release cannot talk to slurmctld.
    slurm_bin_dir: str = ""
    log_level: str = "info"
    users: UserMap = field(default_factory=UserMap)
    # partition name -> declared precisions (peak TFLOPS per node); absent = derived from GRES
    precisions: dict[str, dict[str, float]] = field(default_factory=dict)
    # mutual TLS: this site's certificate (URI SAN metasched-site:<site>) and key, and the CA
    # that signed metaschedd's certificate. All three, or none (then the token alone).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    # Prometheus /metrics (host:port); "" = none. The metrics name no user and no job.
    metrics_listen: str = ""
    # software offered to apps' recipes ([offers], and per partition)
    offers: OfferConfig = field(default_factory=OfferConfig)
    # sbatch processes the agent runs at once (each a fork as the user and a slurmctld RPC)
    submit_workers: int = 4
    # how long the submission journal remembers a tag whose job has left Slurm's queue
    journal_keep_days: float = 30.0


def _strings(raw: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = raw.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}.{key} must be a list of names")
    return tuple(value)


def _offerings(raw: Any, where: str) -> pb.Offerings:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a table")
    unknown = sorted(set(raw) - {"modules", "containers", "paths", "container_run"})
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}")
    return pb.Offerings(
        modules=_strings(raw, "modules", where),
        containers=_strings(raw, "containers", where),
        paths=_strings(raw, "paths", where),
        container_run=config.get(raw, "container_run", str, "", where),
    )


def _offer_config(raw: Any, partitions: dict[str, pb.Offerings], where: str) -> OfferConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: [offers] must be a table")
    w = f"{where}: offers"
    site = _offerings(
        {k: v for k, v in raw.items() if k not in ("discover_modules", "modulepath")}, w
    )
    return OfferConfig(
        modules=tuple(site.modules),
        containers=tuple(site.containers),
        paths=tuple(site.paths),
        container_run=site.container_run,
        discover_modules=config.get(raw, "discover_modules", bool, False, w),
        modulepath=_strings(raw, "modulepath", w),
        partitions=partitions,
    )


def from_file(path: str | Path) -> AgentConfig:
    return from_dict(config.load(path), str(path))


def from_dict(raw: dict[str, Any], where: str = "config") -> AgentConfig:
    a = raw.get("agent")
    if not isinstance(a, dict):
        raise ConfigError(f"{where}: an [agent] table is required")
    w = f"{where}: agent"
    site = config.get(a, "site", str, "", w)
    if not site:
        raise ConfigError(f"{w}.site is required")
    daemon = config.get(a, "daemon", str, "", w)
    if not daemon:
        raise ConfigError(f"{w}.daemon (host:port of metaschedd) is required")
    tls = {k: config.get(a, k, str, "", w) for k in ("tls_cert", "tls_key", "tls_ca")}
    if any(tls.values()) and not all(tls.values()):
        raise ConfigError(f"{w}: tls_cert, tls_key and tls_ca go together (mutual TLS)")
    for k, v in tls.items():
        if v and not Path(v).is_file():
            raise ConfigError(f"{w}.{k}: no such file {v}")
    metrics_listen = config.get(a, "metrics_listen", str, "", w)
    if metrics_listen and not metrics_listen.rpartition(":")[2].isdigit():
        raise ConfigError(f"{w}.metrics_listen {metrics_listen!r}: use host:port")
    backend = config.get(a, "backend", str, "auto", w)
    if backend not in ("auto", "cli", "pyslurm"):
        raise ConfigError(f"{w}.backend must be auto, cli or pyslurm, not {backend!r}")
    users_raw = raw.get("users", {})
    if not isinstance(users_raw, dict):
        raise ConfigError(f"{where}: [users] must be a table of global = local names")
    accounts = {}
    identity = False
    for k, v in users_raw.items():
        if not isinstance(v, str):
            raise ConfigError(f"{where}: users.{k} must be a string (the local account)")
        if k == "*":
            if v != "*":
                raise ConfigError(f'{where}: users."*" may only be "*" (same name everywhere)')
            identity = True
        else:
            accounts[k] = v
    precisions: dict[str, dict[str, float]] = {}
    part_offers: dict[str, pb.Offerings] = {}
    for i, p in enumerate(raw.get("partitions", [])):
        if not isinstance(p, dict) or not isinstance(p.get("name"), str):
            raise ConfigError(f"{where}: partitions[{i}] needs a name")
        if "offers" in p:
            part_offers[p["name"]] = _offerings(p["offers"], f"{where}: partitions[{i}].offers")
        declared = p.get("precisions")
        if declared is None:
            continue
        if not isinstance(declared, dict):
            raise ConfigError(f"{where}: partitions[{i}].precisions must be a table")
        try:
            precisions[p["name"]] = catalog.partition_precisions({}, 0, declared)
        except (ValueError, precision.UnknownPrecision) as e:
            raise ConfigError(f"{where}: partitions[{i}].precisions: {e}") from None
    cfg = AgentConfig(
        site=site,
        daemon=daemon,
        token=config.get(a, "token", str, "", w),
        state_dir=Path(config.get(a, "state_dir", str, "/var/lib/metasched-agent", w)),
        poll_interval=config.get(a, "poll_interval", float, 5.0, w),
        backend=backend,
        slurm_conf=config.get(a, "slurm_conf", str, "", w),
        slurm_bin_dir=config.get(a, "slurm_bin_dir", str, "", w),
        log_level=config.get(a, "log_level", str, "info", w),
        users=UserMap(accounts, identity),
        precisions=precisions,
        tls_cert=Path(tls["tls_cert"]) if tls["tls_cert"] else None,
        tls_key=Path(tls["tls_key"]) if tls["tls_key"] else None,
        tls_ca=Path(tls["tls_ca"]) if tls["tls_ca"] else None,
        metrics_listen=metrics_listen,
        offers=_offer_config(raw.get("offers", {}), part_offers, where),
        journal_keep_days=config.get(a, "journal_keep_days", float, 30.0, w),
        submit_workers=config.get(a, "submit_workers", int, 4, w),
    )
    if not 1 <= cfg.submit_workers <= 64:
        raise ConfigError(f"{w}.submit_workers must be from 1 to 64")
    if cfg.journal_keep_days < 1:
        raise ConfigError(f"{w}.journal_keep_days must be at least 1 (a day)")
    if not cfg.token and cfg.tls_cert is None:
        raise ConfigError(f"{w}: needs tls_cert/tls_key/tls_ca or a token to authenticate")
    return cfg
