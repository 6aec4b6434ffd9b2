"""Another user's `msub status` while one user holds 80 watches open: how long it takes with
and without that load, side by side in one run (issue 9: within 2x of its unloaded time).

A real metaschedd with no site (jobs stay queued). User A (a token user) has 80 queued jobs;
user B (whoever runs this, root: its local token) has a few. Measured for B, first unloaded,
then with A's 80 WatchJob streams open: its ListJobs call (the median and p90 of many, from
one client) and the whole `msub status` command (a new process each time, as a user runs it).
The daemon's thread count is printed for each phase.

    python -m bench.watch_load [--watches 80] [--calls 200] [--commands 10] [--source DIR]

--source DIR runs the daemon (and msub) from another checkout, e.g. main before a change;
calls that do not answer within --timeout seconds are counted as timed out.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc

from metasched.lab.lone import LoneDaemon
from metasched.v1 import metasched_pb2 as pb
from metasched.v1 import metasched_pb2_grpc as pb_grpc

SPEC = pb.JobSpec(script="#!/bin/sh\ntrue\n", name="w", time_limit_minutes=10)


def threads(d: LoneDaemon) -> int:
    assert d.proc is not None
    return len(os.listdir(f"/proc/{d.proc.pid}/task"))


def call_times(d: LoneDaemon, n: int, timeout: float) -> tuple[list[float], int]:
    """Seconds each of n ListJobs calls of B took, and how many timed out."""
    stub = pb_grpc.SchedulerStub(d.channel())
    md = d.md()
    took, late = [], 0
    for _ in range(n):
        t0 = time.perf_counter()
        try:
            stub.ListJobs(pb.ListJobsRequest(), metadata=md, timeout=timeout)
            took.append(time.perf_counter() - t0)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
            late += 1
    return took, late


def command_times(d: LoneDaemon, n: int, timeout: float) -> tuple[list[float], int]:
    """Seconds each of n `msub status` commands took (exit 0), and how many did not finish."""
    took, late = [], 0
    for _ in range(n):
        t0 = time.perf_counter()
        try:
            out = d.cli("msub", "status", timeout=timeout)
        except subprocess.TimeoutExpired:
            late += 1
            continue
        if out.returncode != 0:
            late += 1
            continue
        took.append(time.perf_counter() - t0)
    return took, late


def open_watches(d: LoneDaemon, ids: list[int], wait: float) -> tuple[list[Any], int]:
    """A's watches, one per job, over a few connections; how many got their first message."""
    md = d.md("benchwatcher")
    channels = [d.channel() for _ in range(4)]
    calls: list[Any] = []
    opened = [0]
    lock = threading.Lock()

    def read(it: Any) -> None:
        first = True
        try:
            for _ in it:
                if first:
                    with lock:
                        opened[0] += 1
                    first = False
        except grpc.RpcError:
            pass

    for n, job_id in enumerate(ids):
        stub = pb_grpc.SchedulerStub(channels[n % len(channels)])
        call = stub.WatchJob(pb.WatchJobRequest(job_id=job_id), metadata=md)
        calls.append(call)
        threading.Thread(target=read, args=(call,), daemon=True).start()
    deadline = time.monotonic() + wait
    while opened[0] < len(ids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return calls, opened[0]


def summary(took: list[float], late: int) -> tuple[float, str]:
    if not took:
        return float("inf"), f"all {late} timed out"
    med = statistics.median(took)
    p90 = sorted(took)[int(0.9 * (len(took) - 1))]
    return med, f"median {med * 1e3:7.1f} ms  p90 {p90 * 1e3:7.1f} ms" + (
        f"  ({late} timed out)" if late else ""
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--watches", type=int, default=80)
    ap.add_argument("--calls", type=int, default=200, help="B's ListJobs calls per phase")
    ap.add_argument("--commands", type=int, default=10, help="B's msub status runs per phase")
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--source", type=Path, help="run the daemon from this checkout")
    args = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="msw-", dir="/tmp"))
    d = LoneDaemon(root, log_level="warning", source=args.source)
    try:
        d.start()
        stub = pb_grpc.SchedulerStub(d.channel())
        req = pb.SubmitJobRequest(spec=SPEC, no_wait=True)
        for _ in range(5):
            stub.SubmitJob(req, metadata=d.md(), timeout=30)
        md_a = d.md("benchwatcher")
        ids = [stub.SubmitJob(req, metadata=md_a, timeout=30).job_id for _ in range(args.watches)]
        call_times(d, 20, args.timeout)  # warm up
        rows = []
        calls: list[Any] = []
        t_calls: dict[str, tuple[float, str]] = {}
        t_cmds: dict[str, tuple[float, str]] = {}
        for phase in ("unloaded", "loaded"):
            if phase == "loaded":
                calls, opened = open_watches(d, ids, 30)
                print(f"watches open: {opened} of {len(ids)}", file=sys.stderr)
            t_calls[phase] = summary(*call_times(d, args.calls, args.timeout))
            t_cmds[phase] = summary(*command_times(d, args.commands, args.timeout * 3))
            rows.append((phase, threads(d)))
        for c in calls:
            c.cancel()
    finally:
        d.stop()
        shutil.rmtree(root, ignore_errors=True)
    src = f" (daemon from {args.source})" if args.source else ""
    print(f"user B while user A holds {args.watches} watches open{src}")
    print(f"{'':<26} {'unloaded':<42} {'loaded':<42} ratio")
    for name, t in (("ListJobs call", t_calls), ("msub status command", t_cmds)):
        ratio = t["loaded"][0] / t["unloaded"][0]
        print(f"{name:<26} {t['unloaded'][1]:<42} {t['loaded'][1]:<42} {ratio:.2f}x")
    print(f"{'daemon threads':<26} {rows[0][1]:<42} {rows[1][1]:<42}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
