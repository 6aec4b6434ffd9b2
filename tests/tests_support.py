"""Helpers for test modules that build their own module-scoped federation or local users."""

from __future__ import annotations

import contextlib
import os
import pwd
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from metasched.agent.config import AgentConfig, UserMap
from metasched.agent.journal import Journal
from metasched.agent.site_agent import SiteAgent
from metasched.agent.slurm.cli import CliBackend
from metasched.agent.tagkey import TagKeys
from metasched.lab import slurm_installed
from metasched.lab.federation import wait_for
from metasched.v1 import metasched_pb2 as pb


def need_slurm_or_skip() -> None:
    if slurm_installed() and os.geteuid() == 0:
        return
    if os.environ.get("METASCHED_REQUIRE_SLURM") == "1":
        pytest.fail("METASCHED_REQUIRE_SLURM=1 but the Slurm lab cannot run here")
    pytest.skip("Slurm lab needs slurmctld, slurmd, munge and root")


@contextlib.contextmanager
def local_account(name: str, home: bool = False) -> Iterator[str]:
    """A real local user for the test (named with its work's prefix, so parallel runs never
    share one), removed afterwards once its last processes are gone: userdel refuses while a
    job's process lingers, and a user left behind was then never removed (made=False)."""
    made = False
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "-m" if home else "-M", "-s", "/bin/sh", name], check=True)
        made = True
    try:
        yield name
    finally:
        if made:  # 0 removed, 6 no such user, 12 removed but its home was not
            argv = ["userdel", *(["-r"] if home else []), name]
            wait_for(
                lambda: subprocess.run(argv, capture_output=True).returncode in (0, 6, 12),
                60,
                f"userdel {name}",
            )


def scrape(url: str) -> dict[str, float]:
    """The Prometheus samples served at url/metrics, by name with labels."""
    text = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def bare_agent(site: str, slurm_conf: str, state_dir: Path) -> SiteAgent:
    """An agent driven by hand, with no daemon (cli backend, every user mapped to the same
    name, its journal and tag key in state_dir): tests call its submit, cancel and report."""
    cfg = AgentConfig(
        site=site,
        daemon="unix:/nonexistent",
        token="t",
        state_dir=state_dir,
        users=UserMap(identity=True),
    )
    return SiteAgent(
        cfg,
        CliBackend(slurm_conf),
        Journal(state_dir / "journal.db"),
        TagKeys.load_or_create(state_dir),
    )


def submit_tagged(agent: SiteAgent, script: str, job_id: int, **spec: int) -> tuple[str, str]:
    """Submit a script through an agent as the daemon would (root, a fresh tag, attempt 1,
    5 minutes, output to /dev/null): (its Slurm id, its tag)."""
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


def slurm_state(agent: SiteAgent, sid: str) -> str:
    """A Slurm job's state as the agent's backend sees it ("" once Slurm has forgotten it)."""
    return next((j.state for j in agent.backend.jobs() if j.job_id == sid), "")
