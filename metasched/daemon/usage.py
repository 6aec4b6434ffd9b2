"""Usage accounting from the queue's own history: core-hours and GPU-hours of the jobs that
ran in a window, by user, site or precision (metasched-admin usage), and per hour by site
(the status page's plot).

A job counts for the part of its run inside the window, with the CPUs and GPUs it asked
for (tasks x CPUs per task; GPUs per node x nodes): what the federation gave it, whatever
the site's own accounting adds (whole nodes, exclusive allocations). A job that ended
without an end time (cancelled while running, lost) counts until it became final; one still
running, until the end of the window.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from metasched.jobspec import shape_of
from metasched.store import RunRecord, Store

BY = ("user", "site", "precision")
NO_PRECISION = "any"  # the key of jobs that asked for no precision


@dataclass
class Usage:
    key: str
    jobs: int = 0
    core_hours: float = 0.0
    gpu_hours: float = 0.0


def _sizes(run: RunRecord) -> tuple[int, int]:
    shape = shape_of(run.spec)
    return shape.total_cpus, shape.gpus_per_node * shape.nodes


def _key(run: RunRecord, by: str) -> str:
    if by == "user":
        return run.user
    if by == "site":
        return run.site or "?"
    return run.spec.precision or NO_PRECISION


def usage(runs: Iterable[RunRecord], by: str) -> list[Usage]:
    """Rows by `by` (one of BY), largest core-hours first."""
    if by not in BY:
        raise ValueError(f"usage by {by!r}: use one of {', '.join(BY)}")
    rows: dict[str, Usage] = {}
    for run in runs:
        hours = max(0.0, run.end - run.start) / 3600
        cpus, gpus = _sizes(run)
        key = _key(run, by)
        row = rows.get(key)
        if row is None:
            row = rows[key] = Usage(key)
        row.jobs += 1
        row.core_hours += cpus * hours
        row.gpu_hours += gpus * hours
    return sorted(rows.values(), key=lambda r: (-r.core_hours, -r.gpu_hours, r.key))


def hourly_by_site(store: Store, start: float, hours: int) -> dict[str, list[float]]:
    """Core-hours in each of `hours` hours from `start`, per site."""
    per: dict[str, list[float]] = {}
    for run in store.history(start, start + hours * 3600):
        cores, _ = _sizes(run)
        row = per.setdefault(run.site or "?", [0.0] * hours)
        for h in range(hours):
            lo = start + h * 3600
            overlap = min(run.end, lo + 3600) - max(run.start, lo)
            if overlap > 0:
                row[h] += cores * overlap / 3600
    return per
