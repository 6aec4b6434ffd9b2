"""One contract for every Slurm backend and every Slurm release, against real daemons.

Each scenario runs for the cli backend on Slurm 22.05 (Debian's) and 25.11 (the build
scripts/build-slurm caches) and for the pyslurm backend on 25.11: what the agent reads of a
site and of its jobs must not depend on how it reads it. The pyslurm defects found on a real
25.11 site each have a scenario here that failed with the old backend (named in its docstring).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
from conftest import need_pyslurm, need_slurm
from pyslurm_recording import KINDS, encode_object, gpu_site, raw, shape
from tests_support import local_account

from metasched.agent.slurm.base import (
    SlurmBackend,
    SlurmError,
    SlurmJob,
    SlurmUnavailable,
    SubmitRequest,
)
from metasched.agent.slurm.cli import CliBackend
from metasched.lab import SiteProfile, SlurmLab

pytestmark = pytest.mark.slurm

FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}
T = TypeVar("T")
USER = "msvuser1"  # a real local account (created here, removed at the end)


@dataclass(frozen=True)
class Case:
    backend: str  # cli, pyslurm
    release: str  # 22.05, 25.11

    @property
    def id(self) -> str:
        return f"{self.backend}-{self.release}"


CASES = [Case("cli", "22.05"), Case("cli", "25.11"), Case("pyslurm", "25.11")]


def site_name(release: str, prefix: str = "v") -> str:
    return f"{prefix}{release.replace('.', '')}"


def profile(release: str, prefix: str = "v") -> SiteProfile:
    site: SiteProfile = gpu_site(site_name(release, prefix), release)
    return site


def make(case: Case, lab: SlurmLab, site: str) -> SlurmBackend:
    if case.backend == "pyslurm":
        need_pyslurm()
        from metasched.agent.slurm.pyslurm_backend import PyslurmBackend

        return PyslurmBackend(str(lab.slurm_conf(site)), str(lab.install(site).bin_dir), 15)
    return CliBackend(str(lab.slurm_conf(site)), str(lab.install(site).bin_dir), 15)


def _lab(prefix: str, overrides: dict[str, str]) -> Iterator[SlurmLab]:
    need_slurm()
    releases = [r for r in ("22.05", "25.11") if _installed(r)]
    root = Path(tempfile.mkdtemp(prefix=f"msv-{prefix}-", dir="/tmp"))
    lab = SlurmLab(
        root, [profile(r, prefix) for r in releases], overrides={"MessageTimeout": "3", **overrides}
    )
    try:
        with lab:
            yield lab
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _installed(release: str) -> bool:
    from metasched.lab import slurm_installed

    return slurm_installed(release)


@pytest.fixture(scope="module")
def version_lab() -> Iterator[SlurmLab]:
    """One site per release, jobs kept in squeue for MinJobAge=300 s."""
    yield from _lab("v", {})


@pytest.fixture(scope="module")
def purge_lab() -> Iterator[SlurmLab]:
    """One site per release where finished jobs leave squeue after 2 s, for purges and outages."""
    yield from _lab("p", {"MinJobAge": "2"})


@pytest.fixture(params=CASES, ids=lambda c: c.id)
def case(request: pytest.FixtureRequest) -> Case:
    c: Case = request.param
    need_slurm(c.release)
    return c


@pytest.fixture
def site(case: Case, version_lab: SlurmLab) -> str:
    return site_name(case.release)


@pytest.fixture
def backend(case: Case, version_lab: SlurmLab, site: str) -> SlurmBackend:
    return make(case, version_lab, site)


@pytest.fixture(scope="module")
def local_user() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("submitting as another user needs root")
    with local_account(USER, home=True) as name:
        yield name


# ------------------------------------------------------------------ helpers
def wait_for(fn: Callable[[], T | None], timeout: float = 180, what: str = "") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or fn}")
        time.sleep(0.2)


def tag() -> str:
    return f"metasched:{uuid.uuid4().hex[:12]}:1:0"


def job(backend: SlurmBackend, job_id: str) -> SlurmJob | None:
    return next((j for j in backend.jobs() if j.job_id == job_id), None)


def running(backend: SlurmBackend, job_id: str) -> SlurmJob:
    return wait_for(
        lambda: j if (j := job(backend, job_id)) and j.state == "RUNNING" else None,
        what=f"job {job_id} to run",
    )


def final(backend: SlurmBackend, job_id: str) -> SlurmJob:
    return wait_for(
        lambda: j if (j := job(backend, job_id)) and j.state in FINAL else None,
        what=f"job {job_id} to finish",
    )


def record(backend: SlurmBackend, job_id: str) -> SlurmJob:
    """The job's completion record (accounting or the completion log)."""
    found = wait_for(lambda: backend.finished([job_id], []), what=f"a record of job {job_id}")
    (rec,) = found
    return rec


def script(body: str) -> str:
    return f"#!/bin/sh\n{body}\n"


# ------------------------------------------------------------------ what the site offers
def test_site_facts(case: Case, backend: SlurmBackend, site: str) -> None:
    """pyslurm defect: version() called pyslurm.version, a module in 25.11.2 (TypeError), so
    every report failed and the site never came online."""
    assert backend.version().startswith(case.release + ".")
    nodes = {n.name: n for n in backend.nodes()}
    assert set(nodes) == {f"{site}-n1", f"{site}-n2"}
    n1 = nodes[f"{site}-n1"]
    assert (n1.cpus, n1.mem_mb, n1.partitions, n1.gpus) == (8, 16_000, ("batch",), {"h100": 4})
    assert all(n.usable for n in nodes.values())
    (part,) = backend.partitions()
    assert (part.name, part.is_default, part.nodes) == ("batch", True, tuple(sorted(nodes)))
    assert (part.max_time_minutes, part.default_time_minutes, part.max_nodes_per_job) == (
        7 * 24 * 60,
        60,
        0,
    )


# ------------------------------------------------------------------ jobs
def test_submit_list_cancel_round_trip(backend: SlurmBackend) -> None:
    t = tag()
    jid = backend.submit(
        SubmitRequest(script=script("sleep 300"), tag=t, name="rt", cpus_per_task=2)
    )
    seen = job(backend, jid)
    assert seen is not None and (seen.comment, seen.name, seen.cpus) == (t, "rt", 2)
    assert seen.state in ("PENDING", "RUNNING") and seen.time_limit_minutes == 60
    running(backend, jid)
    backend.cancel(jid)
    done = final(backend, jid)
    assert (done.state, done.exit_code) == ("CANCELLED", 0)
    backend.cancel(jid)  # already finished: not an error
    backend.cancel("999999")  # unknown: not an error


def test_many_jobs_are_cancelled_in_one_call(backend: SlurmBackend) -> None:
    """An array's cancel: pending and running jobs, one already finished and one unknown."""
    done = backend.submit(SubmitRequest(script=script("true"), tag=tag()))
    final(backend, done)
    ids = [backend.submit(SubmitRequest(script=script("sleep 300"), tag=tag())) for _ in range(3)]
    running(backend, ids[0])
    backend.cancel_many([*ids, done, "999999"])
    assert [final(backend, jid).state for jid in ids] == ["CANCELLED"] * 3
    assert final(backend, done).state == "COMPLETED"


def test_a_gpu_job_holds_its_gpus_on_its_nodes(
    backend: SlurmBackend, site: str, tmp_path: Path
) -> None:
    """pyslurm defects: Job.gres_per_node keys read 'gres/gpu:h100' (the job showed no GPUs);
    a job's nodes are allocated_nodes (node_names was empty); Node.allocated_gres is empty
    without slurmdbd, so a site running a 2x2-GPU job showed every GPU free."""
    tmp_path.chmod(0o777)
    out = tmp_path / "gpu.out"
    env = {"MS_VALUE": "a,b=c d", "MS_OTHER": "x"}  # a comma would break --export=K=V,...
    jid = backend.submit(
        SubmitRequest(
            script=script('echo "$MS_VALUE|$MS_OTHER|$CUDA_VISIBLE_DEVICES"\nsleep 300'),
            tag=tag(),
            nodes=2,
            ntasks=2,
            gpus_per_node=2,
            gpu_type="h100",
            time_limit_minutes=5,
            output=str(out),
            environment=env,
        )
    )
    try:
        j = running(backend, jid)
        assert (j.gpus, j.gpu_type, j.nodes, j.time_limit_minutes) == (4, "h100", 2, 5)
        assert j.node_names == (f"{site}-n1", f"{site}-n2")
        in_use = {n.name: n.alloc_gpus for n in backend.nodes()}
        assert in_use == {f"{site}-n1": {"h100": 2}, f"{site}-n2": {"h100": 2}}
        line = wait_for(lambda: out.exists() and out.read_text().strip(), what="the job's output")
        assert line == "a,b=c d|x|0,1"
    finally:
        backend.cancel(jid)
    final(backend, jid)
    assert all(n.alloc_gpus == {"h100": 0} for n in backend.nodes())


def test_the_job_environment_comes_only_from_the_request(
    backend: SlurmBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MS_AGENT_SECRET", "leak")
    monkeypatch.setenv("SBATCH_TIMELIMIT", "1")  # would change sbatch's options if passed on
    tmp_path.chmod(0o777)
    out = tmp_path / "env.out"
    jid = backend.submit(
        SubmitRequest(
            script=script("env"),
            tag=tag(),
            output=str(out),
            time_limit_minutes=7,
            # checked by metasched.jobenv before any backend sees them; values keep ',' '=' ' '
            environment={"MS_JOB_VAR": "a,b=c d"},
            slurm_environment={"SLURM_ARRAY_TASK_ID": "5"},  # the agent's own, for a task
        )
    )
    assert job(backend, jid).time_limit_minutes == 7  # type: ignore[union-attr]
    final(backend, jid)
    text = wait_for(lambda: out.exists() and out.read_text(), what="the job's output")
    assert "MS_AGENT_SECRET" not in text
    lines = text.splitlines()
    assert "MS_JOB_VAR=a,b=c d" in lines and "SLURM_ARRAY_TASK_ID=5" in lines


def test_exit_codes_agree_in_every_view(backend: SlurmBackend) -> None:
    """pyslurm defect: a job cancelled while running reported 143 (exit_code_signal 15) where
    the cli backend and the completion log say 0. Every view gives one exit code."""
    t = tag()
    failed = backend.submit(SubmitRequest(script=script("exit 3"), tag=t))
    cancelled = backend.submit(SubmitRequest(script=script("sleep 300"), tag=tag()))
    running(backend, cancelled)
    backend.cancel(cancelled)
    for jid, want in ((failed, ("FAILED", 3)), (cancelled, ("CANCELLED", 0))):
        live = final(backend, jid)
        rec = record(backend, jid)
        assert (live.state, live.exit_code) == want
        assert (rec.job_id, rec.state, rec.exit_code) == (jid, *want)
    assert [r.job_id for r in backend.finished([], [t])] == [failed]  # found by tag too


def test_unknown_partition_is_refused(backend: SlurmBackend) -> None:
    req = SubmitRequest(script=script("true"), tag=tag(), partition="nope")
    with pytest.raises(SlurmError, match="Invalid partition name specified") as err:
        backend.submit(req)
    assert not isinstance(err.value, SlurmUnavailable)


def test_a_job_runs_as_its_local_user_in_their_home(backend: SlurmBackend, local_user: str) -> None:
    """As the mapped account, with its primary group (user_id alone would run it as gid root),
    starting in its home when the job names no directory (never the agent's own)."""
    home = pwd.getpwnam(local_user).pw_dir
    out = Path(f"/tmp/msv-user-{uuid.uuid4().hex[:8]}.out")
    try:
        jid = backend.submit(
            SubmitRequest(
                script=script("id -un; id -gn; pwd"),
                tag=tag(),
                output=str(out),
                local_user=local_user,
            )
        )
        assert job(backend, jid).user == local_user  # type: ignore[union-attr]
        assert final(backend, jid).state == "COMPLETED"
        group = subprocess.run(["id", "-gn", local_user], capture_output=True, text=True).stdout
        text = wait_for(lambda: out.exists() and out.read_text(), what="the job's output")
        assert text.split() == [local_user, group.strip(), home]
    finally:
        out.unlink(missing_ok=True)


def test_a_recall_never_cancels_a_running_job(backend: SlurmBackend) -> None:
    jid = backend.submit(SubmitRequest(script=script("sleep 300"), tag=tag()))
    running(backend, jid)
    backend.cancel(jid, only_pending=True)
    assert job(backend, jid).state == "RUNNING"  # type: ignore[union-attr]
    backend.cancel(jid)
    final(backend, jid)


# ------------------------------------------------------------------ jobs that left the queue
@pytest.fixture
def purge_site(case: Case, purge_lab: SlurmLab) -> tuple[SlurmBackend, SlurmLab, str]:
    name = site_name(case.release, "p")
    return make(case, purge_lab, name), purge_lab, name


def test_a_purged_job_is_resolved_from_the_completion_log(
    purge_site: tuple[SlurmBackend, SlurmLab, str],
) -> None:
    """pyslurm defects: finished jobs were looked up only in pyslurm.db, which needs slurmdbd,
    so a purged job stayed RUNNING forever; cancelling a purged job raised."""
    backend, _, _ = purge_site
    t = tag()
    jid = backend.submit(SubmitRequest(script=script("exit 0"), tag=t))
    wait_for(lambda: job(backend, jid) is None, timeout=120, what="the job to be purged")
    (rec,) = backend.finished([jid], [])
    assert (rec.state, rec.exit_code) == ("COMPLETED", 0)
    (by_tag,) = backend.finished([], [t])  # the tag survives in the record's WCKey
    assert by_tag.job_id == jid and by_tag.comment == t
    assert backend.finished(["999999"], ["metasched:00000000:0:0"]) == []
    backend.cancel(jid, only_pending=True)  # gone: nothing to do, and no error
    backend.cancel(jid)


def test_a_dead_controller_is_unavailable_not_refusal(
    purge_site: tuple[SlurmBackend, SlurmLab, str],
) -> None:
    backend, lab, name = purge_site
    lab.stop_site(name)
    try:
        started = time.monotonic()
        with pytest.raises(SlurmUnavailable):
            backend.submit(SubmitRequest(script=script("true"), tag=tag()))
        assert time.monotonic() - started < 15  # MessageTimeout=3: no minute-long hang
        with pytest.raises(SlurmUnavailable):
            backend.jobs()
        with pytest.raises(SlurmUnavailable):
            backend.nodes()
    finally:
        lab.start_site(name)
    assert {n.name for n in backend.nodes()} == {f"{name}-n1", f"{name}-n2"}


# ------------------------------------------------------------------ the unit tests' recordings
def test_recorded_pyslurm_objects_are_what_pyslurm_returns(version_lab: SlurmLab) -> None:
    """The pyslurm unit tests run on recorded objects: today's real ones must have the same
    attributes with the same kinds of values (a fake with the wrong shapes hid every defect
    above)."""
    need_pyslurm()
    case = Case("pyslurm", "25.11")
    backend = make(case, version_lab, site_name(case.release))
    jid = backend.submit(SubmitRequest(script=script("sleep 300"), tag=tag(), gpus_per_node=1))
    try:
        running(backend, jid)
        from metasched.agent.slurm.pyslurm_backend import PyslurmBackend

        assert isinstance(backend, PyslurmBackend)
        for kind in KINDS:
            obj = next(o for o in backend.objects(kind) if kind != "jobs" or str(o.id) == jid)
            real = shape(encode_object(obj))
            # a job's values differ in kind by state (allocated_nodes is None while pending)
            alike = [r for r in raw(kind) if kind != "jobs" or r["state"] == obj.state]
            assert alike, f"no recorded {kind} in state {obj.state}"
            for recorded in map(shape, alike):
                assert set(recorded) == set(real), (kind, set(recorded) ^ set(real))
                differ = {
                    k: (recorded[k], real[k])
                    for k in real
                    if "NoneType" not in (recorded[k], real[k]) and recorded[k] != real[k]
                }
                assert not differ, (kind, differ)
    finally:
        backend.cancel(jid)
