"""sbatch for the federation: `sbatch [options] script [args]` queues the job in the global
queue and prints `Submitted batch job <global id>` (or just the id with --parsable).

Options are read by msub's own parser (metasched.cli.msub: the same options, the same
#SBATCH handling); this module adds only what is sbatch's and not msub's: its output, the
script on stdin, the submitter's environment exported by default (sbatch's --export=ALL)
and the job-id prologue below.

Inside a job submitted through this command, SLURM_JOB_ID (and SLURM_JOBID) is the id this
command printed, as it is for a job of a Slurm federation, so tools that name files after
it (submitit) or ask squeue/sacct about it find them; the site's own id is in
METASCHED_SITE_JOB_ID. srun must then be told the site's id: the prologue puts this
command's directory first on the job's PATH, where `metasched-compat install` put an srun
that does so. Without that srun next to this sbatch the job keeps the site's id.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path

from metasched import jobenv
from metasched.cli import msub
from metasched.cli.errors import UsageError
from metasched.compat import common
from metasched.v1 import metasched_pb2 as pb

PROLOGUE_MARK = "# metasched: this job's id is the federation's"
_SH = re.compile(r"^#!\s*(/usr)?/bin/(env\s+)?(ba|da|k|z)?sh\b")
# Never exported into a job: Slurm's own variables (the job gets its own), sbatch's option
# variables, and the user's metasched token (it would travel to whichever site runs the job).
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _quoted(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


def prologue(shim_dir: str, export_all: bool, daemon: str = "") -> str:
    d = _quoted(shim_dir)
    # The front-ends on the job's PATH must find this directory and the daemon; METASCHED_*
    # never travels in a job's environment (jobenv), so the script says them itself.
    reach = f"  export METASCHED_COMPAT_DIR={d}\n"
    if daemon:
        reach += f"  export METASCHED_DAEMON={_quoted(daemon)}\n"
    # The site's sbatch was given the job's variables by name (--export=A,B), and Slurm
    # hands that list to every srun in the job as SLURM_EXPORT_ENV: variables the script
    # sets itself would never reach srun's tasks. sbatch's default is ALL; so is srun's.
    export = "  export SLURM_EXPORT_ENV=ALL\n" if export_all else ""
    return (
        f"{PROLOGUE_MARK} (what sbatch printed); srun is given the site's\n"
        f'if [ -n "${{METASCHED_JOB_ID:-}}" ] && [ -x {d}/srun ]; then\n'
        '  export METASCHED_SITE_JOB_ID="$SLURM_JOB_ID"\n'
        '  export SLURM_JOB_ID="$METASCHED_JOB_ID" SLURM_JOBID="$METASCHED_JOB_ID"\n'
        f'  export PATH={d}:"$PATH"\n'
        f"{reach}"
        f"{export}"
        "fi\n"
    )


def with_prologue(script: str, shim_dir: str, export_all: bool = True) -> str:
    """The script with the prologue before its first command: after the #SBATCH lines,
    which sbatch reads only up to the first command. Only for sh-family scripts."""
    lines = script.splitlines(keepends=True)
    if not lines or not _SH.match(lines[0]) or PROLOGUE_MARK in script:
        return script
    at = 1
    while at < len(lines) and (not lines[at].strip() or lines[at].lstrip().startswith("#")):
        at += 1
    daemon = os.environ.get("METASCHED_DAEMON", "")
    return "".join(lines[:at]) + prologue(shim_dir, export_all, daemon) + "".join(lines[at:])


def shim_dir() -> str:
    """The directory of metasched-compat install's commands, when this sbatch runs from
    there and the srun of ours is beside it."""
    here = os.environ.get("METASCHED_COMPAT_DIR", "")
    return here if here and (Path(here) / "srun").is_file() else ""


def exported_environment() -> dict[str, str]:
    """sbatch's --export=ALL: the submitter's environment, less what no job may be given
    (jobenv's denylist: the loader's, Slurm's and metasched's own variables)."""
    return jobenv.without_denied(
        {k: v for k, v in os.environ.items() if _NAME.match(k) and "\0" not in v}
    )


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)

    def body() -> int:
        parsable = "--parsable" in args
        rest = [a for a in args if a != "--parsable"]
        p = msub.parser_for("submit")
        p.prog = "sbatch"
        with tempfile.TemporaryDirectory(prefix="metasched-sbatch-") as tmp:
            try:
                opts = p.parse_args(rest)
                stdin_script = False
            except UsageError:
                if sys.stdin.isatty():
                    raise
                # sbatch reads the script from stdin when none is named
                stdin_path = Path(tmp) / "stdin"
                stdin_path.write_bytes(sys.stdin.buffer.read())
                opts = p.parse_args([*rest, str(stdin_path)])
                stdin_script = True
            source = Path(opts.script)
            try:
                text = source.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise UsageError(f"Unable to open file {opts.script}: {e}") from None
            shims = shim_dir()
            if shims:
                copy = Path(tmp) / (source.name if not stdin_script else "sbatch")
                copy.write_text(
                    with_prologue(text, shims, export_all=opts.export is None), encoding="utf-8"
                )
                opts.script = str(copy)
            spec = msub.build_spec(opts, opts.script, _warn)
            if stdin_script and not opts.name:
                spec.name = "sbatch"
            if opts.export is None:  # sbatch's default is ALL (msub names what it exports)
                for k, v in exported_environment().items():
                    spec.environment.setdefault(k, v)
            c = common.client()
            resp = c.call("SubmitJob", pb.SubmitJobRequest(spec=spec, no_wait=True))
        if parsable:
            common.out(str(resp.job_id))
        else:
            common.out(f"Submitted batch job {resp.job_id}")
        return 0

    return common.run("sbatch", body)


def _warn(message: str) -> None:
    print(f"sbatch: warning: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
