"""Arrays, dependencies, --begin and holds in the daemon, on a real SQLite queue with agent
streams fed by hand (as test_scheduler.py): the array is one transaction and its tasks are
placed one by one under the % limit across sites; one cancel covers an array or a task
range with one command per site; waiting jobs are released, or cancelled with the reason,
when what they wait on ends. The same on real Slurm sites: test_arrays_lab.py."""

from __future__ import annotations

import queue
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from metasched.daemon.scheduler import Refused, Scheduler, Settings
from metasched.daemon.sites import AgentLink, SiteRegistry
from metasched.states import JobState
from metasched.store import JobRow, Store
from metasched.v1 import metasched_pb2 as pb

S = JobState


def spec(**kw: object) -> pb.JobSpec:
    s = pb.JobSpec(script="#!/bin/sh\ntrue\n", precision="fp64", time_limit_minutes=10)
    for k, v in kw.items():
        setattr(s, k, v)
    return s


def site_report(jobs: list[pb.SlurmJobReport] | None = None, cpus: int = 8) -> pb.SiteReport:
    return pb.SiteReport(
        slurm_reachable=True,
        slurm_version="22.05.8",
        maps_all_users=True,
        partitions=[
            pb.Partition(
                name="batch",
                nodes=1,
                cpus_per_node=cpus,
                precisions=[pb.Precision(name="fp64", peak_tflops=1.0)],
            )
        ],
        nodes=[
            pb.NodeReport(name="n1", partitions=["batch"], state="idle", cpus=cpus, mem_mb=8000)
        ],
        jobs=jobs or [],
    )


class Env:
    def __init__(self, tmp_path: Path, sites: tuple[str, ...] = ("a", "b")) -> None:
        self.path = tmp_path / "q.db"
        self.store = Store(self.path)
        self.registry = SiteRegistry(grace_seconds=60)
        self.s = Scheduler(self.store, self.registry, Settings(max_infra_retries=1))
        self.links: dict[str, AgentLink] = {}
        for name in sites:
            link = AgentLink(name, "test")
            self.registry.connect(name, link)
            self.links[name] = link
            self.s.reconcile.on_report(name, site_report())

    def sent(self, site: str) -> list[pb.DaemonMessage]:
        out = []
        while True:
            try:
                m = self.links[site].outbox.get_nowait()
            except queue.Empty:
                return out
            if m is not None:
                out.append(m)

    def cycle(self) -> None:
        self.s.placement.force_full()
        self.s.run_cycle()

    def end(self, job_id: int, state: str = "COMPLETED", exit_code: int = 0) -> None:
        """The job's site reports it ended (the agent's answer to a resolve)."""
        row = self.store.job(job_id)
        assert row is not None and row.site
        now = time.time()
        self.s.reconcile.on_job_update(
            row.site,
            pb.JobUpdate(
                job_id=job_id,
                attempt=row.attempt,
                final=True,
                resolved_from="accounting",
                job=pb.SlurmJobReport(
                    slurm_job_id=f"{job_id}00",
                    state=state,
                    start_time=now - 2,
                    end_time=now,
                    exit_code=exit_code,
                    job_id=job_id,
                    attempt=row.attempt,
                    federation=self.store.federation,
                ),
            ),
        )

    def state(self, job_id: int) -> JobState:
        row = self.store.job(job_id)
        assert row is not None
        return row.state

    def reason(self, job_id: int) -> str:
        row = self.store.job(job_id)
        assert row is not None
        return row.reason


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    yield e
    e.store.close()


# ---------------------------------------------------------------- arrays


def test_an_array_is_one_id_with_a_job_per_task_in_one_transaction(env: Env) -> None:
    commits = []
    env.store.add_listener(lambda changes: commits.append(len(changes)))
    first = env.s.intake.submit("alice", spec(array="1-1000%50", name="sweep"))
    assert commits == [1000]  # one commit: every task with its submitted event
    tasks = env.store.array_tasks(first.id)
    assert first.array_id == first.id and first.array_task == 1
    assert [t.array_task for t in tasks] == list(range(1, 1001))
    assert {t.array_id for t in tasks} == {first.id}
    assert all(t.state == S.QUEUED and t.spec is tasks[0].spec for t in tasks)
    # the script is stored once, not once per task
    conn = sqlite3.connect(env.path)
    assert conn.execute("SELECT count(*) FROM arrays").fetchone()[0] == 1
    assert conn.execute("SELECT count(*) FROM jobs WHERE spec IS NOT NULL").fetchone()[0] == 0
    conn.close()


def test_the_throttle_holds_across_sites_and_tasks_spread(env: Env) -> None:
    # 4 CPUs a task: two fit on a site at once, so three at once take both sites
    first = env.s.intake.submit("alice", spec(array="0-9%3", cpus_per_task=4))
    env.cycle()
    at_sites = [t for t in env.store.array_tasks(first.id) if t.state == S.FORWARDING]
    assert len(at_sites) == 3  # room for four, but %3
    assert {t.site for t in at_sites} == {"a", "b"}
    waiting = [t for t in env.store.array_tasks(first.id) if t.state == S.QUEUED]
    assert all(t.reason.startswith("JobArrayTaskLimit") for t in waiting)
    # as tasks end, others take their place, still never more than 3 at sites at once
    for _ in range(10):
        live = [t for t in env.store.array_tasks(first.id) if t.state == S.FORWARDING]
        assert 1 <= len(live) <= 3
        env.end(live[0].id)
        env.cycle()
    assert all(t.state == S.COMPLETED for t in env.store.array_tasks(first.id))


def test_an_array_submission_counts_every_task_against_the_users_limit(tmp_path: Path) -> None:
    store = Store(tmp_path / "q.db")
    s = Scheduler(store, SiteRegistry(60), Settings(max_queued_per_user=100))
    with pytest.raises(Refused) as e:
        s.intake.submit("alice", spec(array="1-101"))
    assert e.value.code == "RESOURCE_EXHAUSTED"
    assert store.count_live("alice") == 0  # nothing half-made
    store.close()


def test_one_cancel_ends_an_array_with_one_command_per_site(env: Env) -> None:
    first = env.s.intake.submit("alice", spec(array="1-40"))
    env.cycle()
    for site in ("a", "b"):
        env.sent(site)
    jobs = env.s.intake.cancel_named("alice", False, [str(first.id)])
    assert len(jobs) == 40
    by_state = {t.state for t in env.store.array_tasks(first.id)}
    assert by_state <= {S.CANCELLING, S.CANCELLED}
    commands = {site: env.sent(site) for site in ("a", "b")}
    for msgs in commands.values():
        assert len(msgs) <= 1
        assert all(m.WhichOneof("body") == "cancel_jobs" for m in msgs)
    cancelling = [t for t in env.store.array_tasks(first.id) if t.state == S.CANCELLING]
    assert sum(len(m.cancel_jobs.jobs) for ms in commands.values() for m in ms) == len(cancelling)
    # the agents answer in one message each; every task ends CANCELLED
    for site, msgs in commands.items():
        for m in msgs:
            env.s.reconcile.on_cancel_results(
                site,
                [
                    pb.CancelResult(job_id=c.job_id, attempt=c.attempt, done=True)
                    for c in m.cancel_jobs.jobs
                ],
            )
    assert {t.state for t in env.store.array_tasks(first.id)} == {S.CANCELLED}


def placed_and_seen(env: Env, slurm_job_id: str) -> tuple[JobRow, str, Callable[..., None]]:
    """A job placed at a site, and seen(state, reason=""): that site reports it so, as Slurm
    job `slurm_job_id` that started 5 s ago."""
    job = env.s.intake.submit("alice", spec())
    env.cycle()
    row = env.store.job(job.id)
    assert row is not None and row.site
    site = row.site

    def seen(state: str, reason: str = "") -> None:
        env.s.reconcile.on_report(
            site,
            site_report(
                [
                    pb.SlurmJobReport(
                        slurm_job_id=slurm_job_id,
                        state=state,
                        reason=reason,
                        start_time=time.time() - 5,
                        job_id=job.id,
                        attempt=1,
                        federation=env.store.federation,
                    )
                ]
            ),
        )

    return job, site, seen


def test_a_cancel_that_crosses_a_failed_launch_is_sent_again_and_ends_cancelled(
    env: Env,
) -> None:
    # Seen on a loaded lab: slurmd could not confirm a task's launch, and slurmctld requeued
    # and held it just after the user's scancel. Held, it never starts: cancelled, not lost.
    job, site, seen = placed_and_seen(env, "7")
    seen("RUNNING")
    assert env.state(job.id) == S.RUNNING
    env.s.intake.cancel_named("alice", False, [str(job.id)])
    env.sent(site)
    seen("PENDING", "JobHeldUser")
    assert env.state(job.id) == S.CANCELLING
    again = [m for m in env.sent(site) if m.WhichOneof("body") in ("cancel", "cancel_jobs")]
    assert again, "the cancel is sent again"
    seen("CANCELLED")
    assert env.state(job.id) == S.CANCELLED
    # and if Slurm shows it again (requeued and held after the cancel was confirmed), the
    # cancel goes out again; the job stays CANCELLED
    env.sent(site)
    seen("PENDING", "JobHeldUser")
    assert env.state(job.id) == S.CANCELLED
    assert [m for m in env.sent(site) if m.WhichOneof("body") == "cancel"]


def test_a_job_lost_to_a_requeue_and_hold_is_cancelled_at_its_site(env: Env) -> None:
    # Slurm requeued and held it after it started (a launch slurmd could not confirm): it may
    # have run to the end, so it is LOST, never re-run; and nobody may release the held copy
    # at the site (that would run it twice), so it is cancelled there.
    job, site, seen = placed_and_seen(env, "8")
    seen("RUNNING")
    env.sent(site)
    seen("PENDING", "launch failed requeued held")
    assert env.state(job.id) == S.LOST
    seen("PENDING", "launch failed requeued held")  # the next report still shows it held
    cancels = [m.cancel for m in env.sent(site) if m.WhichOneof("body") == "cancel"]
    assert [(c.job_id, c.slurm_job_id) for c in cancels][-1:] == [(job.id, "8")]
    seen("CANCELLED")
    assert env.state(job.id) == S.LOST  # what happened to the run is still unknown


def test_a_task_range_is_cancelled_and_others_go_on(env: Env) -> None:
    first = env.s.intake.submit("alice", spec(array="1-10"))
    env.s.intake.cancel_named("alice", False, [f"{first.id}_[2-4]", f"{first.id}_9"])
    states = {t.array_task: t.state for t in env.store.array_tasks(first.id)}
    assert {k for k, v in states.items() if v == S.CANCELLED} == {2, 3, 4, 9}
    assert {k for k, v in states.items() if v == S.QUEUED} == {1, 5, 6, 7, 8, 10}
    with pytest.raises(Refused) as e:
        env.s.intake.cancel_named("bob", False, [f"{first.id}_1"])
    assert e.value.code == "PERMISSION_DENIED"
    with pytest.raises(Refused) as e:
        env.s.intake.cancel_named("alice", False, [f"{first.id}_77"])
    assert e.value.code == "NOT_FOUND"


def test_the_agent_is_told_the_task_of_each_forwarded_job(env: Env) -> None:
    first = env.s.intake.submit("alice", spec(array="5,7"))
    env.cycle()
    submits = [m.submit for site in ("a", "b") for m in env.sent(site) if m.HasField("submit")]
    assert sorted((c.array_id, c.array_task) for c in submits) == [(first.id, 5), (first.id, 7)]


# ---------------------------------------------------------------- dependencies


def test_a_chain_runs_in_order_across_sites(env: Env) -> None:
    a = env.s.intake.submit("alice", spec())
    b = env.s.intake.submit("alice", spec(dependency=f"afterok:{a.id}"))
    c = env.s.intake.submit("alice", spec(dependency=f"afterany:{b.id}"))
    assert env.state(b.id) == S.WAITING and env.reason(b.id).startswith("Dependency")
    env.cycle()
    assert env.state(a.id) == S.FORWARDING
    assert (env.state(b.id), env.state(c.id)) == (S.WAITING, S.WAITING)
    env.end(a.id)
    env.cycle()
    assert env.state(b.id) == S.FORWARDING and env.state(c.id) == S.WAITING
    env.end(b.id, "FAILED", 1)
    env.cycle()
    assert env.state(c.id) == S.FORWARDING  # afterany: whatever b's end


def test_a_failed_parent_cancels_its_afterok_children_with_the_reason(env: Env) -> None:
    a = env.s.intake.submit("alice", spec())
    b = env.s.intake.submit("alice", spec(dependency=f"afterok:{a.id}"))
    c = env.s.intake.submit("alice", spec(dependency=f"afterok:{b.id}"))
    keep = env.s.intake.submit(
        "alice", spec(dependency=f"afterok:{a.id}", keep_invalid_dependency=True)
    )
    notok = env.s.intake.submit("alice", spec(dependency=f"afternotok:{a.id}"))
    env.cycle()
    env.end(a.id, "FAILED", 3)
    env.cycle()
    env.cycle()  # c waits on b: cancelled in the pass after b
    assert env.state(b.id) == S.CANCELLED
    assert f"afterok:{a.id}" in env.reason(b.id) and "FAILED" in env.reason(b.id)
    assert env.state(c.id) == S.CANCELLED and "CANCELLED" in env.reason(c.id)
    assert env.state(keep.id) == S.WAITING
    assert env.reason(keep.id).startswith("DependencyNeverSatisfied")
    assert env.state(notok.id) == S.FORWARDING


def test_a_dependency_that_can_never_be_met_is_refused_at_submit(env: Env) -> None:
    a = env.s.intake.submit("alice", spec())
    env.cycle()
    env.end(a.id, "FAILED", 1)
    with pytest.raises(Refused) as e:
        env.s.intake.submit("alice", spec(dependency=f"afterok:{a.id}"))
    assert e.value.code == "FAILED_PRECONDITION" and "FAILED" in str(e.value)
    with pytest.raises(Refused) as e:
        env.s.intake.submit("alice", spec(dependency="afterok:999999"))
    assert "no job 999999" in str(e.value)
    # a satisfied dependency: queued at once; an array's tasks at the next pass
    ok = env.s.intake.submit("alice", spec(dependency=f"afternotok:{a.id}"))
    assert env.state(ok.id) == S.QUEUED
    arr = env.s.intake.submit("alice", spec(array="1-2", dependency=f"afterany:{a.id}"))
    env.cycle()
    assert {t.state for t in env.store.array_tasks(arr.id)} == {S.FORWARDING}


def test_dependencies_on_arrays_whole_and_by_task(env: Env) -> None:
    arr = env.s.intake.submit("alice", spec(array="1-3"))
    whole = env.s.intake.submit("alice", spec(dependency=f"afterok:{arr.id}"))
    one = env.s.intake.submit("alice", spec(dependency=f"afterok:{arr.id}_2"))
    corr = env.s.intake.submit("alice", spec(array="1-3", dependency=f"aftercorr:{arr.id}"))
    env.cycle()
    tasks = {t.array_task: t for t in env.store.array_tasks(arr.id)}
    env.end(tasks[2].id)
    env.cycle()
    assert env.state(one.id) == S.FORWARDING
    assert env.state(whole.id) == S.WAITING
    corr_tasks = {t.array_task: t.state for t in env.store.array_tasks(corr.id)}
    assert corr_tasks == {1: S.WAITING, 2: S.FORWARDING, 3: S.WAITING}
    env.end(tasks[1].id)
    env.end(tasks[3].id, "FAILED", 2)
    env.cycle()
    assert env.state(whole.id) == S.CANCELLED
    assert "1 of its tasks did not complete" in env.reason(whole.id)
    corr_tasks = {t.array_task: t.state for t in env.store.array_tasks(corr.id)}
    assert corr_tasks[1] == S.FORWARDING and corr_tasks[3] == S.CANCELLED


def test_singleton_runs_one_job_of_a_name_at_a_time(env: Env) -> None:
    jobs = [
        env.s.intake.submit("alice", spec(name="nightly", dependency="singleton")) for _ in range(3)
    ]
    other = env.s.intake.submit("bob", spec(name="nightly", dependency="singleton"))
    env.cycle()
    states = [env.state(j.id) for j in jobs]
    assert states == [S.FORWARDING, S.WAITING, S.WAITING]
    assert env.state(other.id) == S.FORWARDING  # another user's name is another name
    env.end(jobs[0].id)
    env.cycle()
    assert [env.state(j.id) for j in jobs] == [S.COMPLETED, S.FORWARDING, S.WAITING]


def test_begin_time_and_hold(env: Env) -> None:
    later = env.s.intake.submit("alice", spec(begin_time=time.time() + 3600))
    soon = env.s.intake.submit("alice", spec(begin_time=time.time() + 0.5))
    held = env.s.intake.submit("alice", spec(hold=True))
    env.cycle()
    assert env.reason(later.id).startswith("BeginTime")
    assert env.reason(held.id).startswith("JobHeldUser")
    deadline = time.monotonic() + 30
    while env.state(soon.id) == S.WAITING and time.monotonic() < deadline:
        time.sleep(0.1)
        env.cycle()
    assert env.state(soon.id) == S.FORWARDING
    assert env.state(later.id) == S.WAITING
    env.s.intake.hold_named("alice", False, [str(held.id)], release=True)
    env.cycle()
    assert env.state(held.id) == S.FORWARDING
    # hold a queued job, then release it
    q = env.s.intake.submit("alice", spec(begin_time=time.time() + 3600))
    env.s.intake.hold_named("alice", False, [str(q.id)], release=False)
    row = env.store.job(q.id)
    assert row is not None and row.held and row.state == S.WAITING
    env.s.intake.hold_named("alice", False, [str(q.id)], release=True)
    assert env.reason(q.id).startswith("BeginTime")  # still waits for its begin time
    with pytest.raises(Refused) as e:
        env.s.intake.hold_named("alice", False, [str(held.id)], release=False)
    assert "already at site" in str(e.value)


def test_waiting_jobs_survive_a_restart_and_are_settled(tmp_path: Path) -> None:
    env = Env(tmp_path)
    a = env.s.intake.submit("alice", spec())
    b = env.s.intake.submit("alice", spec(dependency=f"afterok:{a.id}"))
    env.cycle()
    env.end(a.id)
    env.store.close()  # down before any pass settled b
    again = Env(tmp_path)
    try:
        assert again.state(b.id) == S.WAITING
        again.cycle()
        assert again.state(b.id) == S.FORWARDING
    finally:
        again.store.close()
