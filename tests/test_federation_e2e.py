"""The whole path on real Slurm sites: msub -> metaschedd -> agent -> slurmctld, and back.

The sites are the demo's: hpc (CPUs, fp64/fp32), gpu (A100: fp64 .. int8) and ai (Ascend
910B: bf16/fp16/int8 only). metaschedd and the agents run as real processes over gRPC.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import pytest

from metasched import tags
from metasched.lab import SlurmLab
from metasched.lab.federation import Federation, wait_for
from metasched.states import JobState
from metasched.v1 import metasched_pb2 as pb

pytestmark = pytest.mark.slurm
S = JobState
SCRIPT = "#!/bin/bash\necho hello from $(hostname)\nsleep {sleep}\nexit {code}\n"


@pytest.fixture(scope="module")
def fed(demo_federation: Federation) -> Federation:
    return demo_federation


@pytest.fixture(scope="module")
def lab(demo_federation: Federation) -> SlurmLab:
    return demo_federation.lab


def spec(sleep: float = 1, code: int = 0, **kw: object) -> pb.JobSpec:
    s = pb.JobSpec(
        script=SCRIPT.format(sleep=sleep, code=code), time_limit_minutes=5, workdir="/tmp"
    )
    for k, v in kw.items():
        if isinstance(v, list):
            getattr(s, k).extend(v)
        else:
            setattr(s, k, v)
    return s


def submit(fed: Federation, s: pb.JobSpec, user: str = "root") -> pb.SubmitJobResponse:
    resp: pb.SubmitJobResponse = fed.call("SubmitJob", pb.SubmitJobRequest(spec=s), user=user)
    return resp


def wait_state(fed: Federation, job_id: int, states: set[JobState], timeout: float = 90) -> pb.Job:
    return fed.wait_job(job_id, states, timeout)


def slurm_jobs(lab: SlurmLab, site: str) -> list[tuple[tags.Tag | None, str, str]]:
    """(tag, slurm id, state) of every job the site's Slurm shows."""
    return [(tags.parse(j.comment), j.job_id, j.state) for j in lab.backend(site).jobs()]


def occupy(lab: SlurmLab, site: str, seconds: int = 120) -> str:
    """Fill a site with local (non-metasched) work, as its own users would."""
    sid = lab.sbatch(
        site, "-N2", "--exclusive", "-t", "10", "-o", "/dev/null", "--wrap", f"sleep {seconds}"
    )
    wait_for(
        lambda: any(s == sid and st == "RUNNING" for _, s, st in slurm_jobs(lab, site)),
        20,
        f"local job {sid} to run at {site}",
    )
    return sid


def test_fp64_jobs_never_land_on_the_ai_only_site(fed: Federation) -> None:
    ids = [submit(fed, spec(precision="fp64", cpus_per_task=32)).job_id for _ in range(6)]
    jobs = [wait_state(fed, i, {S.COMPLETED}, 180) for i in ids]
    assert {j.site for j in jobs} <= {"hpc", "gpu"}
    assert all(j.exit_code == 0 for j in jobs)
    # and the same job pinned to the AI site is refused at once, with the reason
    with pytest.raises(grpc.RpcError) as e:
        submit(fed, spec(precision="fp64", sites=["ai"]))
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "precision fp64 not offered" in (e.value.details() or "")


def test_low_precision_goes_where_it_is_offered(fed: Federation) -> None:
    job = submit(fed, spec(precision="int8", gpus_per_node=1))
    done = wait_state(fed, job.job_id, {S.COMPLETED}, 180)
    assert done.site in {"gpu", "ai"}


def test_gpu_type_lands_only_where_that_type_exists(fed: Federation) -> None:
    a100 = submit(fed, spec(gpus_per_node=1, gpu_type="a100"))
    ascend = submit(fed, spec(gpus_per_node=2, gpu_type="ascend910b"))
    assert wait_state(fed, a100.job_id, {S.COMPLETED}, 180).site == "gpu"
    assert wait_state(fed, ascend.job_id, {S.COMPLETED}, 180).site == "ai"
    with pytest.raises(grpc.RpcError) as e:
        submit(fed, spec(gpus_per_node=1, gpu_type="h100"))
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no h100 GPUs" in (e.value.details() or "")


def test_with_one_site_full_a_new_job_goes_where_it_starts_sooner(
    fed: Federation, lab: SlurmLab
) -> None:
    for busy, free in (("hpc", "gpu"), ("gpu", "hpc")):
        sid = occupy(lab, busy)
        try:
            # wait until the daemon has seen the site full
            wait_for(lambda b=busy: fed.sites()[b].free_cpus == 0, 20, f"{busy} to report full")
            job = submit(fed, spec(precision="fp64", cpus_per_task=16))
            assert job.estimate.site == free, job
            assert wait_state(fed, job.job_id, {S.COMPLETED}, 180).site == free
        finally:
            lab.scancel(busy, sid)


def test_finished_job_shows_final_state_and_exit_code(fed: Federation, tmp_path: Path) -> None:
    script = tmp_path / "fail.sh"
    script.write_text(SCRIPT.format(sleep=0, code=3))
    out = fed.msub("--precision", "fp32", "-t", "2", "--json", str(script))
    job_id = int(json.loads(out.stdout)["job_id"])
    wait_state(fed, job_id, {S.FAILED}, 180)
    shown = fed.msub("show", str(job_id), check=False)
    assert shown.returncode == 0
    assert "FAILED" in shown.stdout and "exit code 3" in shown.stdout
    history = [line for line in shown.stdout.splitlines() if line.startswith("    ")]
    assert [h.split()[2] for h in history[:2]] == ["QUEUED", "FORWARDING"]
    assert len(history) >= 4  # queued, forwarded, at Slurm, ..., failed: each with a timestamp
    as_json = json.loads(fed.msub("show", "--json", str(job_id)).stdout)
    assert as_json["state"] == "failed" and as_json["exit_code"] == 3


def slurm_says(lab: SlurmLab, slurm_job_id: str, state: str) -> None:
    """Wait for hpc's Slurm to show the job in `state` (a cancelled job that was running is
    COMPLETING until slurmd has killed its processes: seconds, more on a loaded machine)."""

    def now() -> str:
        return {sid: st for _, sid, st in slurm_jobs(lab, "hpc")}.get(slurm_job_id, "")

    wait_for(lambda: now() == state, 120, f"Slurm job {slurm_job_id} to be {state}")


def test_cancel_reaches_slurm_at_every_stage(fed: Federation, lab: SlurmLab) -> None:
    # running
    running = submit(fed, spec(sleep=300, sites=["hpc"]))
    job = wait_state(fed, running.job_id, {S.RUNNING}, 30)
    fed.call("CancelJob", pb.CancelJobRequest(job_id=running.job_id))
    done = wait_state(fed, running.job_id, {S.CANCELLED}, 30)
    slurm_says(lab, job.slurm_job_id, "CANCELLED")
    assert done.slurm_job_id == job.slurm_job_id

    # pending in Slurm: hpc's CPUs look free to metasched, but a local job holds all the
    # memory, so Slurm keeps ours waiting
    hog = lab.sbatch(
        "hpc",
        "-N2",
        "--ntasks-per-node=1",
        "--mem=256000",
        "-t",
        "10",
        "-o",
        "/dev/null",
        "--wrap",
        "sleep 120",
    )
    try:
        wait_for(lambda: fed.sites()["hpc"].free_cpus == 126, 20, "hpc to report the hog")
        pending = submit(fed, spec(sleep=1, sites=["hpc"]))
        job = wait_state(fed, pending.job_id, {S.PENDING}, 30)
        assert job.slurm_job_id
        fed.call("CancelJob", pb.CancelJobRequest(job_id=pending.job_id))
        wait_state(fed, pending.job_id, {S.CANCELLED}, 30)
        slurm_says(lab, job.slurm_job_id, "CANCELLED")
    finally:
        lab.scancel("hpc", hog)


def test_cancel_before_placement_never_reaches_slurm(fed: Federation, lab: SlurmLab) -> None:
    fed.kill("agent-hpc")  # hpc goes quiet: a job pinned there waits in the global queue
    try:
        wait_for(lambda: fed.sites()["hpc"].state == "offline", 30, "hpc to go offline")
        queued = submit(fed, spec(sites=["hpc"]))
        job = fed.job(queued.job_id)
        assert JobState.from_pb(job.state) == S.QUEUED
        assert "hpc: offline" in job.reason
        fed.call("CancelJob", pb.CancelJobRequest(job_id=queued.job_id))
        assert JobState.from_pb(fed.job(queued.job_id).state) == S.CANCELLED
    finally:
        fed.start_agent("hpc")
        fed.wait_sites_online(["hpc"])
    time.sleep(2)  # a report or two later, nothing of it may have reached Slurm
    assert not [t for t, _, _ in slurm_jobs(lab, "hpc") if t and t.job_id == queued.job_id]


def test_daemon_killed_mid_flight_loses_no_job(fed: Federation) -> None:
    ids = [submit(fed, spec(sleep=2, precision="fp32")).job_id for _ in range(8)]
    fed.kill("metaschedd", signal.SIGKILL)
    fed.start_daemon()
    fed.wait_sites_online(list(fed.lab.sites))
    jobs = [wait_state(fed, i, {S.COMPLETED}, 90) for i in ids]
    assert all(j.exit_code == 0 for j in jobs)
    # exactly one Slurm job per metasched job, across all sites
    seen: dict[int, int] = {}
    for site in fed.lab.sites:
        for t, _, _ in slurm_jobs(fed.lab, site):
            if t and t.job_id in ids:
                seen[t.job_id] = seen.get(t.job_id, 0) + 1
    assert seen == {i: 1 for i in ids}


def test_bad_input_gets_one_clear_line_and_a_nonzero_exit(fed: Federation, tmp_path: Path) -> None:
    good = tmp_path / "ok.sh"
    good.write_text("#!/bin/sh\ntrue\n")
    binary = tmp_path / "bin.sh"
    binary.write_bytes(b"#!/bin/sh\n\x00\x01\x02")
    cases: list[tuple[list[str], str]] = [
        (["--precision", "fp128", str(good)], "unknown precision"),
        (["-N", "0", str(good)], "no compute nodes"),
        (["-t", "soon", str(good)], "invalid --time specification 'soon'"),
        ([str(binary)], "not a text script"),
        (["--site", "nowhere", str(good)], "unknown site 'nowhere'"),
        ([str(tmp_path / "missing.sh")], "unable to open file"),
        (["show", "999999"], "no job 999999"),
    ]
    before = len(fed.call("ListJobs", pb.ListJobsRequest(include_final=True, limit=100000)).jobs)
    for args, message in cases:
        r = fed.msub(*args, check=False)
        assert r.returncode != 0, args
        assert message in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    after = len(fed.call("ListJobs", pb.ListJobsRequest(include_final=True, limit=100000)).jobs)
    assert after == before  # nothing half-queued


def test_unreachable_daemon_is_one_line(tmp_path: Path) -> None:
    script = tmp_path / "ok.sh"
    script.write_text("#!/bin/sh\ntrue\n")
    r = subprocess.run(
        [sys.executable, "-m", "metasched.cli.msub", "--daemon", "127.0.0.1:1", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1
    assert r.stderr.startswith("msub: cannot reach metaschedd at 127.0.0.1:1")
    assert len(r.stderr.strip().splitlines()) == 1


def test_msub_commands_for_following_work(fed: Federation, tmp_path: Path) -> None:
    # the job runs until the test lets it end: on a loaded machine a 2 s job had ended before
    # `msub status` or `msub watch` had started, and neither saw it live
    tmp_path.chmod(0o777)
    go = tmp_path / "go"
    script = tmp_path / "short.sh"
    script.write_text(
        f"#!/bin/bash\n#SBATCH -J followme\n#SBATCH -t 3\nwhile [ ! -e {go} ]; do sleep 0.2; done\n"
    )
    out = fed.msub("--precision", "fp64", str(script)).stdout
    assert out.startswith("Submitted job ") and "to site " in out and "expected start" in out
    job_id = out.split()[2]
    listed = fed.msub("status").stdout
    assert any(line.split()[0] == job_id and "followme" in line for line in listed.splitlines())
    watch = subprocess.Popen(
        [sys.executable, "-m", "metasched.cli.msub", "watch", job_id],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "METASCHED_DAEMON": f"unix:{fed.socket}"},
    )
    assert watch.stdout is not None
    seen = []
    for line in watch.stdout:  # until watch has shown the job running (or ended without)
        seen.append(line.rstrip("\n"))
        if "RUNNING" in line:
            break
    go.touch()
    rest, _ = watch.communicate(timeout=300)
    lines = [*seen, *rest.strip().splitlines()]
    assert watch.returncode == 0
    assert "RUNNING" in seen[-1] and lines[-1].startswith(f"job {job_id} ended COMPLETED"), lines
    finished = json.loads(fed.msub("list", "--finished", "--json").stdout)
    mine = [j for j in finished if str(j["id"]) == job_id]
    assert mine and mine[0]["state"] == "completed"
    assert mine[0]["spec"]["name"] == "followme"  # the #SBATCH -J line was honoured
    assert mine[0]["spec"]["time_limit_minutes"] == 3


def test_msub_sites_and_plan_explain_the_choice(fed: Federation, tmp_path: Path) -> None:
    sites = fed.msub("sites").stdout
    for name, precisions in (("hpc", "fp64 fp32"), ("ai", "bf16 fp16 int8")):
        row = next(line for line in sites.splitlines() if line.startswith(name + " "))
        assert "online" in row and precisions in row
    as_json = {s["name"]: s for s in json.loads(fed.msub("sites", "--json").stdout)}
    assert as_json["gpu"]["total_gpus"] == 8
    script = tmp_path / "p.sh"
    script.write_text("#!/bin/bash\ntrue\n")
    plan = json.loads(fed.msub("plan", "--precision", "fp64", "--json", str(script)).stdout)
    by_site = {c["site"]: c for c in plan["choices"]}
    assert by_site["ai"].get("eligible", False) is False
    assert "precision fp64 not offered" in by_site["ai"]["reason"]
    assert by_site["hpc"]["eligible"] and by_site["gpu"]["eligible"]
    human = fed.msub("plan", "--gres", "gpu:a100:1", str(script)).stdout
    ai_row = next(line for line in human.splitlines() if line.startswith("ai "))
    assert "no a100 GPUs" in ai_row


def test_a_user_runs_as_their_mapped_local_account(fed: Federation, lab: SlurmLab) -> None:
    user = "msalice"
    try:
        pwd.getpwnam(user)
    except KeyError:
        subprocess.run(["useradd", "-M", "-s", "/bin/sh", user], check=True)
    work = Path(tempfile.mkdtemp(prefix="msa-", dir="/tmp"))
    work.chmod(0o777)  # the user's own working directory for this test
    script = work / "whoami.sh"
    script.write_text(f"#!/bin/bash\nid -un > {work}/ran-as\n")
    script.chmod(0o644)
    out = fed.msub("--precision", "fp32", "-D", str(work), "--json", str(script), user=user)
    job_id = int(json.loads(out.stdout)["job_id"])
    job = wait_state(fed, job_id, {S.COMPLETED}, 180)
    assert job.user == user
    assert (work / "ran-as").read_text().strip() == user
    slurm_user = {j.job_id: j.user for j in lab.backend(job.site).jobs()}[job.slurm_job_id]
    assert slurm_user == user
    # and another user cannot see it
    other = fed.msub("show", str(job_id), check=False, user="nobody")
    assert other.returncode != 0 and "not yours" in other.stderr
    shutil.rmtree(work, ignore_errors=True)


def test_gpus_in_use_at_a_site_count_however_its_agent_reads_slurm(
    fed: Federation, lab: SlurmLab
) -> None:
    """pyslurm defect, as the federation saw it: Node.allocated_gres is empty without slurmdbd,
    so a site with a 4-GPU job running showed 8/8 GPUs free and three 4-GPU jobs were all sent
    to a site with room for one (gpu's agent is the pyslurm one in the mixed federation)."""
    local = lab.sbatch(
        "gpu", "-N1", "--gres=gpu:a100:4", "-t", "10", "-o", "/dev/null", "--wrap", "sleep 300"
    )
    ids: list[int] = []
    try:
        wait_for(lambda: fed.sites()["gpu"].free_gpus == 4, 60, "gpu to report 4 GPUs in use")
        ids = [
            submit(fed, spec(sleep=120, gpus_per_node=4, gpu_type="a100")).job_id for _ in range(3)
        ]
        first = wait_for_running(fed, ids)
        # a report later: room for one means one at Slurm, the others waiting in our queue
        seen = fed.sites()["gpu"].last_seen
        wait_for(lambda: fed.sites()["gpu"].last_seen > seen, 30, "gpu's next report")
        states = {i: JobState.from_pb(fed.job(i).state) for i in ids}
        assert states[first] == S.RUNNING
        assert sorted(s.name for i, s in states.items() if i != first) == ["QUEUED", "QUEUED"]
    finally:
        for i in ids:
            fed.call("CancelJob", pb.CancelJobRequest(job_id=i))
        lab.scancel("gpu", local)


def wait_for_running(fed: Federation, ids: list[int]) -> int:
    box: list[int] = []

    def one() -> bool:
        box[:] = [i for i in ids if JobState.from_pb(fed.job(i).state) == S.RUNNING]
        return bool(box)

    wait_for(one, 90, "one of the jobs to run", fed.log("metaschedd"))
    return box[0]
