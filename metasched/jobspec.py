"""A job's request: sbatch's value formats, the checks every request must pass, and its shape.

msub and metaschedd share this module, so a request that msub accepts is the request the
daemon checks, and both give the same one-line message when it is wrong. Which sbatch option
sets which field, and how #SBATCH lines, SBATCH_* variables and the command line combine,
is metasched/sbatch/ (the option table); this module holds the value parsers the table uses
(each one accepts exactly what Slurm's own parser accepts, 22.05-25.11) and what a validated
spec means for placement (Shape).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from metasched import arrays, dependency, jobenv, precision
from metasched.v1 import metasched_pb2 as pb


class SpecError(ValueError):
    """The request is malformed; the message is one line meant for the user."""


MAX_SCRIPT_BYTES = 1 << 20  # 1 MiB: a batch script, not a data transfer
MAX_NAME = 1024  # Slurm keeps job names of any length; 1 KiB is plenty and bounds the row
MAX_NODES = 100_000
MAX_CPUS_PER_TASK = 100_000
MAX_TASKS = 10_000_000
MAX_GPUS_PER_NODE = 64
MAX_GPUS = MAX_GPUS_PER_NODE * MAX_NODES
MAX_MEM_MB = 1 << 40  # 1 EiB per node: beyond any machine, within the API's uint64
# Slurm keeps a time limit as minutes in a uint32 but parses it as seconds in an int:
# about 24,855 days is the longest it can read.
MAX_TIME_MINUTES = (2**31 - 1) // 60
MAX_SITES = 1_000
MAX_OPTIONS = 256  # passed-through sbatch options in one request
MAX_ARGS = 4096
MAX_TEXT = 4096  # a path, a partition list, a comment...
# What placement assumes for a job without -t (Slurm gives it the partition's DefaultTime,
# or its MaxTime; placement plans it as this long).
DEFAULT_TIME_MINUTES = 60

_GPU_TYPE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_STRTOL_RE = re.compile(r"\s*([+-]?\d+)")
_HOSTLIST_RE = re.compile(r"^[A-Za-z0-9_.\-\[\],]+$")
_EXPORT_MODES = ("all", "none", "nil", "list")
_EXCLUSIVE = ("", "exclusive", "user", "mcs", "topo", "oversubscribe")


# ---------------------------------------------------------------- Slurm's value formats


def _strtol(text: str) -> tuple[int | None, str]:
    """C's strtol(text, &end, 10): the number (None if no digits) and what follows it."""
    m = _STRTOL_RE.match(text)
    if not m:
        return None, text
    return int(m.group(1)), text[m.end() :]


def parse_int(option: str, text: str, positive: bool = True) -> int:
    """Slurm's parse_int: a whole number and nothing else (leading blanks and a sign allowed)."""
    value, rest = _strtol(text)
    if value is None or rest or value < 0 or (positive and value <= 0):
        raise SpecError(f'invalid numeric value "{text}" for --{option}')
    if value >= 2**31 - 1:
        raise SpecError(f"numeric argument ({value}) too big for --{option}")
    return value


def parse_count(option: str, text: str) -> int:
    """A positive count (tasks, CPUs per task, ...), as Slurm reads it."""
    return parse_int(option, text, positive=True)


def _nodes_number(text: str) -> tuple[int, str]:
    value, rest = _strtol(text)
    if value is None:
        return -1, text
    if rest[:1] in ("k", "K"):
        value, rest = value * 1024, rest[1:]
    if rest[:1] in ("m", "M"):
        value, rest = value * 1024 * 1024, rest[1:]
    return value, rest


def parse_nodes(text: str) -> tuple[int, int]:
    """sbatch -N: 'N' or 'MIN-MAX' -> (min, max); max 0 = not given (verify_node_count)."""
    if "," in text or ":" in text:
        raise SpecError(
            f"node count list {text!r} needs Slurm 24.05 or later at every site: "
            "give MIN-MAX instead"
        )
    if "-" in text:
        low, _, high = text.partition("-")
        lo, rest = _nodes_number(low)
        if rest.strip():
            raise SpecError(f'"{low}" is not a valid node count')
        lo = max(lo, 1)
        hi, rest = _nodes_number(high)
        if rest.strip():
            raise SpecError(f'"{high}" is not a valid node count')
        if hi < lo:
            raise SpecError(f"maximum node count {hi} is less than minimum node count {lo}")
        if hi > MAX_NODES:
            raise SpecError(f"{hi} nodes is more than any site has")
        return lo, hi
    n, rest = _nodes_number(text)
    if rest.strip() or n < 0:
        raise SpecError(f'"{text}" is not a valid node count')
    if n == 0:
        raise SpecError("--nodes=0 asks for no compute nodes (burst buffer only): not supported")
    if n > MAX_NODES:
        raise SpecError(f"{n} nodes is more than any site has")
    return n, 0


def _time_seconds(text: str) -> int | None:
    """Slurm's time_str2secs: seconds, -1 for unlimited, None if malformed."""
    if text.lower() in ("-1", "infinite", "unlimited"):
        return -1
    if not text or any(c not in "0123456789-:" for c in text):
        return None
    digits = len(re.findall(r"\d+", text))
    dashes, colons = text.count("-"), text.count(":")
    if not digits or dashes > 1 or colons > 2:
        return None
    if dashes and (text.index("-") > text.find(":") >= 0):
        return None  # a dash after a colon
    if dashes:
        if (colons == 1 and digits < 3) or (colons == 2 and digits < 4):
            return None
        m = re.match(r"(\d+)-(?:(\d+)(?::(\d+)(?::(\d+))?)?)?", text)
        if not m:
            return None
        d, h, mi, s = (int(x) if x else 0 for x in m.groups())
        return d * 86400 + h * 3600 + mi * 60 + s
    if (colons == 1 and digits < 2) or (colons == 2 and digits < 3):
        return None
    nums = [int(x) for x in re.findall(r"\d+", text)]
    if colons == 2:
        return nums[0] * 3600 + nums[1] * 60 + nums[2]
    return nums[0] * 60 + (nums[1] if len(nums) > 1 else 0)


def parse_time(text: str, option: str = "time") -> int:
    """sbatch --time -> whole minutes, rounded up as Slurm does; 0 = UNLIMITED.

    Accepts "minutes", "minutes:seconds", "hours:minutes:seconds", "days-hours",
    "days-hours:minutes", "days-hours:minutes:seconds", and 0, -1, INFINITE or UNLIMITED
    for no limit (time_str2mins).
    """
    secs = _time_seconds(text)
    if secs is None:
        raise SpecError(f"invalid --{option} specification {text!r}")
    if secs < 0:
        return 0
    minutes = -(-secs // 60)
    if minutes > MAX_TIME_MINUTES:
        raise SpecError(f"--{option} {text!r} is beyond what Slurm can hold")
    return minutes


def parse_array(text: str) -> arrays.ArraySpec:
    """sbatch --array ('1-1000%50', '0,6,16-32', '0-15:4'); the spec keeps the text."""
    try:
        return arrays.parse_array(text)
    except arrays.ArrayError as e:
        raise SpecError(str(e)) from None


def parse_dependency(text: str) -> dependency.Dependency:
    """sbatch --dependency; the spec keeps str() of the result (the same text, normalised)."""
    try:
        return dependency.parse_dependency(text)
    except dependency.DependencyError as e:
        raise SpecError(str(e)) from None


def parse_begin(text: str, now: float | None = None) -> float:
    """sbatch --begin -> seconds since the epoch (read in the submitter's time zone)."""
    try:
        return dependency.parse_begin(text, now)
    except dependency.DependencyError as e:
        raise SpecError(str(e)) from None


def format_minutes(minutes: int) -> str:
    if minutes <= 0:
        return "UNLIMITED"
    d, rem = divmod(minutes, 24 * 60)
    h, m = divmod(rem, 60)
    return f"{d}-{h:02d}:{m:02d}:00" if d else f"{h:02d}:{m:02d}:00"


_MEM_UNITS = {"K": None, "M": 1, "G": 1024, "T": 1024 * 1024}


def parse_mem(text: str, option: str = "mem") -> int:
    """Slurm's str_to_mbytes: '4000' (MB), '500K', '500M', '4G', '1T', optional trailing B.
    Returns MB (K rounded up); 0 is allowed (for --mem: the whole node's memory)."""
    m = re.fullmatch(r"\s*\+?(\d+)(?:([KkMmGgTt])[Bb]?)?", text)
    if not m:
        raise SpecError(f"invalid --{option} specification {text!r}")
    number = int(m.group(1))
    unit = (m.group(2) or "M").upper()
    scale = _MEM_UNITS[unit]
    value = -(-number // 1024) if scale is None else number * scale
    if value > MAX_MEM_MB:
        raise SpecError(f"--{option} {text!r} is more than any node has")
    return value


def parse_gpu_count(option: str, text: str) -> tuple[str, int]:
    """--gpus / --gpus-per-node / --gpus-per-task: '[type:]count' -> (type, count).

    Types are case-sensitive, as Slurm matches them. Several types at once
    ('a100:1,v100:1') are not modelled and refused."""
    if "," in text:
        raise SpecError(
            f"--{option}={text}: GPUs of several types in one job are not supported; "
            "ask for one type"
        )
    gpu_type, _, count = text.rpartition(":")
    if not gpu_type and count and not count.strip().lstrip("+").isdigit():
        gpu_type, count = count, "1"  # --gpus=a100: one GPU of that type, as Slurm reads it
    if gpu_type.startswith(("gpu:", "gres/gpu:")):
        gpu_type = gpu_type.split(":", 1)[1]
    elif gpu_type in ("gpu", "gres/gpu"):
        gpu_type = ""
    n, rest = _strtol(count)
    if n is None or rest or n < 0:
        raise SpecError(f"invalid --{option} specification {text!r}")
    if gpu_type and not _GPU_TYPE_RE.match(gpu_type):
        raise SpecError(f"bad GPU type {gpu_type[:40]!r} in --{option}")
    limit = MAX_GPUS if option == "gpus" else MAX_GPUS_PER_NODE
    if n > limit:
        raise SpecError(f"--{option}={text}: more GPUs than any site has")
    return gpu_type, n


@dataclass(frozen=True)
class Gres:
    """A --gres list split into the GPU part placement models and the rest, kept as given."""

    gpu_type: str
    gpus: int  # per node; 0 = none asked
    other: str  # the non-GPU entries, comma-separated, as the user wrote them
    none: bool = False  # --gres=none


def parse_gres(text: str) -> Gres:
    """--gres=name[[:type]:count][,...]. The GPU entry (name 'gpu', 'gres/gpu' or 'gres:gpu')
    is understood; other GRES (nvme, shard, mps, ...) are kept for the site's Slurm, which
    alone knows what it has."""
    if text.strip().lower() == "none":
        return Gres("", 0, "", none=True)
    gpu_type, gpus, seen_gpu = "", 0, False
    other: list[str] = []
    for entry in text.split(","):
        if not entry:
            raise SpecError(f"invalid --gres specification {text!r}")
        parts = entry.split(":")
        name = parts[0].removeprefix("gres/")
        if name == "gres" and len(parts) > 1:  # gres:gpu:2
            parts = parts[1:]
            name = parts[0]
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise SpecError(f"invalid --gres specification {text!r}")
        if name != "gpu" or entry.rsplit(":", 1)[-1] == "0":
            other.append(entry)  # not GPUs (or gpu:0, none at all): for the site, as given
            continue
        if seen_gpu:
            raise SpecError(f"--gres={text}: GPUs of several types in one job are not supported")
        seen_gpu = True
        rest = parts[1:]
        count = 1
        if rest and re.fullmatch(r"\d+", rest[-1]):
            count = int(rest.pop())
        if len(rest) > 1:
            raise SpecError(f"invalid --gres specification {text!r}")
        gpu_type = rest[0] if rest else ""
        if gpu_type and not _GPU_TYPE_RE.match(gpu_type):
            raise SpecError(f"bad GPU type {gpu_type[:40]!r} in --gres")
        if count > MAX_GPUS_PER_NODE:
            raise SpecError(f"--gres={text}: more GPUs than any node has")
        gpus = count
    return Gres(gpu_type, gpus, ",".join(other))


_MONTHS_RE = r"(?:\d{1,2}/\d{1,2}(?:/\d{2,4})?|\d{4}(?:\d{2})?)"
_TIME_SPEC_RE = re.compile(
    r"(?i)(?:"
    r"now(?:\+\d+(?:s|sec|seconds?|m|min|minutes?|h|hours?|d|days?|w|weeks?)?)?"
    r"|today|tomorrow|midnight|noon|elevenses|fika|teatime"
    r"|\d{4}-\d{1,2}-\d{1,2}(?:T\d{1,2}:\d{2}(?::\d{2})?)?"
    r"|\d{1,2}:\d{2}(?::\d{2})?(?:\s*[ap]m)?(?:\s+" + _MONTHS_RE + r")?"
    r"|" + _MONTHS_RE + r"(?:\s+\d{1,2}:\d{2}(?::\d{2})?)?"
    r")"
)


def check_time_spec(text: str, option: str) -> str:
    """A point in time as Slurm's parse_time reads it (--deadline, --begin): HH:MM[:SS]
    [AM|PM], MMDD[YY], MM/DD[/YY], YYYY-MM-DD[THH:MM[:SS]], now[+N[units]], today,
    tomorrow, midnight, noon, teatime... Only the format is checked."""
    if not _TIME_SPEC_RE.fullmatch(text.strip()):
        raise SpecError(f"invalid --{option} specification {text!r}")
    return text


def split_list(text: str) -> list[str]:
    """A comma-separated list (partitions, sites), blanks dropped."""
    return [p.strip() for p in text.split(",") if p.strip()]


# ---------------------------------------------------------------- the request's shape


@dataclass(frozen=True)
class Shape:
    """What one job occupies: the part of a spec that placement and estimation look at.

    It follows how Slurm sizes a job from its options. `nodes` is the fewest nodes the job
    takes; with `spread` Slurm chooses how many (up to `max_nodes`, 0 = no bound) from the
    nodes' sizes, as it does for `-n` without `-N` or a `-N MIN-MAX` range: then what must
    fit on one node is one task (`cpus_per_task`, `task_mem_mb`, `task_gpus`), and the
    partition must hold `tasks` of them. Without `spread` each of `nodes` nodes holds
    `cpus_per_node` CPUs, `mem_per_node_mb` MB and `gpus_per_node` GPUs.
    """

    nodes: int
    tasks: int
    cpus_per_task: int
    mem_per_node_mb: int  # 0 = site default (or see task_mem_mb / whole_node)
    gpus_per_node: int
    gpu_type: str
    time_limit_minutes: int  # what placement plans with (DEFAULT_TIME_MINUTES if not given)
    precision: str
    spread: bool = False
    max_nodes: int = 0
    task_mem_mb: int = 0  # --mem-per-cpu x CPUs of a task, or --mem-per-gpu x its GPUs
    task_gpus: int = 0  # GPUs a task brings with it (--gpus-per-task)
    total_gpus_asked: int = 0  # --gpus (for the whole job, spread over its nodes)
    whole_node: bool = False  # --exclusive or --mem=0: the nodes are the job's alone
    time_limit_given: bool = True  # False: Slurm gives it the partition's default limit
    unlimited: bool = False  # -t 0 / UNLIMITED: only partitions without a MaxTime run it
    constraint: str = ""  # -C: the node features asked for (constraint_ok)

    @property
    def cpus_per_node(self) -> int:
        """CPUs one node must have free (for a spread job: one task's)."""
        if self.spread:
            return self.cpus_per_task
        return -(-self.tasks // self.nodes) * self.cpus_per_task

    @property
    def total_cpus(self) -> int:
        return self.tasks * self.cpus_per_task

    @property
    def total_gpus(self) -> int:
        if self.total_gpus_asked:
            return self.total_gpus_asked
        if self.task_gpus:
            return self.task_gpus * self.tasks
        return self.gpus_per_node * self.nodes

    def tasks_on(self, cpus: int, mem_mb: int, gpus: int) -> int:
        """How many of this job's tasks one empty node of that size holds (spread jobs)."""
        n = cpus // self.cpus_per_task
        if self.gpus_per_node and gpus < self.gpus_per_node:
            return 0
        if self.task_gpus:
            n = min(n, gpus // self.task_gpus)
        if self.task_mem_mb:
            n = min(n, mem_mb // self.task_mem_mb)
        if self.mem_per_node_mb and self.mem_per_node_mb > mem_mb:
            return 0
        return n

    def time_at(self, max_time_minutes: int) -> str:
        """Why a partition with this MaxTime (0 = unlimited) can never run the job ('' = it can)."""
        if not max_time_minutes or not self.time_limit_given:
            return ""
        if self.unlimited:
            return f"no time limit asked, the partition's limit is {max_time_minutes} min"
        if self.time_limit_minutes > max_time_minutes:
            return (
                f"time limit {self.time_limit_minutes} min over the partition's {max_time_minutes}"
            )
        return ""


def shape_of(spec: pb.JobSpec) -> Shape:
    """The shape Slurm will give a validated spec, as far as it depends on the spec alone."""
    per_node = spec.ntasks_per_node
    nodes = spec.nodes
    ntasks = spec.ntasks
    if not ntasks:
        if per_node:
            ntasks = per_node * (nodes or 1)
        elif spec.gpus and spec.gpus_per_task:
            ntasks = max(1, spec.gpus // spec.gpus_per_task)
        else:
            ntasks = nodes or 1
    if nodes and ntasks < nodes and spec.ntasks:
        nodes = ntasks  # sbatch: "can't run N processes on M nodes, setting nnodes to N"
    fixed = bool(nodes) and (not spec.max_nodes or spec.max_nodes == nodes)
    if not nodes:
        nodes = -(-ntasks // per_node) if per_node else 1
        if spec.gpus and spec.gpus_per_node:
            nodes = max(nodes, -(-spec.gpus // spec.gpus_per_node))
        fixed = bool(per_node) or (ntasks == 1 and not spec.gpus)  # one task: one node
    cpt = spec.cpus_per_task or 1
    gpus_node = spec.gpus_per_node
    task_gpus = spec.gpus_per_task
    if spec.cpus_per_gpu:
        gpus_total = spec.gpus or task_gpus * ntasks or gpus_node * nodes
        cpt = max(cpt, -(-spec.cpus_per_gpu * gpus_total // ntasks)) if gpus_total else cpt
    task_mem = 0
    if spec.mem_per_cpu_mb:
        task_mem = spec.mem_per_cpu_mb * cpt
    elif spec.mem_per_gpu_mb and task_gpus:
        task_mem = spec.mem_per_gpu_mb * task_gpus
    mem_node = spec.mem_per_node_mb
    if fixed:
        tasks_node = -(-ntasks // nodes)
        if task_mem:
            mem_node = max(mem_node, task_mem * tasks_node)
        if spec.mem_per_gpu_mb and gpus_node:
            mem_node = max(mem_node, spec.mem_per_gpu_mb * gpus_node)
        if task_gpus:
            gpus_node = max(gpus_node, task_gpus * tasks_node)
        if spec.gpus:
            gpus_node = max(gpus_node, -(-spec.gpus // nodes))
    time_given = bool(spec.time_limit_minutes) or spec.time_unlimited
    return Shape(
        nodes=nodes,
        tasks=ntasks,
        cpus_per_task=cpt,
        mem_per_node_mb=mem_node,
        gpus_per_node=gpus_node,
        gpu_type=spec.gpu_type,
        time_limit_minutes=spec.time_limit_minutes or DEFAULT_TIME_MINUTES,
        precision=spec.precision,
        spread=not fixed,
        max_nodes=spec.max_nodes if not fixed else nodes,
        task_mem_mb=task_mem if not fixed else 0,
        task_gpus=task_gpus if not fixed else 0,
        total_gpus_asked=spec.gpus if not fixed else 0,
        whole_node=spec.exclusive == "exclusive" or spec.mem_whole_node,
        time_limit_given=time_given,
        unlimited=spec.time_unlimited,
        constraint=spec.constraint,
    )


def constraint_ok(expression: str, features: frozenset[str]) -> bool:
    """Could a node with these features count toward a -C expression? Slurm's syntax
    (a&b, a|b, [a|b]*2, !a...) read generously: counts and brackets are dropped and a
    negated term always holds, so a node is never ruled out that Slurm could use."""
    plain = re.sub(r"\*\d+", "", expression)
    for c in "[]()":
        plain = plain.replace(c, "")
    for alternative in plain.split("|"):
        terms = [t.strip() for t in re.split(r"[&,]", alternative) if t.strip()]
        if all(t.startswith("!") or t in features for t in terms):
            return True
    return False


# ---------------------------------------------------------------- the checks


def exportable(name: str) -> bool:
    """May a variable of the submitter's environment be exported to the job by default
    (sbatch's --export=ALL)? Not one whose name no job may be given (jobenv's denylist:
    Slurm's own, the loader's...), nor one that is no variable name (an exported bash
    function, BASH_FUNC_f%%): those are dropped from a captured environment, where a
    variable named on purpose (--export=NAME=value) is refused."""
    return bool(_ENV_KEY_RE.match(name)) and jobenv.denied(name) is None


def validate(spec: pb.JobSpec, max_script_bytes: int = MAX_SCRIPT_BYTES) -> pb.JobSpec:
    """Check a spec and return it normalised (the same message when nothing needs to change:
    it is the caller's request, not kept elsewhere); raise SpecError with a one-line reason.

    The script's own #SBATCH lines are read here with sbatch's rules and merged under the
    spec's fields (which stand for sbatch's command line), so what the daemon acknowledges
    is what the site's sbatch will be told, whoever built the spec. Runs for every
    submission: a spec without #SBATCH lines or passed-through options is only checked.
    """
    script = spec.script
    if len(script) * 4 > max_script_bytes:  # only long scripts need their bytes counted
        script_bytes = len(script.encode("utf-8", "surrogatepass"))
        if script_bytes > max_script_bytes:
            raise SpecError(
                f"the batch script is {script_bytes} bytes; the limit is {max_script_bytes}"
            )
    if not script.startswith("#!"):
        if not script.strip():
            raise SpecError("the batch script is empty")
        raise SpecError("the batch script must start with a #! line, as sbatch requires")
    if "\x00" in script:
        raise SpecError("the batch script is not text (it contains NUL bytes)")
    from metasched.sbatch import argv, resolve  # the option table needs this module's parsers

    if spec.sbatch_options or argv.has_directives(script):
        out = resolve.with_directives(spec)
    else:
        out = spec
        check(out)
    if out.precision:
        try:
            out.precision = precision.normalize(out.precision)
        except precision.UnknownPrecision as e:
            raise SpecError(str(e)) from None
    if out.dependency:  # kept as str() of what it parses to: one text for one meaning
        out.dependency = str(parse_dependency(out.dependency))
    return out


def _text_ok(label: str) -> Callable[[str], None]:
    def ok(value: str) -> None:
        if len(value) > MAX_TEXT or "\x00" in value or "\n" in value:
            raise SpecError(f"bad {label} {value[:40]!r}")

    return ok


def _check_name(value: str) -> None:
    if len(value) > MAX_NAME or any(c in value for c in "\n\r\x00"):
        raise SpecError(f"bad job name {value[:40]!r}: one line, at most {MAX_NAME} chars")


def _check_gpu_type(value: str) -> None:
    if not _GPU_TYPE_RE.match(value):
        raise SpecError(f"bad GPU type {value[:40]!r}")


def _check_partition(value: str) -> None:
    _text_ok("partition")(value)
    if any(not p.strip() for p in value.split(",")):
        raise SpecError(f"bad partition {value[:40]!r}")


def check_nodelist(value: str) -> None:
    """A Slurm hostlist (node[01-04],gpu5): its characters, not whether the nodes exist."""
    if len(value) > MAX_TEXT or not _HOSTLIST_RE.match(value):
        raise SpecError(f"bad node list {value[:40]!r}")


def _check_export_mode(value: str) -> None:
    if value not in _EXPORT_MODES:
        raise SpecError(f"bad export mode {value[:20]!r}")


def _check_exclusive(value: str) -> None:
    if value not in _EXCLUSIVE:
        raise SpecError(f"bad exclusive mode {value[:20]!r}")


def _check_comment(value: str) -> None:
    _text_ok("comment")(value)
    if "metasched:" in value:
        raise SpecError("a --comment may not contain 'metasched:' (it marks metasched's own jobs)")


def _check_env(env: Any) -> None:
    why = jobenv.problem(env)
    if why is not None:
        raise SpecError(why)


def _check_array(value: str) -> None:
    parse_array(value)


def _check_dependency(value: str) -> None:
    parse_dependency(value)


def _check_begin(value: float) -> None:
    if not (0 <= value < 1e11):  # also refuses NaN
        raise SpecError(f"bad begin time {value}")


def _check_sites(sites: Any) -> None:
    if len(sites) > MAX_SITES:
        raise SpecError("too many sites named")


def _check_args(args: Any) -> None:
    if len(args) > MAX_ARGS:
        raise SpecError("too many script arguments")
    for arg in args:
        if "\x00" in arg or len(arg) > MAX_TEXT:
            raise SpecError(f"bad script argument {arg[:40]!r}")


def _at_most(label: str, limit: int) -> Callable[[int], None]:
    def ok(value: int) -> None:
        if value > limit:
            raise SpecError(f"{label} {value} is more than any site has")

    return ok


# Field-by-field checks of a spec, run only for the fields it sets (ListFields).
_FIELD_CHECKS: dict[str, Callable[[Any], None]] = {
    "name": _check_name,
    "nodes": _at_most("nodes", MAX_NODES),
    "max_nodes": _at_most("nodes", MAX_NODES),
    "ntasks": _at_most("ntasks", MAX_TASKS),
    "cpus_per_task": _at_most("cpus-per-task", MAX_CPUS_PER_TASK),
    "mem_per_node_mb": _at_most("memory per node (MB)", MAX_MEM_MB),
    "mem_per_cpu_mb": _at_most("memory per CPU (MB)", MAX_MEM_MB),
    "mem_per_gpu_mb": _at_most("memory per GPU (MB)", MAX_MEM_MB),
    "gpus_per_node": _at_most("GPUs per node", MAX_GPUS_PER_NODE),
    "gpus_per_task": _at_most("GPUs per task", MAX_GPUS_PER_NODE),
    "gpus": _at_most("GPUs", MAX_GPUS),
    "gpu_type": _check_gpu_type,
    "time_limit_minutes": _at_most("time limit (minutes)", MAX_TIME_MINUTES),
    "partition": _check_partition,
    "exclude_nodes": check_nodelist,
    "export_mode": _check_export_mode,
    "exclusive": _check_exclusive,
    "environment": _check_env,
    "sites": _check_sites,
    "exclude_sites": _check_sites,
    "script_args": _check_args,
    "comment": _check_comment,
    "array": _check_array,
    "dependency": _check_dependency,
    "begin_time": _check_begin,
    **{
        f: _text_ok(label)
        for f, label in (
            ("account", "account"),
            ("qos", "qos"),
            ("workdir", "workdir"),
            ("submit_dir", "submit directory"),
            ("output", "output"),
            ("error", "error"),
            ("constraint", "constraint"),
            ("other_gres", "gres"),
            ("submit_key", "submit key"),
        )
    },
}


# The fields that stand for sbatch options (presence = the option was given).
OPTION_FIELDS = (
    *_FIELD_CHECKS,
    "mem_whole_node",
    "time_unlimited",
    "cpus_per_gpu",
    "ntasks_per_node",
    "ignore_pbs",
    "sbatch_options",
    "hold",
    "keep_invalid_dependency",
)


def given_fields(spec: pb.JobSpec) -> set[str]:
    """The option fields a spec sets (getattr per field: cheaper than ListFields, which
    copies map fields)."""
    return {f for f in OPTION_FIELDS if getattr(spec, f)}


def check(spec: pb.JobSpec) -> None:
    """The checks on a resolved spec: each field's own, then those across fields."""
    present = set()
    for f, fn in _FIELD_CHECKS.items():
        value = getattr(spec, f)
        if value:
            present.add(f)
            fn(value)
    for f in ("mem_whole_node", "time_unlimited", "cpus_per_gpu", "ntasks_per_node"):
        if getattr(spec, f):
            present.add(f)
    if "max_nodes" in present and spec.max_nodes < spec.nodes:
        raise SpecError(f"maximum node count {spec.max_nodes} is less than {spec.nodes}")
    if "cpus_per_gpu" in present and "cpus_per_task" in present:
        raise SpecError("--cpus-per-gpu is mutually exclusive with --cpus-per-task")
    mems = present & {"mem_per_node_mb", "mem_whole_node", "mem_per_cpu_mb", "mem_per_gpu_mb"}
    if len(mems - {"mem_whole_node"}) > 1 or (
        "mem_whole_node" in mems and mems & {"mem_per_cpu_mb", "mem_per_gpu_mb"}
    ):
        raise SpecError("--mem, --mem-per-cpu, and --mem-per-gpu are mutually exclusive")
    gpus = present & {"gpus_per_node", "gpus", "gpus_per_task"}
    if "gpu_type" in present and not gpus:
        raise SpecError(f"GPU type {spec.gpu_type!r} given without a GPU count")
    if present & {"mem_per_gpu_mb", "cpus_per_gpu"} and not gpus:
        raise SpecError("--mem-per-gpu / --cpus-per-gpu need GPUs (--gpus, --gpus-per-node...)")
    if "time_unlimited" in present and "time_limit_minutes" in present:
        raise SpecError("both a time limit and UNLIMITED given")
    if "sites" in present and "exclude_sites" in present:
        both = set(spec.sites) & set(spec.exclude_sites)
        if both:
            raise SpecError(f"site {sorted(both)[0]!r} is both required and excluded")
    if len(spec.sbatch_options) > MAX_OPTIONS:
        raise SpecError("too many options")
