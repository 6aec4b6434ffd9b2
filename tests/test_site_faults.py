"""Sites misbehaving under a running federation: jobs that leave squeue while nobody looks,
a slurmctld that dies and comes back, an agent pointed at a dead controller."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from metasched.lab import DEMO_SITES
from metasched.lab.federation import Federation, wait_for
from metasched.states import JobState
from metasched.v1 import metasched_pb2 as pb

pytestmark = pytest.mark.slurm
S = JobState


@pytest.fixture
def fed(make_federation: Callable[..., Federation]) -> Federation:
    """One CPU site whose Slurm forgets finished jobs after 2 s (MinJobAge=2)."""
    return make_federation(
        [DEMO_SITES[0]],
        lab_overrides={"MinJobAge": "2", "MessageTimeout": "2"},
        site_grace_seconds=6,
    )


def job_state(fed: Federation, job_id: int) -> JobState:
    return JobState.from_pb(fed.job(job_id).state)


def submit(fed: Federation, script: str) -> int:
    spec = pb.JobSpec(script=script, time_limit_minutes=5, workdir="/tmp")
    resp = fed.call("SubmitJob", pb.SubmitJobRequest(spec=spec))
    return int(resp.job_id)


def in_squeue(fed: Federation, slurm_job_id: str) -> bool:
    return any(j.job_id == slurm_job_id for j in fed.lab.backend("hpc").jobs())


def test_a_job_that_left_squeue_unseen_is_resolved_from_the_completion_log(
    fed: Federation,
) -> None:
    job_id = submit(fed, "#!/bin/bash\nsleep 2\nexit 5\n")
    wait_for(lambda: job_state(fed, job_id) == S.RUNNING, 30, "the job to run")
    fed.kill("agent-hpc", signal.SIGKILL)  # nobody watches while it ends and is purged
    sid = fed.job(job_id).slurm_job_id
    wait_for(lambda: not in_squeue(fed, sid), 60, f"slurm job {sid} to leave squeue")
    assert job_state(fed, job_id) == S.RUNNING  # the daemon does not guess
    fed.start_agent("hpc")
    wait_for(lambda: job_state(fed, job_id).is_final, 60, "the job to be resolved")
    job = fed.job(job_id)
    assert JobState.from_pb(job.state) == S.FAILED
    assert job.exit_code == 5
    assert job.ended_at > job.started_at > 0
    assert any("accounting" in ev.detail for ev in job.events), job.events


def test_slurmctld_down_marks_the_site_offline_and_running_work_survives(
    fed: Federation, tmp_path: Path
) -> None:
    # The job ends when the test says so, after the controller is back: one that ends while
    # slurmctld is down is known to Slurm only if slurmstepd's retries outlast the outage
    # (MessageTimeout-bound: on a loaded machine they did not, and Slurm showed it RUNNING).
    tmp_path.chmod(0o755)
    go = tmp_path / "go"
    job_id = submit(fed, f"#!/bin/bash\nwhile [ ! -e {go} ]; do sleep 0.5; done\n")
    wait_for(lambda: job_state(fed, job_id) == S.RUNNING, 30, "the job to run")
    fed.lab.stop_site("hpc")
    try:
        wait_for(lambda: fed.sites()["hpc"].state == "offline", 30, "hpc to be offline")
        # a new job that only hpc could run waits in the global queue, with the reason
        waiting = submit(fed, "#!/bin/bash\ntrue\n")
        job = fed.job(waiting)
        assert JobState.from_pb(job.state) == S.QUEUED
        assert "hpc: offline" in job.reason
    finally:
        fed.lab.start_site("hpc")
    wait_for(lambda: fed.sites()["hpc"].state == "online", 30, "hpc to be back")
    assert job_state(fed, job_id) == S.RUNNING
    go.touch()
    for which, jid in (("the running job", job_id), ("the waiting job", waiting)):
        wait_for(lambda j=jid: job_state(fed, j).is_final, 180, f"{which} to end")  # type: ignore[misc]
        job = fed.job(jid)
        assert JobState.from_pb(job.state) == S.COMPLETED, f"{which}: {job.reason}"


def agent_check(fed: Federation) -> subprocess.CompletedProcess[str]:
    """What a site admin runs: metasched-agent --check with the site's config."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "metasched.agent.main",
            "--check",
            "-c",
            str(fed.agent_config("hpc")),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_agent_check_against_a_dead_slurmctld_is_one_line(fed: Federation) -> None:
    fed.lab.stop_site("hpc")
    try:
        r = agent_check(fed)
    finally:
        fed.lab.start_site("hpc")
    assert r.returncode == 1
    assert r.stderr.startswith("metasched-agent: Slurm at site hpc does not answer")
    assert len(r.stderr.strip().splitlines()) == 1
    ok = agent_check(fed)
    assert ok.returncode == 0, ok.stderr
    assert "partition batch" in ok.stdout and "fp64" in ok.stdout
