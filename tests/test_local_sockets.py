"""The daemon's local sockets (issue 9, item 9): deleted or replaced while metaschedd runs,
each is noticed (socket_missing), made again and logged (socket_recreated), and local users
carry on; what was open on the old socket carries on too. A real metaschedd process and a
real local user."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

from metasched import auth
from metasched.lab.federation import wait_for
from metasched.lab.lone import LoneDaemon
from metasched.v1 import metasched_pb2 as pb
from metasched.v1 import metasched_pb2_grpc as pb_grpc


def test_a_deleted_socket_is_noticed_and_made_again(
    lone_daemon: Callable[..., LoneDaemon], linux_users: Callable[[str], str]
) -> None:
    user = linux_users("msdother")
    d = lone_daemon()
    ident = auth.ident_path(d.socket)
    job = d.call(
        "SubmitJob",
        pb.SubmitJobRequest(spec=pb.JobSpec(script="#!/bin/sh\ntrue\n"), no_wait=True),
        user=user,
    ).job_id
    # a watch open before the socket goes keeps its connection
    seen: list[pb.Job] = []
    watch = pb_grpc.SchedulerStub(d.channel()).WatchJob(
        pb.WatchJobRequest(job_id=job), metadata=d.md()
    )
    threading.Thread(target=lambda: seen.extend(watch), daemon=True).start()
    wait_for(lambda: bool(seen), 30, "the watch's first message")

    os.unlink(d.socket)
    os.unlink(ident)
    wait_for(lambda: os.path.exists(d.socket) and os.path.exists(ident), 30, "both sockets")
    missing = {(e["kind"], e["found"]) for e in d.events("socket_missing")}
    assert missing == {("grpc", "nothing"), ("ident", "nothing")}
    wait_for(lambda: len(d.events("socket_recreated")) == 2, 30, "both logged as made again")
    assert {e["kind"] for e in d.events("socket_recreated")} == {"grpc", "ident"}
    out = d.cli("msub", "status", user=user)
    assert out.returncode == 0, out.stderr
    assert str(job) in out.stdout
    assert oct(os.stat(d.socket).st_mode & 0o777) == oct(0o666)

    # another file in its place is not the daemon's socket either
    os.unlink(d.socket)
    Path(d.socket).write_text("not a socket\n")
    wait_for(lambda: len(d.events("socket_recreated")) == 3, 30, "the socket again")
    assert (d.events("socket_missing")[-1]["kind"], d.events("socket_missing")[-1]["found"]) == (
        "grpc",
        "another file",
    )
    out = d.cli("msub", "cancel", str(job), user=user)
    assert out.returncode == 0, out.stderr
    wait_for(lambda: bool(seen) and seen[-1].state == pb.JOB_STATE_CANCELLED, 30, "the cancel")
    watch.cancel()  # type: ignore[no-untyped-call]
