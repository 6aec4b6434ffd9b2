"""Shared fixtures. Keep only fixtures used by more than one test module here.

Slurm lab fixtures: `slurm_lab` (one lab for the whole session: the DEMO_SITES hpc, gpu,
ai) and `make_lab(sites, **kw)` (a lab of its own for one test, e.g. to stop a site).
Without slurmctld they skip, unless METASCHED_REQUIRE_SLURM=1 makes that a failure.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from metasched.lab import DEMO_SITES, SiteProfile, SlurmLab, slurm_installed


def _need_slurm() -> None:
    why = ""
    if not slurm_installed():
        why = "Slurm lab needs slurmctld, slurmd and munge (apt-get install slurmctld slurmd "
        why += "slurm-client munge)"
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
        shutil.rmtree(root, ignore_errors=True)


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
        shutil.rmtree(root, ignore_errors=True)
