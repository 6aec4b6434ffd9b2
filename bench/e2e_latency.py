"""End-to-end latency on the real Slurm lab: from `msub` to the job's first line running.

Each job script records the moment it starts (date +%s.%N); latency is that moment minus
the moment just before the submission was started. Measured side by side in one run:
  sbatch    plain sbatch to the same site (the floor: Slurm's own dispatch)
  msub      the msub CLI (a new Python process per submission, as users run it)
  grpc      SubmitJob over gRPC from a long-lived client (no CLI start-up)

    python -m bench.e2e_latency [--jobs 20]        (root, Slurm installed)
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from metasched.lab import DEMO_SITES, SlurmLab
from metasched.lab.federation import Federation
from metasched.v1 import metasched_pb2 as pb


def wait_file(p: Path, timeout: float = 60) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            text = p.read_text().strip()
            if text:
                return float(text)
        except OSError:
            pass
        time.sleep(0.01)
    raise TimeoutError(f"{p} never written")


def script(stamp: Path) -> str:
    return f"#!/bin/bash\ndate +%s.%N > {stamp}.tmp && mv {stamp}.tmp {stamp}\n"


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--jobs", type=int, default=20, help="jobs per path")
    args = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="msb-", dir="/tmp"))
    root.chmod(0o755)
    out = root / "stamps"
    out.mkdir()
    results: dict[str, list[float]] = {"sbatch": [], "msub": [], "grpc": []}
    lab = SlurmLab(root / "l", [DEMO_SITES[0]])
    try:
        with lab, Federation(lab, root / "f", poll_interval=0.5) as fed:
            env = lab.env("hpc")
            for i in range(args.jobs):
                for path in results:
                    stamp = out / f"{path}-{i}"
                    body = script(stamp)
                    f = out / f"{path}-{i}.sh"
                    f.write_text(body)
                    t0 = time.time()
                    if path == "sbatch":
                        subprocess.run(
                            ["sbatch", "-t", "2", "-o", "/dev/null", str(f)],
                            env=env,
                            check=True,
                            capture_output=True,
                        )
                    elif path == "msub":
                        fed.msub("-t", "2", "-o", "/dev/null", str(f))
                    else:
                        spec = pb.JobSpec(
                            script=body, time_limit_minutes=2, output="/dev/null", workdir="/tmp"
                        )
                        fed.call("SubmitJob", pb.SubmitJobRequest(spec=spec, no_wait=True))
                    results[path].append(wait_file(stamp) - t0)
                print(f"\r{i + 1}/{args.jobs} jobs per path", end="", file=sys.stderr, flush=True)
            print(file=sys.stderr)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    base = statistics.median(results["sbatch"])
    print(f"{'path':<8} {'p50 s':>7} {'p95 s':>7} {'max s':>7} {'p50 / sbatch':>13}")
    for path, xs in results.items():
        print(
            f"{path:<8} {statistics.median(xs):>7.2f} {pct(xs, 0.95):>7.2f} {max(xs):>7.2f} "
            f"{statistics.median(xs) / base:>13.1f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
