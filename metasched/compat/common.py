"""What the Slurm front-ends share: the daemon client, the jobs they ask for, Slurm's names
for our states, and Slurm's time and format syntax (squeue -o, sacct -o)."""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc

from metasched import __version__
from metasched.cli import errors, msub
from metasched.cli.errors import UsageError
from metasched.cli.msub import DEFAULT_DAEMON, Client
from metasched.states import JobState
from metasched.v1 import metasched_pb2 as pb

# The release whose commands and JSON shapes (data_parser v0.0.44) the front-ends speak. Tools
# read `sbatch --version` as Slurm prints it ("slurm 25.11.7"), so the release comes first.
SLURM_RELEASE = "25.11.0"


def version_line() -> str:
    return f"slurm {SLURM_RELEASE} (metasched {__version__})"


class Parser(argparse.ArgumentParser):
    """A front-end's command line: a usage error is one line and exit 1, as Slurm's, and
    -V/--version prints the release it speaks."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_argument("-V", "--version", action="version", version=version_line())

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


# Our state -> Slurm's long and compact names (squeue %T / %t, sacct State).
_SLURM_STATE: dict[JobState, tuple[str, str]] = {
    JobState.QUEUED: ("PENDING", "PD"),
    JobState.FORWARDING: ("PENDING", "PD"),
    JobState.PENDING: ("PENDING", "PD"),
    JobState.RECALLING: ("PENDING", "PD"),
    JobState.RUNNING: ("RUNNING", "R"),
    JobState.COMPLETED: ("COMPLETED", "CD"),
    JobState.FAILED: ("FAILED", "F"),
    JobState.CANCELLED: ("CANCELLED", "CA"),
    JobState.TIMEOUT: ("TIMEOUT", "TO"),
    JobState.OUT_OF_MEMORY: ("OUT_OF_MEMORY", "OOM"),
    JobState.NODE_FAIL: ("NODE_FAIL", "NF"),
}


def slurm_state(job: pb.Job) -> tuple[str, str]:
    """Slurm's (long, compact) state name for a federation job. A job being cancelled is
    shown as Slurm shows one whose signal is on its way: still as it was (running or not)."""
    state = JobState.from_pb(job.state)
    if state == JobState.CANCELLING:
        return _SLURM_STATE[JobState.RUNNING if job.started_at else JobState.PENDING]
    return _SLURM_STATE[state]


def reason(job: pb.Job) -> str:
    """squeue's REASON: None once started; else Slurm's word when the site gave one, or ours."""
    if job.started_at or JobState.from_pb(job.state).is_final:
        return "None"
    if JobState.from_pb(job.state) == JobState.QUEUED:
        return "FederationQueue"
    text = job.reason.strip()
    return text.split()[0] if text else "Priority"


def slurm_time(seconds: float) -> str:
    """Slurm's [days-]hours:minutes:seconds (M:SS under an hour), as squeue %M and sacct."""
    s = int(max(0, seconds))
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}-{hours:02d}:{minutes:02d}:{s:02d}"
    if hours:
        return f"{hours}:{minutes:02d}:{s:02d}"
    return f"{minutes}:{s:02d}"


def limit_time(spec: pb.JobSpec) -> str:
    """The job's time limit as Slurm shows it: UNLIMITED for -t 0/UNLIMITED; without -t the
    site gives the partition's default, unknown here (Slurm's own word for that)."""
    if spec.time_unlimited:
        return "UNLIMITED"
    if not spec.time_limit_minutes:
        return "Partition_Limit"
    return slurm_time(spec.time_limit_minutes * 60)


def stamp(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t)) if t else "Unknown"


def elapsed(job: pb.Job, now: float) -> float:
    if not job.started_at:
        return 0.0
    return (job.ended_at or now) - job.started_at


def cpus(job: pb.Job) -> int:
    s = job.spec
    return (s.ntasks or s.nodes or 1) * (s.cpus_per_task or 1)


def exit_code(job: pb.Job) -> str:
    """sacct's ExitCode, code:signal. We keep the exit code only; a job killed by a signal
    (Slurm's 128+N convention) shows that number."""
    return f"{job.exit_code if job.exit_code >= 0 else 0}:0"


def split_ids(values: Iterable[str], what: str) -> list[int]:
    """Job ids as Slurm's commands take them: comma or space separated, repeatable."""
    out: list[int] = []
    for value in values:
        for part in re.split(r"[,\s]+", value.strip().strip("'\"")):
            if not part:
                continue
            base = part.split(".", 1)[0]  # a step (123.batch) means its job
            if not base.isdigit() or not 0 < int(base) < 2**63:
                raise UsageError(f"invalid {what} {part!r}")
            out.append(int(base))
    return out


def split_list(values: Iterable[str]) -> list[str]:
    return [p for v in values for p in re.split(r"[,\s]+", v.strip()) if p]


# ---------------------------------------------------------------- talking to the daemon


def client() -> Client:
    return Client(os.environ.get("METASCHED_DAEMON", DEFAULT_DAEMON))


def jobs_by_id(c: Client, ids: list[int]) -> list[pb.Job]:
    """The jobs named; those the daemon does not know (or that are not the caller's) left
    out, as Slurm leaves out purged ones."""
    out = []
    for job_id in dict.fromkeys(ids):
        try:
            out.append(c.call("GetJob", pb.GetJobRequest(job_id=job_id)))
        except grpc.RpcError as e:
            if e.code() not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED):
                raise
    return out


def list_jobs(c: Client, all_users: bool, include_final: bool) -> list[pb.Job]:
    """Every job (the daemon's pages followed)."""
    req = pb.ListJobsRequest(all_users=all_users, include_final=include_final)
    return msub.list_jobs(c, req)[0]


def run(prog: str, body: Callable[[], int]) -> int:
    """Errors as Slurm's commands print them: "<prog>: error: ...", exit status 1."""
    address = os.environ.get("METASCHED_DAEMON", DEFAULT_DAEMON)
    status = errors.run(f"{prog}: error", body, lambda: address)
    return 1 if status == 2 else status


# ---------------------------------------------------------------- -o / --format


@dataclass(frozen=True)
class Column:
    header: str
    value: Callable[[pb.Job, float], str]
    width: int  # Slurm's default for the field when the format gives none
    right: bool = False


def parse_width(spec: str) -> tuple[int | None, bool]:
    """'%20' / '%-20' (sacct) -> width, right-justified?"""
    if not spec:
        return None, False
    if not re.fullmatch(r"-?\d+", spec):
        raise UsageError(f"bad field width {spec!r}")
    return abs(int(spec)), not spec.startswith("-")


def cell(text: str, width: int | None, right: bool, truncate_mark: str = "") -> str:
    if width is None:
        return text
    if len(text) > width:
        return text[: max(0, width - len(truncate_mark))] + truncate_mark if width else ""
    return text.rjust(width) if right else text.ljust(width)


def fail(message: str) -> NoReturn:
    raise UsageError(message)


def out(line: str) -> None:
    sys.stdout.write(line + "\n")
