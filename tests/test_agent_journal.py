"""The agent's submission journal stays bounded: rows of jobs that left Slurm's queue long ago
are forgotten, and nothing the journal still guards is (it grew by a row for every job a
site ever ran: nothing pruned it)."""

from __future__ import annotations

import sqlite3

import pytest
from tests_support import slurm_state, submit_tagged

from metasched.agent.site_agent import SiteAgent
from metasched.lab.federation import wait_for

pytestmark = pytest.mark.slurm

DAY = 86400.0


def rows(agent: SiteAgent) -> dict[str, str]:
    with sqlite3.connect(agent.journal.path) as db:
        return dict(db.execute("SELECT tag, state FROM submissions").fetchall())


def test_old_rows_of_finished_jobs_go_and_nothing_still_guarded_does(
    hpc_agent: SiteAgent,
) -> None:
    agent = hpc_agent
    live_sid, live = submit_tagged(agent, "#!/bin/sh\nsleep 300\n", 1)
    try:
        gone_sid, gone = submit_tagged(agent, "#!/bin/sh\nexit 0\n", 2)
        wait_for(lambda: slurm_state(agent, gone_sid) == "COMPLETED", 60, "job 2 to end")
        # a finished job Slurm has already forgotten, an sbatch that never answered, a
        # cancelled tag, and a recent finished one: as if written 40 days ago but the last
        agent.journal.record("metasched:feedfeedfeed:3:1", 3, 1, "submitted", "999999")
        agent.journal.record("metasched:feedfeedfeed:4:1", 4, 1, "intent")
        agent.journal.record("metasched:feedfeedfeed:5:1", 5, 1, "cancelled")
        with sqlite3.connect(agent.journal.path) as db:
            db.execute("UPDATE submissions SET at = at - 40 * ?", (DAY,))
        agent.journal.record("metasched:feedfeedfeed:6:1", 6, 1, "submitted", "999998")
        assert agent.journal.entries() == 6

        report = agent.report()

        kept = rows(agent)
        assert live in kept  # its job is still in Slurm's queue: the journal vouches for it
        # job 2 has ended but Slurm still lists it (MinJobAge): kept while it does
        assert gone in kept
        assert kept.get("metasched:feedfeedfeed:4:1") == "intent"
        assert "metasched:feedfeedfeed:6:1" in kept  # younger than journal_keep_days
        assert "metasched:feedfeedfeed:3:1" not in kept
        assert "metasched:feedfeedfeed:5:1" not in kept
        assert agent.journal.entries() == 4
        # the live job is still known as ours (its federation job id) after the pruning
        ours = {j.slurm_job_id: j.job_id for j in report.jobs if j.job_id}
        assert ours.get(live_sid) == 1
    finally:
        agent.backend.cancel(live_sid)
