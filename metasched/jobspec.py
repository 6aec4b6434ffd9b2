"""A job's request: sbatch-style option parsing and the checks every request must pass.

msub and metaschedd share this module, so a request that msub accepts is the request the
daemon checks, and both give the same one-line message when it is wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from metasched import arrays, dependency, jobenv, precision
from metasched.v1 import metasched_pb2 as pb


class SpecError(ValueError):
    """The request is malformed; the message is one line meant for the user."""


MAX_SCRIPT_BYTES = 1 << 20  # 1 MiB: a batch script, not a data transfer
MAX_NAME = 200
MAX_NODES = 100_000
MAX_CPUS_PER_TASK = 100_000
MAX_TASKS = 10_000_000
MAX_GPUS_PER_NODE = 64
MAX_MEM_MB = 1 << 40  # 1 EiB per node: beyond any machine, within the API's uint64
MAX_TIME_MINUTES = 366 * 24 * 60
MAX_SITES = 1_000
DEFAULT_TIME_MINUTES = 60

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_GPU_TYPE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def parse_time(text: str) -> int:
    """Slurm's time formats -> whole minutes (rounded up).

    Accepts "minutes", "minutes:seconds", "hours:minutes:seconds", "days-hours",
    "days-hours:minutes" and "days-hours:minutes:seconds", as sbatch --time does.
    """
    s = text.strip()
    if s.lower() in ("unlimited", "infinite", "-1"):
        raise SpecError(f"time limit {text!r}: give a finite limit (e.g. 1:00:00)")
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", s)
    if not m:
        raise SpecError(f"bad time limit {text!r}: use minutes, HH:MM:SS or D-HH[:MM[:SS]]")
    days, a, b, c = m.groups()
    nums = [int(x) for x in (a, b, c) if x is not None]
    if days is not None:  # D-H, D-H:M, D-H:M:S
        hours, minutes, seconds = [*nums, 0, 0][:3]
        total = ((int(days) * 24 + hours) * 60 + minutes) * 60 + seconds
    elif len(nums) == 1:  # M
        total = nums[0] * 60
    elif len(nums) == 2:  # M:S
        total = nums[0] * 60 + nums[1]
    else:  # H:M:S
        total = (nums[0] * 60 + nums[1]) * 60 + nums[2]
    minutes_total = -(-total // 60)
    if minutes_total <= 0:
        raise SpecError(f"time limit {text!r} must be more than zero")
    if minutes_total > MAX_TIME_MINUTES:
        raise SpecError(f"time limit {text!r} is over a year")
    return minutes_total


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
    d, rem = divmod(minutes, 24 * 60)
    h, m = divmod(rem, 60)
    return f"{d}-{h:02d}:{m:02d}:00" if d else f"{h:02d}:{m:02d}:00"


_MEM_UNITS = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}


def parse_mem(text: str) -> int:
    """sbatch --mem: '4000' (MB), '500M', '4G', '1T' -> MB."""
    m = re.fullmatch(r"(\d+)([KMGTkmgt]?)[Bb]?", text.strip())
    if not m:
        raise SpecError(f"bad memory size {text!r}: use e.g. 4000, 500M, 16G")
    value = int(m.group(1)) * _MEM_UNITS[(m.group(2) or "M").upper()]
    if value <= 0:
        raise SpecError(f"memory {text!r} must be more than zero")
    if value > MAX_MEM_MB:
        raise SpecError(f"memory {text!r} is more than any node has")
    return int(value)


def parse_gres(text: str) -> tuple[str, int]:
    """--gres=gpu[:type][:count] -> (type, count). Other GRES are refused: we cannot place them."""
    parts = text.strip().split(":")
    if not parts or parts[0] != "gpu":
        raise SpecError(f"unsupported --gres {text!r}: only gpu[:type][:count] is understood")
    gpu_type, count = "", 1
    if len(parts) == 2:
        if parts[1].isdigit():
            count = int(parts[1])
        else:
            gpu_type = parts[1]
    elif len(parts) == 3:
        gpu_type = parts[1]
        if not parts[2].isdigit():
            raise SpecError(f"bad --gres {text!r}: the count must be a number")
        count = int(parts[2])
    elif len(parts) > 3:
        raise SpecError(f"bad --gres {text!r}")
    if count <= 0:
        raise SpecError(f"bad --gres {text!r}: the count must be at least 1")
    if count > MAX_GPUS_PER_NODE:
        raise SpecError(f"bad --gres {text!r}: more GPUs than any node has")
    return gpu_type.lower(), count


@dataclass(frozen=True)
class Shape:
    """What one job occupies: the part of a spec that placement and estimation look at."""

    nodes: int
    tasks: int
    cpus_per_task: int
    mem_per_node_mb: int  # 0 = site default
    gpus_per_node: int
    gpu_type: str
    time_limit_minutes: int
    precision: str

    @property
    def cpus_per_node(self) -> int:
        return -(-self.tasks // self.nodes) * self.cpus_per_task

    @property
    def total_cpus(self) -> int:
        return self.tasks * self.cpus_per_task


def shape_of(spec: pb.JobSpec) -> Shape:
    """The normalised shape of a validated spec (defaults filled in)."""
    nodes = spec.nodes or 1
    return Shape(
        nodes=nodes,
        tasks=spec.ntasks or nodes,
        cpus_per_task=spec.cpus_per_task or 1,
        mem_per_node_mb=spec.mem_per_node_mb,
        gpus_per_node=spec.gpus_per_node,
        gpu_type=spec.gpu_type,
        time_limit_minutes=spec.time_limit_minutes or DEFAULT_TIME_MINUTES,
        precision=spec.precision,
    )


def validate(spec: pb.JobSpec, max_script_bytes: int = MAX_SCRIPT_BYTES) -> pb.JobSpec:
    """Check a spec and return a normalised copy; raise SpecError with a one-line reason."""
    out = pb.JobSpec()
    out.CopyFrom(spec)
    script_bytes = len(spec.script.encode("utf-8", "surrogatepass"))
    if not spec.script.strip():
        raise SpecError("the batch script is empty")
    if script_bytes > max_script_bytes:
        raise SpecError(
            f"the batch script is {script_bytes} bytes; the limit is {max_script_bytes}"
        )
    if "\x00" in spec.script:
        raise SpecError("the batch script is not text (it contains NUL bytes)")
    if not spec.script.startswith("#!"):
        raise SpecError("the batch script must start with a #! line, as sbatch requires")
    if spec.name and (len(spec.name) > MAX_NAME or not _NAME_RE.match(spec.name)):
        raise SpecError(f"bad job name {spec.name[:40]!r}: letters, digits, . _ - only")
    try:
        out.precision = precision.normalize(spec.precision)
    except precision.UnknownPrecision as e:
        raise SpecError(str(e)) from None
    if spec.nodes > MAX_NODES:
        raise SpecError(f"nodes={spec.nodes} is more than any site has")
    nodes = spec.nodes or 1
    if spec.ntasks and spec.ntasks < nodes:
        raise SpecError(f"ntasks={spec.ntasks} is fewer than nodes={nodes}")
    if spec.ntasks > MAX_TASKS or spec.cpus_per_task > MAX_CPUS_PER_TASK:
        raise SpecError("ntasks or cpus-per-task is beyond any site")
    if spec.mem_per_node_mb > MAX_MEM_MB:
        raise SpecError(f"memory per node {spec.mem_per_node_mb} MB is more than any node has")
    if spec.gpus_per_node > MAX_GPUS_PER_NODE:
        raise SpecError(f"gpus per node {spec.gpus_per_node} is more than any node has")
    if spec.gpu_type:
        if not _GPU_TYPE_RE.match(spec.gpu_type):
            raise SpecError(f"bad GPU type {spec.gpu_type[:40]!r}")
        out.gpu_type = spec.gpu_type.lower()
        if not spec.gpus_per_node:
            raise SpecError(f"GPU type {spec.gpu_type!r} given without a GPU count")
    if spec.time_limit_minutes > MAX_TIME_MINUTES:
        raise SpecError("time limit is over a year")
    if not spec.time_limit_minutes:
        out.time_limit_minutes = DEFAULT_TIME_MINUTES
    if len(spec.sites) > MAX_SITES or len(spec.exclude_sites) > MAX_SITES:
        raise SpecError("too many sites named")
    both = set(spec.sites) & set(spec.exclude_sites)
    if both:
        raise SpecError(f"site {sorted(both)[0]!r} is both required and excluded")
    env_problem = jobenv.problem(spec.environment)
    if env_problem is not None:
        raise SpecError(env_problem)
    for label, value in (
        ("partition", spec.partition),
        ("account", spec.account),
        ("workdir", spec.workdir),
        ("output", spec.output),
        ("error", spec.error),
    ):
        if len(value) > 4096 or "\x00" in value or "\n" in value:
            raise SpecError(f"bad {label} {value[:40]!r}")
    if spec.array:
        parse_array(spec.array)
    if spec.dependency:
        out.dependency = str(parse_dependency(spec.dependency))
    if not (0 <= spec.begin_time < 1e11):  # also refuses NaN
        raise SpecError(f"bad begin time {spec.begin_time}")
    return out
