"""How fast one placement cycle is: Placer.place on synthetic 100k queued jobs x 1000 sites.

    .venv/bin/python -m bench.placement_speed [--jobs 100000] [--sites 1000] [--seed 1] \
        [--scenarios burst,saturated] [--naive-sample 0] [--more 1000]

The daemon must place about 100,000 queued jobs over 1,000 sites within about a second per
cycle, late binding (hold_horizon_s=0, as the daemon runs). Two scenarios, each timed side by
side in one run against the frozen pre-change cycle (bench/placement_legacy.py) on the same
sites, jobs and runtime history:
- burst: partitions 0-100% busy, so every job can start now (a cold start with a huge burst);
- saturated: partitions 97-100% busy, so most jobs are held (the steady state of late
  binding: a job that can start is forwarded, so a long global queue is a held one).
Printed: s per cycle, jobs/s, the ratio, and how many decisions are identical; then how
long --more new jobs take when the daemon places them between full passes by continuing the
cycle (Placer.place_more), against the full pass. Nothing is asserted. --naive-sample N also
times the naive loop (every job asks every eligible partition) on N jobs.
"""

from __future__ import annotations

import argparse
import math
import random
import time
from dataclasses import replace

from bench import placement_legacy
from metasched.jobspec import Shape
from metasched.placement.model import NodeView, PartitionView, SiteView, Work
from metasched.placement.policy import Placer, Request, need_of, site_refusal
from metasched.placement.profile import Profile

PRECS = [("fp64", "fp32"), ("fp32", "bf16", "fp16"), ("fp64", "fp32", "bf16"), ("bf16", "int8")]


def make_sites(n: int, rng: random.Random, now: float, busy: float = 0.0) -> list[SiteView]:
    """busy: each partition has a share of its CPUs in use drawn from [busy, 1]."""
    sites = []
    for i in range(n):
        nodes: dict[str, NodeView] = {}
        parts = []
        running: list[Work] = []
        pending: list[Work] = []
        for k in range(rng.randint(1, 3)):
            count = rng.choice([16, 64, 256, 1024])
            cpus = rng.choice([32, 64, 128])
            gpus = {"a100": 4} if k == 2 else {}
            used = rng.randint(round(busy * count * cpus), count * cpus)
            name = f"s{i}-g{k}"
            nodes[name] = NodeView(
                name,
                (f"p{k}",),
                True,
                cpus,
                count * cpus - used,
                256_000,
                256_000 * count,
                gpus,
                {t: c * count // 2 for t, c in gpus.items()},
                count=count,
            )
            parts.append(
                PartitionView(
                    f"p{k}",
                    (name,),
                    max_time_minutes=rng.choice([0, 2880]),
                    precisions=dict.fromkeys(PRECS[(i + k) % len(PRECS)], 1.0),
                )
            )
            left = used
            while left > 0:
                c = min(left, rng.choice([cpus, 4 * cpus, 16 * cpus]))
                left -= c
                limit = rng.choice([3600.0, 4 * 3600.0, 24 * 3600.0])
                running.append(
                    Work(
                        f"p{k}",
                        max(1, c // cpus),
                        c,
                        0,
                        "",
                        limit,
                        now - 5000,
                        start_time=now - rng.uniform(0, limit),
                        user=f"u{rng.randint(0, 999)}",
                    )
                )
            for _ in range(rng.randint(0, 20)):
                c = rng.choice([cpus, 4 * cpus])
                pending.append(
                    Work(
                        f"p{k}",
                        c // cpus,
                        c,
                        0,
                        "",
                        rng.choice([3600.0, 86400.0]),
                        now - 100,
                        user=f"u{rng.randint(0, 999)}",
                    )
                )
        sites.append(SiteView(f"site{i}", True, parts, nodes, running, pending))
    return sites


def make_reqs(n: int, rng: random.Random) -> list[Request]:
    reqs = []
    for j in range(n):
        nodes = rng.choice([1, 1, 1, 2, 4, 8])
        shape = Shape(
            nodes=nodes,
            tasks=nodes * rng.choice([1, 32]),
            cpus_per_task=1,
            mem_per_node_mb=0,
            gpus_per_node=0,
            gpu_type="",
            time_limit_minutes=rng.choice([30, 60, 240, 1440]),
            precision=rng.choice(["fp64", "fp32", "bf16", "int8"]),
        )
        reqs.append(Request(j, f"u{rng.randint(0, 999)}", shape))
    return reqs


def naive(placer: Placer, reqs: list[Request], sites: list[SiteView], now: float) -> int:
    from metasched.placement.estimate import build_profile

    profiles: dict[tuple[str, str], Profile] = {}
    placed = 0
    for req in reqs:
        best: tuple[float, Profile | None] = (math.inf, None)
        runtime = placer.runtimes.predict(req.user, req.shape.time_limit_minutes * 60.0)
        need = need_of(req.shape, runtime)
        for site in sites:
            parts, _ = site_refusal(site, req)
            for p in parts:
                prof = profiles.get((site.name, p))
                if prof is None:
                    prof = build_profile(site, p, "", now, placer.runtimes)
                    profiles[(site.name, p)] = prof
                t = prof.earliest(need, now)
                if t < best[0]:
                    best = (t, prof)
        if best[1] is not None:
            best[1].reserve(best[0], need)
            placed += 1
    return placed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--sites", type=int, default=1000)
    ap.add_argument("--naive-sample", type=int, default=0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--scenarios", default="burst,saturated")
    ap.add_argument("--more", type=int, default=1000, help="new jobs placed after the cycle")
    args = ap.parse_args(argv)
    busy_of = {"burst": 0.0, "saturated": 0.97}
    rows = []
    more_rows = []
    for scenario in args.scenarios.split(","):
        rng = random.Random(args.seed)
        now = 1_000_000.0
        t0 = time.perf_counter()
        sites = make_sites(args.sites, rng, now, busy_of[scenario])
        reqs = make_reqs(args.jobs, rng)
        placer = Placer(hold_horizon_s=0.0)  # late binding, as the daemon runs
        for u in range(1000):  # some runtime history, as a running daemon has
            for _ in range(2):
                placer.runtimes.observe(f"u{u}", rng.uniform(60, 20000), 86400.0)
        n_run = sum(len(s.running) for s in sites)
        n_pend = sum(len(s.pending) for s in sites)
        print(
            f"{scenario}: {len(reqs)} queued jobs, {len(sites)} sites, "
            f"{sum(len(s.partitions) for s in sites)} partitions, {n_run} running and {n_pend} "
            f"pending jobs at the sites (built in {time.perf_counter() - t0:.1f} s)"
        )
        t0 = time.perf_counter()
        old = placement_legacy.place(placer, reqs, sites, now)
        d_old = time.perf_counter() - t0
        t0 = time.perf_counter()
        new = placer.place(reqs, sites, now)
        d_new = time.perf_counter() - t0
        same = sum(a == b for a, b in zip(old, new, strict=False))
        for name, out, dt in (("before (frozen copy)", old, d_old), ("after", new, d_new)):
            held = sum(d.hold for d in out)
            print(
                f"  {name}: {len(out)} decisions ({len(out) - held} forwarded, {held} held) in "
                f"{dt:.2f} s per cycle = {len(reqs) / dt:,.0f} jobs/s"
            )
        print(
            f"  after/before: {d_old / d_new:.1f}x faster; decisions as the frozen copy's "
            f"{same}/{len(old)} (the rest differ by design: tie-break, planning depth, guard; "
            "bench/README.md); target <= ~1 s per cycle: " + ("met" if d_new <= 1.0 else "MISSED")
        )
        # Between full passes the daemon only places new submissions, continuing the last cycle
        # (Placer.place_more): what a burst of new jobs waits for, instead of a full pass.
        extra = [replace(r, job_id=len(reqs) + r.job_id) for r in make_reqs(args.more, rng)]
        t0 = time.perf_counter()
        more = placer.place_more(extra) or []
        d_more = time.perf_counter() - t0
        print(
            f"  {len(extra)} new jobs placed by continuing the cycle: {d_more * 1000:.0f} ms "
            f"({sum(not d.hold for d in more)} forwarded), against {d_new:.2f} s for a full pass"
        )
        rows.append((scenario, len(reqs) / d_old, d_old, len(reqs) / d_new, d_new))
        more_rows.append((scenario, len(extra), d_more, d_new))
        if args.naive_sample:
            sample = reqs[: args.naive_sample]
            t0 = time.perf_counter()
            naive(placer, sample, sites, now)
            rate = len(sample) / (time.perf_counter() - t0)
            print(
                f"  naive loop ({len(sample)}-job sample): {rate:,.0f} jobs/s, "
                f"{len(reqs) / rate:.1f} s per cycle extrapolated"
            )
    print("\n| scenario | before jobs/s | before s/cycle | after jobs/s | after s/cycle | ratio |")
    print("|---|---|---|---|---|---|")
    for scenario, r0, d0, r1, d1 in rows:
        print(f"| {scenario} | {r0:,.0f} | {d0:.2f} | {r1:,.0f} | {d1:.2f} | {d0 / d1:.1f}x |")
    print("\n| scenario | new jobs | continuing the cycle | full pass | ratio |")
    print("|---|---|---|---|---|")
    for scenario, n, dm, df in more_rows:
        print(f"| {scenario} | {n:,} | {dm * 1000:.0f} ms | {df:.2f} s | {df / dm:.0f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
