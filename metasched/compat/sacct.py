"""sacct for the federation: the federation's record of jobs, live and ended, in sacct's
formats. A federation job is one allocation: there are no step lines (as with -X).

    sacct [-j ID[,ID]] [-o FIELD[%WIDTH],...] [-P|-p] [-n] [-X] [-b] [-l]
          [-u USER | -a] [-s STATE[,..]] [-S TIME] [-E TIME] [-M SITE] [--json]

Without -j it shows the caller's jobs since midnight (-S to go further back), as sacct does.
Field names are sacct's, matched by prefix regardless of case; Cluster is the job's site.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
import time

from metasched.cli.errors import UsageError
from metasched.compat import common, squeue
from metasched.compat.common import Column
from metasched.states import JobState
from metasched.v1 import metasched_pb2 as pb

DEFAULT_FIELDS = "jobid,jobname,partition,account,alloccpus,state,exitcode"
BRIEF_FIELDS = "jobid,state,exitcode"
LONG_FIELDS = (
    "jobid,jobidraw,jobname,partition,alloccpus,elapsed,state,exitcode,nnodes,nodelist,"
    "submit,start,end,timelimit,user,cluster,workdir"
)


def _state(j: pb.Job) -> str:
    long_state, _ = common.slurm_state(j)
    if long_state == "CANCELLED" and j.user:
        return "CANCELLED"  # sacct adds "by UID"; tools split on whitespace either way
    return long_state


# sacct's field table (src/sacct/sacct.c): name, default width (negative: left-justified)
FIELDS: list[tuple[str, Column]] = [
    ("Account", Column("Account", lambda j, n: j.spec.account, 10, True)),
    ("AllocCPUS", Column("AllocCPUS", lambda j, n: str(common.cpus(j)), 10, True)),
    ("AllocNodes", Column("AllocNodes", lambda j, n: str(j.spec.nodes or 1), 10, True)),
    ("Cluster", Column("Cluster", lambda j, n: j.site, 10, True)),
    ("Elapsed", Column("Elapsed", lambda j, n: _elapsed(j, n), 10, True)),
    ("ElapsedRaw", Column("ElapsedRaw", lambda j, n: str(int(common.elapsed(j, n))), 10, True)),
    ("End", Column("End", lambda j, n: common.stamp(j.ended_at), 19, True)),
    ("ExitCode", Column("ExitCode", lambda j, n: common.exit_code(j), 8, True)),
    ("JobID", Column("JobID", lambda j, n: str(j.id), 12, False)),
    ("JobIDRaw", Column("JobIDRaw", lambda j, n: str(j.id), 12, False)),
    ("JobName", Column("JobName", lambda j, n: j.spec.name, 10, True)),
    ("NCPUS", Column("NCPUS", lambda j, n: str(common.cpus(j)), 10, True)),
    ("NNodes", Column("NNodes", lambda j, n: str(j.spec.nodes or 1), 8, True)),
    (
        "NodeList",
        Column("NodeList", lambda j, n: j.site if j.started_at else "None assigned", 15, True),
    ),
    ("Partition", Column("Partition", lambda j, n: j.partition or j.spec.partition, 10, True)),
    ("Reason", Column("Reason", lambda j, n: common.reason(j), 22, True)),
    ("ReqCPUS", Column("ReqCPUS", lambda j, n: str(common.cpus(j)), 8, True)),
    ("ReqMem", Column("ReqMem", lambda j, n: f"{j.spec.mem_per_node_mb}M", 10, True)),
    ("ReqNodes", Column("ReqNodes", lambda j, n: str(j.spec.nodes or 1), 8, True)),
    ("Start", Column("Start", lambda j, n: common.stamp(j.started_at), 19, True)),
    ("State", Column("State", lambda j, n: _state(j), 10, True)),
    ("Submit", Column("Submit", lambda j, n: common.stamp(j.submitted_at), 19, True)),
    (
        "Timelimit",
        Column("Timelimit", lambda j, n: common.limit_time(j.spec), 10, True),
    ),
    ("User", Column("User", lambda j, n: j.user, 9, True)),
    ("WorkDir", Column("WorkDir", lambda j, n: j.spec.workdir, 20, True)),
]


def _elapsed(j: pb.Job, now: float) -> str:
    s = int(common.elapsed(j, now))
    days, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return (f"{days}-" if days else "") + f"{h:02d}:{m:02d}:{s:02d}"


def columns(spec: str) -> list[tuple[Column, int]]:
    """sacct -o: FIELD[%WIDTH],... matched by prefix, case-insensitive, in table order."""
    out: list[tuple[Column, int]] = []
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        name, _, width = item.partition("%")
        if name.lower() == "all":
            out += [(c, int(width) if width else c.width) for _, c in FIELDS]
            continue
        found = next((c for n, c in FIELDS if n.lower().startswith(name.lower())), None)
        if found is None:
            raise UsageError(f'Invalid field requested: "{name}"')
        if width and not width.lstrip("-").isdigit():
            raise UsageError(f'Invalid field width: "{item}"')
        w = int(width) if width else (found.width if found.right else -found.width)
        out.append((found, w))
    return out


def parse_time(text: str, now: float) -> float:
    """sacct's -S/-E: YYYY-MM-DD[THH:MM[:SS]], HH:MM[:SS] (today), now[-N[unit]]."""
    t = text.strip()
    m = re.fullmatch(r"now(?:([-+])(\d+)(seconds|minutes|hours|days|weeks)?)?", t, re.I)
    if m:
        if not m.group(1):
            return now
        unit = {"seconds": 1, "minutes": 60, "hours": 3600, "days": 86400, "weeks": 604800}[
            (m.group(3) or "seconds").lower()
        ]
        delta = int(m.group(2)) * unit
        return now - delta if m.group(1) == "-" else now + delta
    for fmt in ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d"):
        try:
            return dt.datetime.strptime(t, fmt).timestamp()
        except ValueError:
            pass
    for fmt in ("%H:%M:%S", "%H:%M"):
        try:
            clock = dt.datetime.strptime(t, fmt).time()
            return dt.datetime.combine(dt.date.today(), clock).timestamp()
        except ValueError:
            pass
    raise UsageError(f"invalid time specification {text!r}")


def render(
    cols: list[tuple[Column, int]], jobs: list[pb.Job], opts: argparse.Namespace, now: float
) -> list[str]:
    lines = []
    if opts.parsable or opts.parsable2:
        sep = opts.delimiter
        tail = sep if opts.parsable else ""
        if not opts.noheader:
            lines.append(sep.join(c.header for c, _ in cols) + tail)
        for j in jobs:
            lines.append(sep.join(c.value(j, now) for c, _ in cols) + tail)
        return lines

    def cells(values: list[str]) -> str:
        return " ".join(
            common.cell(v, abs(w), w > 0, "+") for v, (_, w) in zip(values, cols, strict=True)
        )

    if not opts.noheader:
        lines.append(cells([c.header for c, _ in cols]))
        lines.append(" ".join("-" * abs(w) for _, w in cols))
    for j in jobs:
        lines.append(cells([c.value(j, now) for c, _ in cols]))
    return lines


def parser() -> argparse.ArgumentParser:
    p = common.Parser(prog="sacct", description=__doc__)
    p.add_argument("-j", "--jobs", action="append", default=[])
    p.add_argument("-o", "--format", "--fields", dest="format", action="append", default=[])
    p.add_argument("-P", "--parsable2", action="store_true")
    p.add_argument("-p", "--parsable", action="store_true")
    p.add_argument("--delimiter", default="|")
    p.add_argument("-n", "--noheader", action="store_true")
    p.add_argument("-X", "--allocations", action="store_true")
    p.add_argument("-b", "--brief", action="store_true")
    p.add_argument("-l", "--long", action="store_true")
    p.add_argument("-u", "--user", "--uid", action="append", default=[])
    p.add_argument("-a", "--allusers", action="store_true")
    p.add_argument("-s", "--state", action="append", default=[])
    p.add_argument("-S", "--starttime")
    p.add_argument("-E", "--endtime")
    p.add_argument("-M", "--clusters", action="append", default=[])
    p.add_argument("-D", "--duplicates", action="store_true")
    p.add_argument("--name", action="append", default=[])
    p.add_argument("--json", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)

    def body() -> int:
        opts = parser().parse_args(args)
        now = time.time()
        fields = ",".join(opts.format) or (
            BRIEF_FIELDS if opts.brief else LONG_FIELDS if opts.long else DEFAULT_FIELDS
        )
        cols = columns(fields)
        c = common.client()
        ids = common.split_ids(opts.jobs, "job id")
        if ids:
            jobs = common.jobs_by_id(c, ids)
        else:
            everyone = opts.allusers or bool(opts.user)
            jobs = common.list_jobs(c, all_users=everyone, include_final=True)
            start = (
                parse_time(opts.starttime, now)
                if opts.starttime
                else dt.datetime.combine(dt.date.today(), dt.time()).timestamp()
            )
            end = parse_time(opts.endtime, now) if opts.endtime else now
            jobs = [
                j for j in jobs if (not j.ended_at or j.ended_at >= start) and j.submitted_at <= end
            ]
        ns = argparse.Namespace(
            user=opts.user,
            me=False,
            name=opts.name,
            states=opts.state,
            partition=[],
            clusters=opts.clusters,
        )
        jobs = sorted(
            squeue.select(jobs, ns)
            if (opts.state or opts.user or opts.name or opts.clusters)
            else jobs,
            key=lambda j: j.id,
        )
        if opts.json:
            common.out(json.dumps({"jobs": [_job_json(j, now) for j in jobs], "errors": []}))
            return 0
        for line in render(cols, jobs, opts, now):
            common.out(line)
        return 0

    return common.run("sacct", body)


def _job_json(j: pb.Job, now: float) -> dict[str, object]:
    long_state, _ = common.slurm_state(j)
    return {
        "job_id": j.id,
        "name": j.spec.name,
        "user": j.user,
        "account": j.spec.account,
        "partition": j.partition or j.spec.partition,
        "cluster": j.site,
        "nodes": j.site if j.started_at else "None assigned",
        "state": {"current": [long_state], "reason": common.reason(j)},
        "exit_code": {
            "status": ["SUCCESS" if j.exit_code == 0 else "ERROR"]
            if JobState.from_pb(j.state).is_final
            else ["PENDING"],
            "return_code": {"set": True, "infinite": False, "number": j.exit_code},
        },
        "time": {
            "submission": int(j.submitted_at),
            "start": int(j.started_at),
            "end": int(j.ended_at),
            "elapsed": int(common.elapsed(j, now)),
            "limit": {
                "set": bool(j.spec.time_limit_minutes),
                "infinite": j.spec.time_unlimited,
                "number": j.spec.time_limit_minutes,
            },
        },
        "working_directory": j.spec.workdir,
    }


if __name__ == "__main__":
    sys.exit(main())
