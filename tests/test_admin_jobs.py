"""What admins do to any user's jobs (hold, release, requeue, priority), usage accounting,
and three things users saw wrong (issue 12): a full site said WAIT "none", a plan refusing
--mem 600G did not name memory, and a cancel that worked was logged as not done.

On a real SQLite queue with the real Scheduler; the sites are agent streams fed by hand
(AgentLink outboxes), as in test_scheduler.py. The same on real Slurm: test_ops_admin_lab.py.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from metasched.agent.site_agent import _cancelled
from metasched.agent.slurm.base import SlurmJob
from metasched.cli import msub
from metasched.daemon.scheduler import Refused, Scheduler, Settings
from metasched.daemon.sites import AgentLink, SiteRegistry
from metasched.daemon.usage import usage
from metasched.daemon.user_api import site_summaries
from metasched.states import JobState
from metasched.store import Store
from metasched.v1 import metasched_pb2 as pb

S = JobState


def spec(cpus: int = 8, **kw: Any) -> pb.JobSpec:
    return pb.JobSpec(script="#!/bin/sh\ntrue\n", cpus_per_task=cpus, time_limit_minutes=10, **kw)


def report(
    alloc: int = 0, jobs: Sequence[pb.SlurmJobReport] = (), mem_mb: int = 8000
) -> pb.SiteReport:
    return pb.SiteReport(
        slurm_reachable=True,
        slurm_version="22.05.8",
        backend="cli",
        maps_all_users=True,
        partitions=[
            pb.Partition(
                name="batch",
                nodes=1,
                cpus_per_node=8,
                mem_per_node_mb=mem_mb,
                precisions=[pb.Precision(name="fp64", peak_tflops=1.0)],
            )
        ],
        nodes=[
            pb.NodeReport(
                name="n1",
                partitions=["batch"],
                state="allocated" if alloc == 8 else "idle",
                cpus=8,
                alloc_cpus=alloc,
                mem_mb=mem_mb,
            )
        ],
        jobs=list(jobs),
    )


class Env:
    def __init__(self, tmp_path: Path, sites: tuple[str, ...] = ("a",)) -> None:
        self.store = Store(tmp_path / "q.db")
        self.registry = SiteRegistry(grace_seconds=60)
        self.s = Scheduler(self.store, self.registry, Settings())
        self.links: dict[str, AgentLink] = {}
        for name in sites:
            link = AgentLink(name, "test", agent_version="0.1.0")
            self.registry.connect(name, link)
            self.links[name] = link
            self.s.reconcile.on_report(name, report())

    def sent(self, site: str) -> list[pb.DaemonMessage]:
        out = []
        while not self.links[site].outbox.empty():
            m = self.links[site].outbox.get_nowait()
            if m is not None:
                out.append(m)
        return out

    def state(self, job_id: int) -> JobState:
        row = self.store.job(job_id)
        assert row is not None
        return row.state

    def names(self, *ids: int) -> list[str]:
        return [str(i) for i in ids]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    yield e
    e.store.close()


# ---------------------------------------------------------------- the three fixes


class _Sites:
    """msub's client, answering ListSites from the daemon's own site_summaries."""

    def __init__(self, sites: list[pb.SiteSummary]) -> None:
        self.sites = sites

    def call(self, method: str, request: Any) -> pb.ListSitesResponse:
        assert method == "ListSites"
        return pb.ListSitesResponse(sites=self.sites)


def wait_column(env: Env) -> dict[str, str]:
    lines: list[str] = []
    sites = site_summaries(env.s, time.time())
    msub.cmd_sites(_Sites(sites), argparse.Namespace(json=False), lines.append)  # type: ignore[arg-type]
    start = lines[0].index("WAIT")
    return {line.split()[0]: line[start:].split()[0] for line in lines[1:]}


def test_a_site_with_every_cpu_busy_never_shows_no_wait(tmp_path: Path) -> None:
    env = Env(tmp_path, ("busy", "idle"))
    try:
        now = time.time()
        # alice's last job of this time limit ran a second: her running one is predicted to
        # end within the minute, so a one-core job is expected to start at "busy" in ~30 s
        env.s.placer.runtimes.observe("alice", 1.0, 600.0)
        running = pb.SlurmJobReport(
            slurm_job_id="7",
            partition="batch",
            state="RUNNING",
            cpus=8,
            nodes=1,
            time_limit_minutes=10,
            submit_time=now - 10,
            start_time=now - 5,
            user="alice",
            node_names=["n1"],
        )
        env.s.reconcile.on_report("busy", report(alloc=8, jobs=[running]))
        waits = wait_column(env)
        assert waits["idle"] == "none"
        assert waits["busy"] not in ("none", "-")
        assert waits["busy"].endswith("s")  # seconds: under a minute, but a wait
    finally:
        env.store.close()


def test_a_plan_refused_for_memory_says_memory(env: Env) -> None:
    [choice] = env.s.intake.plan("alice", spec(cpus=1, mem_per_node_mb=600 * 1024))
    assert not choice.eligible
    assert "memory 600 GB per node" in choice.reason
    assert "7.8 GB" in choice.reason  # what the largest node has
    [choice] = env.s.intake.plan("alice", spec(cpus=64))
    assert "64 CPUs per node (the largest node has 8)" in choice.reason
    [choice] = env.s.intake.plan("alice", spec(cpus=1, gpus_per_node=2))
    assert "2 GPUs per node" in choice.reason
    [choice] = env.s.intake.plan("alice", spec(cpus=1, nodes=2))
    assert "2 nodes asked, 1 node(s) big enough" in choice.reason


def _job(state: str) -> SlurmJob:
    return SlurmJob(job_id="5", state=state)


def test_the_agent_answers_a_cancel_done_once_slurm_is_ending_the_job() -> None:
    # 22.05 shows a running job it has just cancelled as COMPLETING
    assert _cancelled(_job("RUNNING"), _job("COMPLETING")) == (True, "")
    assert _cancelled(_job("RUNNING"), _job("CANCELLED")) == (True, "")
    assert _cancelled(_job("PENDING"), None) == (True, "")
    # not done: always with the reason
    done, why = _cancelled(_job("RUNNING"), _job("RUNNING"))
    assert not done and "still RUNNING" in why
    done, why = _cancelled(_job("COMPLETING"), _job("COMPLETING"))
    assert not done and "already ending" in why


def test_a_running_job_cancelled_ends_when_the_site_confirms(env: Env) -> None:
    job = env.s.intake.submit("alice", spec())
    env.s.run_cycle()
    env.s.reconcile.on_submit_result(
        "a", pb.SubmitResult(job_id=job.id, attempt=1, slurm_job_id="5")
    )
    now = time.time()
    row = env.store.job(job.id)
    assert row is not None
    env.store.run(lambda b: b.move(job.id, S.RUNNING, "", started_at=now - 3600))
    env.s.intake.cancel(job.id)
    env.s.reconcile.on_cancel_results("a", [pb.CancelResult(job_id=job.id, attempt=1, done=True)])
    row = env.store.job(job.id)
    assert row is not None and row.state == S.CANCELLED
    assert now - 1 <= row.ended_at <= time.time() + 1
    # its hour of running counts, and not a second more
    [use] = usage(env.store.history(now - 7200, now + 7200), "user")
    assert use.core_hours == pytest.approx(8.0, rel=0.01)


# ---------------------------------------------------------------- admins' holds


def test_an_admins_hold_is_released_only_by_an_admin(env: Env) -> None:
    job = env.s.intake.submit("alice", spec(cpus=1, precision="fp64"))
    held = env.s.intake.hold_named("root", True, [str(job.id)], release=False, as_admin=True)
    assert [(j.state, j.held, j.admin_held) for j in held] == [(S.WAITING, True, True)]
    assert held[0].reason.startswith("JobHeldAdmin")
    env.s.run_cycle()
    assert env.state(job.id) == S.WAITING  # placement never sees it
    with pytest.raises(Refused) as e:
        env.s.intake.hold_named("alice", False, [str(job.id)], release=True)
    assert e.value.code == "PERMISSION_DENIED" and "held by an admin" in str(e.value)
    [j] = env.s.intake.hold_named("root", True, [str(job.id)], release=True, as_admin=True)
    assert (j.state, j.held, j.admin_held) == (S.QUEUED, False, False)


def test_an_admin_hold_takes_over_a_users_hold(env: Env) -> None:
    job = env.s.intake.submit("alice", spec(cpus=1, hold=True))
    assert (env.state(job.id), job.held) == (S.WAITING, True)
    env.s.intake.hold_named("root", True, [str(job.id)], release=False, as_admin=True)
    with pytest.raises(Refused):
        env.s.intake.hold_named("alice", False, [str(job.id)], release=True)
    row = env.store.job(job.id)
    assert row is not None and row.admin_held and row.reason.startswith("JobHeldAdmin")


# ---------------------------------------------------------------- requeue


def _placed(env: Env, cpus: int = 8) -> int:
    job = env.s.intake.submit("alice", spec(cpus=cpus))
    env.s.run_cycle()
    assert env.state(job.id) == S.FORWARDING
    env.sent("a")
    return job.id


def test_requeue_pulls_back_a_pending_job_once_the_site_confirms(env: Env) -> None:
    job_id = _placed(env)
    env.s.reconcile.on_submit_result(
        "a", pb.SubmitResult(job_id=job_id, attempt=1, slurm_job_id="5")
    )
    [j] = env.s.job_admin.requeue("root", [str(job_id)], hold=False)
    assert j.state == S.RECALLING
    [msg] = env.sent("a")
    assert msg.cancel.only_if_pending and msg.cancel.job_id == job_id
    # still RECALLING until the site says it never started
    assert env.state(job_id) == S.RECALLING
    env.s.reconcile.on_cancel_results("a", [pb.CancelResult(job_id=job_id, attempt=1, done=True)])
    row = env.store.job(job_id)
    assert row is not None and (row.state, row.site, row.recalls) == (S.QUEUED, "", 0)
    env.s.run_cycle()  # and placed again, as a new attempt
    row = env.store.job(job_id)
    assert row is not None and (row.state, row.attempt) == (S.FORWARDING, 2)


def test_requeue_with_hold_keeps_it_held_once_back(env: Env) -> None:
    job_id = _placed(env)  # forwarding: the site has not confirmed it yet
    [j] = env.s.job_admin.requeue("root", [str(job_id)], hold=True)
    assert (j.state, j.held, j.admin_held) == (S.RECALLING, True, True)
    env.s.reconcile.on_cancel_results("a", [pb.CancelResult(job_id=job_id, attempt=1, done=True)])
    row = env.store.job(job_id)
    assert row is not None
    assert (row.state, row.admin_held) == (S.WAITING, True)
    assert row.reason.startswith("JobHeldAdmin")


def test_a_requeue_too_late_leaves_the_running_job_unheld(env: Env) -> None:
    job_id = _placed(env)
    env.s.job_admin.requeue("root", [str(job_id)], hold=True)
    env.s.reconcile.on_cancel_results(
        "a", [pb.CancelResult(job_id=job_id, attempt=1, done=False, error="it has started")]
    )
    now = time.time()
    running = pb.SlurmJobReport(
        slurm_job_id="5",
        partition="batch",
        state="RUNNING",
        cpus=8,
        time_limit_minutes=10,
        start_time=now,
        user="alice",
        job_id=job_id,
        attempt=1,
        federation=env.store.federation,
    )
    env.s.reconcile.on_report("a", report(alloc=8, jobs=[running]))
    row = env.store.job(job_id)
    assert row is not None and (row.state, row.held, row.admin_held) == (S.RUNNING, False, False)


def test_requeue_refuses_running_and_ended_jobs(env: Env) -> None:
    job_id = _placed(env)
    env.store.run(lambda b: b.move(job_id, S.RUNNING, "", started_at=time.time()))
    with pytest.raises(Refused) as e:
        env.s.job_admin.requeue("root", [str(job_id)], hold=False)
    assert e.value.code == "FAILED_PRECONDITION" and "has started at a" in str(e.value)
    env.store.run(lambda b: b.move(job_id, S.COMPLETED, "", ended_at=time.time()))
    with pytest.raises(Refused) as e:
        env.s.job_admin.requeue("root", [str(job_id)], hold=False)
    assert "has ended" in str(e.value) and "new submission" in str(e.value)


# ---------------------------------------------------------------- priority


def test_priority_places_a_job_ahead_of_older_ones(env: Env) -> None:
    # one 8-CPU node: one job at a time; late binding holds the rest in the global queue
    first, second, third = (env.s.intake.submit("alice", spec()).id for _ in range(3))
    env.s.job_admin.set_priority("root", [str(third)], 10)
    env.s.run_cycle()
    assert [env.state(j) for j in (first, second, third)] == [S.QUEUED, S.QUEUED, S.FORWARDING]


def test_a_job_put_behind_goes_after_jobs_submitted_later(env: Env) -> None:
    blocker = _placed(env)  # the node is taken
    env.s.reconcile.on_submit_result(
        "a", pb.SubmitResult(job_id=blocker, attempt=1, slurm_job_id="5")
    )
    behind, other = (env.s.intake.submit("alice", spec()).id for _ in range(2))
    env.s.job_admin.set_priority("root", [str(behind)], -1)
    env.s.run_cycle()
    later = env.s.intake.submit("alice", spec()).id  # priority 0, after the last full pass
    env.s.placement._full_end = time.time() + 3600  # as right after a long full pass
    env.s.run_cycle()  # between full passes: the new job must wait for a full one
    env.s.placement.force_full()
    env.s.run_cycle()
    rows = {j: env.store.job(j) for j in (behind, other, later)}
    starts = {j: r.est_start for j, r in rows.items() if r is not None}
    assert starts[other] <= starts[later] <= starts[behind]
    assert starts[later] < starts[behind]


def test_priority_is_refused_out_of_range_and_for_ended_jobs(env: Env) -> None:
    job = env.s.intake.submit("alice", spec())
    with pytest.raises(Refused) as e:
        env.s.job_admin.set_priority("root", [str(job.id)], 10**9)
    assert e.value.code == "INVALID_ARGUMENT"
    env.s.intake.cancel(job.id)
    with pytest.raises(Refused) as e:
        env.s.job_admin.set_priority("root", [str(job.id)], 5)
    assert "has already ended" in str(e.value)


def test_priority_survives_a_restart(tmp_path: Path) -> None:
    env = Env(tmp_path)
    first, second = (env.s.intake.submit("alice", spec()).id for _ in range(2))
    env.s.job_admin.set_priority("root", [str(second)], 3)
    env.store.close()
    env = Env(tmp_path)
    try:
        row = env.store.job(second)
        assert row is not None and row.priority == 3
        env.s.run_cycle()
        assert [env.state(first), env.state(second)] == [S.QUEUED, S.FORWARDING]
    finally:
        env.store.close()


# ---------------------------------------------------------------- usage


def test_usage_by_user_site_and_precision(tmp_path: Path) -> None:
    env = Env(tmp_path, ("a", "b"))
    try:
        t0 = time.time() - 10 * 3600

        def ran(user: str, site: str, start: float, end: float, **kw: Any) -> int:
            job = env.store.run(lambda b: b.insert_job(user, spec(**kw)))

            def op(b: Any) -> None:
                b.move(job.id, S.FORWARDING, "", site=site, attempt=1)
                b.move(job.id, S.RUNNING, "", started_at=start)
                if end:
                    b.move(job.id, S.COMPLETED, "", ended_at=end)

            env.store.run(op)
            return job.id

        ran("alice", "a", t0, t0 + 2 * 3600, cpus=4, precision="fp64")  # 8 core-hours
        ran("alice", "b", t0 + 3600, t0 + 2 * 3600, cpus=2, gpus_per_node=1)  # 2 core-h, 1 GPU-h
        ran("bob", "a", t0 + 5 * 3600, 0, cpus=1, precision="fp64")  # still running
        ran("bob", "b", t0 - 5 * 3600, t0 - 4 * 3600, cpus=64)  # before the window
        window = env.store.history(t0, t0 + 6 * 3600)
        by_user = {r.key: r for r in usage(window, "user")}
        assert by_user["alice"].core_hours == pytest.approx(10.0)
        assert by_user["alice"].gpu_hours == pytest.approx(1.0)
        assert by_user["alice"].jobs == 2
        assert by_user["bob"].core_hours == pytest.approx(1.0)  # the hour inside the window
        by_site = {r.key: r.core_hours for r in usage(env.store.history(t0, t0 + 6 * 3600), "site")}
        assert by_site == pytest.approx({"a": 9.0, "b": 2.0})
        by_prec = {
            r.key: r.core_hours for r in usage(env.store.history(t0, t0 + 6 * 3600), "precision")
        }
        assert by_prec == pytest.approx({"fp64": 9.0, "any": 2.0})
    finally:
        env.store.close()


def test_usage_counts_array_tasks(env: Env) -> None:
    now = time.time()
    first = env.s.intake.submit("alice", spec(cpus=2, array="1-3"))
    tasks = env.store.array_tasks(first.array_id)

    def op(b: Any) -> None:
        for t in tasks:
            b.move(t.id, S.FORWARDING, "", site="a", attempt=1)
            b.move(t.id, S.RUNNING, "", started_at=now - 1800)
            b.move(t.id, S.COMPLETED, "", ended_at=now)

    env.store.run(op)
    [row] = usage(env.store.history(now - 3600, now + 1), "user")
    assert row.jobs == 3
    assert row.core_hours == pytest.approx(3.0)


def test_site_summaries_say_what_admins_list(env: Env) -> None:
    [a] = site_summaries(env.s, time.time())
    assert (a.backend, a.agent_version, a.nodes, a.usable_nodes) == ("cli", "0.1.0", 1, 1)
    assert 0 <= a.report_age_seconds < 30
