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

from metasched import log
from metasched.config import ConfigError
from metasched.daemon import config as daemon_config
from metasched.daemon.agent_api import AgentService
from metasched.daemon.scheduler import Scheduler
from metasched.daemon.sites import SiteRegistry
from metasched.daemon.user_api import UserService
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
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=64, thread_name_prefix="rpc"),
            options=[
                ("grpc.max_receive_message_length", 64 << 20),
                ("grpc.keepalive_time_ms", 20_000),
                ("grpc.keepalive_timeout_ms", 10_000),
                ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
                ("grpc.keepalive_permit_without_calls", 1),
            ],
            maximum_concurrent_rpcs=4096,
        )
        pb_grpc.add_SchedulerServicer_to_server(
            UserService(self.scheduler, cfg.admins), self.server
        )
        pb_grpc.add_AgentServiceServicer_to_server(
            AgentService(self.scheduler, cfg.site_tokens, cfg.report_interval), self.server
        )
        self.addresses: list[str] = []
        if cfg.listen:
            port = self.server.add_insecure_port(cfg.listen)
            host = cfg.listen.rsplit(":", 1)[0]
            self.addresses.append(f"{host}:{port}")
        if cfg.socket:
            Path(cfg.socket).parent.mkdir(parents=True, exist_ok=True)
            if os.path.exists(cfg.socket):
                os.unlink(cfg.socket)
            self.server.add_insecure_port(f"unix:{cfg.socket}")
            self.addresses.append(f"unix:{cfg.socket}")

    def start(self) -> None:
        self.server.start()
        if self.cfg.socket:
            os.chmod(self.cfg.socket, 0o666)  # every local user may talk to the daemon
        self.scheduler.start()
        log.get().info(
            "daemon_started",
            addresses=self.addresses,
            federation=self.store.federation,
            db=str(self.cfg.db_path),
            jobs_live=len(self.store.live),
        )

    def stop(self) -> None:
        self.server.stop(grace=2).wait()
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
