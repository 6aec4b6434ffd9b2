"""The whole test suite, again and again, with CPU burners alongside: is it reliable when loaded?

Each round starts `--burners` processes that spin on a CPU each for the whole round, runs the
README's test command (`scripts/test`, i.e. everything CI runs, against real Slurm sites) in
the given checkout, and records how it ended and how long it took. One JSON line per round is
appended to `--log` (so rounds from several sittings add up), and a table is printed at the
end. A failed round keeps pytest's summary lines of what failed.

    python -m bench.suite_under_load [--rounds 10] [--burners 2] [--checkout .] [--log FILE]

Run it from a checkout that nobody edits meanwhile (a detached `git worktree` of the commit
under test), as root, like CI.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BURN = "while True: pass"


def git_commit(checkout: Path) -> str:
    out = subprocess.run(
        ["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def summary(output: str) -> tuple[int, int, list[str]]:
    """pytest's `N passed, M failed` and its FAILED/ERROR lines, from the end of its output."""
    passed = failed = 0
    for m in re.finditer(
        r"(\d+) (passed|failed|errors?)", output.splitlines()[-1] if output else ""
    ):
        if m.group(2) == "passed":
            passed = int(m.group(1))
        else:
            failed += int(m.group(1))
    failures = [ln for ln in output.splitlines() if ln.startswith(("FAILED ", "ERROR "))]
    return passed, failed, failures


def one_round(checkout: Path, burners: int, out_dir: Path, n: int) -> dict[str, Any]:
    burning = [subprocess.Popen([sys.executable, "-c", BURN]) for _ in range(burners)]
    began = time.monotonic()
    log = out_dir / f"round-{n}.log"
    try:
        with log.open("w") as f:
            rc = subprocess.run(
                ["scripts/test"], cwd=checkout, stdout=f, stderr=subprocess.STDOUT
            ).returncode
    finally:
        for p in burning:
            p.kill()
            p.wait()
    took = time.monotonic() - began
    passed, failed, failures = summary(log.read_text(errors="replace").rstrip())
    return {
        "commit": git_commit(checkout),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - took)),
        "burners": burners,
        "exit": rc,
        "seconds": round(took),
        "passed": passed,
        "failed": failed,
        "failures": failures,
        "output": str(log),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--burners", type=int, default=2, help="CPU-spinning processes alongside")
    ap.add_argument("--checkout", type=Path, default=Path("."), help="where scripts/test is run")
    ap.add_argument("--log", type=Path, default=Path("suite-under-load.jsonl"))
    args = ap.parse_args(argv)
    checkout = args.checkout.resolve()
    out_dir = args.log.resolve().parent / "suite-under-load"
    out_dir.mkdir(parents=True, exist_ok=True)
    for n in range(1, args.rounds + 1):
        print(f"round {n}/{args.rounds}: scripts/test in {checkout}", file=sys.stderr, flush=True)
        result = one_round(checkout, args.burners, out_dir, int(time.time()))
        with args.log.open("a") as f:
            f.write(json.dumps(result) + "\n")
        print(
            f"round {n}/{args.rounds}: exit {result['exit']}, {result['passed']} passed, "
            f"{result['failed']} failed, {result['seconds'] / 60:.1f} min",
            file=sys.stderr,
            flush=True,
        )
    rounds = [json.loads(ln) for ln in args.log.read_text().splitlines() if ln.strip()]
    print(f"{'started':<21} {'commit':<9} {'burners':>7} {'result':>22} {'took':>9}")
    for r in rounds:
        verdict = "pass" if r["exit"] == 0 else "FAIL"
        counts = f"{verdict} {r['passed']}/{r['passed'] + r['failed']}"
        print(
            f"{r['started']:<21} {r['commit']:<9} {r['burners']:>7} {counts:>22} "
            f"{r['seconds'] / 60:>6.1f} min"
        )
        for line in r["failures"]:
            print(f"    {line}")
    return 0 if all(r["exit"] == 0 for r in rounds) else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
