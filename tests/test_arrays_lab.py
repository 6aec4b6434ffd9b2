"""Arrays, dependencies and output on real Slurm sites (the demo's hpc, gpu and ai), through
metaschedd and its agents as real processes: what a user of sbatch arrays and pipelines
would check. Timing is in bench/array_cancel.py, not here."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests_support import local_account

from metasched import tags
from metasched.lab.federation import Federation, wait_for
from metasched.states import JobState
from metasched.v1 import metasched_pb2 as pb

pytestmark = pytest.mark.slurm
S = JobState
USER = "marout"  # a real local user of this test (prefix mar: see the task's brief)


@pytest.fixture(scope="module")
def fed(demo_federation: Federation) -> Federation:
    return demo_federation


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory every site's jobs write to, as a shared filesystem would be."""
    d = Path(tempfile.mkdtemp(prefix="mar-", dir="/tmp"))
    d.chmod(0o777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def user() -> Iterator[str]:
    with local_account(USER) as name:
        yield name


def spec(script: str, **kw: object) -> pb.JobSpec:
    s = pb.JobSpec(script=script, time_limit_minutes=10)
    for k, v in kw.items():
        if isinstance(v, list):
            getattr(s, k).extend(v)
        else:
            setattr(s, k, v)
    return s


def submit(fed: Federation, s: pb.JobSpec) -> int:
    return int(fed.call("SubmitJob", pb.SubmitJobRequest(spec=s, no_wait=True)).job_id)


def tasks_of(fed: Federation, array_id: int) -> list[pb.Job]:
    req = pb.ListJobsRequest(array_id=array_id, include_final=True, limit=100_000)
    return list(fed.call("ListJobs", req).jobs)


def wait_tasks(fed: Federation, array_id: int, ok: set[JobState], timeout: float) -> list[pb.Job]:
    box: list[list[pb.Job]] = [[]]

    def done() -> bool:
        box[0] = tasks_of(fed, array_id)
        return bool(box[0]) and all(JobState.from_pb(t.state) in ok for t in box[0])

    wait_for(done, timeout, f"array {array_id} to reach {sorted(ok)}", fed.log("metaschedd"))
    return box[0]


def wait_job(fed: Federation, job_id: int, ok: set[JobState], timeout: float = 60) -> pb.Job:
    box = [pb.Job()]

    def done() -> bool:
        box[0] = fed.job(job_id)
        return JobState.from_pb(box[0].state) in ok

    wait_for(done, timeout, f"job {job_id} to reach {sorted(ok)}", fed.log("metaschedd"))
    return box[0]


def our_slurm_jobs(fed: Federation) -> list[tuple[str, tags.Tag, str]]:
    """(site, tag, state) of every Slurm job of this federation at every site."""
    out = []
    for site in fed.lab.sites:
        for j in fed.lab.backend(site).jobs():
            t = tags.parse(j.comment)
            if t is not None:
                out.append((site, t, j.state))
    return out


ARRAY_SCRIPT = """#!/bin/bash
echo "task $SLURM_ARRAY_TASK_ID of $SLURM_ARRAY_JOB_ID: count $SLURM_ARRAY_TASK_COUNT \
min $SLURM_ARRAY_TASK_MIN max $SLURM_ARRAY_TASK_MAX step $SLURM_ARRAY_TASK_STEP"
sleep 3
"""


def test_an_array_spreads_over_sites_and_each_task_ends_on_its_own(
    fed: Federation, shared_dir: Path
) -> None:
    # a whole 64-CPU node a task: no one site holds them all at once
    array_id = submit(
        fed, spec(ARRAY_SCRIPT, array="2-40:2", cpus_per_task=64, workdir=str(shared_dir))
    )
    done = wait_tasks(fed, array_id, {S.COMPLETED}, 240)
    assert sorted(t.array_task for t in done) == list(range(2, 41, 2))
    assert len({t.site for t in done}) >= 2, {t.site for t in done}
    assert len({(t.site, t.slurm_job_id) for t in done}) == 20  # a Slurm job each
    for t in done:
        out = shared_dir / f"slurm-{array_id}_{t.array_task}.out"
        assert t.stdout_path == str(out)
        assert out.read_text().strip() == (
            f"task {t.array_task} of {array_id}: count 20 min 2 max 40 step 2"
        )
    assert len(list(shared_dir.iterdir())) == 20  # one file a task: no two tasks shared one
    # the folded view, as squeue shows arrays
    listing = fed.msub("status", "--finished").stdout
    assert f"{array_id}_2 " in listing and f"{array_id}_40 " in listing


def test_one_call_cancels_a_whole_array_at_every_site(fed: Federation, shared_dir: Path) -> None:
    array_id = submit(fed, spec("#!/bin/bash\nsleep 600\n", array="1-120", workdir=str(shared_dir)))

    # until every task is at a site or held in the global queue (late binding), some at sites
    def settled() -> bool:
        tasks = tasks_of(fed, array_id)
        states = [JobState.from_pb(t.state) for t in tasks]
        return set(states) <= {S.PENDING, S.RUNNING, S.QUEUED} and S.RUNNING in states

    wait_for(settled, 180, f"array {array_id} to settle", fed.log("metaschedd"))
    out = fed.msub("cancel", str(array_id))
    assert "120 jobs" in out.stdout
    # generous: on a loaded machine slurmd takes minutes to tear down 120 running jobs, and a
    # task whose launch failed meanwhile is requeued held and cancelled again (resend_after)
    done = wait_tasks(fed, array_id, {S.CANCELLED}, 300)
    assert len(done) == 120
    wait_for(
        lambda: (
            not [
                x
                for x in our_slurm_jobs(fed)
                if x[1].job_id >= array_id and x[2] in ("PENDING", "RUNNING")
            ]
        ),
        240,
        "every task's Slurm job to be gone",
    )


def test_a_task_range_is_cancelled_the_rest_run(fed: Federation, shared_dir: Path) -> None:
    array_id = submit(fed, spec("#!/bin/bash\nsleep 2\n", array="1-6%2", workdir=str(shared_dir)))
    fed.msub("cancel", f"{array_id}_[3-5]")
    done = wait_tasks(fed, array_id, {S.COMPLETED, S.CANCELLED}, 180)
    states = {t.array_task: JobState.from_pb(t.state) for t in done}
    assert {k for k, v in states.items() if v == S.CANCELLED} == {3, 4, 5}
    assert {k for k, v in states.items() if v == S.COMPLETED} == {1, 2, 6}


def test_a_dependency_chain_across_two_sites_runs_in_order(fed: Federation) -> None:
    script = "#!/bin/bash\nsleep 2\n"
    a = submit(fed, spec(script, sites=["hpc"], workdir="/tmp", output="/dev/null"))
    b = submit(
        fed,
        spec(script, sites=["gpu"], dependency=f"afterok:{a}", workdir="/tmp", output="/dev/null"),
    )
    c = submit(
        fed,
        spec(script, sites=["hpc"], dependency=f"afterok:{b}", workdir="/tmp", output="/dev/null"),
    )
    assert JobState.from_pb(fed.job(c).state) == S.WAITING
    jc = wait_job(fed, c, {S.COMPLETED}, 180)
    ja, jb = fed.job(a), fed.job(b)
    assert (ja.site, jb.site, jc.site) == ("hpc", "gpu", "hpc")
    assert jb.started_at >= ja.ended_at and jc.started_at >= jb.ended_at
    # b was not sent to its site before a had ended
    sent_b = next(e.at for e in jb.events if JobState.from_pb(e.state) == S.FORWARDING)
    assert sent_b >= ja.ended_at


def test_a_failed_parent_cancels_its_afterok_children_with_the_reason(fed: Federation) -> None:
    parent = submit(fed, spec("#!/bin/bash\nexit 3\n", workdir="/tmp", output="/dev/null"))
    child = submit(fed, spec("#!/bin/bash\ntrue\n", dependency=f"afterok:{parent}", workdir="/tmp"))
    grandchild = submit(
        fed, spec("#!/bin/bash\ntrue\n", dependency=f"afterok:{child}", workdir="/tmp")
    )
    wait_job(fed, parent, {S.FAILED})
    jc = wait_job(fed, child, {S.CANCELLED})
    assert "DependencyNeverSatisfied" in jc.reason and f"afterok:{parent}" in jc.reason
    assert "FAILED" in jc.reason
    assert not jc.slurm_job_id  # it never reached a site
    jg = wait_job(fed, grandchild, {S.CANCELLED})
    assert f"afterok:{child}" in jg.reason
    shown = fed.msub("show", str(child)).stdout
    assert "DependencyNeverSatisfied" in shown


def test_two_jobs_at_two_sites_never_share_an_output_file(
    fed: Federation, shared_dir: Path
) -> None:
    script = "#!/bin/bash\necho from $(hostname) as job $METASCHED_JOB_ID\n"
    ids = [
        submit(fed, spec(script, sites=[site], workdir=str(shared_dir))) for site in ("hpc", "gpu")
    ]
    jobs = [wait_job(fed, i, {S.COMPLETED}) for i in ids]
    # both sites number their Slurm jobs alike; the names carry the global id
    paths = [Path(j.stdout_path) for j in jobs]
    assert paths == [shared_dir / f"slurm-{i}.out" for i in ids]
    for i, p in zip(ids, paths, strict=True):
        assert p.read_text().strip().endswith(f"as job {i}")
    # %j in a user's own pattern is the global id too; %x the name
    k = submit(
        fed,
        spec(script, sites=["ai"], name="named", workdir=str(shared_dir), output="out-%x-%j.txt"),
    )
    jk = wait_job(fed, k, {S.COMPLETED})
    assert jk.stdout_path == str(shared_dir / f"out-named-{k}.txt")
    assert (shared_dir / f"out-named-{k}.txt").exists()


def test_msub_output_shows_a_running_jobs_output_live(
    fed: Federation, shared_dir: Path, user: str
) -> None:
    gate = shared_dir / "go"
    script = shared_dir / "live.sh"
    script.write_text(
        f"#!/bin/bash\necho first line\nwhile [ ! -e {gate} ]; do sleep 0.2; done\n"
        "echo second line\necho to stderr >&2\n"
    )
    script.chmod(0o644)
    out = fed.msub("--json", "-D", str(shared_dir), "-e", "err-%j.txt", str(script), user=user)
    job_id = int(json.loads(out.stdout)["job_id"])
    wait_job(fed, job_id, {S.RUNNING}, 60)

    def shows_first() -> bool:
        got = fed.msub("output", str(job_id), user=user, check=False)
        return got.returncode == 0 and got.stdout == "first line\n"

    wait_for(shows_first, 30, "msub output to show the first line")
    # --follow prints what is appended, and returns once the job has ended
    follower = subprocess.Popen(
        [sys.executable, "-m", "metasched.lab.asuser", user, "msub", "output", "-f", str(job_id)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "METASCHED_DAEMON": f"unix:{fed.socket}"},
    )
    time.sleep(1)
    assert follower.poll() is None  # still following a running job
    gate.touch()
    stdout, stderr = follower.communicate(timeout=60)
    assert follower.returncode == 0, stderr
    assert stdout == "first line\nsecond line\n"
    err = fed.msub("output", "--error", str(job_id), user=user)
    assert err.stdout == "to stderr\n"
    # another user may not read it
    other = fed.msub("output", str(job_id), check=False, user="nobody")
    assert other.returncode != 0 and "not yours" in other.stderr


def test_output_is_read_as_the_jobs_user_never_as_root(
    fed: Federation, shared_dir: Path, user: str
) -> None:
    secret = Path(tempfile.mkdtemp(prefix="mar-", dir="/tmp")) / "secret"
    secret.write_text("root only\n")
    secret.chmod(0o600)
    try:
        script = shared_dir / "plant.sh"
        # the user's job replaces its own output file by a link to a file only root can read
        out_file = shared_dir / "planted.out"
        script.write_text(f"#!/bin/bash\nrm -f {out_file}\nln -s {secret} {out_file}\n")
        script.chmod(0o644)
        out = fed.msub("--json", "-D", str(shared_dir), "-o", str(out_file), str(script), user=user)
        job_id = int(json.loads(out.stdout)["job_id"])
        wait_job(fed, job_id, {S.COMPLETED})
        assert out_file.is_symlink()
        got = fed.msub("output", str(job_id), check=False, user=user)
        assert got.returncode != 0
        assert "root only" not in got.stdout + got.stderr
        assert "ermission denied" in got.stderr
    finally:
        shutil.rmtree(secret.parent, ignore_errors=True)
