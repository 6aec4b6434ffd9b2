"""What an operator's tooling expects of every metasched command (issue 12): --version, and
metasched-agent under systemd (Type=notify): READY=1 once running, WATCHDOG=1 while its
poller is not stuck, STOPPING=1 on SIGTERM. Real processes, a real datagram socket; no Slurm
and no daemon needed (the agent reconnects meanwhile, which is not being stuck)."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests_support import bare_agent

from metasched import __version__


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("metasched.daemon.main", "metaschedd"),
        ("metasched.agent.main", "metasched-agent"),
        ("metasched.cli.msub", "msub"),
        ("metasched.cli.admin", "metasched-admin"),
        ("metasched.compat.install", "metasched-compat"),
    ],
)
def test_every_command_says_its_version(module: str, name: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", module, "--version"], capture_output=True, text=True, timeout=60
    )
    assert (out.returncode, out.stdout.strip()) == (0, f"{name} {__version__}"), out.stderr


@pytest.mark.parametrize("front_end", ["sbatch", "squeue", "scancel", "sacct"])
@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_slurm_front_ends_say_a_release_tools_can_parse(front_end: str, flag: str) -> None:
    """Workflow tools read `sbatch --version` as Slurm prints it: 'slurm 25.11.7'."""
    out = subprocess.run(
        [sys.executable, "-m", f"metasched.compat.{front_end}", flag],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert re.fullmatch(
        rf"slurm \d+\.\d+\.\d+ \(metasched {re.escape(__version__)}\)\n", out.stdout
    )


def _agent_toml(tmp: Path) -> Path:
    path = tmp / "agent.toml"
    (tmp / "slurm.conf").write_text("ClusterName=s\n")  # the agent checks it is there
    path.write_text(
        f'[agent]\nsite = "s"\ndaemon = "unix:{tmp / "no-daemon.sock"}"\ntoken = "t"\n'
        f'state_dir = "{tmp / "state"}"\nbackend = "cli"\n'
        f'slurm_conf = "{tmp / "slurm.conf"}"\npoll_interval = 1.0\n[users]\n"*" = "*"\n'
    )
    return path


def test_agent_tells_systemd_ready_feeds_the_watchdog_and_stops(tmp_path: Path) -> None:
    sock_path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(str(sock_path))
        s.settimeout(60)
        agent = subprocess.Popen(
            [sys.executable, "-m", "metasched.agent.main", "-c", str(_agent_toml(tmp_path))],
            env={
                "PATH": "/usr/bin:/bin",
                "NOTIFY_SOCKET": str(sock_path),
                "WATCHDOG_USEC": "400000",  # a ping every 0.2 s
            },
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            got = [s.recv(4096).decode()]
            assert got[0].startswith("READY=1\nSTATUS=site s, daemon unix:"), got
            got += [s.recv(4096).decode(), s.recv(4096).decode()]
            assert got[1:] == ["WATCHDOG=1", "WATCHDOG=1"]
            agent.send_signal(signal.SIGTERM)
            while got[-1] == "WATCHDOG=1":
                got.append(s.recv(4096).decode())
            assert got[-1] == "STOPPING=1"
            assert agent.wait(60) == 0, agent.stderr.read() if agent.stderr else ""
        finally:
            if agent.poll() is None:
                agent.kill()
                agent.wait(10)


def test_the_watchdog_starves_only_while_a_connected_agent_polls_nothing(tmp_path: Path) -> None:
    agent = bare_agent("s", str(tmp_path / "no-slurm.conf"), tmp_path)
    assert agent.polling(0.05)  # between sessions: reconnecting, not stuck
    agent.metrics.connected(True)
    assert agent.polling(60)
    deadline = time.monotonic() + 60
    while agent.polling(0.05):  # connected, and no poll ends: stuck
        assert time.monotonic() < deadline
        time.sleep(0.01)
    agent.metrics.polled(0.01, reached_slurm=False)  # a poll that ends, even failing, is alive
    assert agent.polling(60)
    agent.metrics.connected(False)
    assert agent.polling(0.0)
