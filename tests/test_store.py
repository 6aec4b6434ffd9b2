"""The global queue on a real SQLite file: transactions, history, restart, group commit."""

from __future__ import annotations

import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from metasched.states import JobState
from metasched.store import (
    SCHEMA_VERSION,
    Batch,
    HeldEstimate,
    IllegalTransition,
    JobRow,
    NewJob,
    Store,
    StoreError,
)
from metasched.v1 import metasched_pb2 as pb

SPEC = pb.JobSpec(script="#!/bin/sh\ntrue\n", name="t", precision="fp64")
# what a job keeps in memory and in its row: the spec without its script (job_scripts has it)
ROW_SPEC = pb.JobSpec(name="t", precision="fp64")
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
    assert (row.spec, again.script(job.id)) == (ROW_SPEC, SPEC.script)
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


def test_submissions_queued_together_are_inserted_together_in_order(tmp_path: Path) -> None:
    store = Store(tmp_path / "q.db")
    first = store.run(lambda b: b.insert_job("alice", SPEC))
    futures = [store.insert(f"u{i}", SPEC) for i in range(300)]
    cancel = store.write(lambda b: b.move(first.id, S.CANCELLED, "by user"))
    futures += [store.insert("bob", SPEC) for _ in range(300)]
    rows = [f.result(10) for f in futures]
    cancel.result(10)
    assert [r.id for r in rows] == list(range(first.id + 1, first.id + 601))
    store.close()
    again = Store(tmp_path / "q.db")
    for row in rows:  # what each submitter was told is what is on disk
        stored = again.job(row.id)
        assert stored is not None
        assert (stored.user, stored.spec, stored.state) == (row.user, ROW_SPEC, S.QUEUED)
        assert again.script(row.id) == SPEC.script
        assert [(e.state, e.detail) for e in again.events(row.id)] == [(S.QUEUED, "submitted")]
    assert len(again.live) == 600
    assert again.count_live("bob") == 300
    again.close()


def test_a_refused_multi_row_insert_falls_back_to_one_job_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path / "q.db")

    insert_jobs = Batch.insert_jobs
    refused: list[int] = []

    def refuse_groups(self: Batch, new: list[NewJob]) -> list[JobRow]:
        if len(new) == 1:
            return insert_jobs(self, new)
        refused.append(len(new))
        self.conn.execute("INSERT INTO jobs (user, spec, state) VALUES ('x', x'', 'QUEUED')")
        raise ValueError("refused")

    monkeypatch.setattr(Batch, "insert_jobs", refuse_groups)
    rows = [f.result(10) for f in [store.insert("alice", SPEC) for _ in range(20)]]
    assert refused  # the writer did take submissions together, and was refused
    assert len({r.id for r in rows}) == 20
    # the refused attempt left nothing behind, not even its half-done row
    assert {j.user for j in store.jobs(include_final=True, limit=100)} == {"alice"}
    assert all(len(store.events(r.id)) == 1 for r in rows)
    store.close()


def test_note_waiting_records_reasons_and_skips_jobs_no_longer_queued(tmp_path: Path) -> None:
    store = Store(tmp_path / "q.db")
    jobs = [store.run(lambda b: b.insert_job("alice", SPEC)) for _ in range(3)]
    store.run(lambda b: b.move(jobs[2].id, S.CANCELLED, "by user"))
    reasons = {jobs[0].id: "waiting: a", jobs[1].id: "waiting: b", jobs[2].id: "waiting: c"}
    store.run(lambda b: b.note_waiting(reasons, est_at=123.0))
    store.close()
    again = Store(tmp_path / "q.db")
    rows = [again.job(j.id) for j in jobs]
    assert [(r.reason, r.est_at) for r in rows if r] == [
        ("waiting: a", 123.0),
        ("waiting: b", 123.0),
        ("", 0.0),  # cancelled before the note: left alone
    ]
    assert [len(again.events(j.id)) for j in jobs] == [1, 1, 2]  # no history for a note
    again.close()


def test_jobs_by_site_follow_every_move_and_a_reopen(tmp_path: Path) -> None:
    """What each site's report is checked against: the live jobs sent there, and no others."""
    db = tmp_path / "q.db"
    store = Store(db)
    a, b, c = (store.run(lambda bt: bt.insert_job("alice", SPEC)) for _ in range(3))
    for job, site in ((a, "hpc"), (b, "hpc"), (c, "ai")):
        store.run(lambda bt, j=job, s=site: bt.move(j.id, S.FORWARDING, "placed", site=s))
    store.run(lambda bt: bt.move(a.id, S.PENDING, "", slurm_job_id="7"))
    store.run(lambda bt: bt.move(b.id, S.QUEUED, "refused", site=""))  # back to the queue
    store.run(lambda bt: bt.move(b.id, S.FORWARDING, "placed", site="ai"))  # sent elsewhere
    store.run(lambda bt: bt.move(c.id, S.COMPLETED, ""))  # final: no longer live
    by_site = {s: sorted(j.id for j in store.live_at(s)) for s in ("hpc", "ai", "")}
    assert by_site == {"hpc": [a.id], "ai": [b.id], "": []}
    assert store.live_at("hpc")[0].slurm_job_id == "7"  # the current row, not a stale one
    store.close()

    again = Store(db)
    assert {s: sorted(j.id for j in again.live_at(s)) for s in ("hpc", "ai", "")} == by_site
    again.close()


def test_a_queue_written_by_an_older_metaschedd_opens_and_keeps_its_jobs(tmp_path: Path) -> None:
    """An upgrade adds the columns a newer metaschedd keeps (here the first estimate, which
    calibration learns from) to the existing database; queued jobs survive it untouched."""
    db = tmp_path / "q.db"
    store = Store(db)
    job = store.run(lambda b: b.insert_job("alice", SPEC))
    store.close()
    conn = sqlite3.connect(db)
    for column in ("first_est_point", "first_est_at", "first_est_site"):
        conn.execute(f"ALTER TABLE jobs DROP COLUMN {column}")  # as an older release made it
    conn.commit()
    conn.close()

    again = Store(db)
    row = again.job(job.id)
    assert row is not None and (row.state, row.spec, row.first_est_at) == (S.QUEUED, ROW_SPEC, 0.0)
    held = HeldEstimate(job.id, "held", 200.0, 400.0, "hpc", "batch", 150.0)
    again.run(lambda b: b.note_held([held], est_at=100.0))
    again.close()
    reopened = Store(db)
    row = reopened.job(job.id)
    assert row is not None
    assert (row.first_est_point, row.first_est_at, row.first_est_site) == (150.0, 100.0, "hpc")
    reopened.close()


def test_a_users_live_jobs_and_count_follow_every_move_and_a_reopen(tmp_path: Path) -> None:
    """What `msub status` lists and the per-user queue limit counts: a user's live jobs only."""
    db = tmp_path / "q.db"
    store = Store(db)
    a1, a2 = (store.run(lambda b: b.insert_job("alice", SPEC)) for _ in range(2))
    b1 = store.run(lambda b: b.insert_job("bob", SPEC))
    store.run(lambda b: b.move(a1.id, S.FORWARDING, "placed", site="hpc"))
    store.run(lambda b: b.move(a2.id, S.CANCELLED, "by user"))

    def seen(s: Store) -> dict[str, tuple[list[int], int]]:
        return {u: ([j.id for j in s.jobs(user=u)], s.count_live(u)) for u in ("alice", "bob")}

    assert seen(store) == {"alice": ([a1.id], 1), "bob": ([b1.id], 1)}
    assert [j.state for j in store.jobs(user="alice")] == [S.FORWARDING]  # the current row
    assert [j.id for j in store.jobs(user="alice", include_final=True)] == [a1.id, a2.id]
    store.close()
    again = Store(db)
    assert seen(again) == {"alice": ([a1.id], 1), "bob": ([b1.id], 1)}
    again.close()


def test_a_version_1_queue_is_upgraded_for_arrays_and_keeps_its_jobs(tmp_path: Path) -> None:
    """Schema 2 (array tasks, holds) on a file written by a version-1 metaschedd: the columns
    and the arrays table are added, its jobs are untouched, arrays work, and the file then
    says the current version (a version-1 metaschedd refuses it rather than misread task rows)."""
    db = tmp_path / "q.db"
    store = Store(db)
    job = store.run(lambda b: b.insert_job("alice", SPEC))
    store.close()
    conn = sqlite3.connect(db)
    conn.execute("DROP INDEX IF EXISTS idx_jobs_array_id_array_task")
    for column in ("array_id", "array_task", "held"):
        conn.execute(f"ALTER TABLE jobs DROP COLUMN {column}")  # as version 1 made it
    conn.execute("DROP TABLE arrays")
    conn.execute("ALTER TABLE jobs DROP COLUMN recipe")  # nor the shelf (schema 3)
    conn.execute("DROP TABLE results")
    conn.execute("DROP TABLE apps")
    conn.execute("UPDATE meta SET value='1' WHERE key='schema_version'")
    conn.commit()
    conn.close()

    again = Store(db)
    row = again.job(job.id)
    assert row is not None and (row.state, row.spec, row.array_id, row.held) == (
        S.QUEUED,
        ROW_SPEC,
        0,
        False,
    )
    tasks = again.run(lambda b: b.insert_array("alice", SPEC, (1, 2), 0, S.QUEUED, "", held=False))
    again.close()
    reopened = Store(db)
    assert [(t.array_id, t.array_task, t.spec) for t in reopened.array_tasks(tasks[0].id)] == [
        (tasks[0].id, 1, ROW_SPEC),
        (tasks[0].id, 2, ROW_SPEC),
    ]
    assert reopened.scripts([t.id for t in tasks]) == {t.id: SPEC.script for t in tasks}
    reopened.close()
    conn = sqlite3.connect(db)
    version = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0]
    assert int(version) == SCHEMA_VERSION
    conn.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="newer than this metaschedd"):
        Store(db)


def test_scripts_are_kept_in_the_file_not_in_memory(tmp_path: Path) -> None:
    """Live jobs (what the daemon keeps in memory, and lists) carry no script; the script of
    each job is read back whole from the file, before and after a reopen."""
    db = tmp_path / "q.db"
    store = Store(db)
    big = "#!/bin/sh\n" + "echo x\n" * 100_000
    jobs = [store.insert("alice", pb.JobSpec(script=big, name="big")) for _ in range(3)]
    rows = [f.result(10) for f in jobs]
    small = store.run(lambda b: b.insert_job("bob", SPEC))
    for s in (store, None):
        s = s or Store(db)
        assert all(not j.spec.script for j in s.live.values())
        assert [j.spec.name for j in s.jobs(user="alice")] == ["big"] * 3
        assert s.scripts([r.id for r in rows] + [small.id, 999]) == {
            **{r.id: big for r in rows},
            small.id: SPEC.script,
        }
        assert s.script(small.id) == SPEC.script and s.script(999) is None
        s.close()
    assert SPEC.script  # the caller's spec is left as it was


@pytest.mark.parametrize("old", ["2", "3-shelf"])
def test_a_queue_with_scripts_inside_its_specs_is_upgraded(tmp_path: Path, old: str) -> None:
    """An older metaschedd (schema 2; or the app shelf's branch, which also called its schema
    3: shelf tables, scripts still inside the specs) kept each script inside its job's spec,
    an array's in the array's: opening its file moves every script to job_scripts, and every
    job (and every task) keeps its state and its script."""
    db = tmp_path / "q.db"
    store = Store(db)
    queued = store.run(lambda b: b.insert_job("alice", SPEC))
    done = store.run(lambda b: b.insert_job("bob", pb.JobSpec(script="#!/bin/sh\nls\n")))
    store.run(lambda b: b.move(done.id, S.CANCELLED, "by user"))
    arr = pb.JobSpec(script="#!/bin/sh\necho task\n", name="a")
    tasks = store.run(lambda b: b.insert_array("carol", arr, (1, 2, 3), 0, S.QUEUED, "", False))
    store.close()
    conn = sqlite3.connect(db)  # as an older release made it: the script inside the spec
    for job_id, script in conn.execute("SELECT job_id, script FROM job_scripts").fetchall():
        for table in ("jobs", "arrays"):
            found = conn.execute(f"SELECT spec FROM {table} WHERE id=?", (job_id,)).fetchone()
            if found is None or found[0] is None:
                continue
            spec = pb.JobSpec.FromString(found[0])
            spec.script = script
            conn.execute(
                f"UPDATE {table} SET spec=? WHERE id=?", (spec.SerializeToString(), job_id)
            )
    conn.execute("DROP TABLE job_scripts")
    if old == "2":
        conn.execute("DROP TABLE results")
        conn.execute("DROP TABLE apps")
        conn.execute("ALTER TABLE jobs DROP COLUMN recipe")
    conn.execute("UPDATE meta SET value=? WHERE key='schema_version'", (old[0],))
    conn.commit()
    conn.close()

    again = Store(db)
    row = again.job(queued.id)
    assert row is not None and (row.state, row.spec) == (S.QUEUED, ROW_SPEC)
    assert again.script(queued.id) == SPEC.script
    assert again.script(done.id) == "#!/bin/sh\nls\n"
    old = again.job(done.id)
    assert old is not None and old.state == S.CANCELLED and not old.spec.script
    assert again.scripts([t.id for t in tasks]) == {t.id: arr.script for t in tasks}
    assert [t.spec for t in again.array_tasks(tasks[0].id)] == [pb.JobSpec(name="a")] * 3
    again.close()
    with sqlite3.connect(db) as conn:
        version = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        assert version == (str(SCHEMA_VERSION),)


def test_pages_of_a_listing_cover_every_job_once(tmp_path: Path) -> None:
    store = Store(tmp_path / "q.db")
    ids = [f.result(10).id for f in [store.insert("alice", SPEC) for _ in range(25)]]
    store.run(lambda b: b.move(ids[3], S.CANCELLED, "by user"))
    for include_final, want in ((False, [i for i in ids if i != ids[3]]), (True, ids)):
        seen: list[int] = []
        after, more = 0, True
        while more:
            rows, more = store.page("alice", include_final=include_final, after=after, limit=7)
            seen += [r.id for r in rows]
            after = rows[-1].id if rows else after
        assert seen == want
    assert store.page("bob") == ([], False)
    store.close()


def test_a_retried_submission_gets_the_job_the_first_one_made(tmp_path: Path) -> None:
    """The idempotency key: the same user and key make one job, even sent at the same time
    (the writer tells them apart), and after a restart; another user's key is their own."""
    db = tmp_path / "q.db"
    store = Store(db)
    keyed = pb.JobSpec(script="#!/bin/sh\ntrue\n", name="k", submit_key="retry-1")
    with ThreadPoolExecutor(8) as pool:
        rows = list(pool.map(lambda _: store.insert("alice", keyed).result(30), range(16)))
    assert len({r.id for r in rows}) == 1
    other = store.insert("bob", keyed).result(30)
    assert other.id != rows[0].id
    plain = [store.insert("alice", SPEC).result(30) for _ in range(2)]
    assert plain[0].id != plain[1].id  # no key: every submission is a job
    found = store.job_of_key("alice", "retry-1")
    assert found is not None and found.id == rows[0].id
    store.close()

    again = Store(db)  # a new process: the key is found on the file, within the window
    assert again.insert("alice", keyed).result(30).id == rows[0].id
    assert len(again.jobs(user="alice", include_final=True)) == 3
    again.key_window_s = 0.0  # outside the window a key is forgotten
    assert again.job_of_key("alice", "retry-1") is None
    again.close()
