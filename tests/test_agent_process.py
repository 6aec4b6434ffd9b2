"""metasched-agent as a process, as a site admin and systemd meet it: --check names what is
wrong with the site's Slurm in one line, and SIGTERM ends it promptly whatever it is doing."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import need_pyslurm, need_slurm

from metasched import tags
from metasched.lab import SiteProfile, SlurmLab
from metasched.lab.federation import Federation, wait_for
from metasched.states import JobState
from metasched.v1 import metasched_pb2 as pb

pytestmark = pytest.mark.slurm


def site(name: str, release: str = "") -> SiteProfile:
    return SiteProfile(
        name, nodes=1, cpus=4, sockets=1, cores_per_socket=4, mem_mb=8000, slurm=release
    )


def check(config: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "metasched.agent.main", "--check", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )


def agent_config(tmp_path: Path, lab: SlurmLab, name: str, **agent: str) -> Path:
    cfg = tmp_path / f"agent-{name}-{len(list(tmp_path.iterdir()))}.toml"
    extra = "".join(f'{k} = "{v}"\n' for k, v in agent.items())
    cfg.write_text(
        f'[agent]\nsite = "{name}"\ndaemon = "127.0.0.1:1"\ntoken = "t"\n'
        f'state_dir = "{tmp_path / "state"}"\nslurm_conf = "{lab.slurm_conf(name)}"\n{extra}'
    )
    return cfg


def test_check_names_a_slurm_of_the_wrong_release_in_one_line(
    make_lab: Callable[..., SlurmLab], tmp_path: Path
) -> None:
    """A 25.11 site with Debian's 22.05 commands first on PATH: today `sinfo` says only
    'Unspecified error'; --check says which sinfo it ran and what to set."""
    need_slurm("25.11")
    lab = make_lab([site("new", "25.11")])
    own = lab.install("new")
    wrong = check(agent_config(tmp_path, lab, "new", backend="cli"))
    assert wrong.returncode == 1
    (line,) = wrong.stderr.strip().splitlines()
    assert "cannot talk to this site's slurmctld" in line and "slurm_bin_dir" in line
    assert "Slurm 22.05" in line
    right = check(agent_config(tmp_path, lab, "new", backend="cli", slurm_bin_dir=str(own.bin_dir)))
    assert right.returncode == 0, right.stderr
    assert f"Slurm {own.version} via cli" in right.stdout
    missing = check(agent_config(tmp_path, lab, "new", slurm_bin_dir="/nonexistent/bin"))
    assert missing.returncode == 2
    assert missing.stderr.strip() == (
        "metasched-agent: slurm_bin_dir /nonexistent/bin: no such directory"
    )


def test_check_with_pyslurm(make_lab: Callable[..., SlurmLab], tmp_path: Path) -> None:
    need_pyslurm()
    lab = make_lab([site("pys", "25.11")])
    bin_dir = str(lab.install("pys").bin_dir)
    env = {k: v for k, v in os.environ.items() if k != "SLURM_CONF"}
    ok = check(agent_config(tmp_path, lab, "pys", backend="pyslurm", slurm_bin_dir=bin_dir), env)
    assert ok.returncode == 0, ok.stderr
    assert f"Slurm {lab.install('pys').version} via pyslurm" in ok.stdout
    assert "partition batch: 1 nodes x 4 CPUs" in ok.stdout


# ------------------------------------------------------------------ SIGTERM
def stopped(fed: Federation, site: str, *events: str) -> dict[str, object]:
    """The agent's last log record of one of `events` (agent_stopped, agent_stopped_in_flight,
    agent_killed_at_stop_deadline: its watchdog's)."""
    for line in reversed(fed.log(f"agent-{site}").read_text().splitlines()):
        if any(f'"event": "{event}"' in line for event in events):
            rec: dict[str, object] = json.loads(line)
            return rec
    raise AssertionError(f"agent-{site} logged none of {events}")


def watchdogs(agent: int) -> list[int]:
    """Pids of the agent's stop-deadline watchdog (agent/stop_deadline.py)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"metasched.agent.stop_deadline" in argv and str(agent).encode() in argv:
                found.append(int(entry.name))
    return found


def terminate(fed: Federation, site: str) -> float:
    """SIGTERM the site's agent as systemctl stop does; seconds until the process is gone.
    Its watchdog, there while it runs, goes with it."""
    proc = fed.procs.pop(f"agent-{site}")
    wait_for(lambda: bool(watchdogs(proc.pid)), 60, "the agent's watchdog")
    began = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)  # today's idle agent would not end: systemd kills it at 30 s
    took = time.monotonic() - began
    wait_for(lambda: not watchdogs(proc.pid), 60, "the watchdog to end with the agent")
    return took


def test_an_idle_agent_stops_within_2s_of_sigterm(
    make_federation: Callable[..., Federation],
) -> None:
    """Today an idle agent looks at its stop flag only when a message arrives, and none does."""
    fed = make_federation([site("idle")])
    log = fed.log("agent-idle")
    wait_for(lambda: '"connected_to_daemon"' in log.read_text(), 60, "the agent to connect")
    took = terminate(fed, "idle")
    assert fed.log("agent-idle").read_text().count('"agent_started"') == 1
    assert float(stopped(fed, "idle", "agent_stopped")["stop_s"]) < 2.0  # type: ignore[arg-type]
    assert took < 10  # the process itself, however loaded the machine


def journalled(fed: Federation, site: str, job_id: int) -> list[str]:
    """The states the site's agent journalled for a job (intent, submitted, ...)."""
    path = fed.root / f"agent-{site}" / "journal.db"
    if not path.exists():
        return []
    db = sqlite3.connect(path)
    try:
        rows = db.execute("SELECT state FROM submissions WHERE job_id=?", (job_id,)).fetchall()
    except sqlite3.OperationalError:  # the agent has not created its table yet
        rows = []
    finally:
        db.close()
    return [r[0] for r in rows]


@pytest.mark.parametrize(
    ("release", "backend"), [("", "cli"), ("25.11", "pyslurm")], ids=["cli", "pyslurm-25.11"]
)
def test_an_agent_stops_within_2s_while_its_submission_hangs_and_the_job_runs_once(
    make_federation: Callable[..., Federation], release: str, backend: str
) -> None:
    """SIGTERM while the submission waits on a hung slurmctld: the agent ends within 2 s
    with the intent journalled; restarted, it finds or submits the job, exactly once. sbatch
    waits in a child process; pyslurm waits inside libslurm holding Python's GIL, so no
    Python code of the agent runs until Slurm's MessageTimeout (30 s here)."""
    if backend == "pyslurm":
        need_pyslurm()
    fed = make_federation(
        [site("hang", release)], lab_overrides={"MessageTimeout": "30"}, backends={"hang": backend}
    )
    lab = fed.lab

    def submit() -> pb.SubmitJobResponse:
        spec = pb.JobSpec(script="#!/bin/sh\ntrue\n", time_limit_minutes=5, workdir="/tmp")
        job: pb.SubmitJobResponse = fed.call("SubmitJob", pb.SubmitJobRequest(spec=spec))
        return job

    def completed(job_id: int) -> bool:
        return JobState.from_pb(fed.job(job_id).state) == JobState.COMPLETED

    # a job first, as any agent that has run a while: what it reads once about the site is
    # read, and the call in flight below is the submission itself (pyslurm's holds the GIL)
    first = submit()
    wait_for(lambda: completed(first.job_id), 180, "the first job", fed.log("metaschedd"))
    lab.hang_site("hang")
    try:
        job = submit()
        # the intent is written just before the backend's submit, which now waits on Slurm
        wait_for(lambda: journalled(fed, "hang", job.job_id) == ["intent"], 60, "the intent")
        time.sleep(0.5)
        took = terminate(fed, "hang")
    finally:
        lab.resume_site("hang")
    # cli: the agent ends itself after its grace; pyslurm: its watchdog ends it at the deadline
    rec = stopped(fed, "hang", "agent_stopped_in_flight", "agent_killed_at_stop_deadline")
    assert float(rec["stop_s"]) < 2.0  # type: ignore[arg-type]
    assert took < 10
    assert journalled(fed, "hang", job.job_id) in (["intent"], ["submitted"])
    fed.start_agent("hang")
    wait_for(lambda: completed(job.job_id), 180, f"job {job.job_id}", fed.log("metaschedd"))
    ours = [t for j in lab.backend("hang").jobs() if (t := tags.parse(j.comment))]
    assert [t.job_id for t in ours].count(job.job_id) == 1, ours
