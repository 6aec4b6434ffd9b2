"""Reading a Standard Workload Format trace (plain or gzipped) into plain job records.

Only the fields the replay needs are kept. Cleaning rules (documented in bench/README.md):
- jobs without a run time or a processor count are dropped (a handful per trace);
- the processor count is the allocated count, or the requested one when that is missing;
- a job without a requested time gets the largest requested time seen in the trace (the
  site's maximum, as a Slurm partition's default limit would be);
- limits are rounded up to whole minutes (Slurm's unit), and the run time is cut at the
  limit: Slurm kills a job at its limit, so a job that ran longer in the trace is a TIMEOUT.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Trace:
    name: str
    max_procs: int
    jobs: list[tuple[float, float, float, int, str]]  # (submit, run, limit, procs, user)
    dropped: int
    killed_at_limit: int
    no_limit: int


def read_swf(path: str | Path, limit_jobs: int = 0) -> Trace:
    p = Path(path)
    opener = gzip.open if p.suffix == ".gz" else open
    max_procs = 0
    max_nodes = 0
    raw: list[tuple[float, float, float, int, str]] = []
    dropped = 0
    with opener(p, "rt") as f:
        for line in f:
            if line.startswith(";"):
                head = line[1:].strip()
                if head.startswith("MaxProcs:"):
                    max_procs = int(head.split(":")[1])
                elif head.startswith("MaxNodes:"):
                    max_nodes = int(head.split(":")[1])
                continue
            fs = line.split()
            if len(fs) < 18:
                continue
            submit, run = float(fs[1]), float(fs[3])
            procs = int(fs[4]) if int(fs[4]) > 0 else int(fs[7])
            req = float(fs[8])
            if run < 0 or procs <= 0:
                dropped += 1
                continue
            raw.append((submit, run, req, procs, fs[11]))
            if limit_jobs and len(raw) >= limit_jobs:
                break
    max_procs = max_procs or max_nodes or max(r[3] for r in raw)
    max_req = max(r[2] for r in raw)
    jobs: list[tuple[float, float, float, int, str]] = []
    killed = no_limit = 0
    for submit, run, req, procs, user in raw:
        if req <= 0:
            req = max_req
            no_limit += 1
        limit = float(-(-int(req) // 60) * 60)
        if run > limit:
            killed += 1
            run = limit
        jobs.append((submit, run, limit, min(procs, max_procs), user))
    jobs.sort(key=lambda j: j[0])
    name = p.name.split(".swf")[0]
    return Trace(name, max_procs, jobs, dropped, killed, no_limit)
