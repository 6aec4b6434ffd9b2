"""Replay a real SWF trace through several Slurm-like sites under different placement policies.

    .venv/bin/python -m bench.replay ../shared/traces/KTH-SP2-1996-2.1-cln.swf.gz
    .venv/bin/python -m bench.replay TRACE [TRACE ...] --sites 4 --seed 1 --limit-jobs 0 \\
        --policies random,round-robin,fewest-queued,slurm-m,metasched,oracle

See bench/README.md for the model and the results.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from collections.abc import Callable

from bench.policies import (
    Base,
    FewestQueued,
    Metasched,
    MetaschedKnown,
    Oracle,
    RandomPolicy,
    RoundRobin,
    SlurmM,
)
from bench.sim import T0, Job, Progress, Sim, Site
from bench.swf import Trace, read_swf
from metasched.placement.policy import Placer
from metasched.placement.runtime import RuntimePredictor

# Site catalogue, taken in order for --sites N: (name, share of the traced machine's
# processors, precisions offered). Sizes differ on purpose; every precision class a job can
# need is offered by at least two sites for any N >= 4 (checked at start-up).
CATALOGUE: list[tuple[str, float, tuple[str, ...]]] = [
    ("hpc-big", 1.0, ("fp64", "fp32")),
    ("mixed", 0.5, ("fp64", "fp32", "bf16", "fp16")),
    ("ai", 0.5, ("fp32", "bf16", "fp16", "int8")),
    ("small", 0.25, ("fp64", "bf16", "int8")),
    ("hpc-mid", 0.75, ("fp64", "fp32", "bf16")),
    ("edge", 0.25, ("fp32", "bf16", "int8")),
    ("gpu-a", 0.5, ("fp32", "tf32", "bf16", "fp16")),
    ("tiny", 0.125, ("fp64", "fp32", "int8")),
]
# Share of jobs needing each precision (classic HPC traces: mostly fp64).
NEEDS: list[tuple[str, float]] = [("fp64", 0.45), ("fp32", 0.25), ("bf16", 0.2), ("int8", 0.1)]

POLICIES = [
    "random",
    "round-robin",
    "fewest-queued",
    "slurm-m",
    "metasched-early",
    "metasched",
    "oracle",
]
# Issue 4: "the share of jobs that waited whose start was predicted within 10 minutes". The
# default reading is the literal one, a job waited if it started any time after its
# submission (wait > 0); the earlier reading, a wait of at least a minute, is reported too.
WAITED_DEFINITIONS: list[tuple[str, float, str]] = [
    ("waited > 0", 0.0, "started any time after submission: the issue's wording"),
    ("waited >= 60 s", 60.0, "started at least 60 s after submission"),
]


def waited(wait: float, threshold: float) -> bool:
    return wait > 0 if threshold <= 0 else wait >= threshold


def make_sites(trace: Trace, n: int) -> list[Site]:
    if not 2 <= n <= len(CATALOGUE):
        raise SystemExit(f"--sites must be 2..{len(CATALOGUE)}")
    sites = [
        Site(i, name, max(1, round(share * trace.max_procs)), precs)
        for i, (name, share, precs) in enumerate(CATALOGUE[:n])
    ]
    for prec, _ in NEEDS:
        k = sum(prec in s.precisions for s in sites)
        if k < 2:
            raise SystemExit(f"with {n} sites, precision {prec} has only {k} site(s)")
    return sites


def make_jobs(trace: Trace, sites: list[Site], seed: int, load: float) -> tuple[list[Job], float]:
    """Jobs with a seeded precision need; arrivals compressed so the federation carries the
    traced machine's load (`load` = 1.0) although it has more processors in all."""
    rng = random.Random(seed)
    scale = sum(s.nodes for s in sites) / trace.max_procs * load
    t_first = trace.jobs[0][0]
    jobs: list[Job] = []
    for i, (submit, run, limit, procs, user) in enumerate(trace.jobs):
        # Only precisions some site can run at this size; weights renormalised.
        opts = [
            (p, w) for p, w in NEEDS if any(p in s.precisions and procs <= s.nodes for s in sites)
        ]
        r = rng.random() * sum(w for _, w in opts)
        prec = opts[-1][0]
        for p, w in opts:
            r -= w
            if r <= 0:
                prec = p
                break
        t = T0 + (submit - t_first) / scale
        jobs.append(Job(i, t, max(run, 0.0), limit, procs, user, prec))
    return jobs, scale


def make_policy(name: str, seed: int) -> Base:
    factories: dict[str, Callable[[], Base]] = {
        "random": lambda: RandomPolicy(seed),
        "round-robin": RoundRobin,
        "fewest-queued": FewestQueued,
        "slurm-m": SlurmM,
        "metasched": lambda: Metasched(Placer(hold_horizon_s=0.0)),
        "metasched-early": lambda: Metasched(Placer(hold_horizon_s=None), "metasched-early"),
        # ablation: a running job's remaining time conditioned on how long it has run
        # (better estimates, slightly worse placement on KTH-SP2: bench/README.md)
        "metasched-conditional": lambda: Metasched(
            Placer(hold_horizon_s=0.0, runtimes=RuntimePredictor(conditional=True)),
            "metasched-conditional",
        ),
        "oracle": Oracle,
        # ablations: the true run time of every running / not yet started job, the ceiling
        # of better run-time prediction for each (bench/README.md)
        "metasched-known-running": lambda: MetaschedKnown("running"),
        "metasched-known-queued": lambda: MetaschedKnown("queued"),
    }
    if name not in factories:
        raise SystemExit(f"unknown policy {name!r}; choose from {', '.join(factories)}")
    return factories[name]()


def pct(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def metrics(jobs: list[Job]) -> dict[str, float]:
    waits = [j.start - j.submit for j in jobs]
    bsld = [max(1.0, (w + j.run) / max(j.run, 10.0)) for w, j in zip(waits, jobs, strict=True)]
    out = {
        "mean_wait": statistics.fmean(waits),
        "p95_wait": pct(waits, 0.95),
        "bsld": statistics.fmean(bsld),
    }
    est = [j for j in jobs if not math.isnan(j.est)]
    if est:
        for k, (_, threshold, _) in enumerate(WAITED_DEFINITIONS):
            sfx = "" if k == 0 else f"_{k}"
            err_w = [abs(j.est - j.start) for j in est if waited(j.start - j.submit, threshold)]
            out["n_waited" + sfx] = len(err_w)
            out["w_1min" + sfx] = sum(e <= 60 for e in err_w) / max(1, len(err_w))
            out["w_10min" + sfx] = sum(e <= 600 for e in err_w) / max(1, len(err_w))
            out["w_medae" + sfx] = statistics.median(err_w) if err_w else math.nan
        err_all = [abs(j.est - j.start) for j in est]
        out["all_10min"] = sum(e <= 600 for e in err_all) / len(err_all)
        b = [j for j in est if not math.isnan(j.est90)]
        out["p90_held"] = sum(j.start <= j.est90 + 1e-6 for j in b) / len(b) if b else math.nan
    return out


def fmt_s(x: float) -> str:
    if math.isnan(x):
        return "-"
    if x >= 3600:
        return f"{x / 3600:.2f} h"
    if x >= 60:
        return f"{x / 60:.1f} min"
    return f"{x:.0f} s"


def fmt_p(x: float | None) -> str:
    return "-" if x is None or math.isnan(x) else f"{x * 100:.1f}%"


def fmt_r(a: float, b: float | None) -> str:
    if b is None or math.isnan(a) or math.isnan(b) or b == 0:
        return "-"
    return f"{a / b:.2f}x"


def report(name: str, results: dict[str, dict[str, float]], secs: dict[str, float]) -> None:
    base = results.get("slurm-m")
    orc = results.get("oracle")
    print(f"\n### {name}\n")
    print(
        "| policy | mean wait | p95 wait | mean bsld | wait vs -M | wait vs oracle "
        "| bsld vs -M | time |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for pol, m in results.items():
        print(
            f"| {pol} | {fmt_s(m['mean_wait'])} | {fmt_s(m['p95_wait'])} | {m['bsld']:.2f} "
            f"| {fmt_r(m['mean_wait'], base['mean_wait'] if base else None)} "
            f"| {fmt_r(m['mean_wait'], orc['mean_wait'] if orc else None)} "
            f"| {fmt_r(m['bsld'], base['bsld'] if base else None)} | {secs[pol]:.0f} s |"
        )
    label = {
        "slurm-m": "slurm -M will-run",
        "metasched": "metasched",
        "oracle": "oracle (true runtimes)",
    }
    for k, (wname, _, wdesc) in enumerate(WAITED_DEFINITIONS):
        sfx = "" if k == 0 else f"_{k}"
        w10, mae = "w_10min" + sfx, "w_medae" + sfx
        print(f"\nEstimates given at submission ({wname}: {wdesc}):\n")
        print(
            "| estimator | jobs waited | waited: within 1 min | within 10 min | median abs err "
            "| all jobs within 10 min | 90% bound held | 10-min share vs -M | MAE vs -M |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for pol, m in results.items():
            if w10 not in m:
                continue
            print(
                f"| {label.get(pol, pol)} | {int(m['n_waited' + sfx])} "
                f"| {fmt_p(m['w_1min' + sfx])} "
                f"| {fmt_p(m[w10])} | {fmt_s(m[mae])} | {fmt_p(m['all_10min'])} "
                f"| {fmt_p(m.get('p90_held'))} "
                f"| {fmt_r(m[w10], base[w10] if base and w10 in base else None)} "
                f"| {fmt_r(m[mae], base[mae] if base and mae in base else None)} |"
            )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("traces", nargs="+", help="SWF trace files (.swf or .swf.gz)")
    ap.add_argument("--sites", type=int, default=4, help="number of sites (2..8), default 4")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--limit-jobs", type=int, default=0, help="replay only the first N jobs (0 = all)"
    )
    ap.add_argument("--load", type=float, default=1.0, help="offered load vs the traced machine")
    ap.add_argument("--policies", default=",".join(POLICIES))
    args = ap.parse_args(argv)
    names = [p.strip() for p in args.policies.split(",") if p.strip()]
    for path in args.traces:
        t_read = time.monotonic()
        trace = read_swf(path, args.limit_jobs)
        sites = make_sites(trace, args.sites)
        probe, scale = make_jobs(trace, sites, args.seed, args.load)
        one = sum(
            1
            for j in probe
            if sum(j.prec in s.precisions and j.procs <= s.nodes for s in sites) == 1
        )
        print(
            f"\n## {trace.name}: {len(probe)} jobs"
            + (f" (first {args.limit_jobs})" if args.limit_jobs else "")
        )
        site_list = "; ".join(f"{s.name} {s.nodes} nodes " + "/".join(s.precisions) for s in sites)
        print(
            f"sites: {site_list}; "
            f"arrivals compressed {scale:.2f}x (load {args.load}); seed {args.seed}; "
            f"jobs with only one eligible site: {one / len(probe) * 100:.2f}%; "
            f"killed at limit: {trace.killed_at_limit}; no limit in trace: {trace.no_limit}; "
            f"dropped: {trace.dropped}; read in {time.monotonic() - t_read:.1f} s"
        )
        results: dict[str, dict[str, float]] = {}
        secs: dict[str, float] = {}
        for name in names:
            jobs, _ = make_jobs(trace, sites, args.seed, args.load)
            fresh = [Site(s.idx, s.name, s.nodes, s.precisions) for s in sites]
            sim = Sim(fresh, jobs)
            pol = make_policy(name, args.seed)
            t0 = time.monotonic()
            sim.run(pol, Progress(f"{trace.name[:14]} {name}", len(jobs)))
            secs[name] = time.monotonic() - t0
            results[name] = metrics(jobs)
            sys.stdout.flush()
        report(trace.name, results, secs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
