"""Exactly-once under crashes: a few hundred jobs over a real two-site lab while a seeded
fault injector keeps SIGKILLing metaschedd and the agents, and one slurmctld goes down and
comes back. Afterwards every acknowledged job must have run exactly once, in exactly one
Slurm job across all sites, and ended in the state its script chose.

Faults (all seeded, CRASH_SEED=<n> to change; CRASH_JOBS=<n> for more jobs):
  - metaschedd SIGKILLed at random moments (also while submissions are in flight), restarted
    after 0-1.5 s;
  - an agent SIGKILLed (with its sbatch/squeue children) at random moments;
  - an agent SIGKILLed the moment it logs job_submitted_to_slurm (journal says submitted,
    the daemon has not heard);
  - an agent SIGKILLed by an sbatch wrapper, either between the journal's intent and sbatch
    (sbatch never ran) or right after sbatch answered (the job is in Slurm; nobody knows);
  - one site's slurmctld and slurmds stopped for a few seconds and started again.

Evidence of what ran: each job script appends "<cluster> <slurm id> <metasched id>
<submission>" to a shared file; Slurm's own view (squeue --json, the completion log) is
scanned for every tagged job, strays included. The counts table is printed (pytest -s).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from metasched import auth, tags
from metasched.agent.slurm.base import SlurmJob
from metasched.lab import SiteProfile
from metasched.lab.federation import Federation
from metasched.states import JobState
from metasched.v1 import metasched_pb2 as pb

pytestmark = pytest.mark.slurm
S = JobState

SEED = int(os.environ.get("CRASH_SEED", "20240603"))
JOBS = int(os.environ.get("CRASH_JOBS", "300"))
USERS = ("root", "msfault1", "msfault2")
SITES = [
    SiteProfile("cpua", nodes=2, cpus=8, sockets=2, cores_per_socket=4, mem_mb=16_000),
    SiteProfile("cpub", nodes=1, cpus=8, sockets=2, cores_per_socket=4, mem_mb=16_000),
]
OUTAGE_SITE = "cpub"

# sbatch wrapper: when the injector has armed it (a file in $CTL), the first sbatch to claim
# the arm has its agent killed before (sbatch never runs) or after (the job is in Slurm)
# sbatch. sbatch runs as the job's user, who cannot signal the (root) agent: the wrapper asks
# the test's watcher to (a kill.<pid> file naming the agent) and waits to be killed with it.
SBATCH_WRAPPER = """#!/bin/bash
ctl=@CTL@
for mode in before after; do
  if mv "$ctl/$mode" "$ctl/claimed.$$" 2>/dev/null; then
    echo "$mode $PPID" >> "$ctl/fired"
    if [ "$mode" = before ]; then echo "$PPID" > "$ctl/kill.$$"; sleep 20; exit 1; fi
    out=$(@REAL@ "$@"); rc=$?
    echo "$out" >> "$ctl/fired"
    echo "$PPID" > "$ctl/kill.$$"; sleep 20; printf '%s\\n' "$out"; exit $rc
  fi
done
exec @REAL@ "$@"
"""


def ensure_user(name: str) -> None:
    with contextlib.suppress(KeyError):
        import pwd

        pwd.getpwnam(name)
        return
    subprocess.run(["useradd", "-M", "-s", "/bin/sh", name], check=True)


@dataclass
class Faults:
    fed: Federation
    ctl: Path
    rng: random.Random
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    counts: Counter[str] = field(default_factory=Counter)
    armed_log: set[str] = field(default_factory=set)
    daemon_down: threading.Event = field(default_factory=threading.Event)
    errors: list[str] = field(default_factory=list)

    def agents(self) -> list[str]:
        return list(self.fed.lab.sites)

    def kill_daemon(self) -> None:
        with self.lock:
            self.daemon_down.set()
            self.fed.kill("metaschedd", signal.SIGKILL)
            self.counts["metaschedd SIGKILL"] += 1
        time.sleep(self.rng.uniform(0.0, 1.5))
        with self.lock:
            self.fed.start_daemon()
            self.daemon_down.clear()

    def kill_agent(self, site: str, why: str) -> None:
        with self.lock:
            self.fed.kill(f"agent-{site}", signal.SIGKILL)
            self.counts[why] += 1

    def disarm(self) -> None:
        self.armed_log.clear()
        for mode in ("before", "after"):
            with contextlib.suppress(FileNotFoundError):
                (self.ctl / mode).unlink()

    def revive(self) -> None:
        """Restart every agent that is not running (killed by us or by the sbatch wrapper)."""
        with self.lock:
            for site in self.agents():
                p = self.fed.procs.get(f"agent-{site}")
                if p is None or p.poll() is not None:
                    if p is not None:
                        self.fed.procs.pop(f"agent-{site}", None)
                    self.fed.start_agent(site)
            d = self.fed.procs.get("metaschedd")
            if d is not None and d.poll() is not None and not self.daemon_down.is_set():
                self.errors.append(f"metaschedd exited on its own with {d.returncode}")
                self.fed.procs.pop("metaschedd")
                self.fed.start_daemon()

    def kill_asked(self) -> None:
        """Kill the agents the sbatch wrapper asked to (kill.<pid> files naming the agent)."""
        for req in self.ctl.glob("kill.*"):
            try:
                pid = int(req.read_text().strip() or 0)
            except (OSError, ValueError):
                continue  # still being written
            req.unlink(missing_ok=True)
            for site in self.agents():
                p = self.fed.procs.get(f"agent-{site}")
                if p is not None and p.pid == pid and p.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(p.pid, signal.SIGKILL)

    def watch_logs(self) -> None:
        """Kill an agent the moment it logs job_submitted_to_slurm, when armed for it."""
        offsets = {s: 0 for s in self.agents()}
        while not self.stop.is_set():
            self.kill_asked()
            for site in self.agents():
                path = self.fed.log(f"agent-{site}")
                try:
                    with open(path, "rb") as f:
                        f.seek(offsets[site])
                        data = f.read()
                except FileNotFoundError:
                    continue
                cut = data.rfind(b"\n") + 1
                offsets[site] += cut
                if site in self.armed_log and b"job_submitted_to_slurm" in data[:cut]:
                    p = self.fed.procs.get(f"agent-{site}")
                    if p is not None and p.poll() is None:
                        with contextlib.suppress(ProcessLookupError):
                            os.killpg(p.pid, signal.SIGKILL)
                        self.armed_log.discard(site)
                        self.counts["agent SIGKILL right after job_submitted_to_slurm"] += 1
            time.sleep(0.005)

    def run(self, outage_at: float) -> None:
        try:
            self._run(outage_at)
        except Exception as e:
            self.errors.append(f"fault injector failed: {e!r}")

    def _run(self, outage_at: float) -> None:
        start = time.monotonic()
        outage_done = False
        while not self.stop.is_set():
            self.stop.wait(self.rng.uniform(0.3, 2.0))
            if self.stop.is_set():
                break
            if not outage_done and time.monotonic() - start > outage_at:
                outage_done = True
                self.fed.lab.stop_site(OUTAGE_SITE)
                self.counts[f"slurmctld+slurmd of {OUTAGE_SITE} stopped, restarted 6 s later"] += 1
                self.stop.wait(6)
                self.fed.lab.start_site(OUTAGE_SITE)
                continue
            self.revive()
            r = self.rng.random()
            site = self.rng.choice(self.agents())
            if r < 0.22:
                self.kill_daemon()
            elif r < 0.50:
                self.kill_agent(site, "agent SIGKILL at a random moment")
            elif r < 0.70:
                self.armed_log.add(site)
            else:
                mode = "before" if self.rng.random() < 0.5 else "after"
                (self.ctl / mode).touch()
        self.revive()


def scan_slurm(
    fed: Federation, federation_id: str, tag_list: list[str]
) -> list[tuple[str, SlurmJob]]:
    """Every tagged Slurm job of this federation at every site: squeue + the completion log."""
    out: dict[tuple[str, str], SlurmJob] = {}
    for site in fed.lab.sites:
        be = fed.lab.backend(site)
        for j in [*be.finished([], tag_list), *be.jobs()]:  # squeue wins: it is newer
            t = tags.parse(j.comment)
            if t is not None and t.federation == federation_id:
                out[(site, j.job_id)] = j
    return [(site, j) for (site, _), j in out.items()]


def test_every_acknowledged_job_runs_exactly_once_under_crashes(
    make_federation: Callable[..., Federation],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    t0 = time.monotonic()
    for u in USERS[1:]:
        ensure_user(u)
    rng = random.Random(SEED)
    # the sbatch wrapper goes first on the PATH the agents inherit; it runs as the jobs'
    # users, so it and its control directory live where they can reach
    shared = Path(tempfile.mkdtemp(prefix="msc-", dir="/tmp"))
    shared.chmod(0o755)
    ctl = shared / "ctl"
    wrap = shared / "bin"
    ctl.mkdir()
    ctl.chmod(0o777)
    (ctl / "fired").touch()
    (ctl / "fired").chmod(0o666)
    wrap.mkdir()
    wrap.chmod(0o755)
    real = subprocess.run(["which", "sbatch"], capture_output=True, text=True).stdout.strip()
    (wrap / "sbatch").write_text(SBATCH_WRAPPER.replace("@CTL@", str(ctl)).replace("@REAL@", real))
    (wrap / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrap}:{os.environ['PATH']}")
    fed = make_federation(
        SITES,
        poll_interval=0.5,
        report_interval=2.0,
        site_grace_seconds=8,
        placement_interval=0.3,
        daemon_extra=(
            "resend_after = 5.0\n"
            "rebalance_interval = 2.0\nrebalance_grace_seconds = 3.0\n"
            "rebalance_min_gain_seconds = 1.0\n"
        ),
    )
    ran = fed.root / "ran.txt"
    ran.touch()
    ran.chmod(0o666)
    faults = Faults(fed, ctl, random.Random(rng.random()))
    injector = threading.Thread(target=faults.run, args=(20.0,), daemon=True)
    watcher = threading.Thread(target=faults.watch_logs, daemon=True)

    attempts = 0
    acked: dict[int, tuple[int, int]] = {}  # job id -> (submission, exit code)
    unacked: dict[int, int] = {}  # submission -> exit code (the client saw an error)
    errors: Counter[str] = Counter()
    injector.start()
    watcher.start()
    try:
        for _n in range(JOBS):
            code = rng.choice([0, 0, 0, 0, 3])
            user = rng.choice(USERS)
            script = (
                "#!/bin/bash\n"
                f'echo "$SLURM_CLUSTER_NAME $SLURM_JOB_ID $METASCHED_JOB_ID $SUBMISSION" >> {ran}\n'
                f"sleep {rng.choice([0, 0, 1, 2])}\nexit {code}\n"
            )
            for _retry in range(10):  # a retried submission is a new job, counted as such
                attempts += 1
                sub = attempts
                spec = pb.JobSpec(
                    script=script,
                    time_limit_minutes=5,
                    cpus_per_task=rng.choice([1, 1, 2]),
                    workdir="/tmp",
                    output="/dev/null",
                    environment={"SUBMISSION": str(sub)},
                )
                try:
                    resp = fed.call(
                        "SubmitJob",
                        pb.SubmitJobRequest(spec=spec, no_wait=rng.random() < 0.7),
                        user=user,
                        timeout=5,
                    )
                except grpc.RpcError as e:
                    errors[e.code().name] += 1
                    unacked[sub] = code
                    time.sleep(0.5)
                    continue
                except (auth.AuthError, auth.Unreachable, OSError) as e:
                    errors[type(e).__name__] += 1
                    unacked[sub] = code
                    time.sleep(0.5)
                    continue
                acked[int(resp.job_id)] = (sub, code)
                break
            time.sleep(rng.uniform(0.0, 0.25))
        # keep injecting faults while the tail of the queue is forwarded and runs
        faults.stop.wait(max(0.0, 35 - (time.monotonic() - t0)))
    finally:
        faults.stop.set()
        injector.join(timeout=60)
        watcher.join(timeout=5)
    faults.disarm()
    faults.revive()
    if not fed.lab.site_up(OUTAGE_SITE):
        fed.lab.start_site(OUTAGE_SITE)
    fault_phase = time.monotonic() - t0
    daemon_pid = fed.procs["metaschedd"].pid

    def all_jobs() -> list[pb.Job]:
        r = fed.call(
            "ListJobs", pb.ListJobsRequest(all_users=True, include_final=True, limit=100_000)
        )
        return list(r.jobs)

    # Wait for every job to end while the federation makes progress: a loaded machine starts
    # jobs slowly (each one's login environment, su - user, can take 10 s and more), a stuck
    # federation stops changing. What is not final after 120 s without any change, or after
    # 20 minutes in all, is reported as stuck.
    began, changed, seen = time.monotonic(), time.monotonic(), {}
    while True:
        faults.revive()  # a supervisor (systemd) restarts what died
        now_states = {j.id: j.state for j in all_jobs()}
        if all(S.from_pb(s).is_final for s in now_states.values()):
            break
        if now_states != seen:
            seen, changed = now_states, time.monotonic()
        if time.monotonic() - changed > 120 or time.monotonic() - began > 1200:
            break
        time.sleep(1)
    jobs = {j.id: j for j in all_jobs()}
    stuck = {
        i: (S.from_pb(j.state).name, j.site, j.slurm_job_id, j.attempt, j.reason)
        for i, j in jobs.items()
        if not S.from_pb(j.state).is_final
    }
    assert fed.procs["metaschedd"].pid == daemon_pid and fed.procs["metaschedd"].poll() is None

    # ------------------------------------------------------------ the evidence
    db = sqlite3.connect(f"file:{fed.root / 'state' / 'metasched.db'}?mode=ro", uri=True)
    federation_id = str(db.execute("SELECT value FROM meta WHERE key='federation'").fetchone()[0])
    recalled = db.execute(
        "SELECT COUNT(DISTINCT job_id) FROM job_events WHERE state='RECALLING'"
    ).fetchone()[0]
    db.close()
    all_tags = [
        str(tags.Tag(federation_id, j.id, a))
        for j in jobs.values()
        for a in range(1, j.attempt + 1)
    ]
    slurm = scan_slurm(fed, federation_id, all_tags)
    runs: dict[int, list[tuple[str, str]]] = defaultdict(list)  # metasched id -> ran (site, sid)
    for line in ran.read_text().splitlines():
        parts = line.split()
        if len(parts) == 4:
            runs[int(parts[2])].append((parts[0], parts[1]))
    slurm_of: dict[int, list[tuple[str, SlurmJob]]] = defaultdict(list)
    for site, sj in slurm:
        t = tags.parse(sj.comment)
        assert t is not None
        slurm_of[t.job_id].append((site, sj))

    def ran_in_slurm(sj: SlurmJob) -> bool:
        return (
            sj.start_time > 0
            and sj.state not in ("PENDING",)
            and not (sj.state == "CANCELLED" and not sj.end_time > sj.start_time > 0)
        )

    lost, duplicated, wrong_state, strays_not_run = [], [], [], []
    run_count = 0
    for job_id, j in jobs.items():
        r = runs.get(job_id, [])
        started = [(site, sj) for site, sj in slurm_of.get(job_id, []) if ran_in_slurm(sj)]
        never = [(site, sj) for site, sj in slurm_of.get(job_id, []) if not ran_in_slurm(sj)]
        strays_not_run += [(job_id, site, sj.job_id, sj.state) for site, sj in never]
        if r:
            run_count += 1
        if len(r) > 1 or len(started) > 1:
            duplicated.append((job_id, r, [(s, sj.job_id, sj.state) for s, sj in started]))
        if job_id in acked and not r:
            lost.append((job_id, S.from_pb(j.state).name, j.site, j.slurm_job_id))
        if job_id in acked and r:
            _, code = acked[job_id]
            want = S.COMPLETED if code == 0 else S.FAILED
            got = S.from_pb(j.state)
            if got != want or j.exit_code != code or (j.site, j.slurm_job_id) != r[0]:
                wrong_state.append(
                    (job_id, got.name, j.exit_code, code, (j.site, j.slurm_job_id), r)
                )
    unacked_in_db = [i for i in jobs if i not in acked]
    unknown_ran = [i for i in runs if i not in jobs]

    rows = [
        ("submission attempts", attempts),
        ("acknowledged (daemon answered with a job id)", len(acked)),
        ("refused / errored (not acknowledged)", len(unacked)),
        ("  of which committed anyway (in the DB)", len(unacked_in_db)),
        ("jobs in the database", len(jobs)),
        ("ran (at least once)", run_count),
        (
            "acknowledged that ran exactly once",
            len(acked) - len(lost) - len([d for d in duplicated if d[0] in acked]),
        ),
        ("lost (acknowledged, never ran)", len(lost)),
        ("duplicated (ran more than once)", len(duplicated)),
        ("wrong final state / exit code", len(wrong_state)),
        ("not final at the end (stuck)", len(stuck)),
        ("stray Slurm jobs cancelled before they ran", len(strays_not_run)),
        ("Slurm jobs seen across sites", len(slurm)),
        ("jobs recalled (RECALLING) at some point", int(recalled)),
    ]
    print(f"\n\ncrash test (seed {SEED}, {JOBS} jobs, {len(fed.lab.sites)} sites)")
    print(f"fault phase {fault_phase:.0f} s, total {time.monotonic() - t0:.0f} s")
    print("faults:")
    for k, v in sorted(faults.counts.items()):
        print(f"  {v:4d}  {k}")
    fired = (ctl / "fired").read_text().split() if (ctl / "fired").exists() else []
    shutil.rmtree(shared, ignore_errors=True)
    print(f"  {fired.count('before'):4d}  agent SIGKILL between journal intent and sbatch")
    print(f"  {fired.count('after'):4d}  agent SIGKILL after sbatch, before it read the answer")
    print(f"client errors: {dict(errors)}")
    print("counts:")
    for k, v in rows:
        print(f"  {k:<50} {v:5d}")
    for name, items in (
        ("lost", lost),
        ("duplicated", duplicated),
        ("wrong", wrong_state),
        ("stuck", list(stuck.items())),
        ("strays", strays_not_run),
        ("unknown ran", unknown_ran),
        ("daemon errors", faults.errors),
    ):
        if items:
            print(f"{name}: {items[:20]}")
    if stuck or lost or duplicated or wrong_state:
        keep = Path("/tmp") / f"crash-evidence-{SEED}"
        shutil.rmtree(keep, ignore_errors=True)
        shutil.copytree(fed.root, keep, ignore=shutil.ignore_patterns("*.sock*"))
        print(f"logs and database kept in {keep}")
    assert not faults.errors
    assert not stuck
    assert not lost
    assert not duplicated
    assert not wrong_state
    assert not unknown_ran
    for i in unacked_in_db:  # committed but unanswered: at most once, like every job
        assert len(runs.get(i, [])) <= 1
