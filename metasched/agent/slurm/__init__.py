"""Slurm backends: `cli` (any Slurm from 21.08) and `pyslurm` (25.11 with pyslurm)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from metasched.agent.slurm.base import SlurmBackend, SlurmError

BACKEND_KINDS = ("auto", "cli", "pyslurm")
# What an agent runs of a site's Slurm (the pyslurm backend: sacct, for finished jobs).
COMMANDS = ("sbatch", "squeue", "sinfo", "scancel", "scontrol", "sacct")


def check_paths(slurm_conf: str | None, bin_dir: str) -> None:
    """Raise ValueError, one line naming the path, if the configured ones are not there."""
    if slurm_conf and not Path(slurm_conf).is_file():
        raise ValueError(f"slurm_conf {slurm_conf}: no such file")
    if bin_dir:
        if not Path(bin_dir).is_dir():
            raise ValueError(f"slurm_bin_dir {bin_dir}: no such directory")
        missing = [c for c in COMMANDS if not os.access(Path(bin_dir) / c, os.X_OK)]
        if missing:
            raise ValueError(f"slurm_bin_dir {bin_dir} has no {', '.join(missing)}")


def make_backend(kind: str, slurm_conf: str | None = None, bin_dir: str = "") -> SlurmBackend:
    """The backend of that kind. "auto" takes pyslurm when it loads with this site's slurm.conf
    (it only builds against the site's own Slurm, so loading it is the test), else the command
    line. Raises ValueError, one line, when the configuration cannot work."""
    if kind not in BACKEND_KINDS:
        raise ValueError(
            f"unknown Slurm backend {kind!r}: choose one of {', '.join(BACKEND_KINDS)}"
        )
    check_paths(slurm_conf, bin_dir)
    if kind in ("auto", "pyslurm"):
        if importlib.util.find_spec("pyslurm") is None:
            if kind == "pyslurm":
                raise ValueError(
                    "Slurm backend 'pyslurm' needs the pyslurm package built for this site's "
                    "Slurm (25.11): pip install 'metasched[pyslurm]'"
                )
        else:
            from metasched.agent.slurm.pyslurm_backend import PyslurmBackend

            try:
                return PyslurmBackend(slurm_conf, bin_dir=bin_dir)
            except SlurmError as e:
                if kind == "pyslurm":
                    raise ValueError(f"Slurm backend 'pyslurm': {e}") from None
    from metasched.agent.slurm.cli import CliBackend

    return CliBackend(slurm_conf, bin_dir=bin_dir)
