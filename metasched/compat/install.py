"""metasched-compat install DIR: a directory of Slurm's command names (sbatch, squeue,
scancel, sacct, and the srun used inside jobs) that speak to the federation. Put it first
on PATH and tools that drive Slurm (dask-jobqueue, submitit, Parsl) use the federation.

    metasched-compat install DIR [--force]
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from metasched import __version__
from metasched.compat.srun import TASK_PROLOG, TASK_PROLOG_TEXT

COMMANDS = ("sbatch", "squeue", "scancel", "sacct", "srun")


def launcher(module: str, dest: Path) -> str:
    """A tiny sh script that runs the front-end with this Python (the one metasched is
    installed in), so the directory works whichever python is first on PATH; it tells the
    front-end which directory it is in (sbatch's prologue and srun need it)."""
    return (
        "#!/bin/sh\n"
        f"# metasched's {module.rsplit('.', 1)[1]} (metasched-compat install)\n"
        f"METASCHED_COMPAT_DIR={shlex.quote(str(dest))} "
        f'exec {shlex.quote(sys.executable)} -m {module} "$@"\n'
    )


def install(dest: Path, force: bool = False) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    dest = dest.resolve()
    made = []
    files = {name: launcher(f"metasched.compat.{name}", dest) for name in COMMANDS}
    files[TASK_PROLOG] = TASK_PROLOG_TEXT
    for name, text in files.items():
        path = dest / name
        if path.exists() and not force and path.read_text(errors="replace") != text:
            raise FileExistsError(f"{path} exists and is not metasched's; add --force")
        tmp = dest / f".{name}.tmp"
        tmp.write_text(text)
        tmp.chmod(0o755)
        os.replace(tmp, path)
        made.append(path)
    return made


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="metasched-compat",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--version", action="version", version=f"metasched-compat {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    ins = sub.add_parser("install", help="write the Slurm command names into DIR")
    ins.add_argument("dir")
    ins.add_argument("--force", action="store_true", help="replace files that are not ours")
    args = ap.parse_args(argv)
    try:
        made = install(Path(args.dir), args.force)
    except OSError as e:
        print(f"metasched-compat: {e}", file=sys.stderr)
        return 1
    print(f"installed {', '.join(p.name for p in made)} in {Path(args.dir).resolve()}")
    print(f'put it first on PATH: export PATH={shlex.quote(str(Path(args.dir).resolve()))}:"$PATH"')
    return 0


if __name__ == "__main__":
    sys.exit(main())
