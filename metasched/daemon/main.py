"""metaschedd: the federation daemon. Wires the store, sites, scheduler and gRPC services."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from metasched import __version__, auth, log, sdnotify
from metasched.config import ConfigError
from metasched.daemon import config as daemon_config
from metasched.daemon.admin_api import AdminService
from metasched.daemon.agent_api import AgentService
from metasched.daemon.health import StoreHealth
from metasched.daemon.identity import Identity
from metasched.daemon.metrics import DaemonMetrics, RpcMetrics
from metasched.daemon.scheduler import Scheduler
from metasched.daemon.service import Service
from metasched.daemon.shelf_api import ShelfService
from metasched.daemon.sites import SiteRegistry
from metasched.daemon.tokens import TokenStore
from metasched.daemon.user_api import UserService
from metasched.daemon.web import WebServer
from metasched.daemon.wire import MalformedRequests
from metasched.store import Store, StoreError
from metasched.v1 import metasched_pb2 as pb
from metasched.v1 import metasched_pb2_grpc as pb_grpc

HEALTH_PERIOD = 2.0


class Daemon:
    def __init__(self, cfg: daemon_config.DaemonConfig) -> None:
        self.cfg = cfg
        self.store = Store(cfg.db_path, synchronous=cfg.synchronous)
        self.sites = SiteRegistry(cfg.site_grace_seconds)
        self.scheduler = Scheduler(self.store, self.sites, cfg.settings)
        self.metrics = DaemonMetrics(self.store, self.sites)
        self.store.on_commit = self.metrics.commit_seconds.observe
        self.scheduler.instrument(self.metrics.timed)
        for name in cfg.site_tokens:
            self.sites.ensure(name)
        self.local_tokens = auth.LocalTokens()
        self.tokens = TokenStore(self.store)
        self.identity = Identity(self.local_tokens, self.tokens, cfg.admins)
        self.ident: auth.IdentServer | None = None
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=64, thread_name_prefix="rpc"),
            options=[
                ("grpc.max_receive_message_length", cfg.max_message_bytes),
                ("grpc.keepalive_time_ms", 20_000),
                ("grpc.keepalive_timeout_ms", 10_000),
                ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
                ("grpc.keepalive_permit_without_calls", 1),
            ],
            maximum_concurrent_rpcs=4096,
            interceptors=[RpcMetrics(self.metrics), MalformedRequests()],
        )
        pb_grpc.add_SchedulerServicer_to_server(
            UserService(
                self.scheduler,
                self.identity,
                submit_rate=cfg.submit_rate,
                submit_burst=cfg.submit_burst,
                max_request_bytes=cfg.max_request_bytes,
            ),
            self.server,
        )
        shelf = ShelfService(self.scheduler, self.identity)
        pb_grpc.add_ShelfServicer_to_server(shelf, self.server)
        pb_grpc.add_AdminServicer_to_server(
            AdminService(self.scheduler, self.identity, self.tokens, cfg.state_dir), self.server
        )
        pb_grpc.add_AgentServiceServicer_to_server(
            AgentService(
                self.scheduler, cfg.site_tokens, cfg.report_interval, require_cert=cfg.tls
            ),
            self.server,
        )
        # grpc.health.v1 per service (NOT_SERVING while the store takes no writes) and
        # server reflection (grpcurl, grpc_cli)
        self.health_servicer = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health_servicer, self.server)
        self.health = StoreHealth(self.store, self.health_servicer)
        self._health_loop = Service("health", HEALTH_PERIOD, self.health.run_cycle, log.get())
        names = [
            pb.DESCRIPTOR.services_by_name[n].full_name for n in pb.DESCRIPTOR.services_by_name
        ]
        reflection.enable_server_reflection(
            [*names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server
        )
        self.web: WebServer | None = None
        if cfg.http_listen:
            self.web = WebServer(
                cfg.http_listen,
                self.scheduler,
                self.identity,
                self.metrics,
                self.health,
                public=cfg.status_public,
            )
        self.addresses: list[str] = []
        self._listen(cfg)

    def _listen(self, cfg: daemon_config.DaemonConfig) -> None:
        logger = log.get()
        mtls = plain_tls = None
        if cfg.tls:
            key, cert = Path(cfg.tls_key).read_bytes(), Path(cfg.tls_cert).read_bytes()
            ca = Path(cfg.tls_client_ca).read_bytes()
            if os.stat(cfg.tls_key).st_mode & 0o077:
                logger.warning("tls_key_readable_by_others", path=cfg.tls_key, hint="chmod 600")
            # Agents' port: a client certificate from the federation CA is required.
            mtls = grpc.ssl_server_credentials([(key, cert)], ca, require_client_auth=True)
            # Remote users' port: the server is authenticated by TLS, users by their token.
            plain_tls = grpc.ssl_server_credentials([(key, cert)])
        for name in cfg.plain_token_sites:
            logger.warning(
                "site_token_in_plain_text",
                site=name,
                hint="store token_sha256 instead (sha256sum of the token) in metaschedd's config",
            )
        for addr, creds, what in (
            (cfg.listen, mtls, "agents"),
            (cfg.users_listen, plain_tls, "users"),
        ):
            if not addr:
                continue
            port = (
                self.server.add_secure_port(addr, creds)
                if creds
                else self.server.add_insecure_port(addr)
            )
            if port == 0:
                raise OSError(f"cannot listen on {addr}")
            host = addr.rsplit(":", 1)[0]
            self.addresses.append(f"{host}:{port}")
            if creds is None and host not in ("127.0.0.1", "localhost", "[::1]"):
                logger.warning(
                    "listening_without_tls",
                    address=addr,
                    serves=what,
                    hint="set tls_cert, tls_key and tls_client_ca (docs/security.md)",
                )
        if cfg.socket:
            Path(cfg.socket).parent.mkdir(parents=True, exist_ok=True)
            if os.path.exists(cfg.socket):
                os.unlink(cfg.socket)
            self.server.add_insecure_port(f"unix:{cfg.socket}")
            self.addresses.append(f"unix:{cfg.socket}")
            self.ident = auth.IdentServer(auth.ident_path(cfg.socket), self.local_tokens)

    def start(self) -> None:
        self.server.start()
        if self.ident is not None:
            self.ident.start()
        if self.cfg.socket:
            os.chmod(self.cfg.socket, 0o666)  # every local user may talk to the daemon
        self.store.add_listener(self.metrics.on_changes)
        self.scheduler.start()
        self.health.run_cycle()  # the first probe, answered before the loop's next look
        self._health_loop.start()
        if self.web is not None:
            self.web.start()
        log.get().info(
            "daemon_started",
            version=__version__,
            http=self.web.address if self.web else None,
            addresses=self.addresses,
            tls=self.cfg.tls,
            federation=self.store.federation,
            db=str(self.cfg.db_path),
            jobs_live=len(self.store.live),
        )

    def stop(self) -> None:
        if self.web is not None:
            self.web.stop()
        self._health_loop.stop()
        self.server.stop(grace=2).wait()
        if self.ident is not None:
            self.ident.stop()
        self.scheduler.stop()
        self.store.close()
        log.get().info("daemon_stopped")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="metaschedd", description=__doc__)
    ap.add_argument("-c", "--config", default="/etc/metasched/metaschedd.toml")
    ap.add_argument("--version", action="version", version=f"metaschedd {__version__}")
    ap.add_argument(
        "--check-config",
        action="store_true",
        help="read the config (and the TLS files it names), say what is wrong, and exit",
    )
    args = ap.parse_args(argv)
    try:
        cfg = daemon_config.from_file(args.config)
        if args.check_config:
            daemon_config.check_files(cfg)
    except (ConfigError, OSError) as e:
        print(f"metaschedd: {e}", file=sys.stderr)
        return 2
    if args.check_config:
        print(f"metaschedd: {args.config} is valid ({len(cfg.site_tokens)} site(s))")
        return 0
    log.setup(cfg.log_level, process="metaschedd")
    try:
        daemon = Daemon(cfg)
        daemon.start()
    except (StoreError, RuntimeError, OSError) as e:
        print(f"metaschedd: cannot start: {e}", file=sys.stderr)
        return 1
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    # systemd (Type=notify): ready once serving; the watchdog is fed while the store
    # takes writes, so a wedged daemon is restarted (WatchdogSec in the unit)
    sdnotify.notify("READY=1", f"STATUS=serving {', '.join(daemon.addresses)}")
    interval = sdnotify.watchdog_interval()
    while not done.wait(interval or None):
        if daemon.health.serving is not False:
            sdnotify.notify("WATCHDOG=1")
    sdnotify.notify("STOPPING=1")
    daemon.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
