"""The scheduler's rules for what sites report, on a real SQLite queue: what is retried
elsewhere, what is final, and what must never run (strays). The sites here are agent streams
fed by hand (AgentLink outboxes), so each rule can be exercised exactly; the whole path on
real Slurm is in test_federation_e2e.py and test_crash.py.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from metasched.daemon.scheduler import Scheduler, Settings
from metasched.daemon.sites import AgentLink, SiteRegistry
from metasched.states import JobState
from metasched.store import Store
from metasched.v1 import metasched_pb2 as pb

S = JobState
SPEC = pb.JobSpec(script="#!/bin/sh\ntrue\n", precision="fp64", time_limit_minutes=10)


def site_report(jobs: Sequence[pb.SlurmJobReport] = ()) -> pb.SiteReport:
    return pb.SiteReport(
        slurm_reachable=True,
        slurm_version="22.05.8",
        maps_all_users=True,
        partitions=[
            pb.Partition(
                name="batch",
                nodes=1,
                cpus_per_node=8,
                precisions=[pb.Precision(name="fp64", peak_tflops=1.0)],
            )
        ],
        nodes=[pb.NodeReport(name="n1", partitions=["batch"], state="idle", cpus=8, mem_mb=8000)],
        jobs=list(jobs),
    )


class Env:
    def __init__(self, tmp_path: Path, sites: tuple[str, ...] = ("a", "b")) -> None:
        self.store = Store(tmp_path / "q.db")
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

    def submit_and_place(self) -> tuple[int, str]:
        job = self.s.intake.submit("alice", SPEC)
        self.s.run_cycle()
        row = self.store.job(job.id)
        assert row is not None and row.state == S.FORWARDING
        return job.id, row.site

    def show(
        self, site: str, job_id: int, attempt: int, state: str, sid: str, exit_code: int = 0
    ) -> None:
        now = time.time()
        self.s.reconcile.on_report(
            site,
            site_report(
                [
                    pb.SlurmJobReport(
                        slurm_job_id=sid,
                        partition="batch",
                        state=state,
                        cpus=1,
                        nodes=1,
                        time_limit_minutes=10,
                        submit_time=now - 5,
                        start_time=now - 2,
                        end_time=now if state not in ("PENDING", "RUNNING") else 0,
                        exit_code=exit_code,
                        user="alice",
                        job_id=job_id,
                        attempt=attempt,
                        federation=self.store.federation,
                    )
                ]
            ),
        )

    def close(self) -> None:
        self.store.close()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    yield e
    e.close()


def test_node_failure_is_retried_elsewhere_then_final(env: Env) -> None:
    job_id, first = env.submit_and_place()
    env.show(first, job_id, 1, "NODE_FAIL", "11")
    row = env.store.job(job_id)
    assert row is not None
    assert (row.state, row.infra_retries) == (S.QUEUED, 1)
    assert first in row.avoid_sites
    env.s.run_cycle()
    row = env.store.job(job_id)
    assert row is not None and row.state == S.FORWARDING and row.attempt == 2
    second = row.site
    assert second != first  # not back to the site that failed it
    env.show(second, job_id, 2, "NODE_FAIL", "12")
    row = env.store.job(job_id)
    assert row is not None and row.state == S.NODE_FAIL  # retries used up: final


def test_the_jobs_own_failure_is_final_with_its_exit_code(env: Env) -> None:
    job_id, site = env.submit_and_place()
    env.show(site, job_id, 1, "RUNNING", "7")
    env.show(site, job_id, 1, "FAILED", "7", exit_code=3)
    row = env.store.job(job_id)
    assert row is not None
    assert (row.state, row.exit_code, row.attempt) == (S.FAILED, 3, 1)
    env.s.run_cycle()
    again = env.store.job(job_id)
    assert again is not None and again.state == S.FAILED


def test_a_slurm_job_of_an_old_attempt_is_cancelled_as_a_stray(env: Env) -> None:
    job_id, first = env.submit_and_place()
    env.show(first, job_id, 1, "NODE_FAIL", "21")
    env.s.run_cycle()  # attempt 2 goes to the other site
    env.sent(first)
    # ... and the first site now shows attempt 1 running after all (Slurm requeued it)
    env.show(first, job_id, 1, "RUNNING", "21")
    cancels = [m.cancel for m in env.sent(first) if m.WhichOneof("body") == "cancel"]
    assert [(c.job_id, c.attempt, c.slurm_job_id) for c in cancels] == [(job_id, 1, "21")]
    row = env.store.job(job_id)
    assert row is not None and row.attempt == 2 and row.site != first


def test_a_report_for_a_job_at_another_site_changes_nothing(env: Env) -> None:
    job_id, site = env.submit_and_place()
    other = "b" if site == "a" else "a"
    env.show(other, job_id, 1, "COMPLETED", "99")  # a confused or malicious agent
    row = env.store.job(job_id)
    assert row is not None and row.state == S.FORWARDING and row.site == site


def test_jobs_submitted_between_full_passes_take_the_free_sites_in_turn(env: Env) -> None:
    """Passes between full re-plans place only new jobs, continuing the last plan: they see
    the slots taken by jobs placed before them, so whole-node jobs spread over the two sites
    and a third waits in the global queue instead of piling onto a busy site."""
    whole_node = pb.JobSpec(
        script="#!/bin/sh\ntrue\n", precision="fp64", time_limit_minutes=10, cpus_per_task=8
    )
    placed = []
    for _ in range(3):
        job = env.s.intake.submit("alice", whole_node)
        env.s.run_cycle()
        row = env.store.job(job.id)
        assert row is not None
        placed.append((row.state, row.site if row.state == S.FORWARDING else ""))
    assert sorted(placed[:2]) == [(S.FORWARDING, "a"), (S.FORWARDING, "b")]
    assert placed[2] == (S.QUEUED, "")


def test_calibration_learns_from_the_estimate_given_at_submission(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job held in the global queue is told "in about 10 min" (the running jobs' limits),
    then starts as soon as a site frees up. Calibration must learn that miss, the promise
    made at submission, and not the estimate of the pass that forwarded it (a wait of zero,
    always right), or the 90% bound users see would only ever cover dispatch delays."""
    whole_node = pb.JobSpec(
        script="#!/bin/sh\ntrue\n", precision="fp64", time_limit_minutes=10, cpus_per_task=8
    )
    ids = []
    for _ in range(3):
        ids.append(env.s.intake.submit("alice", whole_node).id)
        env.s.run_cycle()
    held = env.store.job(ids[2])
    assert held is not None and held.state == S.QUEUED
    told = held.est_start - held.submitted_at
    assert 500 < told < 700  # both sites busy until their jobs' 10-minute limits
    first = env.store.job(ids[0])
    assert first is not None
    env.show(first.site, ids[0], 1, "COMPLETED", "31")  # ends long before its limit
    env.s.placement.force_full()  # no wait for the re-plan interval
    env.s.run_cycle()
    moved = env.store.job(ids[2])
    assert moved is not None and moved.state == S.FORWARDING and moved.site == first.site
    learned: list[tuple[str, float, float]] = []
    monkeypatch.setattr(env.s.placer.calibration, "observe", lambda *a: learned.append(a))
    env.store.add_listener(env.s.learning.on_changes)  # as Scheduler.start() does
    env.show(first.site, ids[2], 1, "RUNNING", "33")
    assert len(learned) == 1
    site, predicted_wait, actual_wait = learned[0]
    assert site == first.site
    assert 500 < predicted_wait < 700  # what the user was told, not the forward pass's ~0
    assert actual_wait < 60


def test_a_job_running_before_its_site_reports_it_still_takes_its_node(env: Env) -> None:
    """The agent says a job started (a JobUpdate) before the site's next report shows it. Until
    that report, the site's last one still shows the node idle; the daemon must count the job
    there anyway, or it sends another whole-node job to wait behind it while an idle site
    could start it (or it could wait in the global queue for the first free node)."""
    whole_node = pb.JobSpec(
        script="#!/bin/sh\ntrue\n", precision="fp64", time_limit_minutes=10, cpus_per_task=8
    )
    first = env.s.intake.submit("alice", whole_node)
    env.s.run_cycle()
    row = env.store.job(first.id)
    assert row is not None and row.state == S.FORWARDING
    site, other = row.site, ("b" if row.site == "a" else "a")
    env.s.reconcile.on_submit_result(
        site, pb.SubmitResult(job_id=first.id, attempt=1, slurm_job_id="41")
    )
    now = time.time()
    env.s.reconcile.on_job_update(
        site,
        pb.JobUpdate(
            job_id=first.id,
            attempt=1,
            job=pb.SlurmJobReport(
                slurm_job_id="41",
                partition="batch",
                state="RUNNING",
                cpus=8,
                nodes=1,
                time_limit_minutes=10,
                start_time=now,
                user="alice",
                job_id=first.id,
                attempt=1,
                federation=env.store.federation,
            ),
        ),
    )
    row = env.store.job(first.id)
    assert row is not None and row.state == S.RUNNING  # known running; no report shows it yet
    placed = []
    for _ in range(2):
        job = env.s.intake.submit("alice", whole_node)
        env.s.placement.force_full()  # a full pass now, from the current views
        env.s.run_cycle()
        row = env.store.job(job.id)
        assert row is not None
        placed.append((row.state, row.site))
    assert placed == [(S.FORWARDING, other), (S.QUEUED, "")]


def test_the_stored_report_is_the_last_one_that_changed_the_site(env: Env) -> None:
    """A restarted daemon plans from the reports in the database: each site's must be its
    latest picture, though unchanged reports (every 10 s from an idle site) are not rewritten."""
    busy = site_report([pb.SlurmJobReport(slurm_job_id="5", partition="batch", state="RUNNING")])

    def stored(site: str) -> pb.SiteReport:
        blob = {name: report for name, _, _, report in env.store.sites()}[site]
        assert blob is not None
        out = pb.SiteReport()
        out.ParseFromString(blob)
        return out

    env.s.reconcile.on_report("a", busy)
    env.store.run(lambda b: None)  # the writer has caught up
    assert stored("a") == busy
    env.s.reconcile.on_report("a", site_report())
    env.s.reconcile.on_report("a", site_report())  # the same again
    env.s.reconcile.on_report("a", pb.SiteReport(slurm_reachable=False, error="slurmctld down"))
    env.store.run(lambda b: None)
    assert stored("a") == site_report()  # the last good picture, not the outage


def test_a_job_gone_without_a_record_is_lost_and_a_later_record_settles_it(env: Env) -> None:
    """Issue 9 item 10: what the daemon does not know it does not state as a fact."""
    job_id, site = env.submit_and_place()
    env.show(site, job_id, 1, "RUNNING", "31")
    upd = pb.JobUpdate(
        job_id=job_id,
        attempt=1,
        final=True,
        resolved_from="none",
        job=pb.SlurmJobReport(slurm_job_id="31"),
    )
    env.s.reconcile.on_job_update(site, upd)
    row = env.store.job(job_id)
    assert row is not None and row.state == S.LOST
    assert "no record" in row.reason and site in row.reason and "last seen running" in row.reason
    env.s.run_cycle()
    assert env.store.job(job_id).state == S.LOST  # type: ignore[union-attr]  # never re-placed
    # the site is asked again as its reports come in, and the record that turns up settles it
    env.sent(site)
    env.s.dispatch._last_sent.clear()
    env.s.reconcile.on_report(site, site_report())
    resolves = [m.resolve for m in env.sent(site) if m.WhichOneof("body") == "resolve"]
    assert [r.job_id for r in resolves] == [job_id]
    late = pb.SlurmJobReport(
        slurm_job_id="31",
        state="COMPLETED",
        exit_code=0,
        start_time=time.time() - 9,
        end_time=time.time() - 1,
        job_id=job_id,
        attempt=1,
        federation=env.store.federation,
    )
    env.s.reconcile.on_job_update(
        site, pb.JobUpdate(job_id=job_id, attempt=1, final=True, resolved_from="jobcomp", job=late)
    )
    row = env.store.job(job_id)
    assert row is not None and (row.state, row.exit_code) == (S.COMPLETED, 0)


def test_a_job_slurm_holds_after_it_started_is_lost_not_pending(env: Env) -> None:
    job_id, site = env.submit_and_place()
    env.show(site, job_id, 1, "RUNNING", "41")
    env.s.reconcile.on_report(
        site,
        site_report(
            [
                pb.SlurmJobReport(
                    slurm_job_id="41",
                    state="PENDING",
                    reason="launch failed requeued held",
                    job_id=job_id,
                    attempt=1,
                    federation=env.store.federation,
                    user="alice",
                )
            ]
        ),
    )
    row = env.store.job(job_id)
    assert row is not None and row.state == S.LOST and "held" in row.reason


def test_a_job_wrong_anywhere_fails_at_once_with_the_sites_reason(env: Env) -> None:
    """Issue 9 item 7: not re-sent, not tried at every site in turn."""
    job_id, site = env.submit_and_place()
    env.s.reconcile.on_submit_result(
        site,
        pb.SubmitResult(
            job_id=job_id,
            attempt=1,
            permanent=True,
            invalid_anywhere=True,
            error="Batch script contains DOS line breaks (\\r\\n)",
        ),
    )
    row = env.store.job(job_id)
    assert row is not None and row.state == S.FAILED and row.attempt == 1
    assert "DOS line breaks" in row.reason and site in row.reason
    env.s.run_cycle()
    assert env.store.job(job_id).state == S.FAILED  # type: ignore[union-attr]
