"""sbatch for the federation: `sbatch [options] script [args]` queues the job in the global
queue and prints `Submitted batch job <global id>` (or just the id with --parsable).

Options are read by msub's own parser (metasched.cli.msub.parse_submission: sbatch's
options, SBATCH_* variables and #SBATCH lines, the script on stdin, the submitter's
environment exported by default); this module adds only what is sbatch's and not msub's:
its output and the job-id prologue below.

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
from pathlib import Path

from metasched.cli import msub
from metasched.compat import common
from metasched.v1 import metasched_pb2 as pb

PROLOGUE_MARK = "# metasched: this job's id is the federation's"
_SH = re.compile(r"^#!\s*(/usr)?/bin/(env\s+)?(ba|da|k|z)?sh\b")


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


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)

    def body() -> int:
        # msub's reading of sbatch's command line: every option, SBATCH_* variables, the
        # script on stdin, its arguments, and the submitter's environment (--export=ALL)
        sub = msub.parse_submission(args)
        if sub.msub.help:
            common.out(msub.usage())
            return 0
        if sub.msub.version:
            common.out(common.version_line())
            return 0
        shims = shim_dir()
        if shims:
            export_all = sub.spec.export_mode in ("", "all")
            sub.spec.script = with_prologue(sub.spec.script, shims, export_all=export_all)
        c = common.client()
        if sub.msub.test_only:
            return msub.cmd_plan(c, sub, common.out)
        resp = c.call("SubmitJob", pb.SubmitJobRequest(spec=sub.spec, no_wait=True))
        if sub.msub.parsable:
            common.out(str(resp.job_id))
        elif not sub.msub.quiet:
            common.out(f"Submitted batch job {resp.job_id}")
        if sub.msub.wait:
            return msub.wait_for(c, resp.job_id, bool(sub.spec.array), True, common.out)
        return 0

    return common.run("sbatch", body)


if __name__ == "__main__":
    sys.exit(main())
