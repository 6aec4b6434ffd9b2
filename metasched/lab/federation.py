"""A whole local federation on top of a SlurmLab: metaschedd and one metasched-agent per
site, as real processes talking real gRPC, with a real SQLite file. Used by the
end-to-end tests and by the README's demo.

Security is real, not switched off: a throwaway CA in <root>/tls gives metaschedd its server
certificate and each agent a client certificate for its own site (mutual TLS), each site also
has a token (stored hashed in metaschedd's config), and users are who the kernel says they
are: the harness itself (root) through the ident socket, other users through msub run with
runuser, or through a user token the harness creates as admin (call(..., user=...)).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc

from metasched import auth
from metasched.lab import installs
from metasched.lab.harness import SlurmLab
from metasched.lab.software import make_software, offers_toml
from metasched.states import JobState
from metasched.v1 import metasched_pb2 as pb
from metasched.v1 import metasched_pb2_grpc as pb_grpc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Federation:
    def __init__(
        self,
        lab: SlurmLab,
        root: Path,
        *,
        poll_interval: float = 1.0,
        report_interval: float = 5.0,
        site_grace_seconds: float = 15.0,
        placement_interval: float = 0.5,
        users: dict[str, str] | None = None,
        daemon_extra: str = "",
        agent_extra: str = "",
        tls: bool = True,
        agent_metrics: bool = False,
        software: bool = True,
        backends: Mapping[str, str] | None = None,
    ) -> None:
        self.lab = lab
        # site -> "cli" or "pyslurm": how that site's agent talks to its Slurm (default cli)
        self.backends = {site: "cli" for site in lab.sites} | dict(backends or {})
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)  # local users (msub via runuser) reach the sockets in it
        self.tls = tls
        self._creds: dict[str, tuple[tuple[str, str], ...]] = {}  # user -> metadata
        self._local_at = 0.0
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.socket = str(self.root / "metaschedd.sock")
        self.tokens = {name: secrets.token_hex(16) for name in lab.sites}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.poll_interval = poll_interval
        self.agent_extra = agent_extra  # lines added to every agent's [agent] table
        self.users = users if users is not None else {"*": "*"}
        # site -> the URL of its agent's Prometheus endpoint (agent_metrics=True)
        self.agent_metrics = (
            {name: f"http://127.0.0.1:{free_port()}" for name in lab.sites} if agent_metrics else {}
        )
        self.daemon_config = self.root / "metaschedd.toml"
        sites = "\n".join(
            f'[sites.{n}]\ntoken_sha256 = "{auth.sha256_hex(t)}"\n' for n, t in self.tokens.items()
        )
        tls_keys = ""
        if tls:
            from metasched.lab.pki import LabCA  # needs `cryptography` (dev dependency)

            self.ca = LabCA(self.root / "tls")
            server = self.ca.server()
            self.site_certs = {n: self.ca.site(n) for n in lab.sites}
            tls_keys = (
                f'tls_cert = "{server.cert}"\ntls_key = "{server.key}"\n'
                f'tls_client_ca = "{self.ca.cert}"\n'
            )
        _private(
            self.daemon_config,
            f"""[daemon]
state_dir = "{self.root / "state"}"
listen = "{self.address}"
socket = "{self.socket}"
report_interval = {report_interval}
site_grace_seconds = {site_grace_seconds}
placement_interval = {placement_interval}
log_level = "debug"
{tls_keys}{daemon_extra}

{sites}""",
        )
        # what each site offers apps (lab/software.py): modules, a container, or nothing
        self.software = make_software(self.root) if software else None
        for name in lab.sites:
            _private(self.agent_config(name), self._agent_toml(name))

    def agent_config(self, site: str) -> Path:
        return self.root / f"agent-{site}.toml"

    def _agent_toml(self, site: str) -> str:
        users = "\n".join(f'"{k}" = "{v}"' for k, v in self.users.items())
        extra = ""
        if self.tls:
            c = self.site_certs[site]
            extra = f'tls_cert = "{c.cert}"\ntls_key = "{c.key}"\ntls_ca = "{self.ca.cert}"\n'
        if site in self.agent_metrics:
            extra += f'metrics_listen = "{self.agent_metrics[site].removeprefix("http://")}"\n'
        # The site's own Slurm commands when they are not the machine's (first on PATH)
        install = self.lab.install(site)
        own = installs.system()
        bin_dir = "" if own is not None and own.prefix == install.prefix else install.bin_dir
        return f"""[agent]
site = "{site}"
daemon = "{self.address}"
token = "{self.tokens[site]}"
{extra}state_dir = "{self.root / f"agent-{site}"}"
poll_interval = {self.poll_interval}
backend = "{self.backends[site]}"
slurm_conf = "{self.lab.slurm_conf(site)}"
slurm_bin_dir = "{bin_dir}"
log_level = "debug"
{self.agent_extra}

[users]
{users}

{offers_toml(self.lab.sites[site], self.software) if self.software else ""}"""

    # ---------------------------------------------------------------- processes

    def _spawn(self, key: str, argv: list[str]) -> None:
        logf = open(self.root / f"{key}.log", "ab")  # noqa: SIM115 - owned by the child
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("SLURM_CONF", None)
        self.procs[key] = subprocess.Popen(
            argv, stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        logf.close()

    def start_daemon(self) -> None:
        self._spawn(
            "metaschedd",
            [sys.executable, "-m", "metasched.daemon.main", "-c", str(self.daemon_config)],
        )
        wait_for(lambda: self._daemon_answers(), 20, "metaschedd to answer", self.log("metaschedd"))

    def start_agent(self, site: str) -> None:
        self._spawn(
            f"agent-{site}",
            [sys.executable, "-m", "metasched.agent.main", "-c", str(self.agent_config(site))],
        )

    def kill(self, key: str, sig: int = signal.SIGKILL) -> None:
        p = self.procs.pop(key, None)
        if p is None:
            return
        if p.poll() is not None:
            return  # already gone: its PID (and group id) may belong to someone else now
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, sig)
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()

    def start(self, wait_online: bool = True) -> None:
        self.start_daemon()
        for site in self.lab.sites:
            self.start_agent(site)
        if wait_online:
            self.wait_sites_online(list(self.lab.sites))

    def stop(self) -> None:
        for key in list(self.procs):
            self.kill(key, signal.SIGTERM)

    def __enter__(self) -> Federation:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log(self, key: str) -> Path:
        return self.root / f"{key}.log"

    # ---------------------------------------------------------------- talking to it

    def stub(self) -> pb_grpc.SchedulerStub:
        return pb_grpc.SchedulerStub(grpc.insecure_channel(f"unix:{self.socket}"))

    def admin_stub(self) -> pb_grpc.AdminStub:
        return pb_grpc.AdminStub(grpc.insecure_channel(f"unix:{self.socket}"))

    def credentials(self, user: str = "root", fresh: bool = False) -> tuple[tuple[str, str], ...]:
        """Metadata that authenticates `user`: the harness's own local token (from the ident
        socket) for itself, else a user token it creates as admin (it runs as root)."""
        me = pwd.getpwuid(os.geteuid()).pw_name
        if user == me:
            if fresh or time.monotonic() - self._local_at > auth.LOCAL_TTL_S / 2:
                self._creds[me] = auth.client_metadata(f"unix:{self.socket}")
                self._local_at = time.monotonic()
            return self._creds[me]
        if fresh or user not in self._creds:
            made = self.admin_stub().CreateToken(
                pb.CreateTokenRequest(user=user, ttl_seconds=24 * 3600, note="lab harness"),
                metadata=self.credentials(me, fresh),
                timeout=30,
            )
            self._creds[user] = (("authorization", f"Bearer {made.token}"),)
        return self._creds[user]

    def call(self, method: str, request: Any, user: str = "root", timeout: float = 30) -> Any:
        fn = getattr(self.stub(), method)
        try:
            return fn(request, metadata=self.credentials(user), timeout=timeout)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.UNAUTHENTICATED:
                raise
            # a restarted metaschedd has a new signing key: local tokens must be fetched again
            return fn(request, metadata=self.credentials(user, fresh=True), timeout=timeout)

    def _daemon_answers(self) -> bool:
        try:
            self.call("ListSites", pb.ListSitesRequest(), timeout=2)
            return True
        except (grpc.RpcError, auth.Unreachable, OSError):
            return False

    def sites(self) -> dict[str, pb.SiteSummary]:
        return {s.name: s for s in self.call("ListSites", pb.ListSitesRequest()).sites}

    def wait_sites_online(self, names: Sequence[str], timeout: float = 30) -> None:
        wait_for(
            lambda: all(self.sites().get(n, pb.SiteSummary()).state == "online" for n in names),
            timeout,
            f"sites {', '.join(names)} to come online",
            self.log("metaschedd"),
        )

    def token(self, user: str) -> str:
        """A user token for `user` (as an admin makes one with metasched-admin token create)."""
        return dict(self.credentials(user))["authorization"].removeprefix("Bearer ")

    def job(self, job_id: int, user: str = "root") -> pb.Job:
        job: pb.Job = self.call("GetJob", pb.GetJobRequest(job_id=job_id), user=user)
        return job

    def wait_job(self, job_id: int, states: set[JobState], timeout: float = 30) -> pb.Job:
        """The job, once it has reached one of states (TimeoutError naming the daemon's log)."""
        box: list[pb.Job] = []

        def reached() -> bool:
            box[:] = [self.job(job_id)]
            return JobState.from_pb(box[0].state) in states

        wait_for(
            reached, timeout, f"job {job_id} to reach {sorted(states)}", self.log("metaschedd")
        )
        return box[0]

    def msub(
        self,
        *args: str,
        check: bool = True,
        user: str | None = None,
        token: str = "",
        cwd: Path | None = None,
        stdin: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """msub as a real process: as root, as a local user (user=...), or as a remote one
        (token=...); stdin: the text it reads there (default: nothing)."""
        argv = [sys.executable, "-m", "metasched.cli.msub", *args]
        if user and user != "root":
            # as that local user, from the kernel's point of view (see metasched.lab.asuser)
            argv = [sys.executable, "-m", "metasched.lab.asuser", user, "msub", *args]
        base = {k: v for k, v in os.environ.items() if not k.startswith(("SBATCH_", "SLURM_"))}
        env = {**base, **(env or {}), "METASCHED_DAEMON": f"unix:{self.socket}"}
        if token:
            env["METASCHED_TOKEN"] = token
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            cwd=cwd,
            input=stdin if stdin is not None else "",
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"msub {' '.join(args)} failed: {proc.stderr or proc.stdout}")
        return proc


def _private(path: Path, text: str) -> None:
    """Write a file only its owner can read (configs hold tokens and key paths)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def wait_for(cond: Callable[[], bool], timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    hint = f"; see {log}" if log else ""
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{hint}")
