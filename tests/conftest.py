"""Shared fixtures. Keep only fixtures used by more than one test module here.

Slurm lab fixtures: `slurm_lab` (one lab for the whole session: the DEMO_SITES hpc, gpu,
ai), `make_lab(sites, **kw)` (a lab of its own for one test, e.g. to stop a site) and
`make_federation(sites, ...)` (a lab plus metaschedd and its agents); `hpc_agent` (a SiteAgent
object, no daemon, over the session lab's hpc site: its submit/cancel/report called directly;
`tests_support.submit_tagged` submits through it); `lone_daemon` (metaschedd
with no sites, as a process) and `linux_users` (real local accounts, removed afterwards).
Without slurmctld they skip, unless METASCHED_REQUIRE_SLURM=1 makes that a failure; so do the
tests of a Slurm release that is not installed (need_slurm("25.11"): scripts/build-slurm).
"""

from __future__ import annotations

import os

# As in the agent (metasched/agent/__init__.py): tests run sbatch as other users from this
# process, which has gRPC channels open; gRPC's fork handlers would crash those children.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
import contextlib
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests_support import bare_agent, local_account

from metasched.agent.site_agent import SiteAgent
from metasched.lab import DEMO_SITES, SiteProfile, SlurmLab, installs, slurm_installed
from metasched.lab.federation import Federation
from metasched.lab.lone import LoneDaemon
from metasched.lab.profiles import mixed_demo, mixed_demo_ready

# The Slurm releases every run covers: Debian's, and the one scripts/build-slurm builds.
RELEASES = ("22.05", "25.11")


def _need_slurm(release: str = "") -> None:
    why = ""
    if not slurm_installed(release):
        if release and not installs.available(release):
            why = f"Slurm {release} is not installed (scripts/build-slurm builds it)"
        else:
            why = "Slurm lab needs slurmctld, slurmd and munge (apt-get install slurmctld "
            why += "slurmd slurm-client munge)"
    elif os.geteuid() != 0:
        why = "Slurm lab needs root"
    if why:
        if os.environ.get("METASCHED_REQUIRE_SLURM") == "1":
            pytest.fail(f"METASCHED_REQUIRE_SLURM=1 but: {why}")
        pytest.skip(why)


def _short_root(prefix: str) -> Path:
    # /tmp, not pytest's tmp_path: the munge socket path must stay under 108 bytes
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


@pytest.fixture(scope="session")
def slurm_lab() -> Iterator[SlurmLab]:
    """The demo sites (hpc, gpu, ai), up for the whole session. Do not stop its sites."""
    _need_slurm()
    root = _short_root("msl-")
    lab = SlurmLab(root, list(DEMO_SITES), overrides={"MessageTimeout": "2"})
    try:
        with lab:
            yield lab
    finally:
        _remove(root)


@pytest.fixture
def make_lab() -> Iterator[Callable[..., SlurmLab]]:
    """make_lab(sites, **SlurmLab keyword args) -> a started lab, torn down after the test."""
    _need_slurm()
    made: list[tuple[SlurmLab, Path]] = []

    def make(sites: list[SiteProfile], **kw: Any) -> SlurmLab:
        root = _short_root("msl-")
        lab = SlurmLab(root, sites, **kw)
        made.append((lab, root))
        lab.up()
        return lab

    yield make
    for lab, root in made:
        lab.down()
        _remove(root)


def _remove(root: Path) -> None:
    """A lab's directory goes after its test, unless METASCHED_KEEP_LAB=1 keeps its logs."""
    if os.environ.get("METASCHED_KEEP_LAB") == "1":
        print(f"lab kept: {root}", file=sys.stderr)
        return
    shutil.rmtree(root, ignore_errors=True)


def need_slurm(release: str = "") -> None:
    """Skip (or, with METASCHED_REQUIRE_SLURM=1, fail) a test that needs the real Slurm lab,
    of that release ("22.05", "25.11"; "" = the machine's own)."""
    _need_slurm(release)


def need_pyslurm() -> None:
    """pyslurm is built by scripts/build-slurm against the 25.11 build."""
    need_slurm("25.11")
    import importlib.util

    if importlib.util.find_spec("pyslurm") is None:
        why = "pyslurm is not installed in this virtualenv (scripts/build-slurm installs it)"
        if os.environ.get("METASCHED_REQUIRE_SLURM") == "1":
            pytest.fail(f"METASCHED_REQUIRE_SLURM=1 but: {why}")
        pytest.skip(why)


@pytest.fixture
def hpc_agent(slurm_lab: SlurmLab, tmp_path: Path) -> SiteAgent:
    """An agent for the session lab's hpc site (cli backend), journal and tag key in tmp_path,
    with no daemon: tests call its submit, cancel and report themselves."""
    return bare_agent("hpc", str(slurm_lab.slurm_conf("hpc")), tmp_path)


@pytest.fixture
def make_federation() -> Iterator[Callable[..., Federation]]:
    """make_federation(sites, lab_overrides=None, **Federation kwargs) -> a started federation
    (metaschedd + one agent per site) over a lab of its own; all torn down after the test."""
    _need_slurm()
    made: list[tuple[SlurmLab, Federation, Path]] = []

    def make(
        sites: list[SiteProfile], lab_overrides: dict[str, str] | None = None, **kw: Any
    ) -> Federation:
        root = _short_root("msf-")
        root.chmod(0o755)  # munged wants every directory above its socket searchable
        lab = SlurmLab(
            root / "l", sites, overrides={"MessageTimeout": "3", **(lab_overrides or {})}
        )
        lab.up()
        fed = Federation(lab, root / "f", **kw)
        made.append((lab, fed, root))
        fed.start()
        return fed

    yield make
    for lab, fed, root in made:
        fed.stop()
        lab.down()
        _remove(root)


def mixed_available() -> bool:
    """Can a federation mix Slurm releases and agent backends here (a 25.11 build and pyslurm
    for it)? With METASCHED_REQUIRE_SLURM=1 it must."""
    ok = mixed_demo_ready()
    if not ok and os.environ.get("METASCHED_REQUIRE_SLURM") == "1":
        pytest.fail(
            "METASCHED_REQUIRE_SLURM=1 but no Slurm 25.11 build or pyslurm: run scripts/build-slurm"
        )
    return ok


@pytest.fixture(scope="module")
def demo_federation() -> Iterator[Federation]:
    """The demo's three sites (hpc, gpu, ai) with metaschedd and agents, one per test module:
    a mixed federation (hpc: Slurm 22.05, cli agent; gpu: 25.11, pyslurm agent; ai: 25.11, cli
    agent) when 25.11 is built, else all on the machine's Slurm."""
    _need_slurm()
    sites, backends = mixed_demo() if mixed_available() else (list(DEMO_SITES), {})
    root = _short_root("mse-")
    root.chmod(0o755)
    lab = SlurmLab(root / "l", sites, overrides={"MessageTimeout": "3"})
    with lab, Federation(lab, root / "f", backends=backends) as fed:
        yield fed
    _remove(root)


# Two sites of one 1-CPU node each: a second one-CPU job cannot start where the first runs,
# so jobs spread over both sites as they would over a loaded pool.
TWO_SMALL_SITES = [
    SiteProfile("east", nodes=1, cpus=1, sockets=1, cores_per_socket=1, mem_mb=8000),
    SiteProfile("west", nodes=1, cpus=1, sockets=1, cores_per_socket=1, mem_mb=8000),
]


@pytest.fixture(scope="module")
def small_federation() -> Iterator[Federation]:
    """TWO_SMALL_SITES (east, west) with metaschedd and agents, one per test module."""
    _need_slurm()
    root = _short_root("msc-")
    root.chmod(0o755)
    lab = SlurmLab(root / "l", TWO_SMALL_SITES, overrides={"MessageTimeout": "3"})
    with lab, Federation(lab, root / "f", poll_interval=0.5, report_interval=2.0) as fed:
        yield fed
    _remove(root)


# ---------------------------------------------------------------- metaschedd alone


@pytest.fixture
def lone_daemon() -> Iterator[Callable[..., LoneDaemon]]:
    """lone_daemon(extra="", start=True, **LoneDaemon keywords) -> metaschedd with no sites
    reporting, stopped (and its root removed) after the test."""
    made: list[LoneDaemon] = []

    def make(
        extra: str = "", start: bool = True, root: Path | None = None, **kw: str
    ) -> LoneDaemon:
        d = LoneDaemon(root or _short_root("msd-"), extra, **kw)
        d.root.chmod(0o755)  # other local users reach the sockets in it
        made.append(d)
        if start:
            d.start()
        return d

    yield make
    for d in made:
        d.stop()
        shutil.rmtree(d.root, ignore_errors=True)


@pytest.fixture
def linux_users() -> Iterator[Callable[[str], str]]:
    """linux_users(name) -> a real local account `name` (made if missing, removed after)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to make local users")
    with contextlib.ExitStack() as accounts:
        yield lambda name: accounts.enter_context(local_account(name))
