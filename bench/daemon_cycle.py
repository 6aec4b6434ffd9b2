"""The daemon's own placement pass at federation scale: Scheduler + Store + site registry.

    .venv/bin/python -m bench.daemon_cycle [--sites 1000] [--jobs 100000] [--busy 0.97] \
        [--passes 3] [--more 1000]

bench/placement_speed.py times Placer.place alone. A pass of metaschedd does more: it takes
the queued jobs from the store, builds site views from the agents' reports, places, and
writes every decision in one transaction on the store's single writer (which every
submission waits behind). Here the real Scheduler runs over a real SQLite file with
--sites agent streams (their outboxes are only counted) whose reports have 4-64 nodes per
partition, partitions --busy..100% allocated (0.97: most queued jobs are held, the steady
state of late binding), and --jobs queued jobs. Printed, side by side in one run:
- each full pass: its wall time, split into placement (Placer.place) and the rest (views,
  requests, the write), and how many rows it wrote;
- a site report, and an agent reconnecting, handled with the queue full against empty
  (a report must not cost in proportion to the queue: 1,000 sites report every 10 s);
- --more new submissions placed between full passes (continuing the plan) against a full pass.
Nothing is asserted: numbers go in bench/README.md.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from metasched import log
from metasched.daemon.scheduler import Scheduler, Settings
from metasched.daemon.sites import AgentLink, SiteRegistry
from metasched.states import JobState
from metasched.store import Batch, HeldEstimate, JobRow, NewJob, Store
from metasched.v1 import metasched_pb2 as pb

PRECS = [("fp64", "fp32"), ("fp32", "bf16", "fp16"), ("fp64", "fp32", "bf16"), ("bf16", "int8")]
SCRIPT = "#!/bin/sh\ntrue\n"


def site_report(i: int, rng: random.Random, now: float, busy: float) -> pb.SiteReport:
    """One site as its agent reports it: 1-3 partitions, whole nodes allocated to running
    jobs of 1-4 nodes, and up to 20 pending jobs per partition."""
    parts, nodes, jobs = [], [], []
    sid = 0
    for k in range(rng.randint(1, 3)):
        count, cpus, pname = rng.choice([4, 16, 64]), rng.choice([32, 64, 128]), f"p{k}"
        parts.append(
            pb.Partition(
                name=pname,
                nodes=count,
                cpus_per_node=cpus,
                max_time_minutes=rng.choice([0, 2880]),
                precisions=[pb.Precision(name=p, peak_tflops=1.0) for p in PRECS[(i + k) % 4]],
            )
        )
        allocated = round(rng.uniform(busy, 1.0) * count)
        names = [f"s{i}p{k}n{n}" for n in range(count)]
        for n, name in enumerate(names):
            used = n < allocated
            nodes.append(
                pb.NodeReport(
                    name=name,
                    partitions=[pname],
                    state="allocated" if used else "idle",
                    cpus=cpus,
                    alloc_cpus=cpus if used else 0,
                    mem_mb=256_000,
                )
            )
        n = 0
        while n < allocated:
            width = min(allocated - n, rng.choice([1, 1, 2, 4]))
            limit = rng.choice([60, 240, 1440])
            sid += 1
            jobs.append(
                pb.SlurmJobReport(
                    slurm_job_id=str(sid),
                    partition=pname,
                    state="RUNNING",
                    nodes=width,
                    cpus=width * cpus,
                    time_limit_minutes=limit,
                    submit_time=now - 5000,
                    start_time=now - rng.uniform(0, limit * 60),
                    user=f"u{rng.randint(0, 999)}",
                    node_names=names[n : n + width],
                )
            )
            n += width
        for _ in range(rng.randint(0, 20)):
            sid += 1
            width = rng.choice([1, 4])
            jobs.append(
                pb.SlurmJobReport(
                    slurm_job_id=str(sid),
                    partition=pname,
                    state="PENDING",
                    reason="Priority",
                    nodes=width,
                    cpus=width * cpus,
                    time_limit_minutes=rng.choice([60, 1440]),
                    submit_time=now - 100,
                    user=f"u{rng.randint(0, 999)}",
                )
            )
    return pb.SiteReport(
        slurm_reachable=True,
        slurm_version="22.05.8",
        maps_all_users=True,
        partitions=parts,
        nodes=nodes,
        jobs=jobs,
    )


def new_jobs(n: int, rng: random.Random) -> list[NewJob]:
    out = []
    for _ in range(n):
        nodes = rng.choice([1, 1, 1, 2, 4])
        spec = pb.JobSpec(
            script=SCRIPT,
            precision=rng.choice(["fp64", "fp32", "bf16", "int8"]),
            nodes=nodes,
            ntasks=nodes * rng.choice([1, 32]),
            time_limit_minutes=rng.choice([30, 60, 240, 1440]),
        )
        out.append(NewJob(f"u{rng.randint(0, 999)}", spec))
    return out


def insert(store: Store, jobs: list[NewJob]) -> None:
    def op(b: Batch) -> list[JobRow]:
        return b.insert_jobs(jobs)

    store.run(op, timeout=600)
    store.run(
        lambda b: None, timeout=600
    )  # the writer is done with the batch (and its log lines) too


class Timed:
    """Wraps one method of an object and adds up the seconds spent in it."""

    def __init__(self, obj: object, name: str) -> None:
        self.seconds = 0.0
        inner: Callable[..., Any] = getattr(obj, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0

        setattr(obj, name, timed)


class Writes:
    """Counts the job rows the store's writer changes in passes: state changes (Batch.move)
    and held jobs' new estimates (Batch.note_held)."""

    def __init__(self) -> None:
        self.n = 0
        move, note_held = Batch.move, Batch.note_held

        def counted_move(b: Batch, *args: Any, **kwargs: Any) -> JobRow:
            self.n += 1
            return move(b, *args, **kwargs)

        def counted_held(b: Batch, held: list[HeldEstimate], est_at: float) -> None:
            self.n += len(held)
            note_held(b, held, est_at)

        Batch.move = counted_move  # type: ignore[method-assign,assignment]
        Batch.note_held = counted_held  # type: ignore[method-assign,assignment]


class GcTime:
    """Seconds the cyclic garbage collector ran (gc.callbacks), since the last read."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._t0 = 0.0
        gc.callbacks.append(self._on)

    def _on(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._t0

    def take(self) -> float:
        out, self.seconds = self.seconds, 0.0
        return out


def median_ms(fn: Callable[[], object], rounds: int = 51) -> float:
    """The median time of one call (a mean would mostly measure which round the cyclic
    garbage collector happened to run in)."""
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[rounds // 2] * 1000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sites", type=int, default=1000)
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--busy", type=float, default=0.97)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--more", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    # The daemon's log lines are rendered as in production, then dropped.
    devnull = open(os.devnull, "w")  # noqa: SIM115 (open for the whole run)
    log.setup(level="info", stream=devnull)
    rng = random.Random(args.seed)
    now = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "queue.db")
        registry = SiteRegistry(grace_seconds=3600)
        s = Scheduler(store, registry, Settings())
        t0 = time.perf_counter()
        reports = {}
        for i in range(args.sites):
            name = f"site{i:04d}"
            registry.connect(name, AgentLink(name, "bench"))
            reports[name] = site_report(i, rng, now, args.busy)
            s.reconcile.on_report(name, reports[name])
        for u in range(1000):  # some runtime history, as a running daemon has
            for _ in range(2):
                s.placer.runtimes.observe(f"u{u}", rng.uniform(60, 20_000), 86_400.0)
        n_nodes = sum(len(r.nodes) for r in reports.values())
        n_jobs = sum(len(r.jobs) for r in reports.values())
        print(
            f"{args.sites} sites ({n_nodes} nodes, {n_jobs} running or pending Slurm jobs) "
            f"reported in {time.perf_counter() - t0:.1f} s"
        )
        probe = "site0001"
        empty_ms = median_ms(lambda: s.reconcile.on_report(probe, reports[probe]))
        empty_connect_ms = median_ms(lambda: s.dispatch.replay(probe))
        t0 = time.perf_counter()
        insert(store, new_jobs(args.jobs, rng))
        print(f"{args.jobs} jobs queued in {time.perf_counter() - t0:.1f} s")

        gc_time = GcTime()
        place = Timed(s.placer, "place")
        writes = Writes()
        full_s = place_s = 0.0
        for k in range(args.passes):
            place.seconds, writes.n = 0.0, 0
            s.placement.force_full()  # a full pass now
            gc_time.take()
            t0 = time.perf_counter()
            sent = s.run_cycle()
            full_s = time.perf_counter() - t0
            place_s = place.seconds
            gc_s = gc_time.take()
            queued = sum(1 for j in store.live.values() if j.state == JobState.QUEUED)
            print(
                f"full pass {k + 1}: {full_s:.2f} s (placement {place_s:.2f} s, the rest "
                f"{full_s - place_s:.2f} s, of which cyclic GC {gc_s:.2f} s); "
                f"{writes.n} job rows written, {sent} forwarded, {queued} held"
            )
        full_ms = median_ms(lambda: s.reconcile.on_report(probe, reports[probe]))
        full_connect_ms = median_ms(lambda: s.dispatch.replay(probe))
        print(
            f"a site report: {full_ms:.2f} ms with {len(store.live)} live jobs, "
            f"{empty_ms:.2f} ms with none ({full_ms / empty_ms:.1f}x); an agent reconnecting: "
            f"{full_connect_ms:.2f} ms against {empty_connect_ms:.2f} ms"
        )
        insert(store, new_jobs(args.more, rng))
        # as right after a long full pass: continue the plan
        s.placement._full_end = time.time() + 3600
        gc_time.take()
        t0 = time.perf_counter()
        sent = s.run_cycle()
        more_s = time.perf_counter() - t0
        gc_s = gc_time.take()
        print(
            f"{args.more} new jobs placed between full passes: {more_s * 1000:.0f} ms "
            f"({sent} forwarded; cyclic GC {gc_s * 1000:.0f} ms), against {full_s:.2f} s for "
            f"the last full pass ({full_s / more_s:.0f}x)"
        )
        print(
            f"\n| full pass | placement | the rest | report, full queue / empty | "
            f"{args.more} new jobs |\n|---|---|---|---|---|\n"
            f"| {full_s:.2f} s | {place_s:.2f} s | {full_s - place_s:.2f} s | "
            f"{full_ms:.2f} / {empty_ms:.2f} ms | {more_s * 1000:.0f} ms |"
        )
        store.close()
    devnull.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
