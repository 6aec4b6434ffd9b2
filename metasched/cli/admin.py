"""metasched-admin: what the federation's admins do (they are listed in metaschedd's `admins`).

  metasched-admin token create USER [--expires 30d|12h|never] [--note TEXT]
  metasched-admin token list [--user USER] [--revoked]
  metasched-admin token revoke ID
  metasched-admin site drain NAME      no new jobs go there; jobs there carry on
  metasched-admin site resume NAME     back to normal
  metasched-admin site retire NAME --yes
                                       give up on the site for good: jobs that never started
                                       there are placed elsewhere, running ones are retried
                                       as after a node failure (docs/security.md)
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
import os
import sqlite3
import stat
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NoReturn

from metasched import auth
from metasched.cli import errors, jsonout
from metasched.cli.errors import UsageError
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
    site = sub.add_parser("site", parents=[common], help="drain, resume or retire a site")
    site.add_argument("action", choices=("drain", "resume", "retire"))
    site.add_argument("name")
    site.add_argument("--yes", action="store_true", help="confirm a retire")
    bk = sub.add_parser("backup", parents=[common], help="online copy of the database to DEST")
    bk.add_argument("dest")
    bk.add_argument("--force", action="store_true", help="replace DEST if it exists")
    sub.add_parser("quarantine", help="jobs whose records in the database cannot be read")
    return p


class Admin:
    def __init__(self, address: str) -> None:
        self.address = address
        self.stub = pb_grpc.AdminStub(auth.client_channel(address))
        self.metadata = auth.client_metadata(address)

    def call(self, method: str, request: Any, timeout: float = 60) -> Any:
        return getattr(self.stub, method)(request, metadata=self.metadata, timeout=timeout)


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
