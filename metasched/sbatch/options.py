"""Every sbatch option of Slurm 22.05-25.11, and what metasched does with each.

Taken from Slurm's own table (src/common/slurm_opt.c, the entries sbatch accepts, and the
SBATCH_* variables of src/sbatch/opt.c) of 22.05.8 and 25.11.7. Each option is one of:

  understood   it sets a JobSpec field: placement models its effect on the job's shape and
               limits, and the agent gives it to the site's sbatch as the user wrote it
  passed       given to the site's sbatch unchanged (its own argv element), where Slurm
               applies it; its value is checked at submit where Slurm's format is simple
  msub         acted on by msub itself (--parsable, --wait, --wrap...), never sent on
  refused      refused at submit, with the reason (e.g. a file on the submit host)

`python -m metasched.sbatch.options` prints the table (`--markdown`: as docs/sbatch.md has it).
"""

from __future__ import annotations

import enum
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass

from metasched import jobspec
from metasched.jobspec import SpecError


class Arg(enum.Enum):
    NONE = "no"
    REQUIRED = "required"
    OPTIONAL = "optional"


class Kind(enum.Enum):
    UNDERSTOOD = "understood"
    PASSED = "passed"
    MSUB = "msub"
    REFUSED = "refused"


# A value check: returns the value as it will be stored / passed on, or raises SpecError.
Check = Callable[[str], str]


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: one object per option
class Option:
    name: str  # long name, as getopt_long matches it
    short: str  # one letter, or ""
    arg: Arg
    kind: Kind
    note: str  # understood: what it sets; passed: what to know; refused: why
    check: Check | None = None
    env: tuple[str, ...] = ()  # SBATCH_* (and SLURM_*) variables that set it
    since: str = "22.05"  # first version (of 22.05-25.11) whose sbatch has it
    until: str = ""  # last version that has it ("" = still in 25.11)
    shape: bool = False  # passed: it changes the job's size, which placement does not model

    @property
    def refusal(self) -> str:
        """Why a refused option is refused (the one line the user sees)."""
        return self.note


def _int(option: str) -> Check:
    def check(v: str) -> str:
        return str(jobspec.parse_int(option, v, positive=False))

    return check


def _pos(option: str) -> Check:
    def check(v: str) -> str:
        jobspec.parse_count(option, v)
        return v

    return check


def _choice(option: str, *allowed: str, prefix: bool = False) -> Check:
    def check(v: str) -> str:
        low = v.lower()
        if low in allowed or (prefix and any(low[:1] == a[:1] for a in allowed if low)):
            return v
        raise SpecError(f"invalid --{option} specification {v!r}")

    return check


def _time(option: str) -> Check:
    def check(v: str) -> str:
        jobspec.parse_time(v, option)
        return v

    return check


def _mem(option: str) -> Check:
    def check(v: str) -> str:
        jobspec.parse_mem(v, option)
        return v

    return check


def _text(option: str) -> Check:
    def check(v: str) -> str:
        if "\x00" in v or "\n" in v or len(v) > jobspec.MAX_TEXT:
            raise SpecError(f"bad --{option} value {v[:40]!r}")
        return v

    return check


_MAIL_TYPES = {
    "none",
    "array_tasks",
    "begin",
    "end",
    "fail",
    "invalid_depend",
    "requeue",
    "all",
    "stage_out",
    "time_limit",
    "time_limit_90",
    "time_limit_80",
    "time_limit_50",
}


def _mail_type(v: str) -> str:
    tokens = [t.lower() for t in v.split(",") if t]
    if not tokens or not any(t in _MAIL_TYPES for t in tokens):
        raise SpecError(f"invalid --mail-type specification {v!r}")
    return v


_SIGNALS = (
    "HUP",
    "INT",
    "QUIT",
    "ILL",
    "TRAP",
    "ABRT",
    "BUS",
    "FPE",
    "KILL",
    "USR1",
    "SEGV",
    "USR2",
    "PIPE",
    "ALRM",
    "TERM",
    "STKFLT",
    "CHLD",
    "CONT",
    "STOP",
    "TSTP",
    "TTIN",
    "TTOU",
    "URG",
    "XCPU",
    "XFSZ",
    "VTALRM",
    "PROF",
    "WINCH",
    "IO",
    "PWR",
    "SYS",
)


def _signal(v: str) -> str:
    m = re.fullmatch(r"(?:[Rr]?[Bb]?[Rr]?:?)?([A-Za-z0-9]+)(?:@(\d+))?", v)
    sig = m.group(1).upper().removeprefix("SIG") if m else ""
    ok = (sig.isdigit() and 0 < int(sig) < 65536) or sig in _SIGNALS
    if not m or not ok:
        raise SpecError(f"invalid --signal specification {v!r}")
    return v


def _no_kill(v: str) -> str:
    return _choice("no-kill", "set", "off", "no")(v)


def _node_info(v: str) -> str:
    if not re.fullmatch(r"(\*|\d+[kKmM]?(-\d+[kKmM]?)?)(:(\*|\d+[kKmM]?(-\d+[kKmM]?)?)){0,2}", v):
        raise SpecError(f"invalid -B/--extra-node-info specification {v!r}")
    return v


def _switches(v: str) -> str:
    if not re.fullmatch(r"\d+(@[0-9:-]+)?", v):
        raise SpecError(f"invalid --switches specification {v!r}")
    return v


def _deadline(v: str) -> str:
    return jobspec.check_time_spec(v, "deadline")


def _hint(v: str) -> str:
    for h in v.split(","):
        if h.lower() not in ("compute_bound", "memory_bound", "multithread", "nomultithread"):
            raise SpecError(f"invalid --hint specification {v!r}")
    return v


# Arrays, dependencies, --begin and --hold are metasched's own (docs/arrays.md): tracked by
# the daemon, never passed to a site; read with jobspec.parse_array, parse_dependency and
# parse_begin.


def _o(
    name: str,
    short: str,
    arg: Arg,
    kind: Kind,
    note: str,
    check: Check | None = None,
    env: tuple[str, ...] = (),
    **kw: object,
) -> Option:
    return Option(name, short, arg, kind, note, check, env, **kw)  # type: ignore[arg-type]


R, N, OPT = Arg.REQUIRED, Arg.NONE, Arg.OPTIONAL
U, P, M, X = Kind.UNDERSTOOD, Kind.PASSED, Kind.MSUB, Kind.REFUSED

# The table, by long name. Understood options are applied by resolve.py (one function per
# option, named after it); their checks there parse the value.
TABLE: tuple[Option, ...] = (
    _o(
        "account",
        "A",
        R,
        U,
        "account: per site; a site that refuses it is skipped",
        env=("SBATCH_ACCOUNT",),
    ),
    _o(
        "acctg-freq",
        "",
        R,
        P,
        "accounting sampling",
        _text("acctg-freq"),
        env=("SBATCH_ACCTG_FREQ",),
    ),
    _o(
        "array",
        "a",
        R,
        U,
        "array: N tasks, each a job of its own",
        env=("SBATCH_ARRAY_INX",),
    ),
    _o(
        "autocomplete",
        "",
        R,
        X,
        "--autocomplete is shell completion, not a job option",
        since="23.02",
    ),
    _o("batch", "", R, P, "batch host features", _text("batch"), env=("SBATCH_BATCH",)),
    _o("bb", "", R, P, "burst buffer at the site", _text("bb"), env=("SBATCH_BURST_BUFFER",)),
    _o("bbf", "", R, X, "--bbf names a file on the submit host: give --bb with its contents"),
    _o(
        "begin",
        "b",
        R,
        U,
        "begin_time: held in the global queue until then",
    ),
    _o("chdir", "D", R, U, "workdir; relative to the submit directory, as sbatch"),
    _o("cluster", "", R, U, "sites (as -M)", since="23.02"),
    _o(
        "cluster-constraint",
        "",
        R,
        P,
        "Slurm federation feature; sites without one ignore it",
        _text("cluster-constraint"),
        env=("SBATCH_CLUSTER_CONSTRAINT",),
    ),
    _o(
        "clusters",
        "M",
        R,
        U,
        "sites: only these (all = any); metasched chooses among them",
        env=("SBATCH_CLUSTERS", "SLURM_CLUSTERS"),
    ),
    _o("comment", "", R, U, "comment, kept as given (the metasched tag is added beside it)"),
    _o(
        "consolidate-segments",
        "",
        N,
        P,
        "topology/block",
        env=("SBATCH_CONSOLIDATE_SEGMENTS",),
        since="25.11",
    ),
    _o(
        "constraint",
        "C",
        R,
        U,
        "constraint: only sites whose nodes have the features",
        env=("SBATCH_CONSTRAINT",),
    ),
    _o(
        "container",
        "",
        R,
        P,
        "OCI bundle path at the site",
        _text("container"),
        env=("SBATCH_CONTAINER",),
    ),
    _o(
        "container-id",
        "",
        R,
        P,
        "OCI container id",
        _text("container-id"),
        env=("SBATCH_CONTAINER_ID",),
        since="23.02",
    ),
    _o("context", "", R, P, "SELinux context", _text("context")),
    _o("contiguous", "", N, P, "contiguous nodes", shape=True),
    _o(
        "core-spec",
        "S",
        R,
        P,
        "reserved cores per node",
        _int("core-spec"),
        env=("SBATCH_CORE_SPEC",),
        shape=True,
    ),
    _o("cores-per-socket", "", R, P, "node layout", _pos("cores-per-socket"), shape=True),
    _o("cpu-freq", "", R, P, "CPU frequency", _text("cpu-freq"), env=("SBATCH_CPU_FREQ_REQ",)),
    _o("cpus-per-gpu", "", R, U, "cpus_per_gpu", env=("SBATCH_CPUS_PER_GPU",)),
    _o("cpus-per-task", "c", R, U, "cpus_per_task"),
    _o("deadline", "", R, P, "removed if it cannot end by then", _deadline),
    _o(
        "delay-boot", "", R, P, "node reboot delay", _text("delay-boot"), env=("SBATCH_DELAY_BOOT",)
    ),
    _o(
        "dependency",
        "d",
        R,
        U,
        "dependency: on metasched job ids, across sites",
    ),
    _o(
        "distribution",
        "m",
        R,
        P,
        "task distribution",
        _text("distribution"),
        env=("SBATCH_DISTRIBUTION",),
    ),
    _o(
        "error",
        "e",
        R,
        U,
        "error (stderr path, as sbatch resolves it at the site)",
        env=("SBATCH_ERROR",),
    ),
    _o("exclude", "x", R, U, "exclude_nodes: each site is told the names it has"),
    _o(
        "exclusive",
        "",
        OPT,
        U,
        "exclusive: whole nodes (placement counts them whole)",
        env=("SBATCH_EXCLUSIVE",),
    ),
    _o(
        "export",
        "",
        R,
        U,
        "environment + export_mode; values read from the submitter's environment",
        env=("SBATCH_EXPORT",),
    ),
    _o("export-file", "", R, X, "--export-file reads a file on the submit host: use --export"),
    _o(
        "external",
        "",
        N,
        X,
        "--external makes a job without a script, outside metasched's control",
        since="25.05",
    ),
    _o("extra", "", R, P, "extra node constraints", _text("extra"), since="23.02"),
    _o("extra-node-info", "B", R, P, "node layout S[:C[:T]]", _node_info, shape=True),
    _o(
        "get-user-env",
        "",
        OPT,
        X,
        "--get-user-env is for root with --uid; the environment is metasched's (--export)",
        env=("SBATCH_GET_USER_ENV",),
    ),
    _o("gid", "", R, X, "--gid is for root; jobs run as the submitting user's account at the site"),
    _o("gpu-bind", "", R, P, "task to GPU binding", _text("gpu-bind"), env=("SBATCH_GPU_BIND",)),
    _o("gpu-freq", "", R, P, "GPU frequency", _text("gpu-freq"), env=("SBATCH_GPU_FREQ",)),
    _o("gpus", "G", R, U, "gpus (for the whole job) + gpu_type", env=("SBATCH_GPUS",)),
    _o("gpus-per-node", "", R, U, "gpus_per_node + gpu_type", env=("SBATCH_GPUS_PER_NODE",)),
    _o(
        "gpus-per-socket",
        "",
        R,
        P,
        "GPUs per socket",
        _text("gpus-per-socket"),
        env=("SBATCH_GPUS_PER_SOCKET",),
        shape=True,
    ),
    _o("gpus-per-task", "", R, U, "gpus_per_task + gpu_type", env=("SBATCH_GPUS_PER_TASK",)),
    _o(
        "gres",
        "",
        R,
        U,
        "gpus_per_node + gpu_type for GPUs; other GRES in other_gres, per site",
        env=("SBATCH_GRES",),
    ),
    _o("gres-flags", "", R, P, "GRES binding", _text("gres-flags"), env=("SBATCH_GRES_FLAGS",)),
    _o("help", "h", N, M, "msub --help"),
    _o("hint", "", R, P, "placement hint", _hint, env=("SBATCH_HINT", "SLURM_HINT"), shape=True),
    _o(
        "hold",
        "H",
        N,
        U,
        "hold: held until msub release",
    ),
    _o(
        "ignore-pbs",
        "",
        N,
        U,
        "ignore_pbs: #PBS/#BSUB lines are comments",
        env=("SBATCH_IGNORE_PBS",),
    ),
    _o("input", "i", R, P, "stdin path at the site", _text("input"), env=("SBATCH_INPUT",)),
    _o("job-name", "J", R, U, "name", env=("SBATCH_JOB_NAME",)),
    _o(
        "kill-on-invalid-dep",
        "",
        R,
        U,
        "keep_invalid_dependency (dependencies are metasched's)",
    ),
    _o(
        "licenses",
        "L",
        R,
        P,
        "site licenses; a site without them refuses and is skipped",
        _text("licenses"),
    ),
    _o(
        "mail-type",
        "",
        R,
        P,
        "mail from the site's Slurm (several add up, as in sbatch)",
        _mail_type,
    ),
    _o("mail-user", "", R, P, "mail recipient", _text("mail-user")),
    _o("mcs-label", "", R, P, "MCS label", _text("mcs-label")),
    _o("mem", "", R, U, "mem_per_node_mb (--mem=0: mem_whole_node)", env=("SBATCH_MEM_PER_NODE",)),
    _o("mem-bind", "", R, P, "memory binding", _text("mem-bind"), env=("SBATCH_MEM_BIND",)),
    _o("mem-per-cpu", "", R, U, "mem_per_cpu_mb", env=("SBATCH_MEM_PER_CPU",)),
    _o("mem-per-gpu", "", R, U, "mem_per_gpu_mb", env=("SBATCH_MEM_PER_GPU",)),
    _o("mincpus", "", R, P, "fewest CPUs per node", _pos("mincpus"), shape=True),
    _o("network", "", R, P, "network (Cray)", _text("network"), env=("SBATCH_NETWORK",)),
    _o("nice", "", OPT, P, "scheduling nice value at the site", _text("nice")),
    _o("no-kill", "k", OPT, P, "keep running on node failure", _no_kill, env=("SBATCH_NO_KILL",)),
    _o("no-requeue", "", N, P, "never requeue", env=("SBATCH_NO_REQUEUE",)),
    _o("nodefile", "F", R, X, "--nodefile reads a file on the submit host: give -w/--nodelist"),
    _o(
        "nodelist",
        "w",
        R,
        P,
        "these nodes; a site without them refuses and is skipped",
        _text("nodelist"),
    ),
    _o("nodes", "N", R, U, "nodes (+ max_nodes for MIN-MAX)"),
    _o("ntasks", "n", R, U, "ntasks"),
    _o("ntasks-per-core", "", R, P, "tasks per core", _pos("ntasks-per-core"), shape=True),
    _o("ntasks-per-gpu", "", R, P, "tasks per GPU", _pos("ntasks-per-gpu"), shape=True),
    _o("ntasks-per-node", "", R, U, "ntasks_per_node"),
    _o("ntasks-per-socket", "", R, P, "tasks per socket", _pos("ntasks-per-socket"), shape=True),
    _o("ntasks-per-tres", "", R, P, "tasks per GPU", _pos("ntasks-per-tres"), shape=True),
    _o("oom-kill-step", "", OPT, P, "OOM handling", _text("oom-kill-step"), since="24.11"),
    _o(
        "open-mode",
        "",
        R,
        P,
        "append or truncate output",
        _choice("open-mode", "append", "truncate", prefix=True),
        env=("SBATCH_OPEN_MODE",),
    ),
    _o(
        "output",
        "o",
        R,
        U,
        "output (stdout path, as sbatch resolves it at the site)",
        env=("SBATCH_OUTPUT",),
    ),
    _o("overcommit", "O", N, P, "overcommit CPUs", env=("SBATCH_OVERCOMMIT",), shape=True),
    _o("oversubscribe", "s", N, U, "exclusive = oversubscribe (the last of -s/--exclusive wins)"),
    _o("parsable", "", N, M, "msub prints the job id only"),
    _o(
        "partition",
        "p",
        R,
        U,
        "partition: any of the listed partitions at any site that has one",
        env=("SBATCH_PARTITION",),
    ),
    _o("power", "", R, P, "power flags", _text("power"), env=("SBATCH_POWER",), until="22.05"),
    _o("prefer", "", R, P, "preferred features", _text("prefer")),
    _o("priority", "", R, P, "priority (operators only, at the site)", _text("priority")),
    _o("profile", "", R, P, "accounting profile", _text("profile"), env=("SBATCH_PROFILE",)),
    _o("propagate", "", OPT, P, "rlimits to propagate", _text("propagate")),
    _o("qos", "q", R, U, "qos: per site; a site that refuses it is skipped", env=("SBATCH_QOS",)),
    _o("quiet", "Q", N, M, "msub prints nothing but errors"),
    _o("reboot", "", N, P, "reboot nodes first"),
    _o("requeue", "", OPT, P, "may be requeued", env=("SBATCH_REQUEUE",)),
    _o(
        "reservation",
        "",
        R,
        P,
        "a reservation; a site without it refuses and is skipped",
        _text("reservation"),
        env=("SBATCH_RESERVATION",),
    ),
    _o("resources", "", R, P, "hierarchical resources", _text("resources"), since="25.11"),
    _o("resv-ports", "", OPT, P, "MPI ports (stepmgr)", _text("resv-ports"), since="24.05"),
    _o(
        "segment",
        "",
        R,
        P,
        "topology/block segment",
        _pos("segment"),
        env=("SBATCH_SEGMENT_SIZE",),
        since="24.05",
    ),
    _o("signal", "", R, P, "signal before the time limit", _signal, env=("SBATCH_SIGNAL",)),
    _o("sockets-per-node", "", R, P, "node layout", _pos("sockets-per-node"), shape=True),
    _o("spread-job", "", N, P, "spread over nodes", env=("SBATCH_SPREAD_JOB",), shape=True),
    _o(
        "spread-segments",
        "",
        N,
        P,
        "topology/block",
        env=("SBATCH_SPREAD_SEGMENTS",),
        since="25.11",
    ),
    _o("stepmgr", "", N, P, "step management in slurmstepd", since="24.05"),
    _o("switches", "", R, P, "network switches", _switches),
    _o("tasks-per-node", "", R, U, "ntasks_per_node (as --ntasks-per-node)"),
    _o("test-only", "", N, M, "msub plan: where it would go, nothing submitted"),
    _o(
        "thread-spec",
        "",
        R,
        P,
        "reserved threads",
        _int("thread-spec"),
        env=("SBATCH_THREAD_SPEC",),
        shape=True,
    ),
    _o(
        "threads-per-core",
        "",
        R,
        P,
        "node layout",
        _pos("threads-per-core"),
        env=("SBATCH_THREADS_PER_CORE",),
        shape=True,
    ),
    _o(
        "time",
        "t",
        R,
        U,
        "time_limit_minutes (0/UNLIMITED: time_unlimited); none: the partition default",
        env=("SBATCH_TIMELIMIT",),
    ),
    _o("time-min", "", R, P, "minimum time limit", _time("time-min")),
    _o("tmp", "", R, P, "temporary disk per node", _mem("tmp"), shape=True),
    _o(
        "tres-bind",
        "",
        R,
        P,
        "TRES binding",
        _text("tres-bind"),
        env=("SBATCH_TRES_BIND",),
        since="23.11",
    ),
    _o(
        "tres-per-task",
        "",
        R,
        X,
        "--tres-per-task is not modelled: give -c / --gpus-per-task",
        env=("SBATCH_TRES_PER_TASK",),
        since="23.02",
    ),
    _o("uid", "", R, X, "--uid is for root; jobs run as the submitting user's account at the site"),
    _o("usage", "", N, M, "msub --help"),
    _o(
        "use-min-nodes",
        "",
        N,
        P,
        "prefer the fewest nodes of a range",
        env=("SBATCH_USE_MIN_NODES",),
    ),
    _o("verbose", "v", N, M, "msub says more", env=("SBATCH_DEBUG",)),
    _o("version", "V", N, M, "msub --version"),
    _o(
        "wait",
        "W",
        N,
        M,
        "msub waits for the job to end and exits with its exit code",
        env=("SBATCH_WAIT",),
    ),
    _o(
        "wait-all-nodes",
        "",
        R,
        P,
        "wait for all nodes to boot",
        _choice("wait-all-nodes", "0", "1"),
        env=("SBATCH_WAIT_ALL_NODES",),
    ),
    _o("wckey", "", R, P, "workload key", _text("wckey"), env=("SBATCH_WCKEY",)),
    _o("wrap", "", R, M, "msub makes the script, as sbatch --wrap"),
)
# Variables for options that have no command-line form: kept, passed as their own variable
# would be too privileged; refused with the reason.
ENV_ONLY_REFUSED = {
    "SBATCH_REQ_SWITCH": "SBATCH_REQ_SWITCH is not supported: use --switches",
    "SBATCH_WAIT4SWITCH": "SBATCH_WAIT4SWITCH is not supported: use --switches=N@TIME",
}

BY_NAME: dict[str, Option] = {o.name: o for o in TABLE}
BY_SHORT: dict[str, Option] = {o.short: o for o in TABLE if o.short}
# SBATCH_* variables in the order sbatch's env_vars[] reads them (a later one of the same
# option wins, as there).
BY_ENV: dict[str, Option] = {e: o for o in TABLE for e in o.env}


def version_note(o: Option) -> str:
    if o.until:
        return f"Slurm {o.since} only" if o.since == o.until else f"Slurm {o.since}-{o.until}"
    if o.since != "22.05":
        return f"Slurm {o.since}+"
    return ""


def rows() -> list[tuple[str, str, str, str]]:
    """(option, kind, what metasched does, versions) for every option, for docs and tests."""
    out = []
    for o in sorted(TABLE, key=lambda o: o.name):
        flag = f"-{o.short}, --{o.name}" if o.short else f"--{o.name}"
        note = o.note + (" (placement does not model it)" if o.shape else "")
        out.append((flag, o.kind.value, note, version_note(o)))
    return out


def _counts() -> str:
    counts: dict[str, int] = {}
    for o in TABLE:
        counts[o.kind.value] = counts.get(o.kind.value, 0) + 1
    return ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) + f" ({len(TABLE)} options)"


def markdown() -> str:
    """The table as docs/sbatch.md has it (`python -m metasched.sbatch.options --markdown`)."""
    lines = ["| option | kind | what metasched does | versions |", "|---|---|---|---|"]
    lines += [f"| `{flag}` | {kind} | {note} | {v} |" for flag, kind, note, v in rows()]
    return "\n".join([*lines, "", _counts() + "."]) + "\n"


def main(argv: list[str] | None = None) -> int:
    if (sys.argv[1:] if argv is None else argv) == ["--markdown"]:
        print(markdown(), end="")
        return 0
    for flag, kind, note, versions in rows():
        print(f"{flag:<28} {kind:<10} {note}" + (f" [{versions}]" if versions else ""))
    print(_counts())
    return 0


if __name__ == "__main__":
    sys.exit(main())
