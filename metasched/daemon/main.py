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

from metasched import auth, log
from metasched.config import ConfigError
from metasched.daemon import config as daemon_config
from metasched.daemon.admin_api import AdminService
from metasched.daemon.agent_api import AgentService
from metasched.daemon.identity import Identity
from metasched.daemon.scheduler import Scheduler
from metasched.daemon.sites import SiteRegistry
from metasched.daemon.tokens import TokenStore
from metasched.daemon.user_api import UserService
from metasched.daemon.wire import MalformedRequests
from metasched.store import Store, StoreError
from metasched.v1 import metasched_pb2_grpc as pb_grpc


class Daemon:
    def __init__(self, cfg: daemon_config.DaemonConfig) -> None:
        self.cfg = cfg
        self.store = Store(cfg.db_path, synchronous=cfg.synchronous)
        self.sites = SiteRegistry(cfg.site_grace_seconds)
        self.scheduler = Scheduler(self.store, self.sites, cfg.settings)
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
            interceptors=[MalformedRequests()],
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
        pb_grpc.add_AdminServicer_to_server(
            AdminService(self.scheduler, self.identity, self.tokens, cfg.state_dir), self.server
        )
        pb_grpc.add_AgentServiceServicer_to_server(
            AgentService(
                self.scheduler, cfg.site_tokens, cfg.report_interval, require_cert=cfg.tls
            ),
            self.server,
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
        self.scheduler.start()
        log.get().info(
            "daemon_started",
            addresses=self.addresses,
            tls=self.cfg.tls,
            federation=self.store.federation,
            db=str(self.cfg.db_path),
            jobs_live=len(self.store.live),
        )

    def stop(self) -> None:
        self.server.stop(grace=2).wait()
        if self.ident is not None:
            self.ident.stop()
        self.scheduler.stop()
        self.store.close()
        log.get().info("daemon_stopped")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="metaschedd", description=__doc__)
    ap.add_argument("-c", "--config", default="/etc/metasched/metaschedd.toml")
    args = ap.parse_args(argv)
    try:
        cfg = daemon_config.from_file(args.config)
    except ConfigError as e:
        print(f"metaschedd: {e}", file=sys.stderr)
        return 2
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
    done.wait()
    daemon.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
