"""The README's demo: a local federation of three real Slurm sites, jobs of several
precisions submitted with msub, and where each one went and how it ended.

    python -m metasched.lab.demo [--root DIR] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from metasched.lab import DEMO_SITES, SlurmLab
from metasched.lab.federation import Federation
from metasched.lab.profiles import mixed_demo, mixed_demo_ready

JOBS: list[tuple[str, list[str], str]] = [
    # name, msub options, what it stands for
    ("climate-sim", ["--precision", "fp64", "-N", "2", "-c", "16"], "FP64 simulation, 2 nodes"),
    ("cfd-solver", ["--precision", "fp64", "-c", "32"], "FP64 solver"),
    ("llm-finetune", ["--precision", "bf16", "--gres", "gpu:2"], "BF16 training on 2 GPUs"),
    ("inference", ["--precision", "int8", "--gres", "gpu:1"], "INT8 inference"),
    ("cuda-kernel", ["--gres", "gpu:a100:1"], "needs an A100 specifically"),
    ("preprocess", ["--precision", "fp32", "-c", "8"], "FP32 data preparation"),
]


def say(text: str = "") -> None:
    print(text, flush=True)


def app_shelf(fed: Federation, root: Path) -> bool:
    """Step 6: publish an app with two recipes, run it three times (two kinds of site), put
    one result on the shelf and fetch it as another user."""
    say("\n== 6. the app shelf: publish once, run anywhere")
    app = Path(__file__).resolve().parents[2] / "examples" / "apps" / "wave.toml"
    if not app.exists():  # installed without the repository's examples
        say(f"   {app} not found: skipped")
        return True
    say("$ msub app publish wave.toml")
    say("  " + fed.msub("app", "publish", str(app)).stdout.strip())
    say("$ msub app show wave")
    say(fed.msub("app", "show", "wave").stdout.rstrip())
    runs: dict[int, Path] = {}
    for k in range(3):
        work = root / "wave" / f"run{k}"
        work.mkdir(parents=True)
        args = ["-D", str(work), "wave", "--param", f"steps={100 * (k + 1)}", "--param", "nap=8"]
        say(f"$ msub app run {' '.join(args)}")
        out = fed.msub("app", "run", "--json", *args)
        job_id = int(json.loads(out.stdout)["job_id"])
        runs[job_id] = work
        say(f"  job {job_id}")
    deadline = time.monotonic() + 120
    done: dict[int, dict[str, Any]] = {}
    while time.monotonic() < deadline and len(done) < len(runs):
        for job_id in runs:
            j = json.loads(fed.msub("show", str(job_id), "--json").stdout)
            if j.get("state") in ("completed", "failed"):  # short names (docs/json.md)
                done[job_id] = j
        time.sleep(0.5)
    kinds = set()
    for job_id, j in sorted(done.items()):
        line = (runs[job_id] / "wave.out").read_text().strip() if j.get("site") else ""
        say(f"   job {job_id} -> {j.get('site')} with recipe {j.get('recipe')}: {line}")
        kinds.add(j.get("recipe"))
    ok = len(done) == len(runs) and kinds == {"cpu", "a100"}
    first = min(runs)
    say(f"$ msub app publish-result {first}")
    say(fed.msub("app", "publish-result", str(first)).stdout.rstrip())
    bob = fed.token("bob")  # another user (a remote one, with a token from the admin)
    say("$ msub result list               # as bob")
    say(fed.msub("result", "list", token=bob).stdout.rstrip())
    result_id = json.loads(fed.msub("result", "list", "--json", token=bob).stdout)[0]["id"]
    dest = root / "wave" / "fetched-by-bob.out"
    say(f"$ msub result fetch {result_id} -o {dest}    # as bob")
    say(
        "  "
        + fed.msub("result", "fetch", str(result_id), "-o", str(dest), token=bob).stdout.strip()
    )
    fetched = dest.read_text() == (runs[first] / "wave.out").read_text()
    say("$ msub app list")
    say(fed.msub("app", "list").stdout.rstrip())
    say(
        f"   three runs on {len(kinds)} kinds of site ({', '.join(sorted(map(str, kinds)))}); "
        f"result fetched by another user: {'yes' if fetched else 'NO'}"
    )
    return ok and fetched


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m metasched.lab.demo", description=__doc__)
    ap.add_argument("--root", default="/tmp/metasched-demo", help="where the lab lives")
    ap.add_argument("--keep", action="store_true", help="leave everything running at the end")
    args = ap.parse_args(argv)
    root = Path(args.root)
    if root.exists():
        with contextlib.suppress(Exception):  # a lab left by an earlier --keep run
            SlurmLab.attach(root / "lab").down()
        shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    root.chmod(0o755)

    # Slurm 25.11 sites with a pyslurm agent too, when scripts/build-slurm has built them
    sites, backends = mixed_demo() if mixed_demo_ready() else (list(DEMO_SITES), {})
    say("== 1. three real Slurm sites on this machine")
    t0 = time.monotonic()
    lab = SlurmLab(root / "lab", sites, cleanup_at_exit=not args.keep)
    lab.up()
    say(f"   up in {time.monotonic() - t0:.1f}s:")
    for name in lab.sites:
        agent = backends.get(name, "cli")
        say(f"   {name:<4} Slurm {lab.install(name).version}, {agent} agent")
    fed = Federation(lab, root / "fed", poll_interval=1.0, backends=backends)
    try:
        say("== 2. metaschedd and one metasched-agent per site")
        t0 = time.monotonic()
        fed.start()
        say(f"   connected in {time.monotonic() - t0:.1f}s (logs: {fed.root}/*.log)")
        say("\n$ msub sites")
        say(fed.msub("sites").stdout.rstrip())

        say("\n== 3. submit jobs of several precisions with msub")
        script_dir = root / "jobs"
        script_dir.mkdir()
        ids: dict[int, str] = {}
        submitted: dict[str, float] = {}  # when msub was started, per job
        for name, opts, what in JOBS:
            script = script_dir / f"{name}.sh"
            script.write_text(
                f"#!/bin/bash\n#SBATCH -J {name}\n#SBATCH -t 5\n#SBATCH -o {script_dir}/%x-%j.out\n"
                f"date +%s.%N > {script_dir}/{name}.started\n"
                f'echo "{what} on $(hostname), GPUs: ${{CUDA_VISIBLE_DEVICES:-none}}"\nsleep 3\n'
            )
            cmd = ["msub", *opts, str(script)]
            say(f"$ {' '.join(cmd[:-1])} {script.name}    # {what}")
            submitted[name] = time.time()
            out = fed.msub(*opts, str(script))
            say("  " + out.stdout.strip())
            ids[int(out.stdout.split()[2].rstrip(";"))] = name

        say("\n== 4. follow them to the end")
        seen: dict[int, str] = {}
        deadline = time.monotonic() + 120
        jobs: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            jobs = json.loads(fed.msub("list", "--finished", "--json").stdout)
            mine = [j for j in jobs if int(str(j["id"])) in ids]
            for j in mine:
                state = str(j["state"])  # short lower-case names (docs/json.md)
                jid = int(str(j["id"]))
                if seen.get(jid) != state:
                    seen[jid] = state
                    where = (
                        f" at {j.get('site')} (slurm job {j.get('slurm_job_id')})"
                        if j.get("slurm_job_id")
                        else ""
                    )
                    say(f"   job {jid} {ids[jid]:<13} {state}{where}")
            if (
                mine
                and all(s in ("completed", "failed", "cancelled", "timeout") for s in seen.values())
                and len(seen) == len(ids)
            ):
                break
            time.sleep(0.5)

        say("\n$ msub list --finished")
        say(fed.msub("list", "--finished").stdout.rstrip())
        first = min(ids)
        say(f"\n$ msub show {first}")
        say(fed.msub("show", str(first)).stdout.rstrip())

        say("\n== 5. what happened")
        ok = True
        latencies = []
        for j in sorted(jobs, key=lambda j: int(str(j["id"]))):
            jid = int(str(j["id"]))
            if jid not in ids:
                continue
            state = str(j["state"])  # short lower-case names (docs/json.md)
            with contextlib.suppress(OSError, ValueError):  # written by the job's first line
                started = float((script_dir / f"{ids[jid]}.started").read_text())
                latencies.append(started - submitted[ids[jid]])
            spec = j.get("spec", {})
            prec = spec.get("precision", "-") if isinstance(spec, dict) else "-"
            say(
                f"   {ids[jid]:<13} precision {prec or '-':<5} -> {j.get('site')}: {state}, "
                f"exit code {j.get('exit_code', 0)}"
            )
            ok = ok and state == "completed"
        fp64_on_ai = [
            j
            for j in jobs
            if j.get("site") == "ai"
            and isinstance(j.get("spec"), dict)
            and j["spec"].get("precision") == "fp64"
        ]
        say(f"   fp64 jobs on the AI-only site: {len(fp64_on_ai)}")
        if latencies:
            say(
                f"   msub started -> the job's first line running: median "
                f"{sorted(latencies)[len(latencies) // 2]:.1f}s, max {max(latencies):.1f}s"
            )
        ok = app_shelf(fed, root) and ok
        say("\nAll jobs completed." if ok and not fp64_on_ai else "\nSome jobs did not complete.")
        if args.keep:
            say(f"\nLeft running. msub talks to it with: METASCHED_DAEMON=unix:{fed.socket}")
            say(f"Stop with: python -m metasched.lab down --root {lab.root} and kill the daemons")
        return 0 if ok and not fp64_on_ai else 1
    finally:
        if not args.keep:
            fed.stop()
            lab.down()


if __name__ == "__main__":
    sys.exit(main())
