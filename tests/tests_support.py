"""Helpers for test modules that build their own module-scoped federation."""

from __future__ import annotations

import os

import pytest

from metasched.lab import slurm_installed


def need_slurm_or_skip() -> None:
    if slurm_installed() and os.geteuid() == 0:
        return
    if os.environ.get("METASCHED_REQUIRE_SLURM") == "1":
        pytest.fail("METASCHED_REQUIRE_SLURM=1 but the Slurm lab cannot run here")
    pytest.skip("Slurm lab needs slurmctld, slurmd, munge and root")
