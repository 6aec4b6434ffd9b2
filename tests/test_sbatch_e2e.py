"""sbatch's meaning through the whole federation (the demo sites, real processes):
what the daemon acknowledges is what Slurm runs, and msub keeps sbatch's habits."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from tests_support import local_account

from metasched import __version__, tags
from metasched.agent.slurm.base import SubmitRequest
from metasched.lab import SlurmLab
from metasched.lab.corpus import show_job
from metasched.lab.federation import Federation, wait_for
from metasched.sbatch import argv
from metasched.states import JobState
from metasched.v1 import metasched_pb2 as pb

pytestmark = pytest.mark.slurm
S = JobState


@pytest.fixture(scope="module")
def fed(demo_federation: Federation) -> Federation:
    return demo_federation


@pytest.fixture(scope="module")
def lab(demo_federation: Federation) -> SlurmLab:
    return demo_federation.lab


def slurm_env(lab: SlurmLab, site: str) -> dict[str, str]:
    return {**os.environ, **lab.env(site)}


def at_site(fed: Federation, job_id: int, timeout: float = 60) -> pb.Job:
    box: list[pb.Job] = []

    def there() -> bool:
        box[:] = [fed.job(job_id)]
        return bool(box[0].slurm_job_id)

    wait_for(there, timeout, f"job {job_id} to reach its site", fed.log("metaschedd"))
    return box[0]


def final(fed: Federation, job_id: int, timeout: float = 90) -> pb.Job:
    box: list[pb.Job] = []

    def ended() -> bool:
        box[:] = [fed.job(job_id)]
        return JobState.from_pb(box[0].state).is_final

    wait_for(ended, timeout, f"job {job_id} to end", fed.log("metaschedd"))
    return box[0]


def raw_submit(fed: Federation, script: str, **fields: object) -> int:
    spec = pb.JobSpec(script=script, workdir="/tmp")
    for k, v in fields.items():
        if isinstance(v, list):
            getattr(spec, k).extend(v)
        else:
            setattr(spec, k, v)
    resp = fed.call("SubmitJob", pb.SubmitJobRequest(spec=spec))
    return int(resp.job_id)


# ---------------------------------------------------------------- issue 9 item 6


def test_the_daemon_reads_the_lines_a_raw_client_sends(fed: Federation, lab: SlurmLab) -> None:
    """A client that bypasses msub sends only the script: the daemon reads its #SBATCH lines
    and the site's job has their shape, given to sbatch as options (the lines themselves
    are neutralised)."""
    script = (
        "#!/bin/bash\n#SBATCH -N 2 --ntasks-per-node=2\n#SBATCH -t 7\n"
        "#SBATCH -J 'raw lines'\nsleep 120\n"
    )
    job_id = raw_submit(fed, script, sites=["hpc"])
    job = at_site(fed, job_id)
    assert (job.spec.nodes, job.spec.ntasks_per_node, job.spec.time_limit_minutes) == (2, 2, 7)
    env = slurm_env(lab, "hpc")
    seen = show_job(env, job.slurm_job_id)
    assert seen["NumNodes"] in ("2", "2-2")  # "2-2" while pending, "2" once running
    assert (seen["NumTasks"], seen["TimeLimit"]) == ("4", "00:07:00")
    assert seen["JobName"] == "raw lines"
    stored = subprocess.run(
        ["scontrol", "write", "batch_script", job.slurm_job_id, "-"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "#SBATCH" not in stored and "# SBATCH -N 2" in stored
    fed.call("CancelJob", pb.CancelJobRequest(job_id=job_id))


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("#SBATCH --array=5-1", "runs backwards"),
        ("#SBATCH --bogus=1", "unrecognized option '--bogus'"),
        ("#SBATCH --uid=0", "--uid is for root"),
        ("#PBS -t 1-5", "#PBS"),
    ],
)
def test_lines_that_would_run_untracked_work_are_refused_at_submit(
    fed: Federation, lab: SlurmLab, line: str, reason: str
) -> None:
    name = f"untracked-{uuid.uuid4().hex[:8]}"
    script = f"#!/bin/bash\n#SBATCH -J {name}\n{line}\nsleep 1\n"
    with pytest.raises(grpc.RpcError) as err:
        raw_submit(fed, script)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason in (err.value.details() or "")
    for site in lab.sites:  # nothing of it reached any site
        assert not any(j.name == name for j in lab.backend(site).jobs())


def test_arrays_and_holds_in_the_lines_are_tracked_never_run_by_slurm(
    fed: Federation, lab: SlurmLab
) -> None:
    """#SBATCH --array / -H through the raw API: the daemon tracks them (one job per task,
    each a plain Slurm job; a held job stays in the global queue), Slurm never sees them."""
    name = f"tracked-{uuid.uuid4().hex[:8]}"
    script = f"#!/bin/bash\n#SBATCH -J {name}\n#SBATCH --array=1-3\n#SBATCH -t 5\nsleep 120\n"
    array_id = raw_submit(fed, script, sites=["hpc"])
    tasks = fed.call("ListJobs", pb.ListJobsRequest(array_id=array_id, include_final=True)).jobs
    assert [t.array_task for t in tasks] == [1, 2, 3]
    env = slurm_env(lab, "hpc")
    for t in tasks:
        seen = show_job(env, at_site(fed, t.id).slurm_job_id)
        assert seen.get("ArrayJobId") is None and seen.get("ArrayTaskId") is None
        assert seen["JobName"] == name
    held = raw_submit(fed, f"#!/bin/bash\n#SBATCH -J {name}-held\n#SBATCH -H\nsleep 1\n")
    job = fed.job(held)
    assert JobState.from_pb(job.state) == S.WAITING and job.held
    fed.call("CancelJobs", pb.CancelJobsRequest(jobs=[str(array_id), str(held)]))
    for site in lab.sites:  # the held job never reached a site
        assert not any(j.name == f"{name}-held" for j in lab.backend(site).jobs())


def test_the_site_reads_no_line_of_the_script(lab: SlurmLab) -> None:
    """Defence in depth: whatever script reaches the agent, the site's sbatch reads no option
    from it (#SBATCH lines neutralised, --ignore-pbs): one job, not held, not an array."""
    backend = lab.backend("hpc")
    script = "#!/bin/sh\n#SBATCH --array=1-3\n#SBATCH -H\n#PBS -N pbsname\nsleep 60\n"
    tag = f"metasched:{uuid.uuid4().hex[:12]}:1:0"
    sid = backend.submit(
        SubmitRequest(script=argv.neutralise(script), tag=tag, name="plain", time_limit_minutes=2)
    )
    try:
        ours = [j for j in backend.jobs() if tags.parse(j.comment) == tags.parse(tag)]
        assert [j.job_id for j in ours] == [sid]
        seen = show_job(slurm_env(lab, "hpc"), sid)
        assert seen["JobName"] == "plain" and seen.get("ArrayJobId") is None
        assert seen["Reason"] != "JobHeldUser"
    finally:
        backend.cancel(sid)


# ---------------------------------------------------------------- msub: sbatch's habits


USER = "msoargs"  # a real local user of this module (prefix mso: see the task's brief)


@pytest.fixture(scope="module")
def user() -> Iterator[str]:
    with local_account(USER) as name:
        yield name


@pytest.mark.parametrize("who", ["root", "user"])
def test_shape_limits_and_environment_as_sbatch_gives_them(
    fed: Federation, lab: SlurmLab, user: str, who: str
) -> None:
    """As root and as a plain user (whose sbatch runs as them at the site)."""
    submitter = user if who == "user" else "root"
    top = Path(tempfile.mkdtemp(prefix="mso-", dir="/tmp"))
    try:
        top.chmod(0o777)
        (top / "sub").mkdir(mode=0o777)
        (top / "sub").chmod(0o777)
        script = top / "job.sh"
        script.write_text(
            "#!/bin/bash\n#SBATCH --ntasks-per-node=4\n#SBATCH -D sub\n#SBATCH -o out-%j.txt\n"
            'echo "cpus=$SLURM_CPUS_ON_NODE tasks=$SLURM_NTASKS pwd=$PWD foo=$MS_FOO '
            'args=$1|$2 user=$(id -un)"\n'
        )
        script.chmod(0o644)
        out = fed.msub(
            "--parsable",
            "--site",
            "hpc",
            str(script),
            "a",
            "b c",
            cwd=top,
            env={"MS_FOO": "bar"},
            user=submitter,
        )
        job_id = int(out.stdout.strip())
        done = final(fed, job_id)
        assert JobState.from_pb(done.state) == S.COMPLETED, done
        (result,) = (top / "sub").glob("out-*.txt")
        # 4 CPUs (was 1), the relative -D under the submit directory (was /), the submitter's
        # environment (sbatch's default ALL; was none) and the script's arguments
        assert result.read_text().strip() == (
            f"cpus=4 tasks=4 pwd={top / 'sub'} foo=bar args=a|b c user={submitter}"
        )
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_wrap_stdin_parsable_wait_and_exit_codes(fed: Federation, tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    wrapped = fed.msub("--parsable", "-W", "--wrap", "exit 3", cwd=tmp_path, check=False)
    assert wrapped.returncode == 3  # sbatch -W exits with the job's exit code
    job = fed.job(int(wrapped.stdout.strip()))
    assert job.spec.name == "wrap" and "exited with code 3" in job.reason
    shown = fed.msub("show", str(job.id), cwd=tmp_path).stdout
    assert "exit code 3" in shown and "reason: the script exited with code 3" in shown
    piped = fed.msub(
        "--parsable", "-W", cwd=tmp_path, stdin="#!/bin/sh\n#SBATCH -J from-stdin\ntrue\n"
    )
    assert fed.job(int(piped.stdout.strip())).spec.name == "from-stdin"


def test_a_retried_submission_makes_one_job(fed: Federation, tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    key = uuid.uuid4().hex
    first = fed.msub("--parsable", "--submit-key", key, "--wrap", "sleep 30", cwd=tmp_path)
    again = fed.msub("--parsable", "--submit-key", key, "--wrap", "sleep 30", cwd=tmp_path)
    assert first.stdout == again.stdout
    named = json.loads(fed.msub("status", "-n", "wrap", "--json", cwd=tmp_path).stdout)
    assert [j["id"] for j in named].count(int(first.stdout)) == 1
    fed.msub("cancel", first.stdout.strip(), cwd=tmp_path)


def test_status_filters_and_several_ids(fed: Federation, tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    name = f"flt-{uuid.uuid4().hex[:6]}"
    ids = [
        fed.msub("--parsable", "-J", name, "--wrap", "sleep 60", cwd=tmp_path).stdout.strip()
        for _ in range(2)
    ]
    listed = json.loads(fed.msub("status", "-j", ",".join(ids), "--json").stdout)
    assert sorted(str(j["id"]) for j in listed) == sorted(ids)
    by_name = json.loads(fed.msub("status", "-n", name, "-S", "10m", "--json").stdout)
    assert sorted(str(j["id"]) for j in by_name) == sorted(ids)
    cancelled = fed.msub("cancel", *ids).stdout
    assert cancelled.startswith("2 jobs: ")
    for i in ids:
        final(fed, int(i))
    table = fed.msub("status", "-j", ids[0], "-o", "id,name,state,exit,elapsed").stdout
    header, row = table.splitlines()
    assert header.split() == ["JOBID", "NAME", "STATE", "EXIT", "ELAPSED"]
    # never "exit code 0": the cancel's SIGTERM if Slurm's queue said so, else unknown ("-":
    # the completion log writes 0:0 for a cancelled job)
    assert row.split()[:3] == [ids[0], name, "CANCELLED"]
    assert row.split()[3:5] in (["143", "(SIGTERM)"], ["-", row.split()[4]])
    assert "CANCELLED" in fed.msub("status", "-t", "CA", "-n", name).stdout
    both = fed.msub("show", *ids).stdout
    assert both.count(f"({name})") == 2


def test_mistakes_are_errors_not_scripts(fed: Federation, tmp_path: Path) -> None:
    typo = fed.msub("stauts", check=False, cwd=tmp_path)
    assert typo.returncode == 2 and "neither a command" in typo.stderr
    abbrev = fed.msub("--gpu=1", "--wrap", "true", check=False, cwd=tmp_path)
    assert abbrev.returncode == 2 and "ambiguous" in abbrev.stderr
    version = fed.msub("--version", cwd=tmp_path)
    assert version.stdout.strip() == f"msub {__version__}"  # as every command says it
