"""Where a job's output goes: sbatch's filename patterns, with the federation's ids.

Every site numbers its own Slurm jobs from 1, so sbatch's default `slurm-%j.out` with the
site's id makes two jobs at two sites write the same file in a shared directory. Here the
ids are the federation's: %j (and %J) is the global job id msub printed, %A the array's id
and %a the task's, so the default `slurm-%j.out` / `slurm-%A_%a.out` cannot collide across
sites and sits next to the id the user was shown. %x and %u are resolved too (the job name,
the account the job runs as at its site). What only the node knows (%N %n %t %s %b %r %S)
is left for Slurm to fill in: `for_slurm()` escapes everything already resolved so that
Slurm's own pass changes nothing else.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

DEFAULT = "slurm-%j.out"
DEFAULT_ARRAY = "slurm-%A_%a.out"
NO_TASK = "4294967294"  # what Slurm prints for %a of a job that is not an array task
_SYMBOL = re.compile(r"%(\d*)([%AaJjxu]|.)", re.S)


@dataclass(frozen=True)
class Ids:
    job_id: int
    name: str
    user: str
    array_id: int = 0  # 0: not an array task
    array_task: int = 0


def _expand(pattern: str, ids: Ids, escape: bool) -> str:
    def sub(m: re.Match[str]) -> str:
        width, sym = m.group(1), m.group(2)
        pad = min(int(width), 10) if width else 0
        if sym == "%":
            return "%%" if escape else "%"
        if sym in "jJ":
            value = str(ids.job_id).zfill(pad)
        elif sym == "A":
            value = str(ids.array_id or ids.job_id).zfill(pad)
        elif sym == "a":
            value = str(ids.array_task).zfill(pad) if ids.array_id else NO_TASK
        elif sym == "x":
            value = ids.name
        elif sym == "u":
            value = ids.user
        else:
            return m.group(0)  # the node's to fill in
        return value.replace("%", "%%") if escape else value

    return _SYMBOL.sub(sub, pattern)


def resolve(pattern: str, ids: Ids, workdir: str = "") -> str:
    """The path a user should look at (relative patterns under workdir)."""
    pattern = pattern or (DEFAULT_ARRAY if ids.array_id else DEFAULT)
    path = pattern.replace("\\", "") if "\\" in pattern else _expand(pattern, ids, escape=False)
    return posixpath.join(workdir, path) if workdir else path


def for_slurm(pattern: str, ids: Ids) -> str:
    """The --output/--error value to give sbatch: our ids resolved and escaped, the rest
    Slurm's. A pattern with a backslash is taken literally by Slurm: passed as it is."""
    pattern = pattern or (DEFAULT_ARRAY if ids.array_id else DEFAULT)
    return pattern if "\\" in pattern else _expand(pattern, ids, escape=True)
