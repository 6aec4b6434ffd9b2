"""sd_notify over a real datagram socket, and the one JSON convention of every --json."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from metasched import sdnotify
from metasched.cli import jsonout
from metasched.v1 import metasched_pb2 as pb


def test_sd_notify_sends_one_datagram_to_notify_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert sdnotify.notify("READY=1", "STATUS=serving")
        assert s.recv(4096) == b"READY=1\nSTATUS=serving"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not sdnotify.notify("READY=1")  # not under systemd: nothing, no error


def test_watchdog_interval_is_half_of_watchdog_usec_for_this_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "60000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", "1")  # meant for another process
    assert sdnotify.watchdog_interval() == 0.0


def test_json_numbers_are_numbers_states_short_keys_snake_case() -> None:
    job = pb.Job(
        id=2**40,
        state=pb.JOB_STATE_OUT_OF_MEMORY,
        spec=pb.JobSpec(mem_per_node_mb=600 * 1024, environment={"A": "1"}),
        events=[pb.JobEvent(state=pb.JOB_STATE_QUEUED, at=1.5)],
    )
    out = json.loads(jsonout.dumps(job))
    assert out["id"] == 2**40 and out["spec"]["mem_per_node_mb"] == 614400
    assert out["state"] == "out_of_memory"
    assert out["events"][0]["state"] == "queued"
    assert out["slurm_job_id"] == "" and out["exit_code"] == 0  # every field present
    assert out["spec"]["environment"] == {"A": "1"}

    def keys(v: object) -> list[str]:
        if isinstance(v, dict):
            return [k for k2, x in v.items() for k in [k2, *keys(x)]]
        if isinstance(v, list):
            return [k for x in v for k in keys(x)]
        return []

    assert all(k == k.lower() for k in keys(out) if k != "A")
    token = json.loads(jsonout.dumps(pb.CreateTokenResponse(info=pb.TokenInfo(created_at=2.0))))
    assert token["info"]["created_at"] == 2.0  # not createdAt
    assert json.loads(jsonout.dumps([pb.SiteSummary(name="x", total_cpus=4)]))[0]["total_cpus"] == 4
