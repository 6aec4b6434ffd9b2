"""Placement behaviour on real Slurm sites: a burst spreads instead of herding, and a job
stuck pending at one site moves when another frees up (never running twice)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from metasched import tags
from metasched.lab import SiteProfile
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
def fed(make_federation: Callable[..., Federation]) -> Federation:
    return make_federation(SITES, daemon_extra=FAST_REBALANCE)


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
    """Local work filling a site, as its own users would submit it."""
    return fed.lab.sbatch(
        site, "-N2", "--exclusive", "-t", "10", "-o", "/dev/null", "--wrap", f"sleep {seconds}"
    )


def test_a_burst_spreads_over_equal_sites_instead_of_herding(fed: Federation) -> None:
    # eight whole-node jobs at once onto two empty two-node sites; each runs long enough
    # that none ends, and frees its node for a fifth, while the first four are checked: 60 s,
    # as on a loaded machine the four may start 20 s and more apart (each job's login
    # environment, su - user, is built before its script runs)
    burst = [
        fed.call("SubmitJob", pb.SubmitJobRequest(spec=spec(8, 60), no_wait=True)).job_id
        for _ in range(8)
    ]
    ids = [int(i) for i in burst]
    # the first four start at once, two on each site ...
    wait_for(lambda: sum(state(fed, i) == S.RUNNING for i in ids) == 4, 90, "four running")
    jobs = [fed.job(i) for i in ids]  # one look at all eight
    running = [j.site for j in jobs if JobState.from_pb(j.state) == S.RUNNING]
    assert sorted(running) == ["east", "east", "west", "west"]
    # ... and the rest wait in the global queue, not piled into one site's Slurm queue
    waiting = [j for j in jobs if JobState.from_pb(j.state) != S.RUNNING]
    assert [JobState.from_pb(j.state) for j in waiting] == [S.QUEUED] * 4
    assert all(j.estimate.site in ("east", "west") for j in waiting)
    wait_for(lambda: all(state(fed, i) == S.COMPLETED for i in ids), 400, "all eight to finish")
    sites = [fed.job(i).site for i in ids]
    assert min(sites.count("east"), sites.count("west")) >= 3, sites


def test_a_stale_pending_job_moves_to_the_site_that_freed_up(fed: Federation) -> None:
    lab = fed.lab
    # west: really full. east: its CPUs look free, but a local job holds all its memory, so
    # Slurm cannot start anything there; metasched's estimate for east is wrong.
    west = occupy(fed, "west", 300)
    mem_hog = lab.sbatch(
        "east",
        "-N2",
        "--ntasks-per-node=1",
        "--mem=32000",
        "-t",
        "10",
        "-o",
        "/dev/null",
        "--wrap",
        "sleep 300",
    )
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
    lab.scancel("west", west)  # west frees up
    wait_for(lambda: state(fed, job_id) == S.COMPLETED, 120, "the job to move and complete")
    done = fed.job(job_id)
    assert done.site == "west" and done.attempt == 2
    assert any(JobState.from_pb(e.state) == S.RECALLING for e in done.events)
    # the first attempt was cancelled while pending: exactly one Slurm job of ours ever ran
    at_east = [
        j for j in lab.backend("east").jobs() if (t := tags.parse(j.comment)) and t.job_id == job_id
    ]
    assert [j.state for j in at_east] == ["CANCELLED"]
    # and the script ran once, at west, as the Slurm job metasched records
    assert ran.read_text().split("\n")[:-1] == [f"west {done.slurm_job_id}"]
    lab.scancel("east", mem_hog)


def test_with_every_site_full_a_job_waits_in_the_global_queue(fed: Federation) -> None:
    busy = [(s, occupy(fed, s, 300)) for s in ("east", "west")]
    try:
        wait_for(lambda: all(fed.sites()[s].free_cpus == 0 for s, _ in busy), 30, "both full")
        script = fed.root / "held.sh"
        script.write_text("#!/bin/bash\ntrue\n")
        out = fed.msub("--precision", "fp64", "-c", "8", str(script)).stdout
        assert "waiting in the global queue, best site now" in out, out
        job_id = int(out.split()[2].rstrip(";"))
        job = fed.job(job_id)
        assert JobState.from_pb(job.state) == S.QUEUED and not job.slurm_job_id
        assert (
            job.estimate.site in ("east", "west") and job.estimate.start_p90 >= job.estimate.start
        )
        fed.call("CancelJob", pb.CancelJobRequest(job_id=job_id))
    finally:
        for site, sid in busy:
            fed.lab.scancel(site, sid)
