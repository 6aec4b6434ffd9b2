"""The pyslurm backend's conversions over objects recorded from a real Slurm 25.11 site
(tests/pyslurm_recording.py; test_backend_contract checks the recordings against today's real
objects), and make_backend()'s refusals. The same backend against real daemons is in
test_backend_contract."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pyslurm_recording import by, load

from metasched.agent.slurm import make_backend
from metasched.agent.slurm.base import SlurmError, SubmitRequest
from metasched.agent.slurm.cli import CliBackend
from metasched.agent.slurm.pyslurm_backend import (
    job_from_pyslurm,
    job_layout,
    node_from_pyslurm,
    partition_from_pyslurm,
    slurm_conf_for,
    submit_kwargs,
)


def test_jobs_as_recorded() -> None:
    jobs = by("jobs", "name")
    gres = jobs["gres-2x2-running"]
    j = job_from_pyslurm(gres, job_layout(gres))
    # 'gres/gpu:h100' keys and allocated_nodes (there is no `nodes`)
    assert (j.state, j.nodes, j.gpus, j.gpu_type) == ("RUNNING", 2, 4, "h100")
    assert j.node_names == ("rec-n1", "rec-n2") and j.comment == "metasched:0a1b2c3d:7:0"
    assert j.time_limit_minutes == 5 and j.start_time > 0 and j.user == "root"
    # --gpus=3 over two nodes: pyslurm's tres_per_job does not parse it; the layout does
    per_job = jobs["gpus-per-job-3"]
    assert job_from_pyslurm(per_job, job_layout(per_job)).gpus == 3
    pending = job_from_pyslurm(jobs["pending-too-big"], job_layout(jobs["pending-too-big"]))
    assert (pending.state, pending.gpus, pending.node_names) == ("PENDING", 8, ())


def test_exit_codes_as_recorded() -> None:
    jobs = by("jobs", "name")
    failed = job_from_pyslurm(jobs["exit-3"])
    assert (failed.state, failed.exit_code) == ("FAILED", 3)
    # recorded with exit_code_signal 15: the cancel's signal is Slurm's, not the job's result
    assert jobs["cancelled-running"].exit_code_signal == 15
    cancelled = job_from_pyslurm(jobs["cancelled-running"])
    assert (cancelled.state, cancelled.exit_code) == ("CANCELLED", 0)


def test_nodes_count_gpus_in_use_from_the_jobs() -> None:
    nodes = load("nodes")
    assert all(n.allocated_gres == {} for n in nodes)  # pyslurm's own answer, without slurmdbd
    in_use: dict[str, dict[str, int]] = {}
    for job in load("jobs"):
        for node, gpus in job_layout(job).items():
            for t, c in gpus.items():
                in_use.setdefault(node, {})[t] = in_use.get(node, {}).get(t, 0) + c
    got = {n.name: node_from_pyslurm(n, in_use.get(n.name)) for n in nodes}
    assert got["rec-n1"].alloc_gpus == {"h100": 4} and got["rec-n2"].alloc_gpus == {"h100": 3}
    assert got["rec-n1"].gpus == {"h100": 4} and got["rec-n1"].state == "mixed+planned"
    assert (got["rec-n1"].cpus, got["rec-n1"].mem_mb, got["rec-n1"].partitions) == (
        8,
        16_000,
        ("batch",),
    )
    assert got["rec-n1"].features == ("rec",)  # active_features, a list in 25.11 (-C)
    idle = node_from_pyslurm(nodes[0], None)
    assert idle.alloc_gpus == {"h100": 0}  # as sinfo: the configured type, none in use


def test_partition_as_recorded() -> None:
    (part,) = load("partitions")
    assert part.max_nodes == "UNLIMITED"  # a string, not None
    p = partition_from_pyslurm(part)
    assert (p.name, p.nodes, p.max_time_minutes, p.default_time_minutes) == (
        "batch",
        ("rec-n1", "rec-n2"),
        10080,
        60,
    )
    assert (p.max_nodes_per_job, p.is_default, p.state) == (0, True, "up")


def test_submit_kwargs_carry_only_the_request() -> None:
    req = SubmitRequest(
        script="#!/bin/sh\ntrue\n",
        tag="metasched:0a1b2c3d:1:0",
        partition="batch",
        gpus_per_node=2,
        gpu_type="h100",
        time_limit_minutes=10,
        mem_per_node_mb=4000,
    )
    kw = submit_kwargs(req, uid=1001, gid=1002, home="/home/u", wckey=True)
    assert kw["time_limit"] == 10 and isinstance(kw["time_limit"], int)
    assert kw["gres_per_node"] == "gpu:h100:2" and kw["memory_per_node"] == "4000M"
    assert (kw["user_id"], kw["group_id"]) == (1001, 1002)  # both, or gid is root
    # an empty dict would make pyslurm export the agent's whole environment
    assert kw["environment"] == "NONE" and kw["get_user_environment"] is True
    assert kw["working_directory"] == "/home/u"  # never the agent's own directory
    assert kw["comment"] == req.tag == kw["wckey"] and kw["partitions"] == "batch"
    with_env = submit_kwargs(
        SubmitRequest(script="", tag="t", environment={"A": "1"}), None, None, "/", wckey=False
    )
    assert with_env["environment"] == {"A": "1"} and "user_id" not in with_env
    assert "wckey" not in with_env
    task = SubmitRequest(  # an array task: the agent's SLURM_ARRAY_* beside the job's own
        script="", tag="t", environment={"A": "1"}, slurm_environment={"SLURM_ARRAY_TASK_ID": "5"}
    )
    assert submit_kwargs(task, None, None, "/", False)["environment"] == {
        "A": "1",
        "SLURM_ARRAY_TASK_ID": "5",
    }


def test_make_backend_refuses_what_cannot_work(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown Slurm backend 'slurmrestd'"):
        make_backend("slurmrestd", None)
    with pytest.raises(ValueError, match=f"slurm_conf {tmp_path}/nope: no such file"):
        make_backend("cli", str(tmp_path / "nope"))
    with pytest.raises(ValueError, match=f"slurm_bin_dir {tmp_path}/bin: no such directory"):
        make_backend("cli", None, str(tmp_path / "bin"))
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "sinfo").touch(mode=0o755)
    with pytest.raises(ValueError, match="has no sbatch, squeue, scancel, scontrol, sacct"):
        make_backend("cli", None, str(tmp_path / "bin"))
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=x\n")
    assert isinstance(make_backend("cli", str(conf)), CliBackend)


def test_no_slurm_conf_is_an_error_before_pyslurm_is_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pyslurm defect: importing pyslurm with no slurm.conf ends the process in libslurm (no
    exception, no traceback); the backend now names the missing file instead."""
    monkeypatch.delenv("SLURM_CONF", raising=False)
    if Path("/etc/slurm/slurm.conf").exists():
        pytest.skip("this machine has /etc/slurm/slurm.conf")
    with pytest.raises(SlurmError, match=r"no slurm\.conf at /etc/slurm/slurm\.conf"):
        slurm_conf_for(None)
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "x.conf"))
    with pytest.raises(SlurmError, match=rf"no slurm.conf at {tmp_path}/x.conf \(\$SLURM_CONF\)"):
        slurm_conf_for(None)


def test_agent_check_without_slurm_conf_says_so_in_one_line(tmp_path: Path) -> None:
    """The whole agent, as a process: backend pyslurm and no slurm.conf anywhere."""
    if Path("/etc/slurm/slurm.conf").exists():
        pytest.skip("this machine has /etc/slurm/slurm.conf")
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        '[agent]\nsite = "x"\ndaemon = "127.0.0.1:1"\ntoken = "t"\nbackend = "pyslurm"\n'
        f'state_dir = "{tmp_path}"\n'
    )
    env = {k: v for k, v in os.environ.items() if k != "SLURM_CONF"}
    r = subprocess.run(
        [sys.executable, "-m", "metasched.agent.main", "--check", "-c", str(cfg)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "no slurm.conf at /etc/slurm/slurm.conf" in lines[0], r.stderr


def test_the_users_options_map_to_job_submit_description_attributes() -> None:
    req = SubmitRequest(
        script="#!/bin/sh\ntrue\n",
        tag="metasched:0a1b2c3d:1:0",
        comment="mine",
        options=(
            "--job-name=x y",
            "--nodes=2-4",
            "--ntasks-per-node=4",
            "--mem-per-cpu=2048M",
            "--gpus=a100:2",
            "--time=90",
            "--exclusive",
            "--mail-type=END",
            "--mail-type=FAIL",
            "--no-requeue",
        ),
        export_mode="all",
        environment={"A": "1"},
    )
    kw = submit_kwargs(req, None, None, "/", wckey=False)
    assert (kw["name"], kw["nodes"], kw["ntasks_per_node"]) == ("x y", "2-4", 4)
    assert (kw["memory_per_cpu"], kw["gpus"], kw["time_limit"]) == ("2048M", "a100:2", 90)
    assert kw["resource_sharing"] == "exclusive" and kw["is_requeueable"] is False
    assert kw["mail_types"] == "END,FAIL"  # they add up, as in sbatch
    assert kw["comment"] == "metasched:0a1b2c3d:1:0 mine"  # the user's comment is kept
    assert kw["get_user_environment"] is False  # ALL: exactly the captured environment
    hinted = SubmitRequest(script="#!/bin/sh\n", tag="t", options=("--hint=nomultithread",))
    with pytest.raises(SlurmError, match="--hint cannot be given to this site"):
        submit_kwargs(hinted, None, None, "/", wckey=False)
