"""The shipped example configs load, and config mistakes are one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest

from metasched.agent import config as agent_config
from metasched.config import ConfigError
from metasched.daemon import config as daemon_config

ROOT = Path(__file__).resolve().parent.parent


def test_example_configs_load() -> None:
    d = daemon_config.from_file(ROOT / "config" / "metaschedd.toml")
    assert set(d.site_tokens) == {"hpc", "ai"}
    assert d.synchronous == "FULL"
    a = agent_config.from_file(ROOT / "config" / "agent.toml")
    assert a.site == "hpc"
    assert a.users.local("bob") == "b.smith"
    assert a.users.local("mallory") is None  # unmapped: refused here, placed elsewhere
    assert a.precisions["batch"] == {"fp64": 5.1, "fp32": 10.2}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[agent]\nsite='x'\n", "daemon"),
        ("[agent]\ndaemon='h:1'\n", "site is required"),
        ("[agent]\nsite='x'\ndaemon='h:1'\nbackend='magic'\n", "backend must be"),
        ("[agent]\nsite='x'\ndaemon='h:1'\npoll_interval='fast'\n", "poll_interval must be"),
        (
            "[agent]\nsite='x'\ndaemon='h:1'\n[[partitions]]\nname='b'\nprecisions={fp99=1.0}\n",
            "fp99",
        ),
        ("[agent]\nsite='x'\ndaemon='h:1'\n[users]\n'*'='root'\n", '"*" may only be'),
        ("not toml = = =", "not valid TOML"),
    ],
)
def test_agent_config_errors(tmp_path: Path, text: str, message: str) -> None:
    p = tmp_path / "agent.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=message) as e:
        agent_config.from_file(p)
    assert "\n" not in str(e.value)


def test_daemon_config_errors(tmp_path: Path) -> None:
    p = tmp_path / "d.toml"
    p.write_text("[sites.a]\ntoken='short'\n")
    with pytest.raises(ConfigError, match="at least 16"):
        daemon_config.from_file(p)
    with pytest.raises(ConfigError, match="no such config file"):
        daemon_config.from_file(tmp_path / "missing.toml")
