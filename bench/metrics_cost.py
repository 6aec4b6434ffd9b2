"""What metaschedd's Prometheus metrics cost its hot paths, metrics on against off, side by
side in one run.

    .venv/bin/python -m bench.metrics_cost [--jobs 5000] [--window 128] \
        [--sites 1000] [--queued 100000] [--passes 5]

- Submission throughput: two real metaschedd processes, one with http_listen (metrics on: the
  RPC interceptor, a histogram per commit, the store's listener counting every change) and
  one without (no metrics at all), driven alternately by bench/submit_throughput.py's client;
  the best of three runs each, and each server's least CPU time per acknowledged job.
- The placement pass: two Schedulers over their own SQLite files with the same --sites
  reports and --queued jobs (bench/daemon_cycle.py's federation), one with DaemonMetrics
  attached as the daemon attaches them, full passes alternately (who goes first alternates
  too); the least CPU time of passes 2..--passes each.
- And, for the operator's side, what one scrape of /metrics costs with those sites: the
  first, and the next ones while no report changed (each site's use is kept until it does).
Nothing is asserted: numbers go in bench/README.md.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client import generate_latest

from bench.daemon_cycle import insert, new_jobs, site_report
from bench.submit_throughput import cpu_seconds, drive, wait_socket
from metasched import auth, log
from metasched.daemon.metrics import DaemonMetrics
from metasched.daemon.scheduler import Scheduler, Settings
from metasched.daemon.sites import AgentLink, SiteRegistry
from metasched.store import Store


def submissions(jobs: int, window: int) -> dict[str, tuple[float, float]]:
    """name -> (acknowledged jobs per second, server CPU ms per job)."""
    root = Path(tempfile.mkdtemp(prefix="mmc-"))
    procs: dict[str, subprocess.Popen[bytes]] = {}
    socks: dict[str, str] = {}
    try:
        for name, http in (("metrics on", '"127.0.0.1:0"'), ("metrics off", '""')):
            d = root / name.replace(" ", "-")
            sock = str(d / "d.sock")
            d.mkdir()
            (d / "d.toml").write_text(
                f'[daemon]\nstate_dir = "{d / "state"}"\nlisten = ""\nsocket = "{sock}"\n'
                f"http_listen = {http}\n"
                'log_level = "warning"\nsubmit_rate = 1000000.0\nsubmit_burst = 1000000\n'
                'max_queued_per_user = 10000000\nsynchronous = "FULL"\n'
            )
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", "metasched.daemon.main", "-c", str(d / "d.toml")]
            )
            socks[name] = sock
        for sock in socks.values():
            wait_socket(auth.ident_path(sock))

        def md(sock: str) -> tuple[tuple[str, str], ...]:
            token = auth.fetch_local_token(auth.ident_path(sock))
            return (("authorization", f"Bearer {token}"),)

        out: dict[str, tuple[float, float]] = {}
        for sock in socks.values():
            drive(sock, 500, window, md(sock))  # warm up
        for k in range(3):
            for name, sock in sorted(socks.items(), reverse=k % 2 == 1):
                cpu0 = cpu_seconds(procs[name].pid)
                rate = drive(sock, jobs, window, md(sock))
                cpu = (cpu_seconds(procs[name].pid) - cpu0) / jobs * 1e3
                best = out.get(name, (0.0, math.inf))
                out[name] = (max(best[0], rate), min(best[1], cpu))
                print(f"  submissions, {name}: {rate:,.0f}/s", file=sys.stderr, flush=True)
        return out
    finally:
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            try:
                p.wait(120)  # a loaded machine: seconds to stop
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(root, ignore_errors=True)


class Pool:
    """One daemon's Scheduler and store with --sites agents reporting and --queued jobs."""

    def __init__(self, root: Path, sites: int, queued: int, metrics: bool, seed: int) -> None:
        rng = random.Random(seed)
        now = time.time()
        self.store = Store(root / "queue.db")
        registry = SiteRegistry(grace_seconds=3600)
        self.scheduler = s = Scheduler(self.store, registry, Settings())
        self.metrics: DaemonMetrics | None = None
        self.cycle: Callable[[], object] = s.run_cycle
        if metrics:  # as metaschedd does with http_listen
            self.metrics = DaemonMetrics(self.store, registry)
            self.metrics.attach(s)
            self.cycle = self.metrics.timed("placement", s.run_cycle)
        for i in range(sites):
            name = f"site{i:04d}"
            registry.connect(name, AgentLink(name, "bench"))
            s.reconcile.on_report(name, site_report(i, rng, now, 0.97))
        for u in range(1000):
            for _ in range(2):
                s.placer.runtimes.observe(f"u{u}", rng.uniform(60, 20_000), 86_400.0)
        insert(self.store, new_jobs(queued, rng))

    def full_pass(self) -> float:
        """CPU seconds of one full pass, every thread of this process (the store's writer
        too): on a shared machine, wall time mostly measures the neighbours. The cyclic
        garbage collector is kept out: with two queues in one process, a collection during
        one's pass walks both heaps (passes were 4.5 or 9.5 CPU s, metrics or not)."""
        self.scheduler.placement.force_full()
        gc.collect()
        gc.disable()
        try:
            t0 = time.process_time()
            self.cycle()
            # the pass's writes, finished on the store's writer thread, are the pass's: left
            # running they were counted in the other queue's pass (every second pass of a
            # round came out 50% slower)
            self.store.run(lambda b: None, timeout=600)
            return time.process_time() - t0
        finally:
            gc.enable()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--jobs", type=int, default=5000, help="submissions per run")
    ap.add_argument("--window", type=int, default=128, help="submissions in flight")
    ap.add_argument("--sites", type=int, default=1000)
    ap.add_argument("--queued", type=int, default=100_000)
    ap.add_argument("--passes", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)

    subs = submissions(args.jobs, args.window)

    devnull = open(os.devnull, "w")  # noqa: SIM115 (open for the whole run)
    log.setup(level="info", stream=devnull)
    passes: dict[str, list[float]] = {"metrics on": [], "metrics off": []}
    with tempfile.TemporaryDirectory() as tmp:
        feds = {
            name: Pool(
                Path(tmp) / name.replace(" ", "-"), args.sites, args.queued, name == "metrics on", 1
            )
            for name in passes
        }
        for k in range(args.passes):
            # alternate who goes first: the first of a round finds caches the other warmed
            for name, fed in sorted(feds.items(), reverse=k % 2 == 1):
                passes[name].append(fed.full_pass())
                print(
                    f"  full pass {k + 1}, {name}: {passes[name][-1]:.2f} CPU s",
                    file=sys.stderr,
                    flush=True,
                )
        on = feds["metrics on"].metrics
        assert on is not None
        scrape_s = []
        for _ in range(5):
            t0 = time.process_time()
            body = generate_latest(on.registry)
            scrape_s.append(time.process_time() - t0)
        for fed in feds.values():
            fed.store.close()
    devnull.close()

    (on_rate, on_cpu), (off_rate, off_cpu) = subs["metrics on"], subs["metrics off"]
    # The least of passes 2..N: the first places the whole queue, and whichever goes second
    # in a round comes out slower (up to 50%, metrics or not); each goes first in half.
    on_pass, off_pass = (min(passes[n][1:] or passes[n]) for n in ("metrics on", "metrics off"))
    print(f"{'hot path':<44} {'metrics on':>12} {'metrics off':>12} {'on / off':>9}")
    print(
        f"{'submissions (jobs/s)':<44} {on_rate:>12,.0f} {off_rate:>12,.0f} "
        f"{on_rate / off_rate:>8.3f}x"
    )
    print(
        f"{'  server CPU per job (ms)':<44} {on_cpu:>12.3f} {off_cpu:>12.3f} "
        f"{on_cpu / off_cpu:>8.3f}x"
    )
    label = f"full pass, {args.queued:,} jobs/{args.sites} sites (CPU s, least)"
    print(f"{label:<44} {on_pass:>12.2f} {off_pass:>12.2f} {on_pass / off_pass:>8.3f}x")
    print(
        f"one scrape of /metrics with that queue: {scrape_s[0] * 1e3:.0f} CPU ms the first, "
        f"{statistics.median(scrape_s[1:]) * 1e3:.0f} CPU ms the next (no report changed) "
        f"({len(body):,} bytes; off the hot paths, on the HTTP server's thread)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
