"""The Slurm front-ends (sbatch, squeue, scancel, sacct, srun) against a real federation:
what a user's script or a workflow tool sees when it drives `sbatch` and friends.

Two sites of one 1-CPU node each: a second one-CPU job cannot start where the first runs,
so jobs spread over both sites as a loaded pool would spread them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from metasched.compat.install import install
from metasched.lab.federation import Federation, wait_for
from metasched.states import JobState
from metasched.v1 import metasched_pb2 as pb

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="module")
def slurm_path(small_federation: Federation) -> Iterator[Path]:
    """metasched-compat install'd directory, first on PATH, METASCHED_DAEMON set: the
    environment a user's tools run in."""
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
    subprocess.run(["rm", "-rf", str(d)], check=False)


def run(*argv: str, stdin: str | None = None, cwd: Path | None = None) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, input=stdin, cwd=cwd)
    assert proc.returncode == 0, f"{' '.join(argv)}: {proc.returncode} {proc.stderr}"
    return proc.stdout


def wait_final(fed: Federation, job_id: int, timeout: float = 60) -> pb.Job:
    wait_for(
        lambda: JobState.from_pb(fed.job(job_id).state).is_final,
        timeout,
        f"job {job_id} to end",
        fed.log("metaschedd"),
    )
    return fed.job(job_id)


def test_a_job_sees_the_id_sbatch_printed_in_its_script_and_its_srun_tasks(
    small_federation: Federation, slurm_path: Path, tmp_path: Path
) -> None:
    tmp_path.chmod(0o755)
    script = tmp_path / "ids.sh"
    script.write_text(
        "#!/bin/bash\n#SBATCH -J ids\n#SBATCH -t 5\n#SBATCH -o ids.out\n"
        'echo "batch $SLURM_JOB_ID site $METASCHED_SITE_JOB_ID"\n'
        "srun sh -c 'echo \"task $SLURM_JOB_ID\"'\n"
        # the daemon learns the job runs from the site's next report: ask until it says so
        "for i in $(seq 60); do s=$(squeue -h -o '%i %T' -j $SLURM_JOB_ID)\n"
        '  [ "${s#* }" = RUNNING ] && break; sleep 1; done; echo "$s"\n'
    )
    out = run("sbatch", str(script), cwd=tmp_path)
    assert out.startswith("Submitted batch job ")
    job_id = int(out.split()[-1])
    job = wait_final(small_federation, job_id)
    assert JobState.from_pb(job.state) == JobState.COMPLETED, job.reason
    lines = (tmp_path / "ids.out").read_text().splitlines()
    assert lines[0].startswith(f"batch {job_id} site ")
    assert lines[0].split()[-1] == job.slurm_job_id
    assert f"task {job_id}" in lines
    assert f"{job_id} RUNNING" in lines


def test_squeue_sacct_scancel_speak_global_ids(
    small_federation: Federation, slurm_path: Path, tmp_path: Path
) -> None:
    tmp_path.chmod(0o755)
    job_id = int(
        run(
            "sbatch",
            "--parsable",
            "-t",
            "5",
            "-o",
            "/dev/null",
            stdin="#!/bin/sh\nsleep 300\n",
            cwd=tmp_path,
        ).strip()
    )
    wait_for(
        lambda: run("squeue", "-h", "-o", "%i %t", "-j", str(job_id)).split() == [str(job_id), "R"],
        60,
        f"squeue to show job {job_id} running",
    )
    me = run("squeue", "-h", "-u", "root", "-o", "%.10i|%j|%T|%D").splitlines()
    assert f"{job_id:>10}|sbatch|RUNNING|1" in me
    site = small_federation.job(job_id).site
    assert run("sacct", "-j", str(job_id), "-o", "JobID,State,Cluster", "-P", "-n").strip() == (
        f"{job_id}|RUNNING|{site}"
    )
    run("scancel", str(job_id))
    wait_final(small_federation, job_id)
    assert (
        run("sacct", "-j", str(job_id), "-o", "State,ExitCode", "-P", "-n")
        .strip()
        .startswith("CANCELLED|")
    )
    # As Slurm's: cancelling an ended job is silently fine, an unknown user an error
    run("scancel", str(job_id))
    header = run("sacct", "-X", "--format=jobid,state%20", "--job", str(job_id)).splitlines()
    assert header[0].split() == ["JobID", "State"]
    assert header[2].split() == [str(job_id), "CANCELLED"]
