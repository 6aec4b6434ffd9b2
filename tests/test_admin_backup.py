"""`metasched-admin backup DEST` run by root never writes where another user points it
(issue 9, item 5): not through a link planted at a name it would use, nor at DEST when DEST
is a link, nor in a directory another user may change. A real daemon, root's real backup,
and a real other local user planting the links."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from metasched.lab.lone import LoneDaemon
from metasched.v1 import metasched_pb2 as pb


@pytest.fixture
def shared_dir() -> Iterator[tuple[Path, Path]]:
    """(a world-writable sticky directory like /tmp, a root-only file someone wants ruined)"""
    shared = Path(tempfile.mkdtemp(prefix="msd-bk-", dir="/tmp"))
    shared.chmod(0o1777)
    private = Path(tempfile.mkdtemp(prefix="msd-victim-", dir="/tmp"))  # 0700, root's
    victim = private / "precious"
    victim.write_text("root's precious file\n")
    yield shared, victim
    shutil.rmtree(shared, ignore_errors=True)
    shutil.rmtree(private, ignore_errors=True)


def as_user(user: str, *argv: str) -> None:
    subprocess.run(["runuser", "-u", user, "--", *argv], check=True, timeout=30)


def test_backup_never_writes_through_a_link_another_user_planted(
    lone_daemon: Callable[..., LoneDaemon],
    linux_users: Callable[[str], str],
    shared_dir: tuple[Path, Path],
) -> None:
    planter = linux_users("msdplant")
    shared, victim = shared_dir
    d = lone_daemon()
    req = pb.SubmitJobRequest(spec=pb.JobSpec(script="#!/bin/sh\ntrue\n"), no_wait=True)
    ids = {d.call("SubmitJob", req).job_id for _ in range(3)}

    dest = shared / "metasched-backup.db"
    for name in (f"{dest.name}.part", f"{dest.name}.tmp", f".{dest.name}.part"):
        as_user(planter, "ln", "-s", str(victim), str(shared / name))
    out = d.cli("admin", "backup", str(dest))
    assert out.returncode == 0, out.stderr
    assert victim.read_text() == "root's precious file\n"
    st = dest.lstat()
    assert stat.S_ISREG(st.st_mode) and st.st_uid == 0 and st.st_mode & 0o077 == 0
    with contextlib.closing(sqlite3.connect(dest)) as db:
        assert {r[0] for r in db.execute("SELECT id FROM jobs")} == ids
    # the planted links are left alone, and nothing of the backup is left behind
    assert sorted(p.name for p in shared.iterdir()) == sorted(
        [dest.name, f"{dest.name}.part", f"{dest.name}.tmp", f".{dest.name}.part"]
    )

    # DEST itself a link of the other user's: refused, even with --force
    link = shared / "copy.db"
    as_user(planter, "ln", "-s", str(victim), str(link))
    out = d.cli("admin", "backup", str(link), "--force")
    assert out.returncode == 2 and "symbolic link" in out.stderr
    assert len(out.stderr.splitlines()) == 1
    assert victim.read_text() == "root's precious file\n"

    # a directory others may change (not sticky): they could swap the copy afterwards
    open_dir = Path(tempfile.mkdtemp(prefix="msd-open-", dir="/tmp"))
    try:
        open_dir.chmod(0o777)
        out = d.cli("admin", "backup", str(open_dir / "copy.db"))
        assert out.returncode == 2 and "may be changed by other users" in out.stderr
        # and DEST a directory
        out = d.cli("admin", "backup", str(shared))
        assert out.returncode == 2 and "is a directory" in out.stderr
    finally:
        shutil.rmtree(open_dir, ignore_errors=True)
