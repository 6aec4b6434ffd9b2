"""The agent's submit pool (metasched/agent/submits.py): submissions of different tags run at
once, one tag never runs twice at once, and a cancel waits for every submission in flight."""

from __future__ import annotations

import threading

from metasched.agent.submits import SubmitPool
from metasched.v1 import metasched_pb2 as pb


def submit(tag: str) -> pb.DaemonMessage:
    return pb.DaemonMessage(submit=pb.SubmitCommand(tag=tag))


def test_submissions_of_different_tags_run_at_once() -> None:
    pool = SubmitPool(4)
    together = threading.Barrier(4, timeout=60)  # broken unless four run at the same time
    met: list[str] = []

    def carry_out(msg: pb.DaemonMessage) -> None:
        together.wait()
        met.append(msg.submit.tag)

    for n in range(4):
        assert pool.add(submit(f"t{n}"), carry_out)
    assert pool.drain(120)
    assert sorted(met) == ["t0", "t1", "t2", "t3"]


def test_a_tag_in_flight_is_not_taken_again_and_drain_waits_for_it() -> None:
    pool = SubmitPool(4)
    release = threading.Event()
    started = threading.Event()
    ran: list[str] = []

    def carry_out(msg: pb.DaemonMessage) -> None:
        started.set()
        release.wait(60)
        ran.append(msg.submit.tag)

    assert pool.add(submit("same"), carry_out)
    assert started.wait(60)
    assert not pool.add(submit("same"), carry_out)  # re-sent while sbatch still runs
    assert pool.in_flight() == 1
    assert not pool.drain(0.05)  # a cancel would wait here
    release.set()
    assert pool.drain(60)
    assert ran == ["same"]
    assert pool.add(submit("same"), lambda m: ran.append("again"))  # answered: may come again
    assert pool.drain(60)
    assert ran == ["same", "again"]
