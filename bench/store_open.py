"""What checking the database costs metaschedd's start at 100,000 queued jobs.

The store runs `PRAGMA quick_check` before it uses a file (a damaged one is refused with
one line). Side by side in one run, on the same file (warm in the page cache; the best of
three): the whole open (check, schema, loading every live job), quick_check alone, and the
full integrity_check it does not run (which also checks every index entry against its row).

    python -m bench.store_open [--jobs 100000] [--script-bytes 400]
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from metasched import log
from metasched.store import Store
from metasched.v1 import metasched_pb2 as pb


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def pragma(db: Path, name: str) -> Callable[[], object]:
    def run() -> object:
        conn = sqlite3.connect(db)
        try:
            return conn.execute(f"PRAGMA {name}").fetchall()
        finally:
            conn.close()

    return run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--script-bytes", type=int, default=400)
    args = ap.parse_args(argv)
    log.setup("warning")
    root = Path(tempfile.mkdtemp(prefix="mso-", dir="/tmp"))
    db = root / "metasched.db"
    try:
        store = Store(db)
        script = "#!/bin/sh\n" + "x" * max(0, args.script_bytes - 10)
        spec = pb.JobSpec(script=script, name="j", time_limit_minutes=60, precision="fp64")
        for at in range(0, args.jobs, 2000):
            futures = [
                store.insert(f"u{i % 50}", spec) for i in range(at, min(args.jobs, at + 2000))
            ]
            for f in futures:
                f.result(120)
        store.close()
        with sqlite3.connect(db) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        size = db.stat().st_size
        rows: list[tuple[str, float]] = []
        steps: list[tuple[str, Callable[[], object]]] = [
            ("open (quick_check + load)", lambda: Store(db).close()),
            ("PRAGMA quick_check", pragma(db, "quick_check")),
            ("PRAGMA integrity_check", pragma(db, "integrity_check")),
        ]
        for name, fn in steps:
            rows.append((name, min(timed(fn) for _ in range(3))))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    base = rows[0][1]
    print(f"{args.jobs:,} queued jobs, database {size / 2**20:.0f} MB")
    print(f"{'':<28} {'seconds':>9} {'vs open':>8}")
    for name, t in rows:
        print(f"{name:<28} {t:8.2f}s {t / base:7.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
