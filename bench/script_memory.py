"""metaschedd's memory with 200 jobs of 1 MB scripts (issue 9: RSS under 300 MB).

A real metaschedd with no site (the jobs stay queued, as they would behind a busy federation).
Its resident set size (VmRSS) is read from /proc at each step, side by side with where it
started: empty; after 200 submissions of ~1 MB scripts; after an admin listed every job
(msub status --all's calls); after each script was read back once (msub show --script); and
the peak (VmHWM) over the whole run.

    python -m bench.script_memory [--jobs 200] [--script-kb 1000] [--source DIR]

--source DIR runs the daemon from another checkout (e.g. main before a change); a step it
cannot do (an RPC it does not have, a reply over 4 MB) is shown as failed.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import grpc

from metasched.lab.lone import LoneDaemon
from metasched.v1 import metasched_pb2 as pb
from metasched.v1 import metasched_pb2_grpc as pb_grpc


def status_kb(d: LoneDaemon, field: str) -> int:
    assert d.proc is not None
    for line in Path(f"/proc/{d.proc.pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for metaschedd")


def list_all(d: LoneDaemon) -> int:
    """Every job, as `msub status --all` asks for them (pages followed where there are)."""
    stub = pb_grpc.SchedulerStub(d.channel())
    req = pb.ListJobsRequest(all_users=True, limit=1000)
    n = 0
    while True:
        resp = stub.ListJobs(req, metadata=d.md(), timeout=60)
        n += len(resp.jobs)
        cursor = getattr(resp, "next_cursor", "")
        if not cursor:
            return n
        req.cursor = cursor


def read_scripts(d: LoneDaemon, ids: list[int]) -> int:
    stub = pb_grpc.SchedulerStub(d.channel())
    total = 0
    for job_id in ids:
        s = stub.GetJobScript(pb.GetJobScriptRequest(job_id=job_id), metadata=d.md(), timeout=60)
        total += len(s.script)
    return total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--script-kb", type=int, default=1000)
    ap.add_argument("--source", type=Path, help="run the daemon from this checkout")
    args = ap.parse_args(argv)
    script = "#!/bin/sh\n" + "echo a line of a long script\n" * (args.script_kb * 1000 // 29)
    root = Path(tempfile.mkdtemp(prefix="msm-", dir="/tmp"))
    d = LoneDaemon(
        root, extra="max_script_bytes = 1048576", log_level="warning", source=args.source
    )
    rows: list[tuple[str, str, int]] = []
    try:
        d.start()
        stub = pb_grpc.SchedulerStub(d.channel())
        rows.append(("empty", "ok", status_kb(d, "VmRSS")))
        spec = pb.JobSpec(script=script, name="big", time_limit_minutes=10)
        ids = [
            stub.SubmitJob(
                pb.SubmitJobRequest(spec=spec, no_wait=True), metadata=d.md(), timeout=60
            ).job_id
            for _ in range(args.jobs)
        ]
        rows.append((f"{args.jobs} jobs of {len(script) // 1000} kB", "ok", status_kb(d, "VmRSS")))
        steps: list[tuple[str, Callable[[], int]]] = [
            ("listed every job (admin)", lambda: list_all(d)),
            ("read every script once", lambda: read_scripts(d, ids)),
        ]
        for name, step in steps:
            try:
                step()
                outcome = "ok"
            except grpc.RpcError as e:
                outcome = f"failed: {e.code().name}"
            rows.append((name, outcome, status_kb(d, "VmRSS")))
        rows.append(("peak over the run (VmHWM)", "", status_kb(d, "VmHWM")))
    finally:
        d.stop()
        shutil.rmtree(root, ignore_errors=True)
    src = f" (daemon from {args.source})" if args.source else ""
    print(f"metaschedd resident memory{src}")
    base = rows[0][2]
    print(f"{'step':<32} {'outcome':<28} {'RSS MB':>8} {'vs empty':>9}")
    for name, outcome, kb in rows:
        print(f"{name:<32} {outcome:<28} {kb / 1024:>8.0f} {kb / base:>8.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
