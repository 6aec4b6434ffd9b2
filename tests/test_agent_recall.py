"""A recall (rebalancing) pulls a job back only if it never started: the agent's answer
against a real Slurm site. A job that started and ended between the daemon's recall
decision and the scancel is final, but it ran: taking it as recalled placed it again and ran
it twice (seen in the crash test, job 87: COMPLETED at cpua as Slurm job 55, then again at
cpub as 36)."""

from __future__ import annotations

import pytest
from tests_support import slurm_state as state_of
from tests_support import submit_tagged as submit

from metasched.agent.site_agent import SiteAgent
from metasched.lab.federation import wait_for
from metasched.v1 import metasched_pb2 as pb

pytestmark = pytest.mark.slurm


@pytest.fixture
def agent(hpc_agent: SiteAgent) -> SiteAgent:
    return hpc_agent


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
