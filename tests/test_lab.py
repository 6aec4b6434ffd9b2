"""The lab harness itself: an outage keeps running jobs, and down() leaves nothing behind."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import need_slurm

from metasched.lab import DEMO_SITES, LabError, SiteProfile, SlurmLab, demo_sites, procs
from metasched.lab.harness import _apply_overrides


def test_profiles() -> None:
    assert [s.name for s in DEMO_SITES] == ["hpc", "gpu", "ai"]
    assert [s.name for s in demo_sites(4)] == ["hpc", "gpu", "ai", "hpc2"]
    assert DEMO_SITES[2].node_names() == ["ai-n1", "ai-n2"]
    with pytest.raises(ValueError, match="site name"):
        SiteProfile("Bad_Name", nodes=1, cpus=2, sockets=1, cores_per_socket=2, mem_mb=1000)
    with pytest.raises(ValueError, match="sockets"):
        SiteProfile("ok", nodes=1, cpus=3, sockets=1, cores_per_socket=2, mem_mb=1000)


def test_overrides_replace_and_append() -> None:
    lines = ["MinJobAge=300", "# MinJobAge=1 in a comment", "KillWait=5"]
    assert _apply_overrides(lines, {"minjobage": "2", "MaxJobCount": "100"}) == [
        "minjobage=2",
        "# MinJobAge=1 in a comment",
        "KillWait=5",
        "MaxJobCount=100",
    ]


def test_root_too_long_for_a_socket() -> None:
    with pytest.raises(LabError, match="too long"):
        SlurmLab(Path("/tmp/" + "x" * 120), list(DEMO_SITES))


@pytest.mark.slurm
def test_outage_keeps_jobs_and_down_cleans_up(make_lab: Callable[..., SlurmLab]) -> None:
    site = SiteProfile("out", nodes=1, cpus=4, sockets=1, cores_per_socket=4, mem_mb=8000)
    lab = make_lab([site])
    env = {**os.environ, **lab.env("out")}

    def squeue() -> str:
        return subprocess.run(
            ["squeue", "-h", "-o", "%i %T"], env=env, capture_output=True, text=True, check=False
        ).stdout

    jid = subprocess.run(
        ["sbatch", "--parsable", "--wrap", "sleep 300"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd="/tmp",
    ).stdout.strip()
    deadline = time.monotonic() + 15
    while f"{jid} RUNNING" not in squeue() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert f"{jid} RUNNING" in squeue()
    lab.stop_site("out")
    assert not lab.site_up("out")
    assert lab.leftovers(), "the running job must survive the outage"
    lab.start_site("out")
    assert f"{jid} RUNNING" in squeue()  # recovered from saved state
    lab.down()
    assert lab.leftovers() == []


@pytest.mark.slurm
def test_a_dead_daemon_is_told_from_a_slow_one(make_lab: Callable[..., SlurmLab]) -> None:
    """Dead: said at once, with how it ended and its last log line. Slow (running, not
    answering): only after the timeout, with its pid and whether its port accepts connections."""
    site = SiteProfile("slow", nodes=1, cpus=4, sockets=1, cores_per_socket=4, mem_mb=8000)
    lab = make_lab([site], timeout=10)
    lab.hang_site("slow")
    began = time.monotonic()
    try:
        with pytest.raises(LabError) as slow:
            lab.start_site("slow")
    finally:
        lab.resume_site("slow")
    assert time.monotonic() - began >= 10
    assert "slow: slurmctld (pid " in str(slow.value)
    assert "is running but did not answer ping" in str(slow.value)
    assert f"its port {lab.ctld_port('slow')} accepts connections" in str(slow.value)

    bad = SiteProfile("dead", nodes=1, cpus=4, sockets=1, cores_per_socket=4, mem_mb=8000)
    began = time.monotonic()
    with pytest.raises(LabError) as dead:
        make_lab([bad], timeout=120, overrides={"SelectType": "select/none-such"})
    assert time.monotonic() - began < 60  # not the 120 s a slow one would get
    assert "dead: slurmctld exited 1 (" in str(dead.value)
    assert "select/none-such" in str(dead.value)  # its last words, from its log


def test_a_daemon_still_inside_exec_is_alive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The 'slurmctld died' flake under load: Popen returns when exec closes its error pipe,
    before the kernel has put the new argv in place, so a just-started daemon's
    /proc/PID/cmdline can read "" for as long as it waits for a CPU. Caught in a loaded crash
    test run: pid file '17681 981752', /proc/17681/stat state R, cmdline '', and the lab said
    the controller had died; it ran until teardown."""
    proc = subprocess.Popen(["sleep", "60"])
    try:
        # The race this test is about happens to the test's own `sleep` too: wait for its argv.
        while proc.poll() is None and not procs._cmdline(proc.pid):
            time.sleep(0.01)
        assert proc.poll() is None, "sleep 60 exited"
        daemon = procs.Daemon(tmp_path / "d.pid", "slurmctld -D -f /x/slurm.conf")
        fields = procs.stat_fields(proc.pid)
        assert fields is not None
        daemon.pidfile.write_text(f"{proc.pid} {fields[19]}\n")
        assert daemon.pid() is None  # `sleep 60` is not the process the pid file meant
        monkeypatch.setattr(procs, "_cmdline", lambda pid: "")  # inside execve: no argv yet
        assert daemon.pid() == proc.pid
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.slurm
def test_each_release_gets_only_the_options_it_takes(make_lab: Callable[..., SlurmLab]) -> None:
    """One template for every site: 22.05 gets GetEnvTimeout=60 (its 2 s default requeues and
    holds a job whose login environment came late), 25.11 does not (defunct since 25.05: every
    daemon logs an error for the line)."""
    need_slurm("25.11")
    old = SiteProfile("old", nodes=1, cpus=2, sockets=1, cores_per_socket=2, mem_mb=2000)
    new = SiteProfile(
        "new", nodes=1, cpus=2, sockets=1, cores_per_socket=2, mem_mb=2000, slurm="25.11"
    )
    lab = make_lab([old, new])
    config = lab.backend("old").config()
    assert config.get("GetEnvTimeout") == "60 sec", config.get("GetEnvTimeout")
    for name in ("old", "new"):
        for log in sorted((lab.site_dir(name) / "log").glob("*.log")):
            defunct = [ln for ln in log.read_text(errors="replace").splitlines() if "defunct" in ln]
            assert not defunct, f"{log}: {defunct}"
