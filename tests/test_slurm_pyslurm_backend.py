"""The pyslurm backend's conversions, and make_backend().

pyslurm cannot be built here (it needs Slurm 25.11's headers), so the pure conversion
functions are fed FAKE objects (SimpleNamespace) carrying the attribute names pyslurm 25.11
documents; nothing here talks to Slurm.
"""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import pytest

from metasched.agent.slurm import make_backend
from metasched.agent.slurm.base import SlurmError, SubmitRequest
from metasched.agent.slurm.cli import CliBackend
from metasched.agent.slurm.pyslurm_backend import (
    iter_loaded,
    job_from_pyslurm,
    node_from_pyslurm,
    partition_from_pyslurm,
    submit_kwargs,
)

HAVE_PYSLURM = importlib.util.find_spec("pyslurm") is not None


def fake_job(**kw: object) -> SimpleNamespace:  # FAKE pyslurm.Job
    base = dict(
        id=8,
        name="run-gpu",
        state="RUNNING",
        state_reason="None",
        partition="batch",
        user_name="root",
        comment="metasched:0a1b2c3d:1:0",
        num_nodes=2,
        cpus=128,
        gres_per_node={"gpu:h100": 2},
        time_limit=20,
        submit_time=1795616503,
        start_time=1795616503,
        end_time=None,
        exit_code=0,
        exit_code_signal=0,
        priority=1,
    )
    base.update(kw)
    return SimpleNamespace(**base)


def test_job_conversion() -> None:
    j = job_from_pyslurm(fake_job())
    assert (j.job_id, j.state, j.nodes, j.cpus, j.gpus, j.gpu_type) == (
        "8",
        "RUNNING",
        2,
        128,
        4,
        "h100",
    )
    assert j.comment == "metasched:0a1b2c3d:1:0" and j.end_time == 0.0
    assert j.time_limit_minutes == 20


def test_job_exit_codes() -> None:
    assert job_from_pyslurm(fake_job(state="FAILED", exit_code=3)).exit_code == 3
    cancelled = job_from_pyslurm(fake_job(state="CANCELLED", exit_code=0, exit_code_signal=15))
    assert cancelled.exit_code == 143
    assert job_from_pyslurm(fake_job(time_limit=None)).time_limit_minutes == 0  # unlimited


def test_node_and_partition_conversion() -> None:
    node = SimpleNamespace(  # FAKE pyslurm.Node
        name="site-x-n1",
        partitions=["batch"],
        state="MIXED",
        total_cpus=64,
        allocated_cpus=4,
        real_memory=256000,
        allocated_memory=4096,
        configured_gres={"gpu:h100": 4},
        allocated_gres={"gpu:h100": 1},
    )
    n = node_from_pyslurm(node)
    assert (n.state, n.cpus, n.alloc_cpus, n.gpus, n.alloc_gpus) == (
        "mixed",
        64,
        4,
        {"h100": 4},
        {"h100": 1},
    )
    part = SimpleNamespace(  # FAKE pyslurm.Partition
        name="batch",
        nodes="site-x-n[1-2]",
        max_time=10080,
        default_time=60,
        max_nodes=None,
        is_default=True,
        state="UP",
    )
    p = partition_from_pyslurm(part)
    assert (p.nodes, p.max_time_minutes, p.max_nodes_per_job, p.is_default, p.state) == (
        ("site-x-n1", "site-x-n2"),
        10080,
        0,
        True,
        "up",
    )


def test_submit_kwargs() -> None:
    req = SubmitRequest(
        script="#!/bin/sh\ntrue\n",
        tag="metasched:0a1b2c3d:1:0",
        partition="batch",
        gpus_per_node=2,
        gpu_type="h100",
        time_limit_minutes=10,
        mem_per_node_mb=4000,
    )
    kw = submit_kwargs(req, uid=1001, gid=1001)
    assert kw["time_limit"] == 10 and isinstance(kw["time_limit"], int)
    assert kw["gres_per_node"] == "gpu:h100:2" and kw["memory_per_node"] == "4000M"
    assert (kw["user_id"], kw["group_id"]) == (1001, 1001)  # both, or gid is root
    assert kw["environment"] == {}  # explicit: never the agent's own environment
    assert kw["comment"] == req.tag and kw["partitions"] == "batch"
    assert "user_id" not in submit_kwargs(req, None, None)


def test_iter_loaded_flattens_clusters() -> None:
    a, b = fake_job(id=1), fake_job(id=2)
    assert list(iter_loaded({"site-x": {1: a, 2: b}})) == [a, b]  # 25.11 Jobs.load()
    assert list(iter_loaded({1: a})) == [a]


def test_make_backend() -> None:
    with pytest.raises(ValueError, match="unknown Slurm backend 'slurmrestd'"):
        make_backend("slurmrestd", None)
    assert isinstance(make_backend("cli", "/etc/slurm/slurm.conf"), CliBackend)
    if not HAVE_PYSLURM:
        assert isinstance(make_backend("auto", None), CliBackend)
        with pytest.raises(ValueError, match="pyslurm"):
            make_backend("pyslurm", None)


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
    kw = submit_kwargs(req, None, None)
    assert (kw["name"], kw["nodes"], kw["ntasks_per_node"]) == ("x y", "2-4", 4)
    assert (kw["memory_per_cpu"], kw["gpus"], kw["time_limit"]) == ("2048M", "a100:2", 90)
    assert kw["resource_sharing"] == "exclusive" and kw["is_requeueable"] is False
    assert kw["mail_types"] == "END,FAIL"  # they add up, as in sbatch
    assert kw["comment"] == "metasched:0a1b2c3d:1:0 mine"  # the user's comment is kept
    assert kw["get_user_environment"] is False  # ALL: exactly the captured environment
    hinted = SubmitRequest(script="#!/bin/sh\n", tag="t", options=("--hint=nomultithread",))
    with pytest.raises(SlurmError, match="--hint cannot be given to this site"):
        submit_kwargs(hinted, None, None)
