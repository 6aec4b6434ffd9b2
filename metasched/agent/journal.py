"""The agent's own durable memory of what it asked Slurm to run.

Before sbatch runs, the tag is written as an intent; after, the Slurm id. If the agent dies
between the two, the next submit of the same tag first looks for it in Slurm (queue and
completion records) instead of submitting again: this is what makes forwarding exactly-once
across agent crashes. A cancelled tag is remembered so a late, re-sent submit is refused.

It is also the agent's word on which Slurm job is which tag's: a job that carries a tag the
journal has a different Slurm id for is not ours, whatever its comment says (see tagkey.py).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from pathlib import Path


class Journal:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS submissions (tag TEXT PRIMARY KEY, job_id INTEGER,"
            " attempt INTEGER, slurm_job_id TEXT, state TEXT, at REAL)"
        )
        columns = {r[1] for r in self._conn.execute("PRAGMA table_info(submissions)")}
        if "local_user" not in columns:  # journals written before tags were signed
            self._conn.execute("ALTER TABLE submissions ADD COLUMN local_user TEXT")
        self._lock = threading.Lock()
        self.path = path

    def get(self, tag: str) -> tuple[str, str] | None:
        """(state, slurm_job_id) of a tag: state is intent, submitted or cancelled."""
        with self._lock:
            row = self._conn.execute(
                "SELECT state, slurm_job_id FROM submissions WHERE tag=?", (tag,)
            ).fetchone()
        return (row[0], row[1] or "") if row else None

    def submitted(self, tags: list[str]) -> dict[str, tuple[str, str]]:
        """tag -> (Slurm id, local user) of those tags the agent has a Slurm id for."""
        out: dict[str, tuple[str, str]] = {}
        with self._lock:
            for i in range(0, len(tags), 500):
                chunk = tags[i : i + 500]
                rows = self._conn.execute(
                    "SELECT tag, slurm_job_id, local_user FROM submissions WHERE tag IN"
                    f" ({','.join('?' * len(chunk))}) AND slurm_job_id != ''",
                    chunk,
                ).fetchall()
                out.update((r[0], (r[1], r[2] or "")) for r in rows)
        return out

    def record(
        self,
        tag: str,
        job_id: int,
        attempt: int,
        state: str,
        slurm_job_id: str = "",
        local_user: str = "",
    ) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT INTO submissions"
                " (tag, job_id, attempt, slurm_job_id, state, at, local_user)"
                " VALUES (?,?,?,?,?,?,?) ON CONFLICT(tag) DO UPDATE SET state=excluded.state,"
                " slurm_job_id=COALESCE(NULLIF(excluded.slurm_job_id, ''), slurm_job_id),"
                " local_user=COALESCE(NULLIF(excluded.local_user, ''), local_user),"
                " at=excluded.at",
                (tag, job_id, attempt, slurm_job_id, state, time.time(), local_user),
            )

    def record_many(self, records: list[tuple[str, int, int, str, str]]) -> None:
        """record() for each (tag, job_id, attempt, state, slurm_job_id), in one transaction
        (one fsync for a whole array's cancels, not one per task)."""
        now = time.time()
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(
                    "INSERT INTO submissions (tag, job_id, attempt, slurm_job_id, state, at)"
                    " VALUES (?,?,?,?,?,?) ON CONFLICT(tag) DO UPDATE SET state=excluded.state,"
                    " slurm_job_id=COALESCE(NULLIF(excluded.slurm_job_id, ''), slurm_job_id),"
                    " at=excluded.at",
                    [(t, j, a, sid, st, now) for t, j, a, st, sid in records],
                )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def entries(self) -> int:
        """How many submissions the journal remembers (the agent's metrics)."""
        with self._lock:
            row = self._conn.execute("SELECT count(*) FROM submissions").fetchone()
        return int(row[0])

    def size_bytes(self) -> int:
        """The journal's files on disk: the database and its write-ahead log."""
        total = 0
        for f in (self.path, self.path.with_name(self.path.name + "-wal")):
            with contextlib.suppress(FileNotFoundError):  # no WAL between checkpoints
                total += f.stat().st_size
        return total

    def forget_settled(self, before: float, live: set[str]) -> int:
        """Forget the tags last written before `before` (a time.time()) that no Slurm job in
        the site's queue carries, except intents. How many were forgotten.

        A row is needed while a submit of its tag may still come (the daemon re-sends only
        while it waits for the answer, seconds to minutes) and while its Slurm job is in the
        queue (an unsigned tag of an older agent is ours only where the journal vouches for
        it). An intent is an unanswered sbatch: it is kept whatever its age."""
        with self._lock:
            old = [
                r[0]
                for r in self._conn.execute(
                    "SELECT tag FROM submissions WHERE at < ? AND state != 'intent'", (before,)
                )
                if r[0] not in live
            ]
            if not old:
                return 0
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for i in range(0, len(old), 500):
                    chunk = old[i : i + 500]
                    self._conn.execute(
                        f"DELETE FROM submissions WHERE tag IN ({','.join('?' * len(chunk))})",
                        chunk,
                    )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return len(old)

    def close(self) -> None:
        self._conn.close()
