"""Damaged state (issue 9, item 8): a database that is empty, not SQLite or damaged is
refused at start with one line naming it; an empty one is made only on purpose (--new); a job
row that cannot be decoded is quarantined, not fatal; a full disk is answered
RESOURCE_EXHAUSTED, with nothing acknowledged that is not on disk, and submissions resume
when there is space again.

Real metaschedd processes, real SQLite files damaged the way disks and people damage them,
and a real small filesystem (tmpfs) for the full disk.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import sqlite3
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from metasched.lab.federation import wait_for
from metasched.lab.lone import LoneDaemon
from metasched.v1 import metasched_pb2 as pb

SCRIPT = "#!/bin/sh\ntrue\n"


def submit(d: LoneDaemon, user: str = "msdq", script: str = SCRIPT) -> int:
    req = pb.SubmitJobRequest(spec=pb.JobSpec(script=script, name="t"), no_wait=True)
    return int(d.call("SubmitJob", req, user=user).job_id)


def jobs_in(db: Path) -> list[tuple[int, str]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT id, user FROM jobs ORDER BY id").fetchall()


@pytest.fixture(scope="module")
def full_db() -> Iterator[Path]:
    """A database of a daemon that took 300 jobs, stopped, everything in the main file."""
    root = Path(tempfile.mkdtemp(prefix="msd-db-", dir="/tmp"))
    d = LoneDaemon(root)
    d.start()
    for _ in range(300):
        submit(d, script="#!/bin/sh\n" + "echo padding\n" * 40)
    d.stop()
    with sqlite3.connect(d.db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    yield d.db
    shutil.rmtree(root, ignore_errors=True)


def _overwrite(at: int, data: bytes) -> Callable[[Path], None]:
    def damage(db: Path) -> None:
        with open(db, "r+b") as f:
            f.seek(at if at >= 0 else os.path.getsize(db) + at)
            f.write(data)

    return damage


DAMAGES: dict[str, tuple[Callable[[Path], None], str]] = {
    "empty": (lambda db: db.write_bytes(b""), "is empty (0 bytes)"),
    "not SQLite": (lambda db: db.write_text("jobs: lots of them\n" * 500), "is damaged"),
    "bad header": (_overwrite(0, b"SQLite format 2\0"), "is damaged"),
    "half of it": (lambda db: os.truncate(db, os.path.getsize(db) // 2), "is damaged"),
    "last page": (_overwrite(-4096, b"\xa5" * 4096), "is damaged"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_or_empty_database_is_refused_with_one_line(
    damage: str, full_db: Path, lone_daemon: Callable[..., LoneDaemon]
) -> None:
    d = lone_daemon(start=False)
    d.state_dir.mkdir()
    shutil.copy(full_db, d.db)
    apply, what = DAMAGES[damage]
    apply(d.db)
    try:
        p = subprocess.run(d.command(), capture_output=True, text=True, timeout=60, env=d.env())
    except subprocess.TimeoutExpired:
        pytest.fail(f"metaschedd started on a database that is {damage}")
    assert p.returncode == 1, p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith(f"metaschedd: cannot start: {d.db} {what}"), lines[0]
    assert "--new" in lines[0]
    if damage != "empty":  # left as it was found, for whoever tries to recover it
        assert d.db.stat().st_size > 0


def test_new_makes_an_empty_federation_only_on_purpose_and_never_over_jobs(
    lone_daemon: Callable[..., LoneDaemon],
) -> None:
    d = lone_daemon(start=False)
    d.state_dir.mkdir()
    d.db.write_bytes(b"")  # what a failed disk or a careless truncation leaves
    made = subprocess.run(
        d.command("--new"), capture_output=True, text=True, timeout=60, env=d.env()
    )
    assert made.returncode == 0, made.stderr
    assert made.stdout.startswith("metaschedd: new federation ")
    d.start()
    job = submit(d)
    d.stop()
    again = subprocess.run(
        d.command("--new"), capture_output=True, text=True, timeout=60, env=d.env()
    )
    assert again.returncode == 1
    assert "already holds a database" in again.stderr and len(again.stderr.splitlines()) == 1
    assert jobs_in(d.db) == [(job, "msdq")]


def test_an_undecodable_job_row_is_quarantined_not_fatal(
    lone_daemon: Callable[..., LoneDaemon],
) -> None:
    d = lone_daemon()
    ids = [submit(d) for _ in range(5)]
    d.stop()
    with sqlite3.connect(d.db) as conn:
        conn.execute("UPDATE jobs SET spec=? WHERE id=?", (b"\xff\xff\xff\xff", ids[1]))
        conn.execute("UPDATE jobs SET state='EXPLODED' WHERE id=?", (ids[3],))
        before = conn.execute("SELECT * FROM jobs WHERE id IN (?, ?)", (ids[1], ids[3])).fetchall()

    d.start()
    assert {e["job_id"] for e in d.events("job_quarantined")} == {ids[1], ids[3]}
    out = d.cli("admin", "quarantine")
    assert out.returncode == 0, out.stderr
    assert [line.split()[1] for line in out.stdout.splitlines()] == [str(ids[1]), str(ids[3])]
    assert "EXPLODED" in out.stdout
    listed = d.cli("msub", "status", "--all")
    assert [int(line.split()[0]) for line in listed.stdout.splitlines()[1:]] == [
        ids[0],
        ids[2],
        ids[4],
    ]
    with pytest.raises(grpc.RpcError) as e:
        d.call("GetJob", pb.GetJobRequest(job_id=ids[1]), user="msdq")
    assert e.value.code() == grpc.StatusCode.DATA_LOSS
    assert "quarantine" in (e.value.details() or "")
    assert submit(d) > ids[-1]  # the daemon goes on taking jobs
    with sqlite3.connect(d.db) as conn:  # the rows are kept as they were
        after = conn.execute("SELECT * FROM jobs WHERE id IN (?, ?)", (ids[1], ids[3])).fetchall()
    assert after == before


@pytest.fixture
def small_disk() -> Iterator[Path]:
    """A directory whose state/ is a real 8 MB filesystem (tmpfs), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a filesystem")
    root = Path(tempfile.mkdtemp(prefix="msd-fs-", dir="/tmp"))
    state = root / "state"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(state)], check=True)
    yield root
    subprocess.run(["umount", "-l", str(state)], check=False)
    shutil.rmtree(root, ignore_errors=True)


def fill(path: Path) -> None:
    """Write `path` until the filesystem is full."""
    with open(path, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC, e


def test_a_full_disk_refuses_submissions_and_they_resume(
    small_disk: Path, lone_daemon: Callable[..., LoneDaemon]
) -> None:
    d = lone_daemon(root=small_disk)
    acked = [submit(d) for _ in range(5)]
    filler = d.state_dir / "filler"
    fill(filler)
    big = "#!/bin/sh\n" + "echo fill the wal\n" * 12_000  # ~200 KB: more than the WAL has left
    refused = None
    for _ in range(100):
        try:
            acked.append(submit(d, script=big))
        except grpc.RpcError as e:
            refused = e
            break
    assert refused is not None, "a full disk never refused a submission"
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused
    assert "disk is full" in (refused.details() or "")
    assert "\n" not in (refused.details() or "")
    assert d.call("GetJob", pb.GetJobRequest(job_id=acked[0]), user="msdq").id == acked[0]

    filler.unlink()

    def resumed() -> bool:
        try:
            acked.append(submit(d, script=big))
            return True
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e
            return False

    wait_for(resumed, 60, "submissions to resume")
    assert d.events("disk_full") and d.events("disk_space_returned")
    d.stop(signal.SIGKILL)  # nothing gets to tidy up: what is on disk is what was acknowledged
    assert [job_id for job_id, _ in jobs_in(d.db)] == sorted(acked)
    d.start()
    listed = d.call("ListJobs", pb.ListJobsRequest(limit=1000), user="msdq")
    assert [j.id for j in listed.jobs] == sorted(acked)
