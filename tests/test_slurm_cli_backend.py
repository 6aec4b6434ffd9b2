"""CliBackend against real Slurm daemons (the lab): submit, list, cancel, resolve finished jobs."""

from __future__ import annotations

import os
import pwd
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from metasched.agent.slurm.base import SlurmError, SlurmJob, SlurmUnavailable, SubmitRequest
from metasched.agent.slurm.cli import CliBackend
from metasched.lab import SiteProfile, SlurmLab

pytestmark = pytest.mark.slurm

FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}
T = TypeVar("T")


def wait_for(fn: Callable[[], T | None], timeout: float = 20, what: str = "") -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or fn}")


def tag() -> str:
    return f"metasched:{uuid.uuid4().hex[:12]}:1:0"


def job(backend: CliBackend, job_id: str) -> SlurmJob | None:
    return next((j for j in backend.jobs() if j.job_id == job_id), None)


def final(backend: CliBackend, job_id: str) -> SlurmJob:
    def check() -> SlurmJob | None:
        j = job(backend, job_id)
        return j if j and j.state in FINAL else None

    return wait_for(check, what=f"job {job_id} to finish")


@pytest.fixture(scope="module")
def hpc(slurm_lab: SlurmLab) -> CliBackend:
    return CliBackend(str(slurm_lab.slurm_conf("hpc")), timeout=15)


@pytest.fixture(scope="module")
def gpu(slurm_lab: SlurmLab) -> CliBackend:
    return CliBackend(str(slurm_lab.slurm_conf("gpu")), timeout=15)


def test_site_facts(hpc: CliBackend, gpu: CliBackend) -> None:
    assert hpc.version()[:2].isdigit()
    nodes = {n.name: n for n in hpc.nodes()}
    assert set(nodes) == {"hpc-n1", "hpc-n2"}
    assert nodes["hpc-n1"].cpus == 64 and nodes["hpc-n1"].mem_mb == 256_000
    assert all(n.usable and n.partitions == ("batch",) for n in nodes.values())
    assert {n.name: n.gpus for n in gpu.nodes()}["gpu-n1"] == {"a100": 4}
    (part,) = hpc.partitions()
    assert part.name == "batch" and part.is_default and part.nodes == ("hpc-n1", "hpc-n2")


def test_submit_list_cancel_round_trip(hpc: CliBackend) -> None:
    t = tag()
    jid = hpc.submit(
        SubmitRequest(script="#!/bin/sh\nsleep 300\n", tag=t, name="rt", cpus_per_task=2)
    )
    seen = job(hpc, jid)
    assert seen is not None and seen.comment == t and seen.name == "rt"
    assert seen.state in ("PENDING", "RUNNING") and seen.cpus == 2
    hpc.cancel(jid)
    assert final(hpc, jid).state == "CANCELLED"
    hpc.cancel(jid)  # already finished: not an error
    hpc.cancel("999999")  # unknown: not an error


def test_gpu_job_and_environment(gpu: CliBackend, tmp_path: Path) -> None:
    out = tmp_path / "gpu.out"
    env = {"MS_VALUE": "a,b=c d", "MS_OTHER": "x"}  # a comma would break --export=K=V,...
    req = SubmitRequest(
        script='#!/bin/sh\necho "$MS_VALUE|$MS_OTHER|$CUDA_VISIBLE_DEVICES"\n',
        tag=tag(),
        gpus_per_node=2,
        gpu_type="a100",
        time_limit_minutes=5,
        output=str(out),
        environment=env,
    )
    jid = gpu.submit(req)
    first = job(gpu, jid)
    assert first is not None and (first.gpus, first.gpu_type) == (2, "a100")
    assert first.time_limit_minutes == 5
    assert final(gpu, jid).state == "COMPLETED"
    assert out.read_text().strip() == "a,b=c d|x|0,1"


def test_agent_environment_does_not_leak(
    hpc: CliBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MS_AGENT_SECRET", "leak")
    monkeypatch.setenv("SBATCH_TIMELIMIT", "1")  # would change sbatch's options if passed on
    out = tmp_path / "env.out"
    jid = hpc.submit(
        SubmitRequest(script="#!/bin/sh\nenv\n", tag=tag(), output=str(out), time_limit_minutes=7)
    )
    assert job(hpc, jid).time_limit_minutes == 7  # type: ignore[union-attr]
    final(hpc, jid)
    assert "MS_AGENT_SECRET" not in out.read_text()


def test_exit_code_3(hpc: CliBackend) -> None:
    t = tag()
    jid = hpc.submit(SubmitRequest(script="#!/bin/sh\nexit 3\n", tag=t))
    done = final(hpc, jid)
    assert (done.state, done.exit_code) == ("FAILED", 3)
    # the completion log says the same (sacct -c), found by id and by tag
    (rec,) = wait_for(lambda: hpc.finished([jid], []), what="jobcomp record")
    assert (rec.job_id, rec.state, rec.exit_code) == (jid, "FAILED", 3)
    assert [r.job_id for r in hpc.finished([], [t])] == [jid]


def test_unknown_partition_is_refused(hpc: CliBackend) -> None:
    req = SubmitRequest(script="#!/bin/sh\ntrue\n", tag=tag(), partition="nope")
    with pytest.raises(SlurmError, match="Invalid partition name specified") as err:
        hpc.submit(req)
    assert not isinstance(err.value, SlurmUnavailable)


def test_local_user(hpc: CliBackend) -> None:
    if os.geteuid() != 0:
        pytest.skip("submitting as another user needs root")
    try:
        pwd.getpwnam("msuser1")
    except KeyError:
        subprocess.run(["useradd", "-M", "-s", "/bin/sh", "msuser1"], check=True)
    out = Path(f"/tmp/msl-user-{uuid.uuid4().hex[:8]}.out")
    try:
        jid = hpc.submit(
            SubmitRequest(
                script="#!/bin/sh\nid -un; id -gn\n",
                tag=tag(),
                workdir="/tmp",
                output=str(out),
                local_user="msuser1",
            )
        )
        assert job(hpc, jid).user == "msuser1"  # type: ignore[union-attr]
        assert final(hpc, jid).state == "COMPLETED"
        group = subprocess.run(["id", "-gn", "msuser1"], capture_output=True, text=True).stdout
        assert out.read_text().split() == ["msuser1", group.strip()]
    finally:
        out.unlink(missing_ok=True)


def test_purged_job_and_dead_controller(make_lab: Callable[..., SlurmLab]) -> None:
    """Own lab: MinJobAge=2 so finished jobs leave squeue quickly, and an outage."""
    site = SiteProfile("purge", nodes=1, cpus=4, sockets=1, cores_per_socket=4, mem_mb=8000)
    lab = make_lab([site], overrides={"MinJobAge": "2", "MessageTimeout": "2"})
    backend = CliBackend(str(lab.slurm_conf("purge")), timeout=10)
    t = tag()
    jid = backend.submit(SubmitRequest(script="#!/bin/sh\nexit 0\n", tag=t))
    wait_for(lambda: job(backend, jid) is None, timeout=40, what="the job to be purged")
    (rec,) = backend.finished([jid], [])
    assert (rec.state, rec.exit_code) == ("COMPLETED", 0)
    (by_tag,) = backend.finished([], [t])  # the tag survives in the record's WCKey
    assert by_tag.job_id == jid and by_tag.comment == t
    assert backend.finished(["999999"], ["metasched:00000000:0:0"]) == []

    lab.stop_site("purge")
    started = time.monotonic()
    with pytest.raises(SlurmUnavailable):
        backend.submit(SubmitRequest(script="#!/bin/sh\ntrue\n", tag=tag()))
    assert time.monotonic() - started < 5
    with pytest.raises(SlurmUnavailable):
        backend.jobs()
