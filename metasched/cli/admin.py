"""metasched-admin: what the federation's admins do (they are listed in metaschedd's `admins`).

  metasched-admin token create USER [--expires 30d|12h|never] [--note TEXT]
  metasched-admin token list [--user USER] [--revoked]
  metasched-admin token revoke ID
  metasched-admin site list            every site: state, Slurm and agent versions, backend,
                                       last report's age, capacity and use
  metasched-admin site drain NAME      no new jobs go there; jobs there carry on
  metasched-admin site resume NAME     back to normal
  metasched-admin site retire NAME --yes
                                       give up on the site for good: jobs that never started
                                       there are placed elsewhere, running ones are retried
                                       as after a node failure (docs/security.md)
  metasched-admin job hold JOB...      any user's jobs in the global queue; only an admin
  metasched-admin job release JOB...   releases an admin's hold (JOB: 17, 17_5, 17_[1-9])
  metasched-admin job requeue JOB... [--hold]
                                       pull jobs that have not started back to the global
                                       queue (cancelled at their site only while pending)
  metasched-admin job priority N JOB...
                                       place them ahead of (N > 0) or behind (N < 0) the rest
                                       of the global queue; 0 = back to submission order
  metasched-admin usage [--since 30d] [--until now] [--by user|site|precision]
                                       core-hours and GPU-hours of the jobs that ran then
  metasched-admin backup DEST [--force]
                                       an online, consistent copy of the database (DEST must
                                       not be a symbolic link, nor in a directory other users
                                       may change; written to a private temporary file there
                                       first, then renamed)
  metasched-admin quarantine           jobs whose records in the database cannot be read

It talks to METASCHED_DAEMON (default unix:/run/metasched/metaschedd.sock) as msub does:
locally as your Unix account, remotely with METASCHED_TOKEN (and METASCHED_CA for TLS).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import sqlite3
import stat
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NoReturn

from metasched import __version__, auth
from metasched.cli import errors, jsonout
from metasched.cli.errors import UsageError
from metasched.cli.msub import duration
from metasched.v1 import metasched_pb2 as pb
from metasched.v1 import metasched_pb2_grpc as pb_grpc

DEFAULT_DAEMON = "unix:/run/metasched/metaschedd.sock"
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def parse_duration(text: str) -> float:
    """'30d', '12h', '90m', '3600s', '1w', '1y' -> seconds; 'never' -> 0."""
    t = text.strip().lower()
    if t in ("never", "0"):
        return 0.0
    num, unit = t[:-1], t[-1:]
    if unit not in UNITS or not num.isdigit() or int(num) <= 0:
        raise argparse.ArgumentTypeError(
            f"bad duration {text!r}: use e.g. 30d, 12h, 90m, 1y or never"
        )
    return float(int(num) * UNITS[unit])


def parse_time(text: str, now: float | None = None) -> float:
    """When, for --since/--until: 'now', a duration ago ('30d', '12h'), a date
    ('2024-05-01', '2024-05-01T12:00', local time) or seconds since the epoch."""
    now = time.time() if now is None else now
    t = text.strip()
    if t.lower() == "now":
        return now
    if t.replace(".", "", 1).isdigit() and len(t) >= 9:
        return float(t)
    if t[-1:].lower() in UNITS and t[:-1].isdigit():
        return now - parse_duration(t)
    try:
        return datetime.datetime.fromisoformat(t).timestamp()
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"bad time {text!r}: use now, 30d (ago), 2024-05-01, 2024-05-01T12:00 or epoch seconds"
        ) from None


def when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "never"


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="metasched-admin",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # --daemon and --json go anywhere: before the command or after it (as in msub)
    common = _Parser(add_help=False)
    common.add_argument("--daemon", default=argparse.SUPPRESS)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    p.add_argument("--daemon", default=os.environ.get("METASCHED_DAEMON", DEFAULT_DAEMON))
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--version", action="version", version=f"metasched-admin {__version__}")
    sub = p.add_subparsers(dest="area", required=True, parser_class=_Parser)
    tok = sub.add_parser("token", parents=[common], help="user tokens for remote access")
    tsub = tok.add_subparsers(dest="action", required=True, parser_class=_Parser)
    c = tsub.add_parser("create", parents=[common], help="a new token for USER (printed once)")
    c.add_argument("user")
    c.add_argument("--expires", type=parse_duration, default=parse_duration("30d"))
    c.add_argument("--note", default="", help="what it is for (shown in token list)")
    ls = tsub.add_parser("list", parents=[common], help="tokens (not their secrets)")
    ls.add_argument("--user", default="")
    ls.add_argument("--revoked", action="store_true", help="include revoked tokens")
    rv = tsub.add_parser("revoke", parents=[common], help="a token stops working at once")
    rv.add_argument("id")
    site = sub.add_parser("site", parents=[common], help="list, drain, resume or retire sites")
    ssub = site.add_subparsers(dest="action", required=True, parser_class=_Parser)
    ssub.add_parser("list", parents=[common], help="every site, its agent and capacity")
    for action, what in (
        ("drain", "no new jobs go there"),
        ("resume", "back to normal"),
        ("retire", "give up on it for good (--yes)"),
    ):
        sp = ssub.add_parser(action, parents=[common], help=what)
        sp.add_argument("name")
        sp.add_argument("--yes", action="store_true", help="confirm a retire")
    job = sub.add_parser("job", parents=[common], help="any user's jobs")
    jsub = job.add_subparsers(dest="action", required=True, parser_class=_Parser)
    for action, what in (
        ("hold", "an admin's hold: only an admin releases it"),
        ("release", "release any hold"),
        ("requeue", "back to the global queue, if it has not started"),
    ):
        jp = jsub.add_parser(action, parents=[common], help=what)
        jp.add_argument("jobs", nargs="+", metavar="JOB")
        if action == "requeue":
            jp.add_argument("--hold", action="store_true", help="held once back in the queue")
    pr = jsub.add_parser("priority", parents=[common], help="order in the global queue")
    pr.add_argument("priority", type=int, metavar="N")
    pr.add_argument("jobs", nargs="+", metavar="JOB")
    us = sub.add_parser("usage", parents=[common], help="core-hours and GPU-hours")
    us.add_argument("--since", type=parse_time, default=None, help="default: 30d ago")
    us.add_argument("--until", type=parse_time, default=None, help="default: now")
    us.add_argument("--by", choices=("user", "site", "precision"), default="user")
    bk = sub.add_parser("backup", parents=[common], help="online copy of the database to DEST")
    bk.add_argument("dest")
    bk.add_argument("--force", action="store_true", help="replace DEST if it exists")
    sub.add_parser("quarantine", help="jobs whose records in the database cannot be read")
    return p


class Admin:
    def __init__(self, address: str) -> None:
        self.address = address
        channel = auth.client_channel(address)
        self.stub = pb_grpc.AdminStub(channel)
        self.users = pb_grpc.SchedulerStub(channel)  # what admins read as users do
        self.metadata = auth.client_metadata(address)

    def call(self, method: str, request: Any, timeout: float = 60) -> Any:
        return getattr(self.stub, method)(request, metadata=self.metadata, timeout=timeout)

    def scheduler(self, method: str, request: Any, timeout: float = 60) -> Any:
        return getattr(self.users, method)(request, metadata=self.metadata, timeout=timeout)


def token_line(t: pb.TokenInfo) -> str:
    state = f"revoked {when(t.revoked_at)}" if t.revoked_at else f"expires {when(t.expires_at)}"
    note = f"  {t.note}" if t.note else ""
    return f"{t.id}  {t.user:<12} created {when(t.created_at)} by {t.created_by:<8} {state}{note}"


def run(opts: argparse.Namespace, out: Any) -> int:
    if opts.area == "site" and opts.action == "retire" and not opts.yes:
        raise UsageError(
            f"retire gives up on site {opts.name} for good: its jobs that never started are "
            "placed elsewhere and running ones are retried elsewhere; add --yes to do it"
        )
    if opts.area == "backup":
        check_backup_dest(Path(opts.dest), opts.force)
    a = Admin(opts.daemon)
    emit = (lambda m: out(jsonout.dumps(m))) if opts.json else None
    if opts.area == "token":
        if opts.action == "create":
            r = a.call(
                "CreateToken",
                pb.CreateTokenRequest(user=opts.user, ttl_seconds=opts.expires, note=opts.note),
            )
            if emit:
                emit(r)
            else:
                out(r.token)
                print(
                    f"metasched-admin: token {r.info.id} for {r.info.user}, expires "
                    f"{when(r.info.expires_at)}. It is shown only now; the user sets "
                    "METASCHED_TOKEN to it (or keeps it in a 0600 file: METASCHED_TOKEN_FILE).",
                    file=sys.stderr,
                )
        elif opts.action == "list":
            r = a.call(
                "ListTokens", pb.ListTokensRequest(user=opts.user, include_revoked=opts.revoked)
            )
            if emit:
                emit(r)
            else:
                for t in r.tokens:
                    out(token_line(t))
        else:
            r = a.call("RevokeToken", pb.RevokeTokenRequest(id=opts.id))
            if emit:
                emit(r)
            else:
                out(f"token {r.id} of {r.user} revoked")
        return 0
    if opts.area == "site" and opts.action == "list":
        sites = list(a.scheduler("ListSites", pb.ListSitesRequest()).sites)
        if emit:
            emit(sites)
        else:
            for line in site_table(sites):
                out(line)
        return 0
    if opts.area == "job":
        return jobs(a, opts, out, emit)
    if opts.area == "usage":
        now = time.time()
        since = opts.since if opts.since is not None else now - 30 * 86400
        until = opts.until if opts.until is not None else now
        if until <= since:
            raise UsageError(f"--until ({when(until)}) must be after --since ({when(since)})")
        r = a.call("Usage", pb.UsageRequest(since=since, until=until, by=opts.by))
        if emit:
            emit(r)
        else:
            for line in usage_table(r):
                out(line)
        return 0
    if opts.area == "site":
        state = {"drain": "draining", "resume": "online", "retire": "retired"}[opts.action]
        r = a.call("SetSiteState", pb.SetSiteStateRequest(site=opts.name, state=state))
        if emit:
            emit(r)
        else:
            out(f"site {r.site} is now {r.state}")
            if opts.action == "retire":
                out(
                    f"  {len(r.requeued)} job(s) back in the global queue"
                    + (f": {', '.join(map(str, r.requeued))}" if r.requeued else "")
                )
                out(
                    f"  {len(r.ended)} job(s) ended"
                    + (f": {', '.join(map(str, r.ended))}" if r.ended else "")
                )
        return 0
    if opts.area == "quarantine":
        r = a.call("ListQuarantined", pb.ListQuarantinedRequest())
        if emit:
            emit(r)
        else:
            for q in r.jobs:
                out(f"job {q.job_id}  user {q.user or '?'}  state {q.state or '?'}: {q.error}")
            if not r.jobs:
                out("no job is quarantined")
        return 0
    return backup(a, Path(opts.dest), out)


def age(seconds: float) -> str:
    """A report's age as msub says durations ('never' when there was none)."""
    return "never" if seconds < 0 else duration(seconds)


def site_table(sites: list[pb.SiteSummary]) -> list[str]:
    lines = [
        f"{'SITE':<12} {'STATE':<9} {'SLURM':<9} {'BACKEND':<8} {'AGENT':<8} {'REPORTED':>9} "
        f"{'NODES':>9} {'CPUS FREE':>13} {'GPUS FREE':>11} {'RUN':>5} {'PEND':>5}"
    ]
    for s in sites:
        lines.append(
            f"{s.name:<12} {s.state:<9} {s.slurm_version or '-':<9} {s.backend or '-':<8} "
            f"{s.agent_version or '-':<8} {age(s.report_age_seconds) + ' ago':>9} "
            f"{f'{s.usable_nodes}/{s.nodes}':>9} {f'{s.free_cpus}/{s.total_cpus}':>13} "
            f"{f'{s.free_gpus}/{s.total_gpus}':>11} {s.running_jobs:>5} {s.pending_jobs:>5}"
        )
    return lines


def usage_table(r: pb.UsageResponse) -> list[str]:
    lines = [
        f"usage {when(r.since)} .. {when(r.until)}, by {r.by}",
        f"{r.by.upper():<16} {'JOBS':>7} {'CORE-HOURS':>12} {'GPU-HOURS':>10}",
    ]
    for row in r.rows:
        lines.append(f"{row.key:<16} {row.jobs:>7} {row.core_hours:>12.2f} {row.gpu_hours:>10.2f}")
    lines.append(
        f"{'total':<16} {sum(x.jobs for x in r.rows):>7} "
        f"{sum(x.core_hours for x in r.rows):>12.2f} {sum(x.gpu_hours for x in r.rows):>10.2f}"
    )
    return lines


def job_line(j: pb.Job) -> str:
    name = f"{j.array_id}_{j.array_task}" if j.array_id else str(j.id)
    state = jsonout.enum_name(pb.JobState.DESCRIPTOR, j.state)
    where = f" at {j.site}" if j.site else ""
    held = ", held by an admin" if j.held_by_admin else ", held" if j.held else ""
    prio = f", priority {j.priority}" if j.priority else ""
    return f"job {name} of {j.user}: {state}{where}{held}{prio}"


def jobs(a: Admin, opts: argparse.Namespace, out: Any, emit: Any) -> int:
    names = list(opts.jobs)
    if opts.action in ("hold", "release"):
        r = a.call("HoldJobs", pb.HoldJobsRequest(jobs=names, release=opts.action == "release"))
    elif opts.action == "requeue":
        r = a.call("RequeueJobs", pb.RequeueJobsRequest(jobs=names, hold=opts.hold))
    else:
        r = a.call("SetJobPriority", pb.SetJobPriorityRequest(jobs=names, priority=opts.priority))
    if emit:
        emit(list(r.jobs))
        return 0
    for j in r.jobs:
        line = job_line(j)
        if opts.action == "requeue" and j.state == pb.JOB_STATE_RECALLING:
            line += " (back in the global queue once the site confirms it never started)"
        elif opts.action == "priority" and j.site:
            line += " (at its site, the site's own queue order applies)"
        out(line)
    return 0


def check_backup_dest(dest: Path, force: bool) -> None:
    """Refuse a DEST another user could make us write somewhere else, or swap afterwards: a
    symbolic link, a directory, or a path through a directory (or a link to one) that another
    user owns, or that others may write to without the sticky bit. UsageError if so."""
    me = os.geteuid()
    try:
        st = os.lstat(dest)
    except FileNotFoundError:
        st = None
    if st is not None and stat.S_ISLNK(st.st_mode):
        raise UsageError(f"{dest} is a symbolic link; give the real path")
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{dest} is a directory; give a file name in it")
    if st is not None and not force:
        raise UsageError(f"{dest} exists; add --force to replace it")
    parent = Path(os.path.abspath(dest)).parent
    for step in (*reversed(parent.parents), parent):
        try:
            lst = os.lstat(step)
        except FileNotFoundError:
            raise UsageError(f"directory {step} does not exist") from None
        if stat.S_ISLNK(lst.st_mode) and lst.st_uid not in (0, me):
            raise UsageError(f"{step} is a symbolic link owned by another user (uid {lst.st_uid})")
    where = os.stat(parent)
    if not stat.S_ISDIR(where.st_mode):
        raise UsageError(f"{parent} is not a directory")
    if where.st_uid not in (0, me):
        raise UsageError(f"directory {parent} belongs to another user (uid {where.st_uid})")
    if where.st_mode & 0o022 and not where.st_mode & stat.S_ISVTX:
        raise UsageError(f"directory {parent} may be changed by other users (and is not sticky)")


def backup(a: Admin, dest: Path, out: Any) -> int:
    """The copy goes to a new private file in DEST's directory (mkstemp: O_EXCL, mode 0600, a
    name nobody can guess or plant), is fsynced and checked, and only then renamed to DEST
    (rename replaces a name; it never follows a link)."""
    total = 0
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    part = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:  # the queue holds every user's jobs: 0600
            for chunk in a.stub.Backup(pb.BackupRequest(), metadata=a.metadata, timeout=3600):
                f.write(chunk.data)
                total += len(chunk.data)
            f.flush()
            os.fsync(f.fileno())
        conn = sqlite3.connect(part)
        try:
            check = conn.execute("PRAGMA integrity_check").fetchone()[0]
        finally:
            conn.close()
        if check != "ok":
            raise UsageError(f"the copy failed its integrity check: {check}")
        os.replace(part, dest)
        dirfd = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dirfd)  # the rename itself, durable
        finally:
            os.close(dirfd)
    finally:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
    out(f"backup of {total} bytes written to {dest} (integrity check ok)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    address = os.environ.get("METASCHED_DAEMON", DEFAULT_DAEMON)

    def body() -> int:
        nonlocal address
        opts = parser().parse_args(args)
        address = opts.daemon
        return run(opts, lambda line: print(line, flush=True))

    return errors.run("metasched-admin", body, lambda: address)


if __name__ == "__main__":
    sys.exit(main())
