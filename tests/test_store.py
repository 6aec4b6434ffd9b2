"""The global queue on a real SQLite file: transactions, history, restart, group commit."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from metasched.states import JobState
from metasched.store import Batch, IllegalTransition, Store
from metasched.v1 import metasched_pb2 as pb

SPEC = pb.JobSpec(script="#!/bin/sh\ntrue\n", name="t", precision="fp64")
S = JobState


def test_submit_move_and_history_survive_a_reopen(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    store = Store(db)
    job = store.run(lambda b: b.insert_job("alice", SPEC))
    store.run(lambda b: b.move(job.id, S.FORWARDING, "placed", site="hpc", attempt=1))
    store.run(lambda b: b.move(job.id, S.PENDING, "", slurm_job_id="42"))
    fed = store.federation
    store.close()

    again = Store(db)
    row = again.job(job.id)
    assert row is not None
    assert (row.state, row.site, row.slurm_job_id, row.attempt) == (S.PENDING, "hpc", "42", 1)
    assert row.spec == SPEC
    assert [e.state for e in again.events(job.id)] == [S.QUEUED, S.FORWARDING, S.PENDING]
    assert again.federation == fed  # the tag namespace is stable across restarts
    assert job.id in again.live
    again.close()


def test_illegal_transition_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "q.db")
    job = store.run(lambda b: b.insert_job("alice", SPEC))
    store.run(lambda b: b.move(job.id, S.CANCELLED, "by user"))
    with pytest.raises(IllegalTransition):
        store.run(lambda b: b.move(job.id, S.RUNNING))
    row = store.job(job.id)
    assert row is not None and row.state == S.CANCELLED
    assert job.id not in store.live  # final jobs leave the in-memory queue
    assert len(store.events(job.id)) == 2
    store.close()


def test_a_failing_operation_does_not_undo_its_batch_neighbours(tmp_path: Path) -> None:
    store = Store(tmp_path / "q.db")

    def bad(b: Batch) -> None:
        b.insert_job("alice", SPEC)
        raise ValueError("boom")

    futures = [store.write(lambda b: b.insert_job("bob", SPEC)) for _ in range(50)]
    futures.append(store.write(bad))
    futures += [store.write(lambda b: b.insert_job("bob", SPEC)) for _ in range(50)]
    ok = [f.result(10) for f in futures if f.exception(10) is None]
    assert len(ok) == 100
    assert all(j.user == "bob" for j in store.jobs(include_final=True, limit=1000))
    store.close()


def test_concurrent_submissions_all_land_with_distinct_ids(tmp_path: Path) -> None:
    store = Store(tmp_path / "q.db")
    with ThreadPoolExecutor(16) as pool:
        rows = list(
            pool.map(lambda i: store.run(lambda b: b.insert_job(f"u{i % 3}", SPEC)), range(500))
        )
    assert len({r.id for r in rows}) == 500
    store.close()
    again = Store(tmp_path / "q.db")
    assert len(again.live) == 500
    assert again.count_live("u0") == 167
    again.close()


def test_online_backup_is_a_consistent_copy(tmp_path: Path) -> None:
    store = Store(tmp_path / "q.db")
    for _ in range(10):
        store.run(lambda b: b.insert_job("alice", SPEC))
    store.backup(tmp_path / "copy.db")
    store.close()
    copy = Store(tmp_path / "copy.db")
    assert len(copy.live) == 10
    copy.close()
