"""Slurm backends: `cli` (any Slurm from 21.08) and `pyslurm` (25.11 with pyslurm)."""

from __future__ import annotations

from metasched.agent.slurm.base import SlurmBackend

BACKEND_KINDS = ("auto", "cli", "pyslurm")


def make_backend(kind: str, slurm_conf: str | None = None) -> SlurmBackend:
    """The backend of that kind. "auto" takes pyslurm when it imports (it only builds
    against the site's own Slurm, so importing it is the test), else the command line."""
    if kind not in BACKEND_KINDS:
        raise ValueError(
            f"unknown Slurm backend {kind!r}: choose one of {', '.join(BACKEND_KINDS)}"
        )
    if kind in ("auto", "pyslurm"):
        try:
            from metasched.agent.slurm.pyslurm_backend import PyslurmBackend

            return PyslurmBackend(slurm_conf)
        except ImportError as e:
            if kind == "pyslurm":
                raise ValueError(
                    f"Slurm backend 'pyslurm' needs the pyslurm package built for this "
                    f"site's Slurm (25.11): {e}"
                ) from None
    from metasched.agent.slurm.cli import CliBackend

    return CliBackend(slurm_conf)
