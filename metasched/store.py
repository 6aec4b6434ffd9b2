"""The global queue: jobs, their history and the sites, in one SQLite file.

Durability: every state change is one transaction (the job row and its history event
together), committed with synchronous=FULL in WAL mode before anyone is told about it, so
an acknowledged job survives a process crash and a power cut. All writes go through one
writer thread that commits whatever has queued up in one transaction (group commit): the
fsync is paid once per batch, not once per job, which is what lets the daemon take
thousands of durable submissions a second.

The writer also keeps the live (non-final) jobs in memory, so placement and the agent
streams read them without touching the disk; finished jobs are read back from the file.
A job's batch script is kept apart (table job_scripts; an array's once, under the array's
id), never in memory: it is read from the file when the job is sent to a site and when its
owner asks for it (GetJobScript), so a user's 1 MB scripts cost disk, not the daemon's memory.

The file is checked before it is used: an empty file, one that is not SQLite or fails
`PRAGMA quick_check` is refused with one line naming it (StoreError), and a job row that
cannot be decoded is quarantined (logged, kept in the file, listed for admins) rather than
stopping the daemon. A full disk fails the writes of that batch with StoreFull; nothing in it
was acknowledged, and writes succeed again once there is space.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import errno
import functools
import itertools
import queue
import shutil
import sqlite3
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import sqlite_utils
from google.protobuf.message import DecodeError

from metasched import log, shelf_tables
from metasched.states import FINAL_STATES, JobState, can_move
from metasched.v1 import metasched_pb2 as pb

T = TypeVar("T")
# 2: array tasks (jobs.array_id/array_task, their shared spec in `arrays`) and holds
# (jobs.held). A version-1 file is upgraded in place; a version-1 daemon refuses a version-2
# file (its task rows keep their spec in `arrays`, which it would not know to read).
# 3: scripts in their own table (job_scripts), not inside jobs.spec or arrays.spec.
# jobs.priority and jobs.admin_held (admins' priority and holds) are added in place to a file
# without them, with no new version: a metaschedd that does not know them reads the rest.
# 4: the app shelf (tables apps and results; jobs.recipe). Versions 1-3 are upgraded in place
# (a version 3 of either kind: a branch's shelf without job_scripts gets them too); an older
# daemon refuses a version-4 file (it would send an app's run with its stand-in script).
SCHEMA_VERSION = 4
MAX_BATCH = 2000
# Rows per multi-row INSERT of new jobs: 7 parameters a row stays under SQLite's oldest
# default limit of 999 parameters a statement.
INSERT_ROWS = 128


MAX_JOB_ID = 2**63 - 1  # the largest id SQLite can hold (the API's job_id is uint64)


class StoreError(Exception):
    pass


class IllegalTransition(StoreError):
    pass


class NoSuchJob(StoreError):
    pass


class StoreFull(StoreError):
    """The disk (or the file's size limit) is full: nothing of the failed batch was written."""


class DamagedRow(StoreError):
    """A job row that cannot be decoded; the job is quarantined (Store.quarantined)."""

    def __init__(self, job_id: int, why: str) -> None:
        super().__init__(f"job {job_id} cannot be read from the database ({why})")
        self.job_id = job_id
        self.why = why


@dataclass(frozen=True)
class Quarantined:
    """A job row the daemon could not decode, left untouched in the file for an admin."""

    job_id: int
    user: str  # the raw column values, as far as they are text
    state: str
    why: str


@dataclass(frozen=True)
class JobRow:
    id: int
    user: str
    spec: pb.JobSpec  # without its script (Store.script reads that from the file)
    state: JobState
    submitted_at: float
    updated_at: float
    site: str = ""
    partition: str = ""
    slurm_job_id: str = ""
    attempt: int = 0
    started_at: float = 0.0
    ended_at: float = 0.0
    exit_code: int = 0
    reason: str = ""
    est_start: float = 0.0
    est_p90: float = 0.0
    est_site: str = ""
    est_partition: str = ""
    est_at: float = 0.0
    est_point: float = 0.0  # the uncalibrated profile start of the current estimate
    # The first estimate (what the user was told at submission), as calibration learns from
    # it: the uncalibrated start, when it was made, and for which site.
    first_est_point: float = 0.0
    first_est_at: float = 0.0
    first_est_site: str = ""
    infra_retries: int = 0
    recalls: int = 0  # times pulled back from a site by rebalancing
    cancel_requested: bool = False
    # sites this job may no longer go to (a site refused it, or failed it for infra reasons)
    avoid_sites: tuple[str, ...] = field(default=())
    # an array task (users see "<array_id>_<array_task>"); array_id 0: not a task
    array_id: int = 0
    array_task: int = 0
    held: bool = False  # held by its user (msub hold / --hold) until released
    admin_held: bool = False  # held by an admin: only an admin releases it
    priority: int = 0  # set by an admin: the global queue is placed by priority, then id
    recipe: str = ""  # an app's run: the recipe chosen for the site it was sent to


@dataclass(frozen=True)
class Event:
    job_id: int
    at: float
    state: JobState
    site: str
    slurm_job_id: str
    attempt: int
    detail: str


_JOB_COLUMNS = {
    "id": int,
    "user": str,
    "name": str,
    "spec": bytes,
    "state": str,
    "submitted_at": float,
    "updated_at": float,
    "site": str,
    "partition": str,
    "slurm_job_id": str,
    "attempt": int,
    "started_at": float,
    "ended_at": float,
    "exit_code": int,
    "reason": str,
    "est_start": float,
    "est_p90": float,
    "est_site": str,
    "est_partition": str,
    "est_at": float,
    "est_point": float,
    "first_est_point": float,
    "first_est_at": float,
    "first_est_site": str,
    "infra_retries": int,
    "recalls": int,
    "cancel_requested": int,
    "avoid_sites": str,
    "array_id": int,
    "array_task": int,
    "held": int,
    "submit_key": str,  # the submission's idempotency key (JobSpec.submit_key), or NULL
    "admin_held": int,
    "priority": int,
    "recipe": str,  # an app's run: the recipe chosen for the site it was sent to
}


def _text(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TypeError(f"{type(value).__name__} where text belongs")
    return value


def _row_to_job(r: sqlite3.Row, spec: pb.JobSpec | None = None) -> JobRow:
    """A job from its row; an array task's spec (kept once, in `arrays`) is given. DamagedRow
    when any column cannot be what it should be."""
    try:
        return JobRow(
            id=r["id"],
            user=_text(r["user"]),
            spec=spec if spec is not None else pb.JobSpec.FromString(r["spec"] or b""),
            state=JobState(r["state"]),
            submitted_at=float(r["submitted_at"]),
            updated_at=float(r["updated_at"]),
            site=_text(r["site"]),
            partition=_text(r["partition"]),
            slurm_job_id=_text(r["slurm_job_id"]),
            attempt=int(r["attempt"] or 0),
            started_at=float(r["started_at"] or 0.0),
            ended_at=float(r["ended_at"] or 0.0),
            exit_code=int(r["exit_code"] or 0),
            reason=_text(r["reason"]),
            est_start=float(r["est_start"] or 0.0),
            est_p90=float(r["est_p90"] or 0.0),
            est_site=_text(r["est_site"]),
            est_partition=_text(r["est_partition"]),
            est_at=float(r["est_at"] or 0.0),
            est_point=float(r["est_point"] or 0.0),
            first_est_point=float(r["first_est_point"] or 0.0),
            first_est_at=float(r["first_est_at"] or 0.0),
            first_est_site=_text(r["first_est_site"]),
            infra_retries=int(r["infra_retries"] or 0),
            recalls=int(r["recalls"] or 0),
            cancel_requested=bool(r["cancel_requested"]),
            avoid_sites=tuple(s for s in _text(r["avoid_sites"]).split(",") if s),
            array_id=int(r["array_id"] or 0),
            array_task=int(r["array_task"] or 0),
            held=bool(r["held"]),
            admin_held=bool(r["admin_held"]),
            priority=int(r["priority"] or 0),
            recipe=_text(r["recipe"]),
        )
    except (DecodeError, ValueError, TypeError, OverflowError) as e:
        raise DamagedRow(r["id"], f"{type(e).__name__}: {e}") from None


def _damaged(path: Path, what: str) -> str:
    # one line whatever SQLite said (quick_check lists its findings a line each), and short
    found = "; ".join(part.strip() for part in what.splitlines() if part.strip())
    if len(found) > 300:
        found = found[:300] + "..."
    return (
        f"{path} is damaged ({found}): restore a backup (metasched-admin backup), or move it "
        "away and start an empty federation on purpose with metaschedd --new"
    )


def _is_full(e: BaseException | None) -> bool:
    """Whether e (or what it arose from) is SQLite's "database or disk is full"."""
    while e is not None:
        if isinstance(e, sqlite3.Error) and (getattr(e, "sqlite_errorcode", 0) & 0xFF) == 13:
            return True  # SQLITE_FULL
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return True
        e = e.__cause__ or e.__context__
    return False


def bare(spec: pb.JobSpec) -> tuple[pb.JobSpec, bytes]:
    """(spec without its script, its bytes). Parsed afresh from the bytes: a copy with the
    script cleared would keep the script's bytes in its arena for as long as it lives (upb
    frees a message's memory only with the whole message). ~3 us."""
    copy = pb.JobSpec()
    copy.CopyFrom(spec)
    copy.ClearField("script")
    blob = copy.SerializeToString()
    return pb.JobSpec.FromString(blob), blob


_UPDATABLE = (
    "state",
    "updated_at",
    "site",
    "partition",
    "slurm_job_id",
    "attempt",
    "started_at",
    "ended_at",
    "exit_code",
    "reason",
    "est_start",
    "est_p90",
    "est_site",
    "est_partition",
    "est_at",
    "est_point",
    "first_est_point",
    "first_est_at",
    "first_est_site",
    "infra_retries",
    "recalls",
    "cancel_requested",
    "avoid_sites",
    "held",
    "admin_held",
    "priority",
    "recipe",
)


def _updated(row: JobRow, **fields: Any) -> JobRow:
    """dataclasses.replace(row, **fields) at a fifth of the cost: the writer makes one per
    job change, and a pass after a burst changes ~100k (JobRow has no __post_init__ to run)."""
    new = object.__new__(JobRow)
    d = new.__dict__
    d.update(row.__dict__)
    if not fields.keys() <= d.keys():
        raise TypeError(f"JobRow has no field {sorted(fields.keys() - d.keys())[0]!r}")
    d.update(fields)
    return new


def _keep_first_estimate(old: JobRow, fields: dict[str, Any]) -> dict[str, Any]:
    """fields, plus first_est_* when they give the job its first estimate: calibration learns
    from what the user was told at submission, not from later estimates (a held job's last
    one, made as it is forwarded, is a wait of ~0 and always right)."""
    if old.first_est_at or not fields.get("est_point") or not fields.get("est_at"):
        return fields
    return fields | {
        "first_est_point": fields["est_point"],
        "first_est_at": fields["est_at"],
        "first_est_site": fields.get("est_site", ""),
    }


def _db_value(name: str, value: Any) -> Any:
    if name == "state":
        return str(value)
    if name in ("cancel_requested", "held", "admin_held"):
        return int(bool(value))
    if name == "avoid_sites":
        return ",".join(value)
    return value


# What Batch.note_held writes for each held job, and for its first estimate.
_HELD_COLUMNS = (
    "updated_at",
    "reason",
    "est_start",
    "est_p90",
    "est_site",
    "est_partition",
    "est_at",
    "est_point",
)
_FIRST_COLUMNS = ("first_est_point", "first_est_at", "first_est_site")
_NEW_JOB_COLUMNS = (
    "id",
    "user",
    "name",
    "spec",
    "state",
    "submitted_at",
    "updated_at",
    "submit_key",
)
# New jobs per multi-row INSERT: its parameters stay under SQLite's oldest default limit (999).
NEW_ROWS = 999 // len(_NEW_JOB_COLUMNS)
# A job that does not start QUEUED or is an array task says more (insert_held / insert_array).
_NEW_FULL_COLUMNS = (*_NEW_JOB_COLUMNS, "reason", "held", "array_id", "array_task")
FULL_ROWS = 64  # 12 parameters a row
# How long a submission's idempotency key keeps answering with the job it made.
SUBMIT_KEY_WINDOW_S = 3600.0
_EVENT_COLUMNS = ("job_id", "at", "state", "site", "slurm_job_id", "attempt", "detail")
_SCRIPT_COLUMNS = ("job_id", "script")


@functools.cache
def _insert_sql(table: str, columns: tuple[str, ...], rows: int) -> str:
    one = "(" + ",".join("?" * len(columns)) + ")"
    return f"INSERT INTO {table} ({','.join(columns)}) VALUES " + ",".join([one] * rows)


def _live_only(wanted: set[JobState] | None, include_final: bool) -> bool:
    """Whether a listing needs only the live jobs (kept in memory)."""
    return not include_final and (wanted is None or not (wanted & FINAL_STATES))


def _where(
    user: str | None,
    wanted: set[JobState] | None,
    after: int = 0,
    names: set[str] | frozenset[str] = frozenset(),
    since: float = 0.0,
) -> tuple[str, list[Any]]:
    """The WHERE clause (and its arguments) of a listing read from the file."""
    where: list[str] = []
    args: list[Any] = []
    if after:
        where.append("id > ?")
        args.append(after)
    if user is not None:
        where.append("user=?")
        args.append(user)
    if wanted is not None:
        where.append("state IN ({})".format(",".join("?" * len(wanted))))
        args.extend(str(s) for s in wanted)
    if names:
        where.append("name IN ({})".format(",".join("?" * len(names))))
        args.extend(sorted(names))
    if since:
        final = ",".join("?" * len(FINAL_STATES))
        where.append(f"(submitted_at>=? OR ended_at>=? OR state NOT IN ({final}))")
        args.extend([since, since, *(str(s) for s in FINAL_STATES)])
    return (" WHERE " + " AND ".join(where) if where else ""), args


# event names in the log, by the state a job moves to
_LOG_EVENT = {
    JobState.QUEUED: "job_requeued",
    JobState.FORWARDING: "job_forwarded",
    JobState.PENDING: "job_pending",
    JobState.RUNNING: "job_running",
    JobState.CANCELLING: "job_cancelling",
    JobState.RECALLING: "job_recalling",
    JobState.WAITING: "job_waiting",
    JobState.COMPLETED: "job_completed",
    JobState.FAILED: "job_failed",
    JobState.CANCELLED: "job_cancelled",
    JobState.TIMEOUT: "job_timeout",
    JobState.OUT_OF_MEMORY: "job_out_of_memory",
    JobState.NODE_FAIL: "job_node_fail",
    JobState.LOST: "job_lost",
}


class Batch:
    """The jobs changed so far in one write transaction (seen by later operations in it)."""

    def __init__(self, store: Store, conn: sqlite3.Connection, now: float) -> None:
        self.store = store
        self.conn = conn
        self.now = now
        self.changed: dict[int, JobRow] = {}
        self.events: list[tuple[JobRow, JobState, str]] = []  # (new row, old state, detail)
        self.keys: list[tuple[tuple[str, str], int]] = []  # new jobs' idempotency keys

    def job(self, job_id: int) -> JobRow:
        row = self.changed.get(job_id) or self.store.live.get(job_id)
        if row is None:
            row = self.store._read_job(self.conn, job_id)
        if row is None:
            raise NoSuchJob(f"no job {job_id}")
        return row

    def insert_job(self, user: str, spec: pb.JobSpec) -> JobRow:
        """A new QUEUED job with its "submitted" event (one job through insert_jobs)."""
        return self.insert_jobs([NewJob(user, spec)])[0]

    def insert_jobs(self, new: list[NewJob]) -> list[JobRow]:
        """New QUEUED jobs with their "submitted" events, in a few statements (ids in the
        order given)."""
        # The ids SQLite would choose (the largest so far plus one), chosen here so a
        # multi-row INSERT can say which row is which job.
        top = self._top_id(len(new))
        now, queued = self.now, str(JobState.QUEUED)
        rows = [
            JobRow(top + 1 + k, nj.user, nj.spec, JobState.QUEUED, now, now)
            for k, nj in enumerate(new)
        ]
        for at in range(0, len(new), NEW_ROWS):
            part = range(at, min(at + NEW_ROWS, len(new)))
            self.conn.execute(
                _insert_sql("jobs", _NEW_JOB_COLUMNS, len(part)),
                [
                    v
                    for k in part
                    for v in (
                        rows[k].id,
                        new[k].user,
                        new[k].name,
                        new[k].blob,
                        queued,
                        now,
                        now,
                        new[k].key or None,
                    )
                ],
            )
            self.conn.execute(
                _insert_sql("job_events", _EVENT_COLUMNS, len(part)),
                [v for k in part for v in (rows[k].id, now, queued, "", "", 0, "submitted")],
            )
            self.conn.execute(
                _insert_sql("job_scripts", _SCRIPT_COLUMNS, len(part)),
                [v for k in part for v in (rows[k].id, new[k].script)],
            )
        for row, nj in zip(rows, new, strict=True):
            self.changed[row.id] = row
            self.events.append((row, JobState.QUEUED, "submitted"))
            if nj.key:
                self.keys.append(((nj.user, nj.key), row.id))
        return rows

    def _top_id(self, more: int) -> int:
        top: int = self.conn.execute("SELECT max(id) FROM jobs").fetchone()[0] or 0
        if top + more > MAX_JOB_ID:
            raise StoreError("job ids exhausted")
        return top

    def insert_held(
        self, user: str, spec: pb.JobSpec, state: JobState, reason: str, held: bool
    ) -> JobRow:
        """A new job that starts WAITING (a dependency, a begin time, a hold) or QUEUED."""
        kept, blob = bare(spec)
        row = JobRow(
            self._top_id(1) + 1, user, kept, state, self.now, self.now, reason=reason, held=held
        )
        self._insert_full([row], blob)
        self._insert_script(row.id, spec.script)
        return row

    def _insert_script(self, job_id: int, script: str) -> None:
        self.conn.execute(_insert_sql("job_scripts", _SCRIPT_COLUMNS, 1), (job_id, script))

    def insert_array(
        self,
        user: str,
        spec: pb.JobSpec,
        tasks: tuple[int, ...],
        max_running: int,
        state: JobState,
        reason: str,
        held: bool,
    ) -> list[JobRow]:
        """An array: one row per task, ids in a block whose first is the array's id, the spec
        kept once in `arrays` (a 1,000-task array of a 1 MiB script is 1 MiB, not 1 GiB) and
        its script once in job_scripts, under the array's id."""
        array_id = self._top_id(len(tasks)) + 1
        kept, blob = bare(spec)
        self.conn.execute(
            "INSERT INTO arrays (id, user, spec, tasks, max_running, submitted_at)"
            " VALUES (?,?,?,?,?,?)",
            (array_id, user, blob, len(tasks), max_running, self.now),
        )
        self._insert_script(array_id, spec.script)
        self.store._array_specs[array_id] = kept
        rows = [
            JobRow(
                array_id + k,
                user,
                kept,
                state,
                self.now,
                self.now,
                reason=reason,
                held=held,
                array_id=array_id,
                array_task=task,
            )
            for k, task in enumerate(tasks)
        ]
        self._insert_full(rows, None)
        return rows

    def _insert_full(self, rows: list[JobRow], blob: bytes | None) -> None:
        now = self.now
        # an array's key names its first task, the id the user was given
        key, first = (rows[0].spec.submit_key or None, rows[0].id) if rows else (None, 0)
        for at in range(0, len(rows), FULL_ROWS):
            part = rows[at : at + FULL_ROWS]
            self.conn.execute(
                _insert_sql("jobs", _NEW_FULL_COLUMNS, len(part)),
                [
                    v
                    for r in part
                    for v in (
                        r.id,
                        r.user,
                        r.spec.name,
                        blob,
                        str(r.state),
                        now,
                        now,
                        key if r.id == first else None,
                        r.reason,
                        int(r.held),
                        r.array_id,
                        r.array_task,
                    )
                ],
            )
            self.conn.execute(
                _insert_sql("job_events", _EVENT_COLUMNS, len(part)),
                [v for r in part for v in (r.id, now, str(r.state), "", "", 0, "submitted")],
            )
        for row in rows:
            self.changed[row.id] = row
            self.events.append((row, row.state, "submitted"))
        if key:
            self.keys.append(((rows[0].user, key), first))

    def job_of_key(self, user: str, key: str) -> JobRow | None:
        """The job a submission with this idempotency key made: in this transaction, or
        committed within the key window."""
        for (u, k), job_id in reversed(self.keys):
            if (u, k) == (user, key):
                return self.job(job_id)
        made = self.store._job_of_key(self.conn, (user, key), self.now)
        return None if made is None else self.job(made)

    def note_waiting(self, reasons: dict[int, str], est_at: float) -> None:
        """Record why queued jobs wait (reason, est_at), as move(id, QUEUED, reason=...) would
        for each, but with one UPDATE per distinct reason; jobs no longer queued are skipped."""
        by_reason: dict[str, list[int]] = {}
        for job_id, reason in reasons.items():
            old = self.job(job_id)
            if old.state != JobState.QUEUED:
                continue  # cancelled meanwhile
            self.changed[job_id] = _updated(old, reason=reason, est_at=est_at, updated_at=self.now)
            by_reason.setdefault(reason, []).append(job_id)
        for reason, ids in by_reason.items():
            for at in range(0, len(ids), INSERT_ROWS):
                part = ids[at : at + INSERT_ROWS]
                self.conn.execute(
                    "UPDATE jobs SET reason=?, est_at=?, updated_at=? WHERE id IN ({})".format(
                        ",".join("?" * len(part))
                    ),
                    (reason, est_at, self.now, *part),
                )

    def note_held(self, held: list[HeldEstimate], est_at: float) -> None:
        """Record new estimates of jobs held in the global queue, as move(id, QUEUED,
        reason=..., est_...=...) would for each, in two statements for all; jobs no longer
        queued are skipped. A pass after a burst holds ~100k jobs at once: one move each took
        ~40 us of the writer's time."""
        rows, firsts = [], []
        for h in held:
            old = self.job(h.job_id)
            if old.state != JobState.QUEUED:
                continue  # cancelled meanwhile
            values = (self.now, h.reason, h.start, h.p90, h.site, h.partition, est_at, h.point)
            fields = _keep_first_estimate(old, dict(zip(_HELD_COLUMNS, values, strict=True)))
            self.changed[h.job_id] = _updated(old, **fields)
            rows.append((*values, h.job_id))
            if "first_est_at" in fields:
                firsts.append((*(fields[c] for c in _FIRST_COLUMNS), h.job_id))
        for columns, params in ((_HELD_COLUMNS, rows), (_FIRST_COLUMNS, firsts)):
            sets = ",".join(f"{c}=?" for c in columns)
            self.conn.executemany(f"UPDATE jobs SET {sets} WHERE id=?", params)

    def move(
        self,
        job_id: int,
        to: JobState,
        detail: str = "",
        expect: Iterable[JobState] | None = None,
        **fields: Any,
    ) -> JobRow:
        """Move a job to state `to` (or update its fields in place when `to` is its state)."""
        old = self.job(job_id)
        if expect is not None and old.state not in set(expect):
            raise IllegalTransition(f"job {job_id} is {old.state}, not {'/'.join(expect)}")
        if not can_move(old.state, to):
            raise IllegalTransition(f"job {job_id} cannot go from {old.state} to {to}")
        new = _updated(old, state=to, updated_at=self.now, **_keep_first_estimate(old, fields))
        changes = {
            k: _db_value(k, getattr(new, k))
            for k in _UPDATABLE
            if getattr(new, k) != getattr(old, k) or k == "updated_at"
        }
        sets = ",".join(f"{k}=?" for k in changes)
        self.conn.execute(f"UPDATE jobs SET {sets} WHERE id=?", (*changes.values(), job_id))
        state_changed = to != old.state
        if state_changed or detail:
            self._event(new, detail)
            self.events.append((new, old.state, detail))
        self.changed[job_id] = new
        return new

    def _event(self, row: JobRow, detail: str) -> None:
        self.conn.execute(
            _insert_sql("job_events", _EVENT_COLUMNS, 1),
            (row.id, self.now, str(row.state), row.site, row.slurm_job_id, row.attempt, detail),
        )


def _insert_one(nj: NewJob) -> Callable[[Batch], JobRow]:
    return lambda b: b.insert_jobs([nj])[0]  # the spec is serialised already


@dataclass(frozen=True, slots=True)
class RunRecord:
    """A job's run, clipped to the window Store.history was asked about."""

    job_id: int
    user: str
    site: str
    start: float
    end: float
    spec: pb.JobSpec


@dataclass(frozen=True, slots=True)
class HeldEstimate:
    """A queued job's new estimate from a placement pass that holds it (Batch.note_held)."""

    job_id: int
    reason: str
    start: float
    p90: float
    site: str
    partition: str
    point: float


class NewJob:
    """A submission waiting for the writer, its spec already serialised by the caller's thread.

    New jobs are the one write that comes in thousands a second, so the writer inserts the
    ones queued together with a few multi-row INSERTs instead of running each as an op.
    The script goes to its own table; the spec kept (in the live job) and stored in the job's
    row is one without it (bare)."""

    __slots__ = ("blob", "key", "name", "script", "spec", "user")

    def __init__(self, user: str, spec: pb.JobSpec) -> None:
        self.user = user
        self.script = spec.script
        self.spec, self.blob = bare(spec)
        self.name = spec.name
        self.key = spec.submit_key


Listener = Callable[[list[tuple[JobRow, JobState, str]]], None]
_Item = tuple[Callable[[Batch], Any] | NewJob, Future[Any]]


class Store:
    """SQLite-backed global queue with one group-committing writer thread."""

    def __init__(self, path: Path | str, synchronous: str = "FULL", new: bool = False) -> None:
        """Open the queue at `path`, making it when there is no file there yet.

        new: make a new, empty federation on purpose where the file is missing or empty (0
        bytes); without it an empty file is refused, since a database never is one (the jobs it
        held are gone). StoreError, one line naming the file, for any file that cannot be used.
        """
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._synchronous = synchronous
        self._local = threading.local()
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._listeners: list[Listener] = []
        self._change_hooks: list[Callable[[Mapping[int, JobRow]], None]] = []
        # told how long each commit took (seconds): the daemon's metrics; once per batch
        self.on_commit: Callable[[float], None] | None = None
        self.live: dict[int, JobRow] = {}
        # job id -> why its row cannot be read (kept in the file, listed for admins)
        self.quarantined: dict[int, Quarantined] = {}
        self.log = log.get(component="store")
        # Array specs by array id: every live array's, and those read back lately.
        self._array_specs: dict[int, pb.JobSpec] = {}
        self.created = self._check_file(new)
        self._disk_full = False
        try:
            conn = self._connect()
            if not self.created:
                self._check_integrity(conn)
                self._check_ours(conn)
            self._create_schema(conn)
            self._load_live(conn)
            self.federation = self._federation_id(conn)
        except sqlite3.DatabaseError as e:
            raise StoreError(_damaged(self.path, str(e))) from None
        # Live jobs by user (the queue limit checked on every submission, a user's listing)
        # and by the site they were sent to (every site report looks up its own): a scan of
        # every live job costs ~15 ms at 100k queued, and 1,000 sites report every 10 s
        # (bench/daemon_cycle.py).
        self._live_of_user: dict[str, dict[int, JobRow]] = {}
        self._live_at_site: dict[str, dict[int, JobRow]] = {}
        # Live tasks by array: an array's throttle, dependencies on it and its cancel.
        self._live_of_array: dict[int, dict[int, JobRow]] = {}
        for job in self.live.values():
            self._live_of_user.setdefault(job.user, {})[job.id] = job
            if job.site:
                self._live_at_site.setdefault(job.site, {})[job.id] = job
            if job.array_id:
                self._live_of_array.setdefault(job.array_id, {})[job.id] = job
        # Idempotency keys of the submissions since this process started (the writer's own):
        # (user, key) -> job id, oldest first. Before that, the index on the file answers.
        self.key_window_s = SUBMIT_KEY_WINDOW_S
        self._opened_at = time.time()
        self._keys: dict[tuple[str, str], int] = {}
        self._key_times: collections.deque[tuple[float, tuple[str, str]]] = collections.deque()
        self._wconn = conn
        self._writer = threading.Thread(target=self._write_loop, name="store-writer", daemon=True)
        self._writer.start()

    # ---------------------------------------------------------------- connections and schema

    def _check_file(self, new: bool) -> bool:
        """Whether the database is to be made now; StoreError for a file that must not be."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return True
        if not stat.S_ISREG(st.st_mode):
            raise StoreError(f"{self.path} is not a regular file")
        wal = Path(f"{self.path}-wal")
        if st.st_size == 0 and new and not (wal.exists() and wal.stat().st_size):
            return True
        if st.st_size == 0:
            raise StoreError(
                f"{self.path} is empty (0 bytes): the jobs it held are gone; metaschedd does not "
                "start a new federation over it by itself (restore a backup, or run "
                "metaschedd --new to start an empty one on purpose)"
            )
        if new:
            raise StoreError(
                f"{self.path} already holds a database ({st.st_size} bytes): --new makes one "
                "only where there is none; move it away first"
            )
        return False

    def _check_ours(self, conn: sqlite3.Connection) -> None:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not {"jobs", "meta"} <= tables:
            raise StoreError(
                f"{self.path} is an SQLite database but not metaschedd's (it has no jobs and "
                "meta tables): check state_dir"
            )

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        return conn

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        db = sqlite_utils.Database(conn)
        conn.execute("BEGIN IMMEDIATE")  # all of it, an upgrade included, or none of it
        jobs = db.table("jobs")
        jobs.create(_JOB_COLUMNS, pk="id", if_not_exists=True)
        have = jobs.columns_dict
        for name, kind in _JOB_COLUMNS.items():  # a database from an older metaschedd
            if name not in have:
                jobs.add_column(name, kind)
        db.table("job_events").create(
            {
                "id": int,
                "job_id": int,
                "at": float,
                "state": str,
                "site": str,
                "slurm_job_id": str,
                "attempt": int,
                "detail": str,
            },
            pk="id",
            foreign_keys=[("job_id", "jobs", "id")],
            if_not_exists=True,
        )
        db.table("sites").create(
            {"name": str, "state": str, "last_seen": float, "report": bytes, "updated_at": float},
            pk="name",
            if_not_exists=True,
        )
        db.table("meta").create({"key": str, "value": str}, pk="key", if_not_exists=True)
        db.table("arrays").create(
            {
                "id": int,
                "user": str,
                "spec": bytes,
                "tasks": int,
                "max_running": int,
                "submitted_at": float,
            },
            pk="id",
            if_not_exists=True,
        )
        db.table("job_events").create_index(["job_id"], if_not_exists=True)
        db.table("jobs").create_index(["state"], if_not_exists=True)
        db.table("jobs").create_index(["user", "state"], if_not_exists=True)
        db.table("jobs").create_index(["array_id", "array_task"], if_not_exists=True)
        db.table("jobs").create_index(["user", "submit_key"], if_not_exists=True)
        shelf_tables.create(db)
        version = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if version is not None and int(version[0]) > SCHEMA_VERSION:
            conn.execute("ROLLBACK")
            raise StoreError(
                f"{self.path} has schema version {version[0]}, newer than this metaschedd "
                f"({SCHEMA_VERSION}): upgrade metaschedd"
            )
        have_scripts = db.table("job_scripts").exists()
        conn.execute(
            "CREATE TABLE IF NOT EXISTS job_scripts (job_id INTEGER PRIMARY KEY, script TEXT)"
        )
        if version is not None and not have_scripts:
            self._move_scripts_out(conn)
        # new, or upgraded above (columns and tables added, scripts moved)
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', ?)"
            " ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (str(SCHEMA_VERSION),),
        )
        conn.execute("COMMIT")

    def _move_scripts_out(self, conn: sqlite3.Connection) -> None:
        """Upgrade from schema 1 or 2, where each script was inside its job's (or its array's)
        spec: move every script to job_scripts, in the caller's transaction."""
        t0 = time.monotonic()
        moved = 0
        for table in ("jobs", "arrays"):
            last = 0
            while True:
                rows = conn.execute(
                    f"SELECT id, spec FROM {table} WHERE id > ? ORDER BY id LIMIT 1000", (last,)
                ).fetchall()
                if not rows:
                    break
                last = rows[-1]["id"]
                for r in rows:
                    if table == "jobs" and r["spec"] is None:
                        continue  # an array task: its array has the spec
                    try:
                        spec = pb.JobSpec.FromString(r["spec"])
                    except (DecodeError, TypeError):
                        continue  # left as it is: quarantined when it is read
                    conn.execute(
                        "INSERT OR REPLACE INTO job_scripts (job_id, script) VALUES (?, ?)",
                        (r["id"], spec.script),
                    )
                    spec.ClearField("script")
                    conn.execute(
                        f"UPDATE {table} SET spec=? WHERE id=?",
                        (spec.SerializeToString(), r["id"]),
                    )
                    moved += 1
        self.log.info(
            "store_upgraded",
            db=str(self.path),
            schema=SCHEMA_VERSION,
            scripts_moved=moved,
            seconds=round(time.monotonic() - t0, 2),
        )

    def _check_integrity(self, conn: sqlite3.Connection) -> None:
        result = conn.execute("PRAGMA quick_check").fetchone()[0]
        if result != "ok":
            raise StoreError(_damaged(self.path, f"PRAGMA quick_check: {result}"))

    def _load_live(self, conn: sqlite3.Connection) -> None:
        for r in conn.execute(
            "SELECT * FROM jobs WHERE state NOT IN ({})".format(",".join("?" * len(FINAL_STATES))),
            tuple(str(s) for s in FINAL_STATES),
        ):
            with contextlib.suppress(DamagedRow):
                job = self._decode(conn, r)
                self.live[job.id] = job

    def _quarantine(self, r: sqlite3.Row, e: DamagedRow) -> None:
        if e.job_id in self.quarantined:
            return
        user, state = (v if isinstance(v, str) else repr(v) for v in (r["user"], r["state"]))
        self.quarantined[e.job_id] = Quarantined(e.job_id, user, state, e.why)
        self.log.error(
            "job_quarantined",
            job_id=e.job_id,
            user=user,
            state=state,
            error=e.why,
            db=str(self.path),
        )

    def _federation_id(self, conn: sqlite3.Connection) -> str:
        row = conn.execute("SELECT value FROM meta WHERE key='federation'").fetchone()
        if row:
            return str(row[0])
        fed = uuid.uuid4().hex[:12]
        conn.execute("INSERT INTO meta (key, value) VALUES ('federation', ?)", (fed,))
        return fed

    # ---------------------------------------------------------------- the writer

    def write(self, op: Callable[[Batch], T]) -> Future[T]:
        """Run `op` inside the next write transaction; the future resolves after COMMIT."""
        fut: Future[T] = Future()
        self._queue.put((op, fut))
        return fut

    def run(self, op: Callable[[Batch], T], timeout: float = 60) -> T:
        return self.write(op).result(timeout)

    def insert(self, user: str, spec: pb.JobSpec) -> Future[JobRow]:
        """Queue a new job (what b.insert_job does); the future resolves after COMMIT."""
        fut: Future[JobRow] = Future()
        self._queue.put((NewJob(user, spec), fut))
        return fut

    def add_listener(self, fn: Listener) -> None:
        """fn(changes) is called on the writer thread after each commit, before the commit's
        callers are answered; keep it quick, and never wait on the store from it."""
        self._listeners.append(fn)

    def add_change_hook(self, fn: Callable[[Mapping[int, JobRow]], None]) -> None:
        """fn(changed) is called on the writer thread after each commit that changed jobs, with
        every job it changed (history event or not: a new estimate, a reason); keep it quick."""
        self._change_hooks.append(fn)

    def _write_loop(self) -> None:
        conn = self._wconn
        while True:
            first = self._queue.get()
            if first is None:
                return
            items = [first]
            stop = False
            while len(items) < MAX_BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                items.append(nxt)
            self._run_batch(conn, items)
            if stop:
                return

    def _run_batch(self, conn: sqlite3.Connection, items: list[_Item]) -> None:
        batch = Batch(self, conn, time.time())
        results: list[tuple[Future[Any], Any, BaseException | None]] = []
        t0 = time.perf_counter()
        try:
            conn.execute("BEGIN IMMEDIATE")
            for is_new, run in itertools.groupby(items, lambda item: isinstance(item[0], NewJob)):
                if is_new:
                    self._insert_new(batch, list(run), results)
                else:
                    for op, fut in run:
                        assert not isinstance(op, NewJob)
                        self._run_op(batch, op, fut, results)
            conn.execute("COMMIT")
        except Exception as e:  # the commit itself failed (disk full, I/O): nothing happened
            with contextlib.suppress(Exception):
                conn.execute("ROLLBACK")
            full = _is_full(e) or any(isinstance(r[2], StoreFull) for r in results)
            self._note_failure(e, full, len(items))
            failure = (
                StoreFull(f"the disk of {self.path} is full: nothing was written")
                if full
                else StoreError(f"could not write the queue: {e}")
            )
            for _op, fut in items:
                fut.set_exception(failure)
            return
        if self._disk_full:
            self._disk_full = False
            self.log.warning("disk_space_returned", db=str(self.path))
        if self.on_commit is not None:
            self.on_commit(time.perf_counter() - t0)
        for key, job_id in batch.keys:  # committed: from now on a retry finds its job
            self._remember_key(key, job_id, batch.now)
        at_site, of_user, of_array = self._live_at_site, self._live_of_user, self._live_of_array
        for job_id, row in batch.changed.items():
            was = self.live.get(job_id)
            if was is not None and was.site and (was.site != row.site or row.state in FINAL_STATES):
                at_site.get(was.site, {}).pop(job_id, None)
            if row.state in FINAL_STATES:
                self.live.pop(job_id, None)
                of_user.get(row.user, {}).pop(job_id, None)
                if row.array_id:
                    tasks = of_array.get(row.array_id)
                    if tasks is not None:
                        tasks.pop(job_id, None)
                        if not tasks:
                            del of_array[row.array_id]
            else:
                self.live[job_id] = row
                of_user.setdefault(row.user, {})[job_id] = row
                if row.site:
                    at_site.setdefault(row.site, {})[job_id] = row
                if row.array_id:
                    of_array.setdefault(row.array_id, {})[job_id] = row
        # Listeners before answers: whoever waits on a commit finds the listeners told of it
        # (the scheduler learns of a requeued job before the caller that requeued it goes on).
        for fn in self._listeners if batch.events else ():
            try:
                fn(batch.events)
            except Exception:
                self.log.exception("store_listener_failed")
        for hook in self._change_hooks if batch.changed else ():
            try:
                hook(batch.changed)
            except Exception:
                self.log.exception("store_listener_failed")
        for fut, res, err in results:
            if err is not None:
                fut.set_exception(err)
            else:
                fut.set_result(res)
        if batch.events:
            self._log_events(batch.events)

    def _run_op(
        self,
        batch: Batch,
        op: Callable[[Batch], Any],
        fut: Future[Any],
        results: list[tuple[Future[Any], Any, BaseException | None]],
    ) -> None:
        # Each op in its own savepoint: one bad request fails alone, the rest commit.
        conn = batch.conn
        saved_changed = dict(batch.changed)
        saved_events = len(batch.events)
        saved_keys = len(batch.keys)
        conn.execute("SAVEPOINT op")
        try:
            res = op(batch)
            conn.execute("RELEASE op")
            results.append((fut, res, None))
        except Exception as e:
            # (after SQLITE_FULL, SQLite may have rolled the whole transaction back itself:
            # then this fails too, and so does the batch, as it must)
            conn.execute("ROLLBACK TO op")
            conn.execute("RELEASE op")
            batch.changed = saved_changed
            del batch.events[saved_events:]
            del batch.keys[saved_keys:]
            if _is_full(e):
                e = StoreFull(f"the disk of {self.path} is full: nothing was written")
            results.append((fut, None, e))

    def _insert_new(
        self,
        batch: Batch,
        group: list[_Item],
        results: list[tuple[Future[Any], Any, BaseException | None]],
    ) -> None:
        # One savepoint for the whole run of submissions rather than one each: the sqlite3
        # module lets go of the GIL on every statement and, with the gRPC threads and
        # placement busy, waits up to a switch interval to get it back, so statements per
        # job, not bytes, are what limit the writer.
        new = [nj for nj, _ in group if isinstance(nj, NewJob)]
        if any(nj.key for nj in new):
            group, new = self._known_keys(batch, group, new, results)
            if not new:
                return
        conn = batch.conn
        saved_keys = len(batch.keys)
        conn.execute("SAVEPOINT new_jobs")
        try:
            rows = batch.insert_jobs(new)
            conn.execute("RELEASE new_jobs")
        except Exception:
            # Something in the run is refused: insert them one by one, so it fails alone.
            conn.execute("ROLLBACK TO new_jobs")
            conn.execute("RELEASE new_jobs")
            del batch.keys[saved_keys:]
            for nj, fut in zip(new, (fut for _, fut in group), strict=True):
                self._run_op(batch, _insert_one(nj), fut, results)
            return
        results.extend((fut, row, None) for (_, fut), row in zip(group, rows, strict=True))

    def _note_failure(self, e: Exception, full: bool, ops: int) -> None:
        """Log a failed batch; a full disk once until a commit succeeds again (every batch on a
        full disk fails, placement's and site reports' included, several a second)."""
        if not full:
            self.log.error("store_commit_failed", error=str(e), ops=ops)
        elif not self._disk_full:
            self._disk_full = True
            free = shutil.disk_usage(self.path.parent).free
            self.log.error("disk_full", db=str(self.path), free_bytes=free, error=str(e), ops=ops)

    def _known_keys(
        self,
        batch: Batch,
        group: list[_Item],
        new: list[NewJob],
        results: list[tuple[Future[Any], Any, BaseException | None]],
    ) -> tuple[list[_Item], list[NewJob]]:
        """Answer the submissions whose (user, key) already made a job with that job (a
        retry after a lost answer); return the rest. Repeats within the run wait for the
        first (answered when it is inserted, see _insert_new's caller)."""
        keep_items: list[_Item] = []
        keep_new: list[NewJob] = []
        in_run: set[tuple[str, str]] = set()
        for item, nj in zip(group, new, strict=True):
            key = (nj.user, nj.key)
            job_id = self._job_of_key(batch.conn, key, batch.now) if nj.key else None
            if job_id is not None:
                results.append((item[1], batch.job(job_id), None))
            elif nj.key and key in in_run:
                self._queue.put(item)  # after this run is committed, it finds the job
            else:
                if nj.key:
                    in_run.add(key)
                keep_items.append(item)
                keep_new.append(nj)
        return keep_items, keep_new

    def job_of_key(self, user: str, key: str) -> JobRow | None:
        """The job a submission with this idempotency key made (within the key window)."""
        job_id = self._job_of_key(self._reader(), (user, key), time.time())
        return None if job_id is None else self.job(job_id)

    def _job_of_key(self, conn: sqlite3.Connection, key: tuple[str, str], now: float) -> int | None:
        job_id = self._keys.get(key)
        if job_id is not None or now - self._opened_at > self.key_window_s:
            return job_id
        row = conn.execute(  # made before this process started: the (user, submit_key) index
            "SELECT id FROM jobs WHERE user=? AND submit_key=? AND submitted_at>=? "
            "ORDER BY id LIMIT 1",
            (*key, now - self.key_window_s),
        ).fetchone()
        return int(row[0]) if row else None

    def _remember_key(self, key: tuple[str, str], job_id: int, now: float) -> None:
        self._keys[key] = job_id
        self._key_times.append((now, key))
        horizon = now - self.key_window_s
        while self._key_times and self._key_times[0][0] < horizon:
            _, old = self._key_times.popleft()
            self._keys.pop(old, None)

    def _log_events(self, events: list[tuple[JobRow, JobState, str]]) -> None:
        for row, old, detail in events:
            name = (
                "job_submitted" if detail == "submitted" else _LOG_EVENT.get(row.state, "job_moved")
            )
            self.log.info(
                name,
                job_id=row.id,
                user=row.user,
                site=row.site or None,
                partition=row.partition or None,
                slurm_job_id=row.slurm_job_id or None,
                attempt=row.attempt,
                state=str(row.state),
                previous=str(old),
                detail=detail or None,
            )

    def close(self) -> None:
        self._queue.put(None)
        self._writer.join(timeout=30)
        with contextlib.suppress(Exception):
            self._wconn.close()

    # ---------------------------------------------------------------- reads

    def _read_job(self, conn: sqlite3.Connection, job_id: int) -> JobRow | None:
        """The job's row from the file; DamagedRow (and quarantined) when it cannot be read."""
        if not 0 < job_id <= MAX_JOB_ID:  # SQLite's INTEGER is 64-bit signed; ids start at 1
            return None
        r = conn.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        return self._decode(conn, r) if r else None

    def _job_of_row(self, conn: sqlite3.Connection, r: sqlite3.Row) -> JobRow:
        array_id = r["array_id"]
        if not array_id:
            return _row_to_job(r)
        try:
            spec = self.array_spec(array_id, conn)
        except (NoSuchJob, DecodeError, TypeError) as e:
            raise DamagedRow(r["id"], f"its array {array_id!r}: {type(e).__name__}: {e}") from None
        return _row_to_job(r, spec)

    def _decode(self, conn: sqlite3.Connection, r: sqlite3.Row) -> JobRow:
        try:
            return self._job_of_row(conn, r)
        except DamagedRow as e:
            self._quarantine(r, e)
            raise

    def _decoded(self, conn: sqlite3.Connection, rows: Iterable[sqlite3.Row]) -> list[JobRow]:
        """The rows that can be decoded (the others are quarantined and left out)."""
        out = []
        for r in rows:
            with contextlib.suppress(DamagedRow):
                out.append(self.live.get(r["id"]) or self._decode(conn, r))
        return out

    def array_spec(self, array_id: int, conn: sqlite3.Connection | None = None) -> pb.JobSpec:
        """The spec every task of an array shares."""
        spec = self._array_specs.get(array_id)
        if spec is None:
            conn = conn or self._reader()
            r = conn.execute("SELECT spec FROM arrays WHERE id=?", (array_id,)).fetchone()
            if r is None:
                raise NoSuchJob(f"no array {array_id}")
            spec = pb.JobSpec()
            spec.ParseFromString(r[0])
            if len(self._array_specs) > 10_000:  # those of ended arrays, read back: let go
                live = self._live_of_array
                self._array_specs = {k: v for k, v in self._array_specs.items() if k in live}
            self._array_specs[array_id] = spec
        return spec

    def array_tasks(self, array_id: int, include_final: bool = True) -> list[JobRow]:
        """An array's tasks in task order ([] if array_id is not an array)."""
        if not include_final:
            return sorted(self._live_of_array.get(array_id, {}).values(), key=lambda j: j.id)
        conn = self._reader()
        rows = conn.execute("SELECT * FROM jobs WHERE array_id=? ORDER BY id", (array_id,))
        return self._decoded(conn, rows)

    def live_arrays(self) -> list[int]:
        """The ids of arrays with live tasks."""
        return list(self._live_of_array)

    def live_tasks(self, array_id: int) -> dict[int, JobRow]:
        """An array's live tasks by job id (the store's own index: do not change it)."""
        return self._live_of_array.get(array_id, {})

    def array_info(self, array_id: int) -> tuple[int, int] | None:
        """(tasks, max_running) of an array, None if array_id is not one."""
        r = (
            self._reader()
            .execute("SELECT tasks, max_running FROM arrays WHERE id=?", (array_id,))
            .fetchone()
        )
        return (int(r[0]), int(r[1] or 0)) if r else None

    def job(self, job_id: int) -> JobRow | None:
        row = self.live.get(job_id)
        if row is not None:
            return row
        return self._read_job(self._reader(), job_id)

    def script(self, job_id: int) -> str | None:
        """A job's batch script (an array task's is its array's), read from the file; never
        kept in memory."""
        return self.scripts([job_id]).get(job_id)

    def scripts(self, job_ids: list[int]) -> dict[int, str]:
        """The scripts of these jobs (job id -> script; missing ones left out), in a few reads."""
        out: dict[int, str] = {}
        conn = self._reader()
        sql = (
            "SELECT j.id, s.script FROM jobs j JOIN job_scripts s"
            " ON s.job_id = CASE WHEN j.array_id THEN j.array_id ELSE j.id END"
            " WHERE j.id IN ({})"
        )
        for at in range(0, len(job_ids), INSERT_ROWS):
            part = [i for i in job_ids[at : at + INSERT_ROWS] if 0 < i <= MAX_JOB_ID]
            for r in conn.execute(sql.format(",".join("?" * len(part))), part):
                if isinstance(r[1], str):
                    out[r[0]] = r[1]
        return out

    def events(self, job_id: int) -> list[Event]:
        return [
            Event(
                r["job_id"],
                r["at"],
                JobState(r["state"]),
                r["site"] or "",
                r["slurm_job_id"] or "",
                r["attempt"] or 0,
                r["detail"] or "",
            )
            for r in self._reader().execute(
                "SELECT * FROM job_events WHERE job_id=? ORDER BY id", (job_id,)
            )
        ]

    def jobs(
        self,
        user: str | None = None,
        states: Iterable[JobState] | None = None,
        include_final: bool = False,
        limit: int = 1000,
    ) -> list[JobRow]:
        """The newest `limit` jobs that match, oldest first (listings for users: page)."""
        wanted = set(states) if states else None
        if _live_only(wanted, include_final):
            pool = self.live if user is None else self._live_of_user.get(user, {})
            rows = [j for j in list(pool.values()) if wanted is None or j.state in wanted]
            return sorted(rows, key=lambda j: j.id)[:limit]
        where, args = _where(user, wanted)
        sql = "SELECT * FROM jobs" + where + " ORDER BY id DESC LIMIT ?"
        conn = self._reader()
        rows = self._decoded(conn, conn.execute(sql, [*args, limit]))
        return sorted(rows, key=lambda j: j.id)

    def page(
        self,
        user: str | None = None,
        states: Iterable[JobState] | None = None,
        include_final: bool = False,
        after: int = 0,
        limit: int = 1000,
        names: Iterable[str] = (),
        since: float = 0.0,
    ) -> tuple[list[JobRow], bool]:
        """One page of a listing: up to `limit` matching jobs with ids above `after`, in id
        order, and whether there are more. names: only jobs of these names; since: only jobs
        submitted, or ended, at or after it (live jobs always)."""
        wanted = set(states) if states else None
        named = set(names)
        if _live_only(wanted, include_final):
            pool = self.live if user is None else self._live_of_user.get(user, {})
            ids = sorted(list(pool))  # (in id order already: timsort makes that one pass)
            rows: list[JobRow] = []
            for job_id in itertools.islice(ids, bisect.bisect_right(ids, after), None):
                job = pool.get(job_id)
                if (
                    job is not None
                    and (wanted is None or job.state in wanted)
                    and (not named or job.spec.name in named)
                ):
                    if len(rows) == limit:
                        return rows, True
                    rows.append(job)
            return rows, False
        where, args = _where(user, wanted, after, named, since)
        sql = "SELECT * FROM jobs" + where + " ORDER BY id LIMIT ?"
        conn = self._reader()
        found = conn.execute(sql, [*args, limit + 1]).fetchall()
        return self._decoded(conn, found[:limit]), len(found) > limit

    def history(self, since: float, until: float) -> Iterator[RunRecord]:
        """Every job that ran at some time in [since, until), with the part of its run in
        that window: usage accounting and the status page's plots. A read, off the writer,
        one job at a time (a long window holds many jobs, and their scripts).
        A job that ended without an end time (cancelled while running, lost) ended when it
        became final; one still running runs until `until`."""
        finals = tuple(str(s) for s in FINAL_STATES)
        conn = self._reader()
        rows = conn.execute(
            # (a column a job never set is NULL, not 0)
            "SELECT id, user, site, started_at, ended_at, updated_at, state, spec, array_id "
            "FROM jobs WHERE started_at > 0 AND started_at < ? AND (ended_at >= ? OR "
            "(IFNULL(ended_at, 0) = 0 AND (state NOT IN ({}) OR updated_at >= ?)))".format(
                ",".join("?" * len(finals))
            ),
            (until, since, *finals, since),
        )
        for r in rows:
            ended = r["ended_at"] or (r["updated_at"] if r["state"] in finals else until)
            array_id = r["array_id"]
            if array_id:
                spec = self.array_spec(array_id, conn)
            else:
                spec = pb.JobSpec()
                spec.ParseFromString(r["spec"] or b"")
            yield RunRecord(
                r["id"],
                r["user"],
                r["site"] or "",
                max(since, r["started_at"]),
                min(until, max(ended, r["started_at"])),
                spec,
            )

    def live_at(self, site: str) -> list[JobRow]:
        """The live jobs last sent to `site` (any state; callers filter), oldest first."""
        return sorted(self._live_at_site.get(site, {}).values(), key=lambda j: j.id)

    def live_of(self, user: str) -> dict[int, JobRow]:
        """A user's live jobs by id (the store's own index: do not change it)."""
        return self._live_of_user.get(user, {})

    def count_live(self, user: str) -> int:
        return len(self._live_of_user.get(user, {}))

    # ---------------------------------------------------------------- sites

    def save_site(self, name: str, state: str, last_seen: float, report: bytes | None) -> None:
        def op(b: Batch) -> None:
            if report is None:
                b.conn.execute(
                    "INSERT INTO sites (name, state, last_seen, updated_at) VALUES (?,?,?,?)"
                    " ON CONFLICT(name) DO UPDATE SET state=excluded.state,"
                    " last_seen=excluded.last_seen, updated_at=excluded.updated_at",
                    (name, state, last_seen, b.now),
                )
            else:
                b.conn.execute(
                    "INSERT INTO sites (name, state, last_seen, report, updated_at)"
                    " VALUES (?,?,?,?,?) ON CONFLICT(name) DO UPDATE SET state=excluded.state,"
                    " last_seen=excluded.last_seen, report=excluded.report,"
                    " updated_at=excluded.updated_at",
                    (name, state, last_seen, report, b.now),
                )

        self.write(op)

    def sites(self) -> list[tuple[str, str, float, bytes | None]]:
        return [
            (r["name"], r["state"], r["last_seen"] or 0.0, r["report"])
            for r in self._reader().execute("SELECT * FROM sites ORDER BY name")
        ]

    def backup(self, dest: Path | str) -> None:
        """An online, consistent copy of the database (SQLite's backup API)."""
        target = sqlite3.connect(str(dest))
        try:
            self._reader().backup(target)
        finally:
            target.close()
