"""srun inside a job that metasched's sbatch submitted: the job's SLURM_JOB_ID is the
federation's id there (see metasched.compat.sbatch), but the site's srun must be given the
site's own id to find its allocation. This srun runs the site's, with the site's id, and
has each task it starts see the federation's id again (through --task-prolog, whose
`export` lines Slurm applies to the task's environment).

Outside such a job (no METASCHED_SITE_JOB_ID) it is the site's srun, untouched.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

TASK_PROLOG = "metasched-task-prolog"


def real_command(name: str, own_dir: Path) -> str | None:
    """`name` on PATH, skipping our own directory (where this srun lives)."""
    path = [
        p
        for p in os.environ.get("PATH", "").split(os.pathsep)
        if p and Path(p).resolve() != own_dir
    ]
    return shutil.which(name, path=os.pathsep.join(path))


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    here = Path(os.environ.get("METASCHED_COMPAT_DIR", "/nonexistent"))
    srun = real_command("srun", here.resolve())
    if srun is None:
        print("srun: error: no srun of the site's on PATH", file=sys.stderr)
        return 1
    env = dict(os.environ)
    site_id = env.get("METASCHED_SITE_JOB_ID", "")
    prolog = here / TASK_PROLOG
    if site_id and env.get("METASCHED_JOB_ID"):
        env["SLURM_JOB_ID"] = env["SLURM_JOBID"] = site_id
        if prolog.is_file() and not any(a.startswith("--task-prolog") for a in args):
            args = [f"--task-prolog={prolog}", *args]
    os.execve(srun, [srun, *args], env)
    return 1  # not reached


TASK_PROLOG_TEXT = """#!/bin/sh
# metasched: a task of a federation job sees the federation's job id, as its batch script did
if [ -n "${METASCHED_JOB_ID:-}" ]; then
  echo "export METASCHED_SITE_JOB_ID=$SLURM_JOB_ID"
  echo "export SLURM_JOB_ID=$METASCHED_JOB_ID"
  echo "export SLURM_JOBID=$METASCHED_JOB_ID"
fi
"""

if __name__ == "__main__":
    sys.exit(main())
