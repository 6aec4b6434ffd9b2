"""What a job's environment may hold: the one check shared by metaschedd (at submission)
and every agent (before any Slurm backend sees it).

The job's variables only ever reach the job (see docs/security.md): never a process the
agent runs, whose environment is fixed. Even so, some names must not reach the job either:
they act before the job's first line runs, or they steer Slurm or metasched themselves
rather than the user's program, and a federated job carries them from another host.

- the dynamic loader and libc (LD_*, GLIBC_TUNABLES, GCONV_PATH, ...): code loaded into
  every program of the job, the shell included, before the script can look;
- shell start-up (BASH_ENV, ENV, SHELLOPTS, BASHOPTS): code run before the script's first line;
- Slurm's control variables (SLURM_*, SBATCH_*, SALLOC_*, SRUN_*, SPANK_*, PMI*): they are
  Slurm's to set (SLURM_JOB_ID, SLURM_RLIMIT_*, SLURM_GET_USER_ENV, srun's options inside
  the job, the plugin stack's environment passed to prologs);
- METASCHED_*: ours (METASCHED_JOB_ID names the global job).

A script may still set any of these for itself, where it can be read; what is refused is
setting them from outside. Sizes are bounded so that the job can always be started: Linux
refuses one "NAME=value" string over 128 KiB (MAX_ARG_STRLEN) and, with the usual 8 MiB
stack, argument list plus environment over 2 MiB (E2BIG); Slurm's export file silently drops
a value over 256 KiB.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

MAX_ENTRIES = 512
MAX_ENTRY_BYTES = 128 * 1024 - 1  # len("NAME=value"); +1 for the NUL is Linux's MAX_ARG_STRLEN
MAX_TOTAL_BYTES = 1 << 20  # every "NAME=value\0": half of what exec takes with an 8 MiB stack

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

DENIED_PREFIXES: tuple[tuple[str, str], ...] = (
    ("LD_", "the dynamic loader's"),
    ("SLURM_", "Slurm's"),
    ("SBATCH_", "Slurm's"),
    ("SALLOC_", "Slurm's"),
    ("SRUN_", "Slurm's"),
    ("SPANK_", "Slurm's"),
    ("PMI_", "Slurm's"),
    ("PMIX_", "Slurm's"),
    ("METASCHED_", "metasched's"),
)
DENIED_NAMES: dict[str, str] = {
    # glibc's own list of variables it ignores in privileged programs (unsecvars.h), less
    # TMPDIR and TZDIR, which only name where files are
    "GCONV_PATH": "the C library's",
    "GETCONF_DIR": "the C library's",
    "GLIBC_TUNABLES": "the C library's",
    "HOSTALIASES": "the C library's",
    "LOCALDOMAIN": "the C library's",
    "LOCPATH": "the C library's",
    "MALLOC_TRACE": "the C library's",
    "NIS_PATH": "the C library's",
    "NLSPATH": "the C library's",
    "RESOLV_HOST_CONF": "the C library's",
    "RES_OPTIONS": "the C library's",
    "BASH_ENV": "the shell's start-up",
    "ENV": "the shell's start-up",
    "SHELLOPTS": "the shell's start-up",
    "BASHOPTS": "the shell's start-up",
}


def denied(name: str) -> str | None:
    """Why name may not be set from outside the job (a phrase), or None if it may."""
    for prefix, whose in DENIED_PREFIXES:
        if name.startswith(prefix):
            return f"{whose} ({prefix}*)"
    return DENIED_NAMES.get(name)


def problem(env: Mapping[str, str]) -> str | None:
    """The first reason env cannot be a job's environment (one line), or None if it can."""
    if len(env) > MAX_ENTRIES:
        return f"more than {MAX_ENTRIES} environment variables"
    total = 0
    for name in sorted(env):
        value = env[name]
        if not _NAME_RE.match(name):
            return f"bad environment variable name {name[:40]!r}"
        whose = denied(name)
        if whose is not None:
            return f"environment variable {name} cannot be passed to a job: it is {whose}"
        if "\x00" in value:
            return f"environment variable {name} holds a NUL byte"
        size = len(name.encode()) + 1 + len(value.encode("utf-8", "surrogatepass"))
        if size > MAX_ENTRY_BYTES:
            return (
                f"environment variable {name} is {size} bytes; "
                f"the limit for one variable is {MAX_ENTRY_BYTES}"
            )
        total += size + 1
    if total > MAX_TOTAL_BYTES:
        return f"the environment is {total} bytes; the limit is {MAX_TOTAL_BYTES}"
    return None


def without_denied(env: Mapping[str, str]) -> dict[str, str]:
    """env less the names no job may be given (for an environment captured whole, as
    sbatch's --export=ALL does: the submitting host's LD_LIBRARY_PATH or SLURM_* are
    dropped there, where a name given on purpose is refused)."""
    return {k: v for k, v in env.items() if denied(k) is None}


def export_file(env: Mapping[str, str]) -> bytes:
    """sbatch's --export-file format: NAME=value entries, each ended by a NUL. Refuses what
    could split an entry (a NUL in a value, a bad name): one variable must stay one."""
    out = bytearray()
    for name in sorted(env):
        value = env[name]
        if not _NAME_RE.match(name) or "\x00" in value:
            raise ValueError(f"environment variable {name[:40]!r} cannot be exported")
        out += name.encode() + b"=" + value.encode("utf-8", "surrogatepass") + b"\x00"
    return bytes(out)
