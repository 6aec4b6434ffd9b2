"""The app shelf in the global store: app versions (immutable once published) with their
history (deprecation) and usage, and the results published from their runs.

Same file and writer as the job queue (metasched/store.py), so a run is counted in the
transaction that queues it, and a result names a job that exists.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

import sqlite_utils

from metasched.v1 import metasched_pb2 as pb

if TYPE_CHECKING:
    from metasched.store import Batch, Store


class ShelfError(Exception):
    pass


class AppExists(ShelfError):
    """That version is published already (versions never change)."""


class NotOwner(ShelfError):
    """The name belongs to another user."""


def create(db: sqlite_utils.Database) -> None:
    """The shelf's tables (if_not_exists: an older database gains them when opened)."""
    db.table("apps").create(
        {
            "name": str,
            "version": str,
            "owner": str,
            "published_at": float,
            "deprecated_at": float,
            "deprecation": str,
            "runs": int,
            "results": int,
            "app": bytes,  # pb.App as published (counters and times are the columns)
        },
        pk=("name", "version"),
        if_not_exists=True,
    )
    db.table("results").create(
        {
            "id": int,
            "job_id": int,
            "owner": str,
            "app": str,  # name@version
            "published_at": float,
            "fetches": int,
            "result": bytes,  # pb.Result as published
        },
        pk="id",
        foreign_keys=[("job_id", "jobs", "id")],
        if_not_exists=True,
    )
    db.table("results").create_index(["app"], if_not_exists=True)


def count_runs(b: Batch, name: str, version: str, runs: int) -> None:
    """Count an app's runs in the transaction that queues them (an array: one per task)."""
    b.conn.execute("UPDATE apps SET runs=runs+? WHERE name=? AND version=?", (runs, name, version))


def _app(r: sqlite3.Row) -> pb.App:
    app = pb.App()
    app.ParseFromString(r["app"])
    app.published_at = r["published_at"] or 0.0
    app.deprecated_at = r["deprecated_at"] or 0.0
    app.deprecation = r["deprecation"] or ""
    app.runs = r["runs"] or 0
    app.results = r["results"] or 0
    return app


def _result(r: sqlite3.Row) -> pb.Result:
    res = pb.Result()
    res.ParseFromString(r["result"])
    res.id = r["id"]
    res.fetches = r["fetches"] or 0
    return res


class ShelfRecords:
    """Reads and writes of the shelf, through the store's writer and readers."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def _read(self) -> sqlite3.Connection:
        return self.store._reader()

    # ---------------------------------------------------------------- apps

    def publish(self, app: pb.App) -> pb.App:
        """Add a new version; AppExists if it is there, NotOwner if the name is another's."""
        blob = pb.App()
        blob.CopyFrom(app)
        for f in ("published_at", "deprecated_at", "deprecation", "runs", "results"):
            blob.ClearField(f)  # type: ignore[arg-type]

        def op(b: Batch) -> pb.App:
            owner = b.conn.execute(
                "SELECT owner FROM apps WHERE name=? ORDER BY published_at LIMIT 1", (app.name,)
            ).fetchone()
            if owner is not None and owner[0] != app.owner:
                raise NotOwner(f"app {app.name} belongs to {owner[0]}")
            if b.conn.execute(
                "SELECT 1 FROM apps WHERE name=? AND version=?", (app.name, app.version)
            ).fetchone():
                raise AppExists(
                    f"{app.name}@{app.version} is published already, and versions never "
                    "change: publish a new version"
                )
            b.conn.execute(
                "INSERT INTO apps (name, version, owner, published_at, deprecated_at,"
                " deprecation, runs, results, app) VALUES (?,?,?,?,0,'',0,0,?)",
                (app.name, app.version, app.owner, b.now, blob.SerializeToString()),
            )
            out = pb.App()
            out.CopyFrom(blob)
            out.published_at = b.now
            return out

        return self.store.run(op)

    def versions(self, name: str) -> list[pb.App]:
        """Every version of one app, oldest first."""
        return [
            _app(r)
            for r in self._read().execute(
                "SELECT * FROM apps WHERE name=? ORDER BY published_at, version", (name,)
            )
        ]

    def all_versions(self) -> list[pb.App]:
        return [
            _app(r) for r in self._read().execute("SELECT * FROM apps ORDER BY name, published_at")
        ]

    def get(self, name: str, version: str) -> pb.App | None:
        r = (
            self._read()
            .execute("SELECT * FROM apps WHERE name=? AND version=?", (name, version))
            .fetchone()
        )
        return _app(r) if r else None

    def deprecate(self, name: str, version: str, note: str) -> list[pb.App]:
        """Mark one version (or every one not yet deprecated) deprecated, with why."""

        def op(b: Batch) -> None:
            sql = "UPDATE apps SET deprecated_at=?, deprecation=? WHERE name=? AND deprecated_at=0"
            args: tuple[object, ...] = (b.now, note, name)
            if version:
                sql += " AND version=?"
                args += (version,)
            b.conn.execute(sql, args)

        self.store.run(op)
        return [a for a in self.versions(name) if not version or a.version == version]

    # ---------------------------------------------------------------- results

    def publish_result(self, res: pb.Result) -> pb.Result:
        blob = pb.Result()
        blob.CopyFrom(res)
        name, _, version = res.app.partition("@")

        def op(b: Batch) -> pb.Result:
            blob.published_at = b.now
            cur = b.conn.execute(
                "INSERT INTO results (job_id, owner, app, published_at, fetches, result)"
                " VALUES (?,?,?,?,0,?)",
                (res.job_id, res.owner, res.app, b.now, blob.SerializeToString()),
            )
            b.conn.execute(
                "UPDATE apps SET results=results+1 WHERE name=? AND version=?", (name, version)
            )
            out = pb.Result()
            out.CopyFrom(blob)
            out.id = cur.lastrowid or 0
            return out

        return self.store.run(op)

    def results(self, app: str = "") -> list[pb.Result]:
        """Every result (of one app: name, or name@version), newest first."""
        if not app:
            rows = self._read().execute("SELECT * FROM results ORDER BY id DESC")
        elif "@" in app:
            rows = self._read().execute(
                "SELECT * FROM results WHERE app=? ORDER BY id DESC", (app,)
            )
        else:
            rows = self._read().execute(
                "SELECT * FROM results WHERE app LIKE ? ESCAPE '\\' ORDER BY id DESC",
                (app.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "@%",),
            )
        return [_result(r) for r in rows]

    def result(self, result_id: int) -> pb.Result | None:
        if not 0 < result_id < 2**63:
            return None
        r = self._read().execute("SELECT * FROM results WHERE id=?", (result_id,)).fetchone()
        return _result(r) if r else None

    def count_fetch(self, result_id: int) -> None:
        """A whole file of the result was fetched."""
        self.store.write(
            lambda b: b.conn.execute(
                "UPDATE results SET fetches=fetches+1 WHERE id=?", (result_id,)
            )
        )
