"""metaschedd: the federation daemon. Wires the store, sites, scheduler and gRPC services.

The gRPC services run on one asyncio event loop in a thread of its own (grpc.aio): a call
that waits (a watch, an agent's stream, a submission waiting for its commit) is a coroutine,
not a thread, so no number of open streams can use up the daemon's threads. The store's
writer and the placement loop keep their own threads, as before.

    metaschedd [-c CONFIG]          run
    metaschedd [-c CONFIG] --new    make an empty database (a new federation) and exit
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import os
import signal
import sys
import threading
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from metasched import __version__, auth, log, sdnotify
from metasched.config import ConfigError
from metasched.daemon import config as daemon_config
from metasched.daemon.admin_api import AdminService
from metasched.daemon.agent_api import AgentService
from metasched.daemon.calls import Calls
from metasched.daemon.health import StoreHealth
from metasched.daemon.identity import Identity
from metasched.daemon.metrics import DaemonMetrics, RpcMetrics
from metasched.daemon.scheduler import Scheduler
from metasched.daemon.service import Service
from metasched.daemon.shelf_api import ShelfService
from metasched.daemon.sites import SiteRegistry
from metasched.daemon.sockets import LocalSockets
from metasched.daemon.tokens import TokenStore
from metasched.daemon.user_api import UserService
from metasched.daemon.watchers import Completions, JobWatchers
from metasched.daemon.web import WebServer
from metasched.daemon.wire import add_service
from metasched.store import Store, StoreError
from metasched.v1 import metasched_pb2 as pb
from metasched.v1 import metasched_pb2_grpc as pb_grpc

T = TypeVar("T")
# Threads for the blocking parts of user calls (each user gets at most limits.threads of
# them) and for agents' messages (each agent's are handled one at a time, in order).
USER_THREADS = 16
AGENT_THREADS = 8
HEALTH_PERIOD = 2.0


class LoopHealth:
    """grpc.health.v1's asyncio servicer, set from another thread (StoreHealth's)."""

    def __init__(self, servicer: HealthServicer, loop: asyncio.AbstractEventLoop) -> None:
        self.servicer = servicer
        self.loop = loop

    def set(self, service: str, status: Any) -> None:
        asyncio.run_coroutine_threadsafe(self.servicer.set(service, status), self.loop)


class Daemon:
    def __init__(self, cfg: daemon_config.DaemonConfig) -> None:
        self.cfg = cfg
        self.store = Store(cfg.db_path, synchronous=cfg.synchronous)
        self.sites = SiteRegistry(cfg.site_grace_seconds)
        self.scheduler = Scheduler(self.store, self.sites, cfg.settings)
        # Metrics only where something can read them (http_listen): unserved, they would be
        # work on every submission and commit for nobody (bench/metrics_cost.py).
        self.metrics: DaemonMetrics | None = None
        self.rpc_metrics: RpcMetrics | None = None
        if cfg.http_listen:
            self.metrics = DaemonMetrics(self.store, self.sites)
            self.metrics.attach(self.scheduler)
            self.rpc_metrics = RpcMetrics(self.metrics)
        for name in cfg.site_tokens:
            self.sites.ensure(name)
        self.local_tokens = auth.LocalTokens()
        self.tokens = TokenStore(self.store)
        self.identity = Identity(self.local_tokens, self.tokens, cfg.admins)
        self.loop = asyncio.new_event_loop()
        self.loop.set_exception_handler(_log_loop_error)
        self._loop_thread = threading.Thread(
            target=self.loop.run_forever, name="rpc-loop", daemon=True
        )
        self.user_pool = ThreadPoolExecutor(USER_THREADS, thread_name_prefix="rpc")
        self.agent_pool = ThreadPoolExecutor(AGENT_THREADS, thread_name_prefix="agents")
        calls = Calls(cfg.limits, self.user_pool, component="users")
        watchers = JobWatchers(self.loop)
        self.store.add_change_hook(watchers.committed)
        self.users = UserService(
            self.scheduler,
            self.identity,
            calls,
            watchers,
            Completions(self.loop),
            submit_rate=cfg.submit_rate,
            submit_burst=cfg.submit_burst,
            max_request_bytes=cfg.max_request_bytes,
        )
        self.shelf = ShelfService(self.scheduler, self.identity, calls)
        self.admin = AdminService(self.scheduler, self.identity, self.tokens, cfg.state_dir, calls)
        self.agents = AgentService(
            self.scheduler,
            cfg.site_tokens,
            cfg.report_interval,
            self.agent_pool,
            require_cert=cfg.tls,
        )
        # grpc.health.v1 per service (NOT_SERVING while the store takes no writes) and
        # server reflection (grpcurl, grpc_cli), on every server
        self.health_servicer = HealthServicer()
        self.health = StoreHealth(self.store, LoopHealth(self.health_servicer, self.loop))
        self._health_loop = Service("health", HEALTH_PERIOD, self.health.run_cycle, log.get())
        self.web: WebServer | None = None
        if self.metrics is not None:
            self.web = WebServer(
                cfg.http_listen,
                self.scheduler,
                self.identity,
                self.metrics,
                self.health,
                public=cfg.status_public,
            )
        self.tcp: grpc.aio.Server | None = None
        self.local: LocalSockets | None = None
        self.addresses: list[str] = []

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def _server(self) -> grpc.aio.Server:
        """A gRPC server with every service (on the event loop's thread)."""
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", self.cfg.max_message_bytes),
                ("grpc.keepalive_time_ms", 20_000),
                ("grpc.keepalive_timeout_ms", 10_000),
                ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
                ("grpc.keepalive_permit_without_calls", 1),
            ],
            # Per user, calls.Limits bounds what is open; this is only a backstop.
            maximum_concurrent_rpcs=100_000,
        )
        observe = self.rpc_metrics.observe if self.rpc_metrics is not None else None
        add_service(server, pb_grpc.add_SchedulerServicer_to_server, self.users, observe)
        add_service(server, pb_grpc.add_ShelfServicer_to_server, self.shelf, observe)
        add_service(server, pb_grpc.add_AdminServicer_to_server, self.admin, observe)
        add_service(server, pb_grpc.add_AgentServiceServicer_to_server, self.agents, observe)
        health_pb2_grpc.add_HealthServicer_to_server(self.health_servicer, server)
        names = [s.full_name for s in pb.DESCRIPTOR.services_by_name.values()]
        reflection.enable_server_reflection(
            [*names, "grpc.health.v1.Health", reflection.SERVICE_NAME], server
        )
        return server

    async def _listen(self) -> None:
        cfg = self.cfg
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
        ports = ((cfg.listen, mtls, "agents"), (cfg.users_listen, plain_tls, "users"))
        tcp = [(addr, creds, what) for addr, creds, what in ports if addr]
        if tcp:
            self.tcp = server = self._server()
        for addr, creds, what in tcp:
            port = server.add_secure_port(addr, creds) if creds else server.add_insecure_port(addr)
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
        if self.tcp is not None:
            await self.tcp.start()
        if cfg.socket:
            self.local = LocalSockets(cfg.socket, self._server, self.local_tokens)
            await self.local.start()
            self.addresses.append(f"unix:{cfg.socket}")

    async def _close(self) -> None:
        if self.local is not None:
            await self.local.stop()
        if self.tcp is not None:
            await self.tcp.stop(grace=2)

    def start(self) -> None:
        self._loop_thread.start()
        self._run(self._listen())
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
            jobs_quarantined=len(self.store.quarantined),
        )

    def stop(self) -> None:
        if self.web is not None:
            self.web.stop()
        self._health_loop.stop()
        if self._loop_thread.is_alive():
            self._run(self._close())
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._loop_thread.join(timeout=10)
        self.scheduler.stop()
        self.user_pool.shutdown(wait=False, cancel_futures=True)
        self.agent_pool.shutdown(wait=False, cancel_futures=True)
        self.store.close()
        log.get().info("daemon_stopped")


def _log_loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    err = context.get("exception")
    log.get(component="loop").error(
        "event_loop_error",
        message=context.get("message"),
        error=f"{type(err).__name__}: {err}" if err else None,
    )


def make_new(cfg: daemon_config.DaemonConfig) -> int:
    """metaschedd --new: an empty database where there is none (or only an empty file)."""
    store = Store(cfg.db_path, synchronous=cfg.synchronous, new=True)
    fed = store.federation
    store.close()
    log.get().info("database_created", db=str(cfg.db_path), federation=fed)
    print(f"metaschedd: new federation {fed} in {cfg.db_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="metaschedd", description=__doc__)
    ap.add_argument("-c", "--config", default="/etc/metasched/metaschedd.toml")
    ap.add_argument("--version", action="version", version=f"metaschedd {__version__}")
    ap.add_argument(
        "--check-config",
        action="store_true",
        help="read the config (and the TLS files it names), say what is wrong, and exit",
    )
    ap.add_argument(
        "--new",
        action="store_true",
        help="make an empty database (a new federation) where there is none, and exit",
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
    # A crash in C code (SQLite, gRPC's core) leaves every thread's Python stack in the log.
    faulthandler.enable()
    try:
        if args.new:
            return make_new(cfg)
        daemon = Daemon(cfg)
        if daemon.store.created:
            fed = daemon.store.federation
            log.get().warning("database_created", db=str(cfg.db_path), federation=fed)
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
