"""A 1,000-task array on the real Slurm lab: submitted in one call, spread over the sites,
cancelled in one call. Measured, in one run:

  submit     the SubmitJob call for the whole array (one RPC, one transaction)
  spread     until every task is at a site or held in the global queue, tasks per site
  cancel     the CancelJobs call (one RPC: queued tasks end at once, the others CANCELLING)
  ended      until every task is CANCELLED (one command per site; one scancel each)
  gone       until no Slurm job of the array is pending or running at any site
and, side by side, --jobs plain jobs of the same shape cancelled as msub did before arrays
(one CancelJob call per job, one cancel command each): the same stages, and the ratio.

    python -m bench.array_cancel [--tasks 1000] [--jobs 200]     (root, Slurm installed)
    python -m bench.array_cancel --tasks 300 --workers 1,4,1,4    (agents' sbatch at once)

--workers compares agents that run 1, 4, ... sbatch at once (the agent's submit_workers): the
array's spread and cancel for each, one federation after the other on the same lab.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from metasched import tags
from metasched.agent.slurm.base import SlurmJob
from metasched.agent.slurm.cli import CliBackend
from metasched.lab import DEMO_SITES, SlurmLab
from metasched.lab.federation import Federation, wait_for
from metasched.states import JobState
from metasched.v1 import metasched_pb2 as pb

S = JobState
SCRIPT = "#!/bin/bash\nsleep 900\n"


def jobs_of(fed: Federation, ids: set[int], array_id: int) -> list[pb.Job]:
    if array_id:
        req = pb.ListJobsRequest(array_id=array_id, include_final=True, limit=100_000)
        return list(fed.call("ListJobs", req).jobs)
    req = pb.ListJobsRequest(include_final=True, limit=100_000)
    return [j for j in fed.call("ListJobs", req, timeout=60).jobs if j.id in ids]


def until(cond: Callable[[], bool], what: str, timeout: float = 900) -> float:
    t0 = time.monotonic()
    wait_for(cond, timeout, what)
    return time.monotonic() - t0


def alive_slurm_jobs(lab: SlurmLab) -> list[tuple[str, SlurmJob]]:
    """(site, job) of every Slurm job pending or running at any of the lab's sites."""
    return [
        (site, j)
        for site in lab.sites
        for j in CliBackend(str(lab.slurm_conf(site))).jobs()
        if j.state in ("PENDING", "RUNNING")
    ]


def alive_at_sites(fed: Federation, ids: set[int]) -> int:
    return sum(
        1
        for _, j in alive_slurm_jobs(fed.lab)
        if (t := tags.parse(j.comment)) is not None and t.job_id in ids
    )


def clear_sites(lab: SlurmLab) -> None:
    """Cancel whatever a finished run left at the sites (tasks Slurm requeued held after their
    cancel, once that run's daemon, which would cancel them again, has stopped): the next
    federation counts from job 1 too, and must not see them as its own."""
    left: dict[str, list[str]] = {}
    for site, j in alive_slurm_jobs(lab):
        left.setdefault(site, []).append(j.job_id)
    for site, ids in left.items():
        CliBackend(str(lab.slurm_conf(site))).cancel_many(ids)
    until(lambda: not alive_slurm_jobs(lab), "the sites to be empty")


def run(fed: Federation, count: int, as_array: bool) -> dict[str, float | str]:
    spec = pb.JobSpec(script=SCRIPT, time_limit_minutes=30, workdir="/tmp", output="/dev/null")
    t0 = time.monotonic()
    if as_array:
        spec.array = f"1-{count}"
        array_id = int(fed.call("SubmitJob", pb.SubmitJobRequest(spec=spec, no_wait=True)).job_id)
        ids = set(range(array_id, array_id + count))
    else:
        array_id = 0
        ids = {
            int(fed.call("SubmitJob", pb.SubmitJobRequest(spec=spec, no_wait=True)).job_id)
            for _ in range(count)
        }
    submit = time.monotonic() - t0

    def spread_done() -> bool:
        # every task at a site, held in the global queue, or already over (a task whose
        # launch failed under load is requeued held by Slurm: LOST), and enough at sites
        jobs = jobs_of(fed, ids, array_id)
        states = [JobState.from_pb(j.state) for j in jobs]
        at_site = [s for s in states if s in (S.PENDING, S.RUNNING) or s.is_final]
        return (
            len(jobs) == count
            and all(s in (S.PENDING, S.RUNNING, S.QUEUED) or s.is_final for s in states)
            and len(at_site) >= min(count, 400)
        )

    spread = until(spread_done, "the tasks to reach their sites")
    per_site = Counter(j.site or "(global queue)" for j in jobs_of(fed, ids, array_id))
    t0 = time.monotonic()
    if as_array:
        fed.call("CancelJobs", pb.CancelJobsRequest(jobs=[str(array_id)]), timeout=120)
    else:
        for i in sorted(ids):
            fed.call("CancelJob", pb.CancelJobRequest(job_id=i), timeout=120)
    cancel = time.monotonic() - t0
    ended = cancel + until(
        lambda: all(JobState.from_pb(j.state).is_final for j in jobs_of(fed, ids, array_id)),
        "every task to be over (CANCELLED, or LOST before the cancel)",
    )
    gone = ended + until(lambda: alive_at_sites(fed, ids) == 0, "the Slurm jobs to go")
    return {
        "submit": submit,
        "spread": spread,
        "sites": ", ".join(f"{k} {v}" for k, v in sorted(per_site.items())),
        "cancel": cancel,
        "ended": ended,
        "gone": gone,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--jobs", type=int, default=200, help="plain jobs cancelled one by one")
    ap.add_argument("--workers", default="", help="e.g. 1,4: compare the agents' submit_workers")
    args = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="mab-", dir="/tmp"))
    root.chmod(0o755)
    lab = SlurmLab(root / "l", list(DEMO_SITES), overrides={"MessageTimeout": "3"})
    results = {}
    try:
        with lab:
            if args.workers:
                for n, w in enumerate(int(x) for x in args.workers.split(",")):
                    extra = f"submit_workers = {w}"
                    with Federation(
                        lab, root / f"f{n}", poll_interval=1.0, agent_extra=extra
                    ) as fed:
                        label = f"#{n + 1} array of {args.tasks}, {w} sbatch at once"
                        results[label] = run(fed, args.tasks, True)
                        print(f"{label}: spread {results[label]['spread']:.1f} s", flush=True)
                    clear_sites(lab)
            else:
                with Federation(lab, root / "f", poll_interval=1.0) as fed:
                    results[f"array of {args.tasks}, one CancelJobs"] = run(fed, args.tasks, True)
                    if args.jobs:
                        label = f"{args.jobs} jobs, CancelJob each"
                        results[label] = run(fed, args.jobs, False)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(
        f"{'':<34} {'submit s':>9} {'spread s':>9} {'cancel s':>9} {'ended s':>8} "
        f"{'gone s':>7}  tasks per site"
    )
    for label, r in results.items():
        print(
            f"{label:<34} {r['submit']:>9.2f} {r['spread']:>9.1f} {r['cancel']:>9.2f} "
            f"{r['ended']:>8.1f} {r['gone']:>7.1f}  {r['sites']}"
        )
    if len(results) == 2 and not args.workers:
        a, b = results.values()
        per_a = float(a["cancel"]) / args.tasks
        per_b = float(b["cancel"]) / args.jobs
        print(f"cancel call per job: {per_a * 1000:.2f} ms against {per_b * 1000:.2f} ms "
              f"({per_b / per_a:.0f}x)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
