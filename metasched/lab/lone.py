"""metaschedd alone: a real daemon process with no sites, for tests and benchmarks.

Its jobs stay queued (no site reports), which is what tests of the daemon's own bounds,
files and sockets need: its Unix socket, ident socket and SQLite file live under `root`.
The caller (root, an admin) talks to it as itself; other users through tokens it makes for
them, or as themselves through metasched.lab.asuser (msub, metasched-admin).

    d = LoneDaemon(Path("/tmp/x")); d.start(); d.call("ListJobs", pb.ListJobsRequest()); d.stop()
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc

from metasched import auth
from metasched.lab.federation import wait_for
from metasched.v1 import metasched_pb2 as pb
from metasched.v1 import metasched_pb2_grpc as pb_grpc


class LoneDaemon:
    """metaschedd as a real process with no sites (its jobs stay queued): its Unix socket,
    ident socket and SQLite file under `root`. Local users reach it as themselves (msub and
    metasched-admin through metasched.lab.asuser); the harness is root, an admin."""

    def __init__(
        self,
        root: Path,
        extra: str = "",
        listen: str = "",
        tables: str = "",
        log_level: str = "debug",
        source: Path | None = None,
    ) -> None:
        """extra: more [daemon] keys; tables: more TOML tables (e.g. [sites.NAME]); source:
        another checkout of metasched to run the daemon and the CLIs from (benchmarks compare
        against main's code that way)."""
        self.root = root
        self.source = source
        self.state_dir = root / "state"
        self.db = self.state_dir / "metasched.db"
        self.socket = str(root / "d.sock")
        self.config = root / "metaschedd.toml"
        self.config.write_text(
            f'[daemon]\nstate_dir = "{self.state_dir}"\nlisten = "{listen}"\n'
            f'socket = "{self.socket}"\nlog_level = "{log_level}"\nsubmit_rate = 0\n'
            f"placement_interval = 0.2\n{extra}\n\n{tables}\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "metaschedd.log"
        self._tokens: dict[str, tuple[tuple[str, str], ...]] = {}

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "metasched.daemon.main", "-c", str(self.config), *args]

    def env(self) -> dict[str, str]:
        """The environment of the daemon and of the CLIs run against it."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("METASCHED_")}
        env["METASCHED_DAEMON"] = f"unix:{self.socket}"
        if self.source is not None:
            env["PYTHONPATH"] = str(self.source)
        return env

    def start(self) -> None:
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=self.env(),
                cwd=self.source or None,
            )
        wait_for(self._answers, 30, "metaschedd to answer", self.log)

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"metaschedd exited {self.proc.returncode}: {self.log_text()}")
        try:
            self.call("ListSites", pb.ListSitesRequest(), timeout=2)
            return True
        except (grpc.RpcError, auth.Unreachable, OSError):
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        p, self.proc = self.proc, None
        if p is None or p.poll() is not None:
            return
        os.killpg(p.pid, sig)
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def events(self, name: str) -> list[dict[str, Any]]:
        """The daemon's log events called `name` (its JSON log lines)."""
        out = []
        for line in self.log_text().splitlines():
            if f'"{name}"' in line:
                with contextlib.suppress(ValueError):
                    ev = json.loads(line)
                    if ev.get("event") == name:
                        out.append(ev)
        return out

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(f"unix:{self.socket}")

    def md(self, user: str = "root") -> tuple[tuple[str, str], ...]:
        """Credentials of `user`: root's own local token, else a token root creates for it."""
        if user == "root":
            return auth.client_metadata(f"unix:{self.socket}")
        if user not in self._tokens:
            made = pb_grpc.AdminStub(self.channel()).CreateToken(
                pb.CreateTokenRequest(user=user, ttl_seconds=3600), metadata=self.md(), timeout=30
            )
            self._tokens[user] = (("authorization", f"Bearer {made.token}"),)
        return self._tokens[user]

    def call(self, method: str, request: Any, user: str = "root", timeout: float = 30) -> Any:
        stub = pb_grpc.SchedulerStub(self.channel())
        return getattr(stub, method)(request, metadata=self.md(user), timeout=timeout)

    def cli(
        self, program: str, *args: str, user: str = "root", timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """msub or metasched-admin (program "msub" / "admin") as the local user `user`."""
        module = "metasched.cli.msub" if program == "msub" else "metasched.cli.admin"
        argv = [sys.executable, "-m", module, *args]
        if user != "root":
            argv = [sys.executable, "-m", "metasched.lab.asuser", user, program, *args]
        return subprocess.run(
            argv,
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=timeout,
            cwd=self.source or None,
        )
