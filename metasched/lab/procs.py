"""Starting and stopping the lab's daemons, and finding everything they left behind.

A PID is only trusted while the process still has the start time and command line we
recorded (PIDs get recycled). Daemons run in their own session so a whole process group
can be signalled. Job processes escape both: slurmstepd double-forks away from slurmd and
tasks get their own process group, so they are found by a marker in their environment
(slurmstepd inherits slurmd's) and by walking the process tree down from there.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

# Set in every lab daemon's environment; inherited by slurmstepd (see module doc).
MARKER_VAR = "METASCHED_LAB_DIR"


def stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat from field 3 (state) on, so index k is field k + 3; None if the process
    is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces or ')' : split after the last ')'
    return stat.rsplit(")", 1)[1].split()


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks): with the PID, a unique id."""
    fields = stat_fields(pid)
    return fields[19] if fields is not None and len(fields) > 19 else None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _environ(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return []


def _is_zombie(pid: int) -> bool:
    fields = stat_fields(pid)
    return fields is None or fields[0] in ("Z", "X")


@dataclass(frozen=True)
class Daemon:
    """One process we started, as recorded in its PID file: 'pid starttime'."""

    pidfile: Path
    marker: str  # a substring of its command line, e.g. its config path

    def recorded(self) -> tuple[int, str] | None:
        """(pid, start time) as the pid file records them, alive or not."""
        try:
            pid_s, start = self.pidfile.read_text().split()
            return int(pid_s), start
        except (OSError, ValueError):
            return None

    def pid(self) -> int | None:
        """The recorded PID if that very process is still alive, else None.

        PID and start time identify the process. Its command line must show the marker once
        it has one: a process still inside execve has none yet. Popen returns when exec closes
        its error pipe, before the kernel has put the new argv in place, and on a loaded
        machine the child may not run again for seconds; reading "" then as "another process"
        made the lab report a healthy, just-started slurmctld as dead ("slurmctld died")."""
        rec = self.recorded()
        if rec is None:
            return None
        pid, start = rec
        if _start_time(pid) != start or _is_zombie(pid):
            return None
        cmdline = _cmdline(pid)
        if cmdline and self.marker not in cmdline:
            return None
        return pid

    def alive(self) -> bool:
        return self.pid() is not None

    def start(self, argv: list[str], env: Mapping[str, str], log: Path) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                argv,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: killpg reaches its helpers
                close_fds=True,
            )
        start = _start_time(proc.pid) or "0"
        self.pidfile.write_text(f"{proc.pid} {start}\n")
        return proc


def signal_daemons(daemons: Iterable[Daemon], sig: int, group: bool) -> list[tuple[Daemon, int]]:
    """Send sig to every live daemon (its whole process group if group); return who got it."""
    hit = []
    for d in daemons:
        pid = d.pid()
        if pid is None:
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        hit.append((d, pid))
    return hit


def stop_daemons(
    daemons: Iterable[Daemon], group: bool, grace: float = 10.0, reap: Reaper = None
) -> None:
    """SIGTERM all at once (slurmctld saves its state on TERM), SIGKILL what is left after
    grace. reap: collects the exit status of the caller's own children (see Reaper)."""
    hit = signal_daemons(daemons, signal.SIGTERM, group)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(d.alive() for d, _ in hit):
        time.sleep(0.05)  # a daemon that exited is a zombie: alive() says no, its pid is held
    for d, pid in hit:
        if d.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL) if group else os.kill(pid, signal.SIGKILL)
        elif group:
            # the leader is gone but not yet reaped, so its group id is still its own: the
            # helpers in its group (slurmscriptd) may be left
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        d.pidfile.unlink(missing_ok=True)
    if reap is not None:
        reap()


# Collects exited children of this process, each through its own subprocess.Popen (poll()).
# Never os.waitpid by pid: a child reaped behind its Popen's back leaves that Popen believing
# it runs, and its pid free; once the kernel hands the pid to a new process (pid_max is 32768
# here, and a busy machine wraps it in minutes), killing "that child" through the stale Popen
# (Federation.kill, the crash test's killpg) would hit the new one.
Reaper = Callable[[], object] | None


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _ppid(pid: int) -> int:
    fields = stat_fields(pid)
    return int(fields[1]) if fields is not None else 0


def leftovers(lab_dir: Path) -> list[int]:
    """Processes that belong to the lab at lab_dir: anything carrying our marker, or a job of
    one of its sites (SLURM_JOB_ID and a SLURM_CONF under lab_dir), and all their descendants.
    A user's shell that merely exported SLURM_CONF is not a job; we and our ancestors are spared."""
    want_marker = f"{MARKER_VAR}={lab_dir}".encode()
    conf_prefix = f"SLURM_CONF={lab_dir}/".encode()
    spare = {0, 1}
    pid = os.getpid()
    while pid > 1:
        spare.add(pid)
        pid = _ppid(pid)
    pids = _all_pids()
    roots = set()
    for pid in pids:
        if pid in spare:
            continue
        env = _environ(pid)
        is_job = any(e.startswith(b"SLURM_JOB_ID=") for e in env) and any(
            e.startswith(conf_prefix) for e in env
        )
        if want_marker in env or is_job:
            roots.add(pid)
    # job scripts' children may have scrubbed their environment: take the whole subtree
    children: dict[int, list[int]] = {}
    for pid in pids:
        children.setdefault(_ppid(pid), []).append(pid)
    found, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid in found or pid in spare:
            continue
        found.add(pid)
        todo.extend(children.get(pid, []))
    return sorted(found)


def kill_leftovers(lab_dir: Path, grace: float = 1.0, reap: Reaper = None) -> list[int]:
    """End every leftover process of the lab: SIGTERM, then SIGKILL what is left after grace;
    return the PIDs that had to be killed. TERM first lets a job's login shell (Slurm's
    get-user-env runs `su - user`) run its exit traps: killed outright, root's pyenv rehash
    once left its lock file behind, and every login shell on the machine then waited 60 s."""
    first = leftovers(lab_dir)
    for pid in first:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while first and time.monotonic() < deadline:
        first = [pid for pid in first if not _is_zombie(pid)]
        time.sleep(0.05)
    killed = []
    for _ in range(3):  # a dying slurmstepd may still fork: sweep until nothing is found
        pids = leftovers(lab_dir)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        killed.extend(pids)
        time.sleep(0.05)
    if reap is not None:
        reap()
    return killed
