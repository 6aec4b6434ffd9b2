"""squeue for the federation: the global queue's live jobs, in squeue's formats.

    squeue [-h] [-o FORMAT] [-u USER[,USER]] [--me] [-j ID[,ID]] [-t STATE[,STATE]]
           [-n NAME[,NAME]] [-p PARTITION[,..]] [-M SITE[,..]] [--json] [-a] [-l] [-r]

FORMAT is squeue's: %[.][width]<letter> fields among literal text; the default is squeue's
"%.18i %.9P %.8j %.8u %.2t %.10M %.6D %R". A job's node list is its site (the federation
does not see a site's nodes); its reason while in the global queue is FederationQueue.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import re
import sys
import time
from typing import Any

import grpc

from metasched.cli.errors import UsageError
from metasched.compat import common
from metasched.compat.common import Column
from metasched.states import JobState
from metasched.v1 import metasched_pb2 as pb

DEFAULT_FORMAT = "%.18i %.9P %.8j %.8u %.2t %.10M %.6D %R"
LONG_FORMAT = "%.18i %.9P %.8j %.8u %.8T %.10M %.9l %.6D %R"


def _nodelist_or_reason(j: pb.Job, now: float) -> str:
    return j.site if j.started_at else f"({common.reason(j)})"


COLUMNS: dict[str, Column] = {
    "i": Column("JOBID", lambda j, n: str(j.id), 18, True),
    "A": Column("JOBID", lambda j, n: str(j.id), 18, True),
    "j": Column("NAME", lambda j, n: j.spec.name, 8),
    "u": Column("USER", lambda j, n: j.user, 8),
    "t": Column("ST", lambda j, n: common.slurm_state(j)[1], 2),
    "T": Column("STATE", lambda j, n: common.slurm_state(j)[0], 8),
    "M": Column("TIME", lambda j, n: common.slurm_time(common.elapsed(j, n)), 10, True),
    "l": Column("TIME_LIMIT", lambda j, n: common.limit_time(j.spec), 9),
    "L": Column(
        "TIME_LEFT",
        lambda j, n: (
            common.limit_time(j.spec)
            if not j.started_at or not j.spec.time_limit_minutes
            else common.slurm_time(j.spec.time_limit_minutes * 60 - common.elapsed(j, n))
        ),
        9,
    ),
    "D": Column("NODES", lambda j, n: str(j.spec.nodes or 1), 6, True),
    "C": Column("CPUS", lambda j, n: str(common.cpus(j)), 4, True),
    "P": Column("PARTITION", lambda j, n: j.partition or j.spec.partition or "", 9),
    "R": Column("NODELIST(REASON)", _nodelist_or_reason, 16),
    "r": Column("REASON", lambda j, n: common.reason(j), 6),
    "N": Column("NODELIST", lambda j, n: j.site if j.started_at else "", 8),
    "S": Column(
        "START_TIME",
        lambda j, n: common.stamp(j.started_at or (j.estimate.start if j.estimate.start else 0)),
        19,
    ),
    "V": Column("SUBMIT_TIME", lambda j, n: common.stamp(j.submitted_at), 19),
    "e": Column("END_TIME", lambda j, n: common.stamp(j.ended_at), 19),
    "a": Column("ACCOUNT", lambda j, n: j.spec.account, 8),
    "Z": Column("WORK_DIR", lambda j, n: j.spec.workdir, 8),
    "c": Column("MIN_CPUS", lambda j, n: str(j.spec.cpus_per_task or 1), 8),
    "m": Column(
        "MIN_MEMORY",
        lambda j, n: f"{j.spec.mem_per_node_mb}M" if j.spec.mem_per_node_mb else "0",
        10,
    ),
    "b": Column(
        "TRES_PER_NODE",
        lambda j, n: (
            f"gres/gpu:{j.spec.gpu_type + ':' if j.spec.gpu_type else ''}{j.spec.gpus_per_node}"
            if j.spec.gpus_per_node
            else "N/A"
        ),
        13,
    ),
    "Q": Column("PRIORITY", lambda j, n: "0", 8),
    "q": Column("QOS", lambda j, n: "normal", 8),
}
_FIELD = re.compile(r"%(\.)?(\d+)?([A-Za-z])")


def render(fmt: str, jobs: list[pb.Job], header: bool, now: float) -> list[str]:
    """Lines of squeue -o FMT: literal text kept, each %[.][width]x replaced."""
    parts: list[tuple[str, Column | None, int | None, bool]] = []
    pos = 0
    for m in _FIELD.finditer(fmt):
        literal = fmt[pos : m.start()]
        col = COLUMNS.get(m.group(3)) or Column(m.group(3).upper(), lambda j, n: "N/A", 4)
        width = int(m.group(2)) if m.group(2) else None
        parts.append((literal, col, width, bool(m.group(1))))
        pos = m.end()
    tail = fmt[pos:]

    def line(value: Any) -> str:
        text = "".join(
            lit + (common.cell(value(col), width, right) if col else "")
            for lit, col, width, right in parts
        )
        return (text + tail).rstrip()

    lines = []
    if header:
        lines.append(line(lambda col: col.header))
    for j in jobs:
        lines.append(line(lambda col, j=j: col.value(j, now)))
    return lines


def _time_json(t: float) -> dict[str, Any]:
    return {"set": bool(t), "infinite": False, "number": int(t)}


def job_json(j: pb.Job, now: float) -> dict[str, Any]:
    """One job as squeue --json (data_parser v0.0.4x) writes it: the fields tools read."""
    long_state, _ = common.slurm_state(j)
    return {
        "job_id": j.id,
        "name": j.spec.name,
        "user_name": j.user,
        "account": j.spec.account,
        "partition": j.partition or j.spec.partition,
        "cluster": j.site,
        "job_state": [long_state],
        "state_reason": common.reason(j),
        "nodes": j.site if j.started_at else "",
        "node_count": {"set": True, "infinite": False, "number": j.spec.nodes or 1},
        "cpus": {"set": True, "infinite": False, "number": common.cpus(j)},
        "time_limit": {
            "set": bool(j.spec.time_limit_minutes),
            "infinite": j.spec.time_unlimited,
            "number": j.spec.time_limit_minutes,
        },
        "submit_time": _time_json(j.submitted_at),
        "start_time": _time_json(j.started_at or j.estimate.start),
        "end_time": _time_json(j.ended_at),
        "current_working_directory": j.spec.workdir,
        "standard_output": j.spec.output,
        "standard_error": j.spec.error,
        "exit_code": {
            "status": [long_state],
            "return_code": {"set": True, "infinite": False, "number": j.exit_code},
        },
    }


def parser() -> argparse.ArgumentParser:
    p = common.Parser(prog="squeue", add_help=False, description=__doc__)
    p.add_argument("-h", "--noheader", action="store_true")
    p.add_argument("--help", action="help")
    p.add_argument("-o", "--format")
    p.add_argument("-u", "--user", action="append", default=[])
    p.add_argument("--me", action="store_true")
    p.add_argument("-j", "--jobs", "--job", action="append", default=[])
    p.add_argument("-t", "--states", "--state", action="append", default=[])
    p.add_argument("-n", "--name", action="append", default=[])
    p.add_argument("-p", "--partition", action="append", default=[])
    p.add_argument("-M", "--clusters", action="append", default=[])
    p.add_argument("--json", action="store_true")
    for flag in ("-a", "--all", "-l", "--long", "-r", "--array", "-s", "--steps"):
        p.add_argument(flag, action="store_true", dest=flag.lstrip("-").replace("-", "_"))
    return p


def _states(values: list[str]) -> set[str] | None:
    names = {s.upper() for s in common.split_list(values)}
    if not names or "ALL" in names:
        return None if "ALL" in names else set()
    return names


def select(jobs: list[pb.Job], opts: argparse.Namespace) -> list[pb.Job]:
    users = set(common.split_list(opts.user))
    if opts.me:
        users.add(pwd.getpwuid(os.getuid()).pw_name)
    names = set(common.split_list(opts.name))
    parts = set(common.split_list(opts.partition))
    sites = set(common.split_list(opts.clusters)) - {"all"}
    states = _states(opts.states)
    out = []
    for j in jobs:
        long_state, short = common.slurm_state(j)
        if states is not None:
            if states and long_state not in states and short not in states:
                continue
            if not states and JobState.from_pb(j.state).is_final:
                continue  # squeue shows live jobs unless asked for others by state
        if users and j.user not in users:
            continue
        if names and j.spec.name not in names:
            continue
        if parts and (j.partition or j.spec.partition) not in parts:
            continue
        if sites and j.site not in sites:
            continue
        out.append(j)
    return out


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)

    def body() -> int:
        opts = parser().parse_args(args)
        c = common.client()
        ids = common.split_ids(opts.jobs, "job id")
        if ids:
            jobs = common.jobs_by_id(c, ids)
            if not jobs and not opts.json:
                raise UsageError("Invalid job id specified")
        else:
            # everyone's jobs, as squeue shows them; the daemon shows users their own
            want_all = bool(opts.user) or not opts.me
            try:
                jobs = common.list_jobs(c, all_users=want_all, include_final=bool(opts.states))
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.PERMISSION_DENIED:
                    raise
                jobs = common.list_jobs(c, all_users=False, include_final=bool(opts.states))
        jobs = sorted(select(jobs, opts), key=lambda j: j.id)
        now = time.time()
        if opts.json:
            common.out(json.dumps({"jobs": [job_json(j, now) for j in jobs], "errors": []}))
            return 0
        fmt = (
            opts.format
            or os.environ.get("SQUEUE_FORMAT")
            or (LONG_FORMAT if opts.long else DEFAULT_FORMAT)
        )
        for line in render(fmt, jobs, not opts.noheader, now):
            common.out(line)
        return 0

    return common.run("squeue", body)


if __name__ == "__main__":
    sys.exit(main())
