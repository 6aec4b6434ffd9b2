"""A recall (rebalancing) pulls a job back only if it never started: the agent's answer
against a real Slurm site. A job that started and ended between the daemon's recall
decision and the scancel is final, but it ran: taking it as recalled placed it again and ran
it twice (seen in the crash test, job 87: COMPLETED at cpua as Slurm job 55, then again at
cpub as 36)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from metasched.agent.config import AgentConfig, UserMap
from metasched.agent.journal import Journal
from metasched.agent.site_agent import SiteAgent
from metasched.agent.slurm.cli import CliBackend
from metasched.agent.tagkey import TagKeys
from metasched.lab import SlurmLab
from metasched.lab.federation import wait_for
from metasched.v1 import metasched_pb2 as pb

pytestmark = pytest.mark.slurm


@pytest.fixture
def agent(slurm_lab: SlurmLab, tmp_path: Path) -> SiteAgent:
    cfg = AgentConfig(
        site="hpc",
        daemon="unix:/nonexistent",
        token="",
        state_dir=tmp_path,
        users=UserMap(identity=True),
    )
    return SiteAgent(
        cfg,
        CliBackend(str(slurm_lab.slurm_conf("hpc")), timeout=15),
        Journal(tmp_path / "j.db"),
        TagKeys.load_or_create(tmp_path),
    )


def submit(agent: SiteAgent, script: str, job_id: int, **spec: int) -> tuple[str, str]:
    tag = f"metasched:{uuid.uuid4().hex[:12]}:{job_id}:1"
    res = agent.submit(
        pb.SubmitCommand(
            job_id=job_id,
            attempt=1,
            tag=tag,
            user="root",
            spec=pb.JobSpec(script=script, time_limit_minutes=5, output="/dev/null", **spec),
        )
    )
    assert res.slurm_job_id, res.error
    return res.slurm_job_id, tag


def state_of(agent: SiteAgent, sid: str) -> str:
    return next((j.state for j in agent.backend.jobs() if j.job_id == sid), "")


def recall(agent: SiteAgent, sid: str, tag: str, job_id: int) -> pb.CancelResult:
    return agent.cancel(
        pb.CancelCommand(job_id=job_id, attempt=1, slurm_job_id=sid, tag=tag, only_if_pending=True)
    )


def test_a_job_that_already_ran_is_not_taken_back(agent: SiteAgent) -> None:
    sid, tag = submit(agent, "#!/bin/sh\nexit 0\n", 1)
    wait_for(lambda: state_of(agent, sid) == "COMPLETED", 60, "the job to complete")
    res = recall(agent, sid, tag, 1)
    assert not res.done
    assert "started" in res.error


def test_a_pending_job_is_taken_back(agent: SiteAgent) -> None:
    # both nodes taken whole, so the second job waits
    blocker, _ = submit(agent, "#!/bin/sh\nsleep 120\n", 2, nodes=2, ntasks=128)
    try:
        wait_for(lambda: state_of(agent, blocker) == "RUNNING", 60, "the blocker to run")
        sid, tag = submit(agent, "#!/bin/sh\nexit 0\n", 3)
        assert state_of(agent, sid) == "PENDING"
        res = recall(agent, sid, tag, 3)
        assert res.done, res.error
        assert state_of(agent, sid) == "CANCELLED"
    finally:
        agent.backend.cancel(blocker)
