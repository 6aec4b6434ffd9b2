"""One user cannot stall the daemon or exhaust its memory (issue 9, items 3 and 4).

A real metaschedd process with no site reporting (its jobs stay queued), over its real Unix
socket (and a TCP port for agent streams), with a real SQLite file. Users are real: local
accounts made by the tests run msub as themselves; the heavy users' calls go over gRPC with
tokens the admin (root) made for them.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from metasched import auth
from metasched.lab.federation import free_port, wait_for
from metasched.lab.lone import LoneDaemon
from metasched.v1 import metasched_pb2 as pb
from metasched.v1 import metasched_pb2_grpc as pb_grpc

SCRIPT = "#!/bin/sh\ntrue\n"
SITE_TOKEN = "msd-site-token-0123456789abcdef"


def spec(script: str = SCRIPT, name: str = "t") -> pb.JobSpec:
    return pb.JobSpec(script=script, name=name, time_limit_minutes=5)


def submit_many(d: LoneDaemon, user: str, n: int, script: str = SCRIPT) -> list[int]:
    stub = pb_grpc.SchedulerStub(d.channel())
    md = d.md(user)
    req = pb.SubmitJobRequest(spec=spec(script), no_wait=True)
    ids: list[int] = []
    while len(ids) < n:  # 32 at a time: a user has at most max_calls_per_user (64) in flight
        window = [
            stub.SubmitJob.future(req, metadata=md, timeout=120)
            for _ in range(min(32, n - len(ids)))
        ]
        ids += [f.result().job_id for f in window]
    return ids


class Watch:
    """One WatchJob stream, read on a thread of its own: what arrived, and how it ended."""

    def __init__(self, channel: grpc.Channel, md: Any, job_id: int) -> None:
        self.call = pb_grpc.SchedulerStub(channel).WatchJob(
            pb.WatchJobRequest(job_id=job_id), metadata=md
        )
        self.got: list[pb.Job] = []
        self.error: grpc.RpcError | None = None
        self.ended = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for job in self.call:
                self.got.append(job)
        except grpc.RpcError as e:
            self.error = e
        finally:
            self.ended.set()

    def cancel(self) -> None:
        with contextlib.suppress(Exception):
            self.call.cancel()


@pytest.fixture
def watches() -> Iterator[list[Watch]]:
    opened: list[Watch] = []
    yield opened
    for w in opened:
        w.cancel()


def threads_of(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def agent_stream(address: str, site: str) -> Any:
    """An agent's stream that says Hello and then only listens (as a quiet site's agent)."""
    hello = pb.AgentMessage(hello=pb.Hello(site=site, token=SITE_TOKEN, agent_version="t"))
    stop = threading.Event()

    def requests() -> Iterator[pb.AgentMessage]:
        yield hello
        stop.wait()

    call = pb_grpc.AgentServiceStub(grpc.insecure_channel(address)).Connect(requests())
    welcome = next(iter(call))
    assert welcome.WhichOneof("body") == "welcome"
    return call, stop


def test_one_users_open_watches_hold_no_threads_and_stall_nobody(
    lone_daemon: Callable[..., LoneDaemon],
    linux_users: Callable[[str], str],
    watches: list[Watch],
) -> None:
    """100 open watches by one user and 80 connected agents (the old server pinned one of its
    64 threads for each) leave another user's `msub status` answering at once, and cost the
    daemon no thread each."""
    other = linux_users("msdother")
    port = free_port()
    sites = "\n".join(
        f'[sites.s{i}]\ntoken_sha256 = "{auth.sha256_hex(SITE_TOKEN)}"' for i in range(80)
    )
    d = lone_daemon(listen=f"127.0.0.1:{port}", tables=sites)
    assert d.proc is not None
    ids = submit_many(d, "msdwatch", 100)
    mine = submit_many(d, other, 1)
    before = threads_of(d.proc.pid)

    md = d.md("msdwatch")
    channels = [d.channel() for _ in range(4)]
    for n, job_id in enumerate(ids):
        watches.append(Watch(channels[n % 4], md, job_id))
    wait_for(lambda: all(w.got or w.ended.is_set() for w in watches), 60, "100 watches open")
    assert all(w.got and not w.ended.is_set() for w in watches), [
        w.error for w in watches if w.error
    ][:3]
    agents = [agent_stream(f"127.0.0.1:{port}", f"s{i}") for i in range(80)]
    try:
        # another user, as themselves, while all of that is open
        out = d.cli("msub", "status", user=other, timeout=120)
        assert out.returncode == 0, out.stderr
        assert str(mine[0]) in out.stdout
        # the watching user's other calls still work too
        got = d.call("GetJob", pb.GetJobRequest(job_id=ids[0]), user="msdwatch")
        assert got.id == ids[0]
        # 180 open streams; the daemon did not grow a thread for each
        assert threads_of(d.proc.pid) < before + 20, (before, threads_of(d.proc.pid))
    finally:
        for call, stop in agents:
            stop.set()
            call.cancel()


def test_watches_and_listings_over_a_users_limit_are_refused(
    lone_daemon: Callable[..., LoneDaemon], watches: list[Watch]
) -> None:
    d = lone_daemon(extra="max_watches_per_user = 3\nmax_listings_per_user = 1")
    job = submit_many(d, "msdheavy", 1)[0]
    md = d.md("msdheavy")
    ch = d.channel()
    for _ in range(3):
        watches.append(Watch(ch, md, job))
    wait_for(lambda: all(w.got for w in watches), 30, "3 watches open")

    fourth = Watch(ch, md, job)
    assert fourth.ended.wait(30)
    assert fourth.error is not None and fourth.error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    message = fourth.error.details() or ""
    assert "3 open watches" in message and "\n" not in message
    # another user is not affected
    theirs = submit_many(d, "msdlight", 1)[0]
    other = Watch(ch, d.md("msdlight"), theirs)
    watches.append(other)
    wait_for(lambda: bool(other.got), 30, "the other user's watch")
    # one watch closed: room for one more
    watches[0].cancel()

    def reopened() -> bool:
        w = Watch(ch, md, job)
        wait_for(lambda: bool(w.got) or w.ended.is_set(), 30, "an answer")
        if w.got:
            watches.append(w)
            return True
        return False

    wait_for(reopened, 30, "a watch in place of the closed one")

    # listings: one in flight at a time for this user
    submit_many(d, "msdheavy", 3000)
    stub = pb_grpc.SchedulerStub(ch)
    req = pb.ListJobsRequest(limit=5000, include_final=True)
    calls = [stub.ListJobs.future(req, metadata=md, timeout=120) for _ in range(40)]
    light = stub.ListJobs(pb.ListJobsRequest(), metadata=d.md("msdlight"), timeout=60)
    assert [j.id for j in light.jobs] == [theirs]
    codes = []
    for f in calls:
        try:
            assert len(f.result().jobs) == 3001
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e
            assert "listings in flight" in (e.details() or "")
            codes.append(e.code())
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes and grpc.StatusCode.OK in codes


def test_listings_come_in_bounded_pages_without_scripts(
    lone_daemon: Callable[..., LoneDaemon], linux_users: Callable[[str], str]
) -> None:
    """2,505 jobs, five of them with 1 MB scripts: every listing is complete (pages followed)
    or says there is more, no reply carries a script, and the owner gets a script back whole."""
    owner = linux_users("msdlist")
    stranger = linux_users("msdother")
    d = lone_daemon()
    small = submit_many(d, owner, 2500)
    big_script = "#!/bin/sh\n" + "echo big\n" * 110_000  # 990,010 bytes
    big = submit_many(d, owner, 5, script=big_script)
    everyone = sorted(small + big)  # listings are in id order

    def ids(stdout: str) -> list[int]:
        return [int(line.split()[0]) for line in stdout.splitlines()[1:]]

    out = d.cli("msub", "status", "--all")  # root, an admin
    assert out.returncode == 0, out.stderr
    assert ids(out.stdout) == everyone
    out = d.cli("msub", "status", user=owner)
    assert out.returncode == 0, out.stderr
    assert ids(out.stdout) == everyone and not out.stderr

    out = d.cli("msub", "status", "--limit", "100", user=owner)
    assert out.returncode == 0, out.stderr
    assert ids(out.stdout) == everyone[:100]
    assert "there are more" in out.stderr and len(out.stderr.splitlines()) == 1

    out = d.cli("msub", "status", "--json", "--limit", "2600", user=owner)
    listed = json.loads(out.stdout)
    assert [int(j["id"]) for j in listed] == everyone
    assert all(j["spec"]["script"] == "" for j in listed)

    # one reply, however many big scripts: far under a client's 4 MB
    page = d.call("ListJobs", pb.ListJobsRequest(limit=5000), user=owner)
    assert page.ByteSize() < 1 << 20 and len(page.jobs) == len(everyone)
    assert not page.next_cursor
    assert all(not j.spec.script for j in page.jobs)

    out = d.cli("msub", "show", str(big[2]), "--script", user=owner)
    assert out.returncode == 0, out.stderr
    assert out.stdout == big_script
    out = d.cli("msub", "show", str(big[2]), "--script", user=stranger)
    assert out.returncode == 1 and "is not yours" in out.stderr
    shown = d.cli("msub", "show", str(big[2]), "--json", user=owner)
    assert json.loads(shown.stdout)["spec"]["script"] == ""

    # a cursor the daemon never gave is refused, not guessed at
    with pytest.raises(grpc.RpcError) as e:
        d.call("ListJobs", pb.ListJobsRequest(cursor="12; DROP TABLE jobs"), user=owner)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_call_that_cannot_finish_is_answered_at_its_deadline(
    lone_daemon: Callable[..., LoneDaemon],
) -> None:
    """A submission whose commit cannot happen (another process holds the database's write
    lock) is answered DEADLINE_EXCEEDED at the daemon's call_timeout, not left hanging, and
    another user's reads go on meanwhile."""
    d = lone_daemon(extra="call_timeout_seconds = 2")
    mine = submit_many(d, "msdread", 1)
    blocker = sqlite3.connect(d.db, isolation_level=None, timeout=30)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as e:
            d.call("SubmitJob", pb.SubmitJobRequest(spec=spec(), no_wait=True), user="msdslow")
        took = time.monotonic() - t0
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert e.value.details() == "the daemon could not answer in time"
        assert took < 15, took
        listed = d.call("ListJobs", pb.ListJobsRequest(), user="msdread")
        assert [j.id for j in listed.jobs] == mine
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert submit_many(d, "msdslow", 1)  # and once the lock is gone, it goes on
