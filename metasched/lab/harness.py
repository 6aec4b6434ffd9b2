"""Several real Slurm clusters ("sites") on one machine, on loopback, for tests and demos.

Each site has its own slurm.conf, ports, state, spool and logs, one slurmctld and one slurmd
per fake node (all on 127.0.0.1, each with its own Port=). One munged with its own key and
socket serves all sites, so the lab never touches the machine's munge or Slurm. Each site runs
the Slurm its profile names (installs.py): one lab can mix Debian's 22.05 and a 25.11 build.

A daemon that does not answer is either dead (its process has exited: the error says how,
with its last log line) or slow (still running: the error says whether its port accepts
connections); only the first fails fast, the second gets the whole timeout.

Layout under root (keep it short: the munge socket path must fit in a sockaddr_un):
    lab.json                  base port and site names, so another process can attach
    munge/                    key, socket, logs
    <site>/slurm.conf         what client commands need (SLURM_CONF=...)
    <site>/{state,spool,log,run,fakedev}/, gres.conf, jobcomp.txt
Site i listens on base+100*i (slurmctld) and base+100*i+10+k (slurmd of node k).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from types import TracebackType

from metasched.agent.slurm.cli import CliBackend
from metasched.lab import installs, procs
from metasched.lab.installs import SlurmInstall
from metasched.lab.procs import Daemon
from metasched.lab.profiles import Partition, SiteProfile

# sockaddr_un.sun_path is 108 bytes including the trailing NUL
_MAX_SOCKET_PATH = 107
# Free port ranges are looked for below the kernel's ephemeral range (usually 32768+), so a
# client connection never holds a port a daemon is about to bind.
_PORT_LOW, _PORT_HIGH = 20000, 32000
_MUNGE = ("munged", "mungekey", "munge")  # the machine's own munge serves every site
_SLURM = ("slurmctld", "slurmd", "scontrol", "sinfo", "squeue", "sbatch", "scancel")
# slurm.conf options of the template that later releases no longer take, by the release that
# dropped them: each daemon of those logs an error for the line ("The option ... is defunct").
# GetEnvTimeout: deprecated in 25.05 for a fixed 120 s (CHANGELOG/slurm-25.05.md).
_DEFUNCT_SINCE = {"getenvtimeout": (25, 5)}


class LabError(RuntimeError):
    """The lab could not be brought up or down; the message names the log to read."""


def slurm_installed(release: str = "") -> bool:
    """Can a lab site of that Slurm (installs.find) run here: its programs and munge?"""
    try:
        install = installs.find(release)
    except installs.NoSuchInstall:
        return False
    return not _missing(install)


def _missing(install: SlurmInstall) -> list[str]:
    gone = [b for b in _MUNGE if not shutil.which(b)]
    return gone + [c for c in map(install.command, _SLURM) if not os.access(c, os.X_OK)]


def _port_accepts(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _last_line(*files: Path) -> str:
    """The last non-empty line of the first of files that has one (a daemon's log)."""
    for f in files:
        with contextlib.suppress(OSError):
            lines = [ln for ln in f.read_text(errors="replace").splitlines() if ln.strip()]
            if lines:
                return lines[-1].strip()
    return "nothing logged"


def _port_busy(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))  # slurmctld and slurmd bind every address
        except OSError:
            return True
    return False


def _find_base_port(sites: int) -> int:
    span = 100 * sites
    for _ in range(200):
        base = random.randrange(_PORT_LOW, _PORT_HIGH - span, 100)
        if not any(_port_busy(p) for p in range(base, base + span, 1)):
            return base
    raise LabError(f"no free range of {span} ports in {_PORT_LOW}..{_PORT_HIGH}")


def _saved_base_port(root: Path) -> int | None:
    """The ports an earlier `up` under root used: daemons still running there keep them."""
    try:
        port = json.loads((root / "lab.json").read_text())["base_port"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return port if isinstance(port, int) else None


def _template(name: str) -> str:
    return resources.files("metasched.lab").joinpath("templates", name).read_text()


class SlurmLab:
    """A set of Slurm sites on this machine. Needs root, slurmctld, slurmd and munge.

    overrides replaces (or adds) slurm.conf keys for every site, e.g. {"MinJobAge": "2"}.
    """

    def __init__(
        self,
        root: Path,
        sites: Iterable[SiteProfile],
        base_port: int | None = None,
        *,
        overrides: Mapping[str, str] | None = None,
        jobid_step: int = 0,
        timeout: float = 30.0,
        cleanup_at_exit: bool = True,
    ) -> None:
        self.root = Path(root).absolute()
        self.sites = {s.name: s for s in sites}
        if not self.sites:
            raise LabError("a lab needs at least one site")
        self.overrides = dict(overrides or {})
        self.jobid_step = jobid_step
        self.timeout = timeout
        self.cleanup_at_exit = cleanup_at_exit
        self._base_port = base_port if base_port is not None else _saved_base_port(self.root)
        self._munge_dir = self.root / "munge"
        self.munge_socket = self._munge_dir / "munge.socket.2"
        if len(str(self.munge_socket).encode()) > _MAX_SOCKET_PATH:
            raise LabError(f"lab root {self.root} is too long for a unix socket path; use /tmp/x")
        self._munged = Daemon(self._munge_dir / "lab-munged.pid", f"--socket={self.munge_socket}")
        # The daemons this object started, by pid file: their exit status is the kernel's word
        # on whether they live (see _ended). Daemons of an attached lab have only pid files.
        self._children: dict[Path, subprocess.Popen[bytes]] = {}
        self._installs: dict[str, SlurmInstall] = {}
        # One bring-up or outage at a time: a test's fault thread and its main thread may both
        # start a site, and two slurmctld on one state directory would fight over it.
        self._lock = threading.RLock()

    # ------------------------------------------------------------ attaching from elsewhere
    @classmethod
    def attach(cls, root: Path, *, cleanup_at_exit: bool = False) -> SlurmLab:
        """The lab a previous `up` left under root (used by `python -m metasched.lab down`)."""
        try:
            meta = json.loads((Path(root) / "lab.json").read_text())
        except (OSError, ValueError) as e:
            raise LabError(f"no lab under {root}: {e}") from None
        sites = [SiteProfile(**{**s, "partitions": _partitions(s)}) for s in meta["sites"]]
        return cls(
            Path(root),
            sites,
            meta["base_port"],
            overrides=meta.get("overrides"),
            jobid_step=meta.get("jobid_step", 0),
            cleanup_at_exit=cleanup_at_exit,
        )

    def _save_meta(self) -> None:
        meta = {
            "base_port": self.base_port,
            "overrides": self.overrides,
            "jobid_step": self.jobid_step,
            "sites": [asdict(s) for s in self.sites.values()],
        }
        (self.root / "lab.json").write_text(json.dumps(meta, indent=1) + "\n")

    @property
    def base_port(self) -> int:
        if self._base_port is None:
            self._base_port = _find_base_port(len(self.sites))
        return self._base_port

    # ------------------------------------------------------------ public paths
    def site_dir(self, name: str) -> Path:
        self._site(name)
        return self.root / name

    def slurm_conf(self, name: str) -> Path:
        return self.site_dir(name) / "slurm.conf"

    def install(self, name: str) -> SlurmInstall:
        """The Slurm this site runs (its profile's `slurm`)."""
        if name not in self._installs:
            try:
                self._installs[name] = installs.find(self._site(name).slurm)
            except installs.NoSuchInstall as e:
                raise LabError(f"site {name}: {e}") from None
        return self._installs[name]

    def env(self, name: str) -> dict[str, str]:
        """What a client command needs in its environment to talk to this site: its
        slurm.conf, and its own Slurm's commands first on PATH."""
        return {"SLURM_CONF": str(self.slurm_conf(name)), "PATH": self.install(name).env_path()}

    def backend(self, name: str) -> CliBackend:
        """The cli backend on this site's own Slurm: how tests read a site as an agent would."""
        return CliBackend(str(self.slurm_conf(name)), str(self.install(name).bin_dir))

    def sbatch(self, name: str, *args: str) -> str:
        """Submit local work at a site, as its own users would (not through metasched)."""
        proc = self._client(name, "sbatch", "--parsable", *args)
        if proc.returncode != 0:
            raise LabError(f"sbatch at {name} failed: {proc.stderr.strip()}")
        return proc.stdout.strip().split(";")[0]

    def scancel(self, name: str, job_id: str) -> None:
        self._client(name, "scancel", job_id)

    def ctld_port(self, name: str) -> int:
        return self.base_port + 100 * list(self.sites).index(self._site(name).name)

    def _site(self, name: str) -> SiteProfile:
        try:
            return self.sites[name]
        except KeyError:
            raise LabError(f"no site {name!r} in this lab ({', '.join(self.sites)})") from None

    # ------------------------------------------------------------ daemons of a site
    def _ctld(self, name: str) -> Daemon:
        conf = self.slurm_conf(name)
        return Daemon(self.root / name / "run" / "lab-slurmctld.pid", f"slurmctld -D -f {conf}")

    def _slurmds(self, name: str) -> list[Daemon]:
        conf = self.slurm_conf(name)
        run = self.root / name / "run"
        return [
            Daemon(run / f"lab-slurmd-{n}.pid", f"slurmd -D -f {conf} -N {n} ")
            for n in self._site(name).node_names()
        ]

    def _daemon_env(self, name: str) -> dict[str, str]:
        env = dict(os.environ)
        env["SLURM_CONF"] = str(self.slurm_conf(name))
        env[procs.MARKER_VAR] = str(self.root)
        return env

    def _client(
        self, name: str, *args: str, timeout: float = 10
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **self.env(name)}
        argv = [self.install(name).command(args[0]), *args[1:]]
        try:
            return subprocess.run(
                argv, env=env, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(args, 124, "", "timed out")

    # ------------------------------------------------------------ bring-up
    def up(self) -> None:
        """Start munged and every site that is not up (from a clean state); wait until every
        slurmctld answers ping and every node is registered."""
        if os.geteuid() != 0:
            raise LabError("the Slurm lab needs root (slurmd runs jobs as their users)")
        for name in self.sites:
            missing = _missing(self.install(name))
            if missing:
                raise LabError(
                    f"site {name}: not installed: {', '.join(missing)} (scripts/setup installs "
                    "them)"
                )
        with self._lock:
            self._up()

    def _up(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        # munged wants every directory above its socket searchable by all (mkdtemp gives 0700)
        self.root.chmod(self.root.stat().st_mode | 0o111)
        to_start = [n for n in self.sites if self._ended(self._ctld(n)) is not None]
        busy = [f"{n}:{p}" for n in to_start for p in self._site_ports(n) if _port_busy(p)]
        if busy:
            raise LabError(f"ports already in use (choose another base_port): {' '.join(busy)}")
        self._save_meta()
        if self.cleanup_at_exit:
            atexit.register(self.down)
        self._munge_up()
        for name in to_start:
            shutil.rmtree(self.root / name, ignore_errors=True)
            self._render(name)
            self._start_ctld(name)
        for name in to_start:
            self._wait_ping(name)
        for name in self.sites:
            self._start_slurmds(name)
        for name in self.sites:
            self._wait_ready(name)

    def _site_ports(self, name: str) -> list[int]:
        base = self.ctld_port(name)
        return [base] + [base + 10 + k for k in range(1, self._site(name).nodes + 1)]

    def _munge_up(self) -> None:
        if self._ended(self._munged) is None:
            return
        d = self._munge_dir
        d.mkdir(parents=True, exist_ok=True)
        # munged refuses a socket dir others can write; 711 lets job-submitting users reach it
        d.chmod(0o711)
        key = d / "munge.key"
        if not key.exists() or key.stat().st_size == 0:
            subprocess.run(
                ["mungekey", "--create", f"--keyfile={key}", "--bits=1024"],
                check=True,
                capture_output=True,
            )
        key.chmod(0o600)
        # One more try: CI once saw a munged that neither answered nor logged why. A second
        # start costs nothing when the first works, and the error says what each try saw.
        seen = []
        for _ in range(2):
            trouble = self._munge_try(d, key)
            if not trouble:
                return
            seen.append(trouble)
        raise LabError(f"munged did not come up: {'; then '.join(seen)}; see {d}")

    def _munge_answers(self) -> bool:
        try:
            cred = subprocess.run(
                ["munge", "-S", str(self.munge_socket), "-n"],
                capture_output=True,
                check=False,
                timeout=5,
            )
        except subprocess.TimeoutExpired:
            return False
        return cred.returncode == 0

    def _munge_try(self, d: Path, key: Path) -> str:
        """Start munged and wait until it hands out a credential: '' then, else what went wrong."""
        procs.stop_daemons([self._munged], group=True, grace=2.0, reap=self._reap)
        for stale in (self.munge_socket, Path(f"{self.munge_socket}.lock")):
            stale.unlink(missing_ok=True)
        proc = self._start(
            self._munged,
            [
                "munged",
                "--foreground",
                f"--socket={self.munge_socket}",
                f"--key-file={key}",
                f"--log-file={d / 'munged.log'}",
                f"--pid-file={d / 'munged.pid'}",
                f"--seed-file={d / 'munged.seed'}",
                "--num-threads=4",
            ],
            {**os.environ, procs.MARKER_VAR: str(self.root)},
            d / "munged.out",
        )
        began = time.monotonic()
        while time.monotonic() - began < self.timeout:
            if self.munge_socket.is_socket() and self._munge_answers():
                return ""
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        took = f"{time.monotonic() - began:.1f}s"
        code = proc.poll()
        if code is None:
            what = f"running but no credential after {took}"
        elif code < 0:
            what = f"killed by signal {-code} after {took}"
        else:
            what = f"exited {code} after {took}"
        last = ""
        for f in (d / "munged.out", d / "munged.log"):
            with contextlib.suppress(OSError):
                lines = f.read_text(errors="replace").strip().splitlines()
                last = last or (lines[-1] if lines else "")
        return f"{what} ({last or 'nothing logged'})"

    def _render(self, name: str) -> None:
        site = self._site(name)
        d = self.root / name
        for sub in ("state", "spool", "log", "run", "fakedev"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        ctld_port = self.ctld_port(name)
        index = list(self.sites).index(name)
        subst = {
            "@SITE@": name,
            "@DIR@": str(d),
            "@CTLD_PORT@": str(ctld_port),
            "@SLURMD_PORT@": str(ctld_port + 11),
            "@MUNGE_SOCKET@": str(self.munge_socket),
            "@FIRST_JOB_ID@": str(1 + index * self.jobid_step),
        }
        text = _template("slurm.conf.in")
        for var, value in subst.items():
            text = text.replace(var, value)
        lines = text.splitlines()
        gres = ""
        gres_conf = ""
        if site.gpu_count:
            gres = f" Gres=gpu:{site.gpu_type}:{site.gpu_count}"
            # gres/gpu drops GPUs without File= (the node goes INVAL), and File= must be a
            # device: symlinks to /dev/null are. The index is the trailing number.
            for gpu in range(site.gpu_count):
                (d / "fakedev" / f"nvidia{gpu}").symlink_to("/dev/null")
            gres_conf = (
                f"NodeName={name}-n[1-{site.nodes}] Name=gpu Type={site.gpu_type} "
                f"File={d}/fakedev/nvidia[0-{site.gpu_count - 1}]\n"
            )
        for entry in site.other_gres:
            gname, _, count = entry.partition(":")
            gres = f"{gres},{entry}" if gres else f" Gres={entry}"
            gres_conf += f"NodeName={name}-n[1-{site.nodes}] Name={gname} Count={count}\n"
        (d / "gres.conf").write_text(gres_conf)
        lines.append("")
        lines.append("# ---- nodes: one slurmd per node, all on 127.0.0.1, one port each")
        for k, node in enumerate(site.node_names(), start=1):
            lines.append(
                f"NodeName={node} NodeHostname=localhost NodeAddr=127.0.0.1 "
                f"Port={ctld_port + 10 + k} CPUs={site.cpus} Boards=1 "
                f"SocketsPerBoard={site.sockets} CoresPerSocket={site.cores_per_socket} "
                f"ThreadsPerCore=1 RealMemory={site.mem_mb}{gres} "
                f"Feature={','.join((name, *site.features))} State=UNKNOWN"
            )
        default = site.default_partition
        for p in site.partitions:
            max_time = str(p.max_time_minutes) if p.max_time_minutes else "UNLIMITED"
            lines.append(
                f"PartitionName={p.name} Nodes=ALL Default={'YES' if p.name == default else 'NO'} "
                f"DefaultTime={p.default_time_minutes} MaxTime={max_time} State={p.state}"
            )
        lines = _apply_overrides(lines, self.overrides)
        lines = _for_release(lines, self.install(name).release)
        (d / "slurm.conf").write_text("\n".join(lines) + "\n")

    # ------------------------------------------------------------ is it dead, or slow?
    def _start(
        self, daemon: Daemon, argv: list[str], env: Mapping[str, str], log: Path
    ) -> subprocess.Popen[bytes]:
        proc = daemon.start(argv, env, log)
        self._children[daemon.pidfile] = proc
        return proc

    def _reap(self) -> None:
        """Collect the daemons of ours that exited, each through its own Popen (procs.Reaper)."""
        for proc in self._children.values():
            proc.poll()

    def _ended(self, daemon: Daemon) -> str | None:
        """None while the daemon runs; else how it ended ('exited 1', 'killed by signal 9').

        For a daemon this object started, the kernel's exit status decides (Popen.poll), not
        the pid file's pid: a process that runs is never called dead, however slow it is."""
        proc = self._children.get(daemon.pidfile)
        rec = daemon.recorded()
        if proc is not None and rec is not None and rec[0] == proc.pid:
            code = proc.poll()
            if code is None:
                return None
            return f"killed by signal {-code}" if code < 0 else f"exited {code}"
        return None if daemon.alive() else "is not running"

    def _dead_or_slow(
        self, what: str, daemon: Daemon, port: int, waited: str, logs: tuple[Path, ...]
    ) -> LabError:
        """The error for a daemon that did not answer: dead (how it ended) or slow (its pid
        and whether its port accepts connections), with its last log line either way."""
        last = _last_line(*logs)
        ended = self._ended(daemon)
        if ended is not None:
            return LabError(f"{what} {ended} ({last}); see {logs[0]}")
        rec = daemon.recorded()
        port_says = "accepts connections" if _port_accepts(port) else "is not listening"
        return LabError(
            f"{what} (pid {rec[0] if rec else '?'}) is running but {waited}; its port {port} "
            f"{port_says}; last log line: {last}; see {logs[0]}"
        )

    def _start_ctld(self, name: str) -> None:
        d = self.root / name
        self._start(
            self._ctld(name),
            [self.install(name).command("slurmctld"), "-D", "-f", str(self.slurm_conf(name))],
            self._daemon_env(name),
            d / "log" / "slurmctld.out",
        )

    def _start_slurmds(self, name: str) -> None:
        d = self.root / name
        slurmd = self.install(name).command("slurmd")
        for node, daemon in zip(self._site(name).node_names(), self._slurmds(name), strict=True):
            if self._ended(daemon) is None:
                continue
            (d / "spool" / node).mkdir(parents=True, exist_ok=True)
            self._start(
                daemon,
                [slurmd, "-D", "-f", str(self.slurm_conf(name)), "-N", node],
                self._daemon_env(name),
                d / "log" / f"slurmd-{node}.out",
            )

    def _wait_ping(self, name: str) -> None:
        logs = (
            self.root / name / "log" / "slurmctld.log",
            self.root / name / "log" / "slurmctld.out",
        )
        ctld = self._ctld(name)
        began = time.monotonic()
        while True:
            if self._client(name, "scontrol", "ping", timeout=5).returncode == 0:
                return
            waited = time.monotonic() - began
            if self._ended(ctld) is not None or waited > self.timeout:
                raise self._dead_or_slow(
                    f"{name}: slurmctld",
                    ctld,
                    self.ctld_port(name),
                    f"did not answer ping in {waited:.0f}s",
                    logs,
                )
            time.sleep(0.05)

    def _wait_ready(self, name: str) -> None:
        """Every node registered and responding (idle, or busy with recovered jobs)."""
        want = set(self._site(name).node_names())
        deadline = time.monotonic() + self.timeout
        states = ""
        while True:
            out = self._client(name, "sinfo", "-h", "-N", "-o", "%N %T", timeout=5)
            states = out.stdout.strip()
            ok = set()
            for line in states.splitlines():
                node, _, state = line.partition(" ")
                # a trailing '*' means not responding
                bad = ("unk", "down", "fail", "inval", "future", "boot", "power", "not_resp")
                if not state.endswith("*") and not any(b in state for b in bad):
                    ok.add(node)
            if want <= ok:
                return
            # a slurmd that exited will never register: say so now, with its log
            nodes = zip(self._site(name).node_names(), self._slurmds(name), strict=True)
            for node, daemon in nodes:
                if node not in ok and self._ended(daemon) is not None:
                    raise self._slurmd_trouble(name, node, daemon, "")
            if time.monotonic() > deadline:
                late = [n for n in self._site(name).node_names() if n not in ok]
                node = late[0]
                daemon = self._slurmds(name)[self._site(name).node_names().index(node)]
                seen = " ".join(states.split()) or "no answer from sinfo"
                raise self._slurmd_trouble(
                    name, node, daemon, f"not ready after {self.timeout:.0f}s (sinfo: {seen})"
                )
            time.sleep(0.05)

    def _slurmd_trouble(self, name: str, node: str, daemon: Daemon, waited: str) -> LabError:
        logs = self.root / name / "log"
        k = self._site(name).node_names().index(node) + 1
        return self._dead_or_slow(
            f"{name}: slurmd of {node}",
            daemon,
            self.ctld_port(name) + 10 + k,
            waited,
            (logs / f"slurmd-{node}.log", logs / f"slurmd-{node}.out"),
        )

    # ------------------------------------------------------------ outages
    def stop_site(self, name: str) -> None:
        """An outage: slurmctld and slurmds die, running jobs go on, state is kept."""
        with self._lock:
            self._stop_site(name)

    def _stop_site(self, name: str) -> None:
        # slurmctld first. A controller that outlives its slurmds goes on starting jobs whose
        # launch RPC then finds no slurmd; Slurm 22.05 keeps such a job RUNNING, with no
        # process anywhere, until its time limit (it ends TIMEOUT). That is Slurm losing a
        # job in a way no real controller outage does, not a fault metasched can see.
        procs.stop_daemons([self._ctld(name)], group=True, reap=self._reap)
        # slurmd alone, not its group: its slurmstepds (the running jobs) must survive
        procs.stop_daemons(self._slurmds(name), group=False, reap=self._reap)

    def start_site(self, name: str) -> None:
        """Bring a stopped site back with its saved state; its jobs are recovered."""
        with self._lock:
            self._start_site(name)

    def _start_site(self, name: str) -> None:
        self._munge_up()
        if not self.slurm_conf(name).exists():
            self._render(name)
        if self._ended(self._ctld(name)) is not None:
            port = self.ctld_port(name)
            if _port_busy(port):
                raise LabError(f"{name}: port {port} already in use")
            self._start_ctld(name)
        self._wait_ping(name)  # a controller that runs may still not answer (hung, or slow)
        self._start_slurmds(name)
        self._wait_ready(name)

    def hang_site(self, name: str) -> None:
        """A controller that hangs: slurmctld stopped (SIGSTOP), its port still accepting
        connections that are never answered. resume_site() lets it go on."""
        self._signal_ctld(name, signal.SIGSTOP)

    def resume_site(self, name: str) -> None:
        self._signal_ctld(name, signal.SIGCONT)

    def _signal_ctld(self, name: str, sig: int) -> None:
        with self._lock:
            if not procs.signal_daemons([self._ctld(name)], sig, group=False):
                raise LabError(f"{name}: slurmctld is not running")

    def site_up(self, name: str) -> bool:
        return (
            self._ended(self._ctld(name)) is None
            and self._client(name, "scontrol", "ping", timeout=5).returncode == 0
        )

    # ------------------------------------------------------------ teardown
    def down(self) -> None:
        """Cancel jobs, stop every daemon of the lab, kill anything jobs left behind."""
        with self._lock:
            self._down()

    def _down(self) -> None:
        up = [
            n
            for n in self.sites
            if self.slurm_conf(n).exists() and self._ended(self._ctld(n)) is None
        ]
        pending = []
        for name in up:
            ids = self._client(name, "squeue", "-h", "-o", "%i", timeout=5).stdout.split()
            if ids:
                self._client(name, "scancel", *ids, timeout=5)
                pending.append(name)
        deadline = (
            time.monotonic() + 2.0
        )  # jobs get a moment to end; the sweep below is the backstop
        while pending and time.monotonic() < deadline:
            pending = [
                n
                for n in pending
                if self._client(n, "squeue", "-h", "-o", "%i", timeout=5).stdout.strip()
            ]
            time.sleep(0.1)
        daemons = [d for n in self.sites for d in (*self._slurmds(n), self._ctld(n))]
        procs.stop_daemons(daemons, group=True, reap=self._reap)
        procs.stop_daemons([self._munged], group=True, reap=self._reap)
        procs.kill_leftovers(self.root, reap=self._reap)
        if self.cleanup_at_exit:
            atexit.unregister(self.down)

    def leftovers(self) -> list[int]:
        """PIDs of processes still belonging to the lab (empty after down())."""
        return procs.leftovers(self.root)

    def __enter__(self) -> SlurmLab:
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.down()


def _apply_overrides(lines: list[str], overrides: Mapping[str, str]) -> list[str]:
    """Replace 'Key=...' lines (Slurm keys are case-insensitive), append the keys not present."""
    todo = {k.lower(): (k, v) for k, v in overrides.items()}
    out = []
    for line in lines:
        key = (
            line.split("=", 1)[0].strip().lower()
            if "=" in line and not line.startswith("#")
            else ""
        )
        if key in todo and not line.lstrip().startswith(("NodeName", "PartitionName")):
            k, v = todo.pop(key)
            out.append(f"{k}={v}")
        else:
            out.append(line)
    out.extend(f"{k}={v}" for k, v in todo.values())
    return out


def _for_release(lines: list[str], release: str) -> list[str]:
    """slurm.conf lines without the options this release ('25.11') no longer takes."""
    major, minor = (int(x) for x in release.split(".")[:2])
    return [
        line
        for line in lines
        if _DEFUNCT_SINCE.get(line.split("=", 1)[0].strip().lower(), (99, 99)) > (major, minor)
    ]


def _partitions(site: Mapping[str, object]) -> tuple[Partition, ...]:
    raw = site.get("partitions") or []
    if not isinstance(raw, list):
        raise LabError("lab.json: partitions must be a list")
    return tuple(Partition(**p) for p in raw)
