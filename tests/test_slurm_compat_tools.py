"""dask-jobqueue, submitit and Parsl, installed from PyPI and unchanged, run real
computations on the federation through the Slurm front-ends (metasched-compat install),
each with jobs on both sites of a two-site lab (one 1-CPU node each: a second job cannot
start where the first runs, so placement sends it to the other site).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from metasched.compat.install import install
from metasched.lab.federation import Federation, wait_for
from metasched.states import JobState

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="module")
def slurm_path(small_federation: Federation) -> Iterator[Path]:
    """The front-ends first on PATH and METASCHED_DAEMON set, as a user's shell would have
    them; the tools find `sbatch` & co. there and know nothing else of metasched."""
    d = Path(tempfile.mkdtemp(prefix="msc-bin-", dir="/tmp"))
    d.chmod(0o755)
    install(d)
    saved = {k: os.environ.get(k) for k in ("PATH", "METASCHED_DAEMON")}
    os.environ["PATH"] = f"{d}:{Path(sys.executable).parent}:{os.environ['PATH']}"
    os.environ["METASCHED_DAEMON"] = f"unix:{small_federation.socket}"
    yield d
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    tmp_path.chmod(0o755)
    cwd = os.getcwd()
    os.chdir(tmp_path)  # the tools submit from here (sbatch's working directory)
    yield tmp_path
    os.chdir(cwd)


def sites_of(fed: Federation, job_ids: list[str]) -> set[str]:
    return {fed.job(int(j)).site for j in job_ids}


def wait_idle(fed: Federation) -> None:
    """Earlier tests' jobs gone from the sites (a tool's cancel at shutdown takes a moment)."""
    wait_for(
        lambda: all(s.running_jobs == 0 for s in fed.sites().values()),
        60,
        "the sites to be idle",
        fed.log("metaschedd"),
    )


def test_dask_jobqueue_scales_to_workers_at_two_sites_and_computes(
    small_federation: Federation, slurm_path: Path, workdir: Path
) -> None:
    from dask.distributed import Client
    from dask_jobqueue import SLURMCluster

    wait_idle(small_federation)
    with (
        SLURMCluster(
            cores=1,
            processes=1,
            memory="1GB",
            walltime="00:10:00",
            python=sys.executable,
            log_directory=str(workdir),
            scheduler_options={"host": "127.0.0.1"},
            death_timeout=60,
        ) as cluster,
        Client(cluster) as client,
    ):
        cluster.scale(jobs=2)
        client.wait_for_workers(2, timeout=120)
        total = client.submit(sum, client.map(lambda x: x * x, range(100))).result(timeout=60)
        assert total == sum(x * x for x in range(100))
        job_ids = [w.job_id for w in cluster.workers.values()]
        assert len(job_ids) == 2
        assert sites_of(small_federation, job_ids) == {"east", "west"}
    # closing the cluster scancels its jobs through the front-end
    for job_id in job_ids:
        wait_for(
            lambda job_id=job_id: (
                JobState.from_pb(small_federation.job(int(job_id)).state).is_final
            ),
            60,
            f"dask's job {job_id} to end",
        )


def test_submitit_jobs_return_their_results_from_two_sites(
    small_federation: Federation, slurm_path: Path, workdir: Path
) -> None:
    import submitit

    wait_idle(small_federation)
    executor = submitit.SlurmExecutor(folder=str(workdir / "submitit"), python=sys.executable)
    executor.update_parameters(time=5, cpus_per_task=1, mem="1G")
    meeting = workdir / "submitit-met"
    meeting.mkdir()

    def power_once_both_run(k: int) -> int:
        # each site has one CPU: the two jobs meet only if they run at two sites at once (a
        # job that just computed pow would leave its site free for the other on a slow machine)
        import pathlib
        import time

        here = pathlib.Path(meeting)
        (here / str(k)).touch()
        deadline = time.monotonic() + 300
        while len(list(here.iterdir())) < 2:
            if time.monotonic() > deadline:
                raise RuntimeError("the other job never ran alongside")
            time.sleep(0.2)
        return int(pow(7, k))

    jobs = [executor.submit(power_once_both_run, k) for k in (2, 3)]
    assert [j.result() for j in jobs] == [49, 343]
    assert sites_of(small_federation, [j.job_id for j in jobs]) == {"east", "west"}
    # what submitit reads back through sacct once the jobs have ended
    for j in jobs:
        wait_for(
            lambda j=j: JobState.from_pb(small_federation.job(int(j.job_id)).state).is_final,
            60,
            f"job {j.job_id} to end",
        )
    assert [j.watcher.get_state(j.job_id, mode="force") for j in jobs] == ["COMPLETED"] * 2


def test_parsl_runs_apps_on_blocks_at_two_sites(
    small_federation: Federation, slurm_path: Path, workdir: Path
) -> None:
    import parsl
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor
    from parsl.providers import SlurmProvider

    wait_idle(small_federation)
    provider = SlurmProvider(
        nodes_per_block=1,
        init_blocks=2,
        min_blocks=2,
        max_blocks=2,
        walltime="00:10:00",
        cores_per_node=1,
        # Parsl's default of 10 s per sbatch/squeue call is shorter than a Python front-end's
        # start on a loaded 2-core test machine; users on a quiet login node need no change
        cmd_timeout=60,
        # the workers import this module to run the app (Parsl pickles it by reference)
        worker_init=f"export PATH={Path(sys.executable).parent}:$PATH "
        f"PYTHONPATH={Path(__file__).parent}",
    )
    config = Config(
        executors=[
            HighThroughputExecutor(
                label="federation",
                provider=provider,
                max_workers_per_node=1,
                address="127.0.0.1",
            )
        ],
        run_dir=str(workdir / "runinfo"),
        strategy="none",
    )

    @parsl.python_app
    def square(x: int) -> int:
        return x * x

    with parsl.load(config):
        results = [square(x).result(timeout=180) for x in range(8)]
        job_ids = list(provider.resources)
        assert sorted(results) == [x * x for x in range(8)]
        assert len(job_ids) == 2
        wait_for(
            lambda: len(sites_of(small_federation, job_ids)) == 2,
            5,
            "both blocks placed",
        )
        assert sites_of(small_federation, job_ids) == {"east", "west"}
