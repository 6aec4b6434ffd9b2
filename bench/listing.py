"""`msub status --all` past 1,000 jobs: how many of the queue it shows, and what it costs.

Issue 9: `status --all` stopped silently at 1,000 jobs. Here a real metaschedd with no site
(the jobs stay queued) is filled step by step (--sizes) and at each size an admin (root)
runs the whole `msub status --all` command, a new process each time as a user runs it, and
`msub status --all --limit 100` (the first page only). Printed per size: the jobs queued, the
jobs shown, the command's seconds and its bytes of output, and each row's ratio to the
smallest size's time, so what paging costs shows beside what the listing grows by.

    python -m bench.listing [--sizes 500,2500,10000] [--source DIR]

--source DIR also runs a daemon (and msub) from another checkout, e.g. main before a change,
in the same run, after this checkout's: the two tables one above the other.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from metasched.lab.lone import LoneDaemon
from metasched.v1 import metasched_pb2 as pb
from metasched.v1 import metasched_pb2_grpc as pb_grpc

SPEC = pb.JobSpec(script="#!/bin/sh\ntrue\n", name="l", time_limit_minutes=10)


def fill(d: LoneDaemon, n: int) -> None:
    """n more jobs, 32 calls in flight (a user's calls in flight are bounded)."""
    stub = pb_grpc.SchedulerStub(d.channel())
    req = pb.SubmitJobRequest(spec=SPEC, no_wait=True)
    md = d.md()
    done = 0
    while done < n:
        window = [
            stub.SubmitJob.future(req, metadata=md, timeout=120) for _ in range(min(32, n - done))
        ]
        for f in window:
            f.result()
        done += len(window)


def shown(stdout: str) -> int:
    """Job lines in msub status's table (the first line is its header)."""
    return max(0, len(stdout.splitlines()) - 1)


def run_status(d: LoneDaemon, *args: str, repeat: int) -> tuple[float, int, int, str]:
    """(median seconds, jobs shown, bytes out, stderr's first line) over `repeat` runs."""
    took: list[float] = []
    n, size, err = 0, 0, ""
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = d.cli("msub", "status", "--all", *args, timeout=600)
        took.append(time.perf_counter() - t0)
        n, size = shown(out.stdout), len(out.stdout)
        err = out.stderr.strip().splitlines()[0] if out.stderr.strip() else ""
        if out.returncode != 0:
            err = f"exit {out.returncode}: {err}"
    return statistics.median(took), n, size, err


def measure(sizes: list[int], repeat: int, source: Path | None) -> list[str]:
    root = Path(tempfile.mkdtemp(prefix="msl-", dir="/tmp"))
    d = LoneDaemon(root, log_level="warning", source=source)
    lines = [f"daemon and msub from {source or 'this checkout'}"]
    lines.append(
        f"{'queued':>7} {'shown':>7} {'status --all':>13} {'vs first':>9} {'output':>9} "
        f"{'--limit 100':>12}  note"
    )
    try:
        d.start()
        queued, first = 0, 0.0
        for size in sizes:
            fill(d, size - queued)
            queued = size
            t, n, nbytes, err = run_status(d, repeat=repeat)
            t100, n100, _, err100 = run_status(d, "--limit", "100", repeat=repeat)
            first = first or t
            notes = [err or (f"{queued - n} jobs missing, nothing said" if n != queued else "")]
            if n100 != min(100, queued) or (queued > 100 and "more" not in err100):
                notes.append(f"--limit 100: {n100} shown, {err100 or 'nothing said'}")
            note = "; ".join(x for x in notes if x)
            lines.append(
                f"{queued:>7} {n:>7} {t:>11.2f} s {t / first:>8.2f}x {nbytes / 1e3:>6.0f} kB "
                f"{t100:>10.2f} s  {note}"
            )
    finally:
        d.stop()
        shutil.rmtree(root, ignore_errors=True)
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="500,2500,10000", help="queue sizes, ascending")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each command (median)")
    ap.add_argument("--source", type=Path, help="also run a daemon from this checkout")
    args = ap.parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    tables = [measure(sizes, args.repeat, None)]
    if args.source is not None:
        tables.append(measure(sizes, args.repeat, args.source))
    print("\n\n".join("\n".join(t) for t in tables))
    return 0


if __name__ == "__main__":
    sys.exit(main())
