"""sbatch's options into a JobSpec, with sbatch's precedence, and a JobSpec back into options.

sbatch applies the script's #SBATCH lines first, then SBATCH_* variables, then its command
line, each option overwriting what an earlier one set (--mail-type adds up). resolve() does
the same: msub calls it with all three, the daemon (with_directives) with the script's
lines and the spec's fields standing for the command line, so both reach the same spec.
to_words() gives the spec back as the options the agent hands the site's sbatch, which
then computes the job (nodes, CPUs, memory, limits) exactly as it would have from the
user's own options.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from metasched import jobspec
from metasched.jobspec import SpecError
from metasched.sbatch import argv
from metasched.sbatch.argv import CLI, ENV, SCRIPT, Given
from metasched.sbatch.options import BY_NAME, Kind, Option
from metasched.v1 import metasched_pb2 as pb

# Options that write the same Slurm setting: the last one given wins.
_SLOT = {
    "tasks-per-node": "ntasks-per-node",
    "oversubscribe": "exclusive",
    "cluster": "clusters",
}
_MEMORY = ("mem", "mem-per-cpu", "mem-per-gpu")


@dataclass
class Msub:
    """What the options ask of msub itself (never sent to a site)."""

    parsable: bool = False
    wait: bool = False
    test_only: bool = False
    quiet: bool = False
    verbose: int = 0
    wrap: str | None = None
    help: bool = False
    version: bool = False


@dataclass
class _Context:
    environ: Mapping[str, str]  # the submitter's environment (for --export)
    submit_dir: str
    gpu_types: dict[str, str] = field(default_factory=dict)  # option -> type it named


def _slot(o: Option) -> str:
    return _SLOT.get(o.name, o.name)


_SLOT_OF = {o.name: _slot(o) for o in BY_NAME.values()}


def resolve(
    script: str,
    cli: list[Given],
    env: list[Given] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    submit_dir: str = "",
    base: pb.JobSpec | None = None,
    directives: list[Given] | None = None,
) -> tuple[pb.JobSpec, Msub]:
    """The spec sbatch's rules make of a script's lines, SBATCH_* options (env) and the
    command line (cli). base gives the fields that are not sbatch options (precision,
    sites...); environ is what --export reads values from; directives, if given, stand
    for the script's own lines (already read)."""
    if directives is None:
        directives = list(argv.script_options(script)) if argv.has_directives(script) else []
    given = directives + (env or []) + cli
    check_values(given)
    spec = pb.JobSpec()
    if base is not None:
        spec.CopyFrom(base)
    spec.script = script
    if submit_dir:
        spec.submit_dir = submit_dir
    ctx = _Context(environ if environ is not None else {}, spec.submit_dir)
    msub = Msub()
    last: dict[str, Given] = {}
    passed: list[Given] = []
    for g in given:
        o = g.option
        if o.kind is Kind.REFUSED:
            raise SpecError(f"{g.describe()}: {o.refusal}")
        if o.kind is Kind.MSUB:
            _msub(msub, g)
            continue
        if g.reset:
            last.pop(_slot(o), None)
            passed = [p for p in passed if p.option is not o]
            continue
        if o.kind is Kind.PASSED:
            if g.value is not None and o.check is not None:
                g = Given(o, o.check(g.value), g.source)
            passed.append(g)
            continue
        last[_slot(o)] = g
    if msub.quiet and msub.verbose:
        raise SpecError("don't specify both --verbose (-v) and --quiet (-Q)")
    _memory_rule(given, last)
    if "ignore-pbs" not in last:
        _refuse_pbs(script)
    if (
        "gres" in last
        and "gpus-per-node" in last
        and jobspec.parse_gres(last["gres"].value or "").gpus
    ):
        raise SpecError("give GPUs per node once: --gres=gpu:... or --gpus-per-node")
    for slot in sorted(last, key=_ORDER.get):  # type: ignore[arg-type]
        g = last[slot]
        _APPLY[g.option.name](spec, g.value, ctx)
    del spec.sbatch_options[:]
    spec.sbatch_options.extend(argv.words(passed))
    jobspec.check(spec)
    return spec, msub


def check_values(given: Iterable[Given]) -> None:
    """Every occurrence's value, as sbatch parses each one it reads (an invalid value is an
    error even when a later option overrides it)."""
    for g in given:
        o = g.option
        if o.kind is Kind.REFUSED:
            raise SpecError(f"{g.describe()}: {o.refusal}")
        if g.reset or (g.value is None and o.kind is not Kind.UNDERSTOOD):
            continue
        if o.kind is Kind.UNDERSTOOD:
            _APPLY[o.name](pb.JobSpec(), g.value, _Context({}, "/"))
        elif o.check is not None and g.value is not None:
            o.check(g.value)


def _refuse_pbs(script: str) -> None:
    """sbatch translates #PBS / #BSUB lines unless --ignore-pbs; metasched does not."""
    pbs = argv.pbs_lines(script) if argv.has_pbs(script) else []
    if pbs:
        raise SpecError(
            f"the script has #PBS/#BSUB lines ({pbs[0].strip()[:40]!r}), which sbatch "
            "would translate and metasched does not: change them to #SBATCH, or give "
            "--ignore-pbs to treat them as comments"
        )


def _msub(m: Msub, g: Given) -> None:
    name = g.option.name
    if g.source == SCRIPT and name in ("help", "usage", "version", "verbose", "quiet", "wrap"):
        return  # sbatch reads these from its command line only (its early pass)
    if name == "parsable":
        m.parsable = not g.reset
    elif name == "wait":
        m.wait = not g.reset
    elif name == "test-only":
        m.test_only = True
    elif name == "quiet":
        m.quiet = True
    elif name == "verbose":
        m.verbose += 1
    elif name == "wrap":
        m.wrap = g.value
    elif name in ("help", "usage"):
        m.help = True
    elif name == "version":
        m.version = True


def _memory_rule(given: list[Given], last: dict[str, Given]) -> None:
    """Slurm's _validate_memory_options: --mem, --mem-per-cpu and --mem-per-gpu exclude
    each other on the command line and in #SBATCH lines; one given there beats the others
    set by SBATCH_* variables."""
    by_user = {g.option.name for g in given if g.option.name in _MEMORY and g.source != ENV}
    if len(by_user) > 1:
        raise SpecError("--mem, --mem-per-cpu, and --mem-per-gpu are mutually exclusive")
    if by_user:
        for name in _MEMORY:
            if name not in by_user:
                last.pop(name, None)
    elif sum(name in last for name in _MEMORY) > 1:
        raise SpecError(
            "SBATCH_MEM_PER_CPU, SBATCH_MEM_PER_GPU and SBATCH_MEM_PER_NODE are mutually exclusive"
        )


# ---------------------------------------------------------------- the understood options


def _gpu_type(spec: pb.JobSpec, ctx: _Context, option: str, gpu_type: str) -> None:
    if not gpu_type:
        return
    for other, t in ctx.gpu_types.items():
        if t != gpu_type:
            raise SpecError(
                f"GPU types differ (--{other}: {t}, --{option}: {gpu_type}): "
                "GPUs of several types in one job are not supported"
            )
    ctx.gpu_types[option] = gpu_type
    spec.gpu_type = gpu_type


def _name(spec: pb.JobSpec, v: str | None, ctx: _Context) -> None:
    spec.name = v or ""


def _nodes(spec: pb.JobSpec, v: str | None, ctx: _Context) -> None:
    lo, hi = jobspec.parse_nodes(v or "")
    spec.nodes, spec.max_nodes = lo, hi


def _count(field_name: str, option: str) -> Callable[[pb.JobSpec, str | None, _Context], None]:
    def apply(spec: pb.JobSpec, v: str | None, ctx: _Context) -> None:
        setattr(spec, field_name, jobspec.parse_count(option, v or ""))

    return apply


def _mem(spec: pb.JobSpec, v: str | None, ctx: _Context) -> None:
    mb = jobspec.parse_mem(v or "", "mem")
    spec.mem_per_node_mb = mb
    spec.mem_whole_node = mb == 0


def _mem_per(field_name: str, option: str) -> Callable[[pb.JobSpec, str | None, _Context], None]:
    def apply(spec: pb.JobSpec, v: str | None, ctx: _Context) -> None:
        mb = jobspec.parse_mem(v or "", option)
        if mb == 0:
            raise SpecError(f"--{option}=0 is not supported: give --mem=0 for whole nodes")
        setattr(spec, field_name, mb)

    return apply


def _gres(spec: pb.JobSpec, v: str | None, ctx: _Context) -> None:
    g = jobspec.parse_gres(v or "")
    spec.other_gres = "none" if g.none else g.other
    if g.gpus:
        spec.gpus_per_node = g.gpus
        _gpu_type(spec, ctx, "gres", g.gpu_type)


def _gpus(field_name: str, option: str) -> Callable[[pb.JobSpec, str | None, _Context], None]:
    def apply(spec: pb.JobSpec, v: str | None, ctx: _Context) -> None:
        gpu_type, n = jobspec.parse_gpu_count(option, v or "")
        setattr(spec, field_name, n)
        if n:
            _gpu_type(spec, ctx, option, gpu_type)

    return apply


def _time(spec: pb.JobSpec, v: str | None, ctx: _Context) -> None:
    minutes = jobspec.parse_time(v or "")
    spec.time_limit_minutes = minutes
    spec.time_unlimited = minutes == 0


def _text(field_name: str, option: str) -> Callable[[pb.JobSpec, str | None, _Context], None]:
    def apply(spec: pb.JobSpec, v: str | None, ctx: _Context) -> None:
        value = v or ""
        if "\x00" in value or "\n" in value or len(value) > jobspec.MAX_TEXT:
            raise SpecError(f"bad --{option} value {value[:40]!r}")
        setattr(spec, field_name, value)

    return apply


def _partition(spec: pb.JobSpec, v: str | None, ctx: _Context) -> None:
    names = (v or "").split(",")
    if not all(n.strip() for n in names):
        raise SpecError(f"invalid partition specified: {v!r}")
    spec.partition = ",".join(n.strip() for n in names)


def _exclude(spec: pb.JobSpec, v: str | None, ctx: _Context) -> None:
    value = v or ""
    jobspec.check_nodelist(value)
    spec.exclude_nodes = value


def _exclusive(spec: pb.JobSpec, v: str | None, ctx: _Context) -> None:
    mode = (v or "exclusive").lower()
    if mode not in ("exclusive", "user", "mcs", "topo", "oversubscribe"):
        raise SpecError(f"invalid --exclusive specification {v!r}")
    spec.exclusive = mode


def _oversubscribe(spec: pb.JobSpec, v: str | None, ctx: _Context) -> None:
    spec.exclusive = "oversubscribe"


def _chdir(spec: pb.JobSpec, v: str | None, ctx: _Context) -> None:
    path = v or ""
    if not path:
        raise SpecError("--chdir needs a directory")
    if not path.startswith("/"):
        if not ctx.submit_dir:
            raise SpecError(f"--chdir={path} is relative, and the submit directory is not known")
        path = f"{ctx.submit_dir.rstrip('/')}/{path}"  # as sbatch's make_full_path
    spec.workdir = path


def _clusters(spec: pb.JobSpec, v: str | None, ctx: _Context) -> None:
    names = jobspec.split_list(v or "")
    if not names:
        raise SpecError(f"invalid --clusters specification {v!r}")
    del spec.sites[:]
    if [n.lower() for n in names] != ["all"]:
        spec.sites.extend(names)


def _ignore_pbs(spec: pb.JobSpec, v: str | None, ctx: _Context) -> None:
    spec.ignore_pbs = True


def _export(spec: pb.JobSpec, v: str | None, ctx: _Context) -> None:
    """sbatch --export: ALL, NONE, NIL or a list of NAME / NAME=value / ALL, with the
    values of bare names read from the submitter's environment, as sbatch reads its own."""
    value = v or ""
    spec.environment.clear()
    mode = value.upper()
    if mode == "ALL":
        spec.export_mode = "all"
        spec.environment.update({k: x for k, x in ctx.environ.items() if jobspec.exportable(k)})
        return
    if mode in ("NONE", "NIL"):
        spec.export_mode = mode.lower()
        return
    spec.export_mode = "list"
    for token in _quote_tokens(value):
        if token.upper() == "ALL":
            spec.environment.update({k: x for k, x in ctx.environ.items() if jobspec.exportable(k)})
        elif "=" in token:
            key, _, val = token.partition("=")
            spec.environment[key] = val
        elif token in ctx.environ:
            spec.environment[token] = ctx.environ[token]


def _quote_tokens(text: str) -> list[str]:
    """Slurm's find_quote_token(text, ","): commas inside quotes do not split; the quotes stay."""
    out: list[str] = []
    cur: list[str] = []
    quote = ""
    for c in text:
        if quote:
            if c == quote:
                quote = ""
        elif c in "\"'":
            quote = c
        elif c == ",":
            if cur:
                out.append("".join(cur))
            cur = []
            continue
        cur.append(c)
    if cur:
        out.append("".join(cur))
    return out


# ---- arrays, dependencies, --begin, --hold (docs/arrays.md; parsers in jobspec)


def _array(spec: pb.JobSpec, v: str | None, ctx: _Context) -> None:
    jobspec.parse_array(v or "")
    spec.array = (v or "").strip()


def _dependency(spec: pb.JobSpec, v: str | None, ctx: _Context) -> None:
    spec.dependency = str(jobspec.parse_dependency(v or ""))


def _begin(spec: pb.JobSpec, v: str | None, ctx: _Context) -> None:
    spec.begin_time = jobspec.parse_begin(v or "")


def _hold(spec: pb.JobSpec, v: str | None, ctx: _Context) -> None:
    spec.hold = True


def _kill_on_invalid_dep(spec: pb.JobSpec, v: str | None, ctx: _Context) -> None:
    word = (v or "").lower()
    if word not in ("yes", "no"):  # sbatch: yes or no, any case, and nothing else
        raise SpecError(f"Invalid --kill-on-invalid-dep specification {v!r}")
    spec.keep_invalid_dependency = word == "no"


_ARRAYS_APPLY: dict[str, Callable[[pb.JobSpec, str | None, _Context], None]] = {
    "array": _array,
    "begin": _begin,
    "dependency": _dependency,
    "hold": _hold,
    "kill-on-invalid-dep": _kill_on_invalid_dep,
}
_ARRAYS_SLOTS: dict[str, tuple[str, ...]] = {
    "array": ("array",),
    "begin": ("begin_time",),
    "dependency": ("dependency",),
    "hold": ("hold",),
    "kill-on-invalid-dep": ("keep_invalid_dependency",),
}

_APPLY: dict[str, Callable[[pb.JobSpec, str | None, _Context], None]] = {
    "account": _text("account", "account"),
    "chdir": _chdir,
    "cluster": _clusters,
    "clusters": _clusters,
    "comment": _text("comment", "comment"),
    "constraint": _text("constraint", "constraint"),
    "cpus-per-gpu": _count("cpus_per_gpu", "cpus-per-gpu"),
    "cpus-per-task": _count("cpus_per_task", "cpus-per-task"),
    "error": _text("error", "error"),
    "exclude": _exclude,
    "exclusive": _exclusive,
    "export": _export,
    "gpus": _gpus("gpus", "gpus"),
    "gpus-per-node": _gpus("gpus_per_node", "gpus-per-node"),
    "gpus-per-task": _gpus("gpus_per_task", "gpus-per-task"),
    "gres": _gres,
    "ignore-pbs": _ignore_pbs,
    "job-name": _name,
    "mem": _mem,
    "mem-per-cpu": _mem_per("mem_per_cpu_mb", "mem-per-cpu"),
    "mem-per-gpu": _mem_per("mem_per_gpu_mb", "mem-per-gpu"),
    "nodes": _nodes,
    "ntasks": _count("ntasks", "ntasks"),
    "ntasks-per-node": _count("ntasks_per_node", "ntasks-per-node"),
    "output": _text("output", "output"),
    "oversubscribe": _oversubscribe,
    "partition": _partition,
    "qos": _text("qos", "qos"),
    "tasks-per-node": _count("ntasks_per_node", "tasks-per-node"),
    "time": _time,
    **_ARRAYS_APPLY,
}
# Slots applied in a fixed order (so GPU-type conflicts name options consistently).
_ORDER = {name: k for k, name in enumerate(sorted(_APPLY))}
assert all(o.name in _APPLY for o in BY_NAME.values() if o.kind is Kind.UNDERSTOOD), [
    o.name for o in BY_NAME.values() if o.kind is Kind.UNDERSTOOD and o.name not in _APPLY
]


# ---------------------------------------------------------------- spec -> options


def to_words(spec: pb.JobSpec, site: bool = False) -> list[str]:
    """The understood fields of a spec as sbatch options, each as the user would have
    written it, then the passed-through options in their order. Not included (the agent
    decides them per site): partition, exclude, workdir, export, comment; for a site's
    sbatch (site=True) not the name and file names either (output_names: the agent puts
    the federation's ids in them). Never arrays, dependencies, --begin, --hold: the
    daemon's."""
    w: list[str] = []
    if spec.name and not site:
        w.append(f"--job-name={spec.name}")
    if spec.nodes:
        w.append(
            f"--nodes={spec.nodes}-{spec.max_nodes}" if spec.max_nodes else f"--nodes={spec.nodes}"
        )
    if spec.ntasks:
        w.append(f"--ntasks={spec.ntasks}")
    if spec.ntasks_per_node:
        w.append(f"--ntasks-per-node={spec.ntasks_per_node}")
    if spec.cpus_per_task:
        w.append(f"--cpus-per-task={spec.cpus_per_task}")
    if spec.mem_whole_node:
        w.append("--mem=0")
    elif spec.mem_per_node_mb:
        w.append(f"--mem={spec.mem_per_node_mb}M")
    if spec.mem_per_cpu_mb:
        w.append(f"--mem-per-cpu={spec.mem_per_cpu_mb}M")
    if spec.mem_per_gpu_mb:
        w.append(f"--mem-per-gpu={spec.mem_per_gpu_mb}M")
    typed = f"{spec.gpu_type}:" if spec.gpu_type else ""
    gres = []
    if spec.gpus_per_node:
        gres.append(f"gpu:{typed}{spec.gpus_per_node}")
    if spec.other_gres and spec.other_gres != "none":
        gres.append(spec.other_gres)
    if gres:
        w.append("--gres=" + ",".join(gres))
    elif spec.other_gres == "none":
        w.append("--gres=none")
    if spec.gpus:
        w.append(f"--gpus={typed}{spec.gpus}")
    if spec.gpus_per_task:
        w.append(f"--gpus-per-task={typed}{spec.gpus_per_task}")
    if spec.cpus_per_gpu:
        w.append(f"--cpus-per-gpu={spec.cpus_per_gpu}")
    if spec.time_unlimited:
        w.append("--time=UNLIMITED")
    elif spec.time_limit_minutes:
        w.append(f"--time={spec.time_limit_minutes}")
    for flag, value in (
        ("--account", spec.account),
        ("--qos", spec.qos),
        ("--constraint", spec.constraint),
        ("--output", "" if site else spec.output),
        ("--error", "" if site else spec.error),
    ):
        if value:
            w.append(f"{flag}={value}")
    if spec.exclusive == "oversubscribe":
        w.append("--oversubscribe")
    elif spec.exclusive == "exclusive":
        w.append("--exclusive")
    elif spec.exclusive:
        w.append(f"--exclusive={spec.exclusive}")
    w.extend(spec.sbatch_options)
    return w


# The JobSpec fields each understood option's slot writes: a spec that sets any of them
# has given that option on its command line.
_SLOT_FIELDS: dict[str, tuple[str, ...]] = {
    "account": ("account",),
    "chdir": ("workdir",),
    "clusters": ("sites",),
    "comment": ("comment",),
    "constraint": ("constraint",),
    "cpus-per-gpu": ("cpus_per_gpu",),
    "cpus-per-task": ("cpus_per_task",),
    "error": ("error",),
    "exclude": ("exclude_nodes",),
    "exclusive": ("exclusive",),
    "export": ("export_mode", "environment"),
    "gpus": ("gpus",),
    "gpus-per-node": ("gpus_per_node",),
    "gpus-per-task": ("gpus_per_task",),
    "gres": ("gpus_per_node", "other_gres"),
    "ignore-pbs": ("ignore_pbs",),
    "job-name": ("name",),
    "mem": ("mem_per_node_mb", "mem_whole_node"),
    "mem-per-cpu": ("mem_per_cpu_mb",),
    "mem-per-gpu": ("mem_per_gpu_mb",),
    "nodes": ("nodes", "max_nodes"),
    "ntasks": ("ntasks",),
    "ntasks-per-node": ("ntasks_per_node",),
    "output": ("output",),
    "partition": ("partition",),
    "qos": ("qos",),
    "time": ("time_limit_minutes", "time_unlimited"),
    **_ARRAYS_SLOTS,
}
assert set(_SLOT_FIELDS) == {_slot(o) for o in BY_NAME.values() if o.kind is Kind.UNDERSTOOD}


def passed_options(words: list[str]) -> list[Given]:
    """A request's passed-through options (sbatch_options), each checked: only options the
    table passes through, with values Slurm would take."""
    given, rest = argv.parse(list(words), CLI)
    if rest:
        raise SpecError(f"bad option {rest[0][:40]!r}")
    out = []
    for g in given:
        o = g.option
        if o.kind is not Kind.PASSED:
            why = o.note if o.kind is Kind.REFUSED else "not an option to pass through"
            raise SpecError(f"--{o.name} cannot be passed to a site: {why}")
        if g.value is not None and o.check is not None:
            g = Given(o, o.check(g.value), CLI)
        out.append(g)
    return out


@dataclass(frozen=True)
class _ScriptLines:
    """What a script's own lines say, read once per script text (script_lines)."""

    winners: tuple[tuple[str, Given], ...]  # (slot, the last option for it), in slot order
    passed_words: tuple[str, ...]  # its passed-through options, as the agent gives them
    ignore_pbs: bool
    pbs_refusal: str  # why its #PBS/#BSUB lines are refused ('' = none, or ignored)


# Scripts up to this size are remembered by text (so at most 1024 x 16 KiB are kept).
_CACHED_SCRIPT = 16 * 1024


def script_lines(script: str) -> _ScriptLines:
    """A script's #SBATCH lines, read and checked as sbatch reads them (an invalid one is an
    error even when overridden). Remembered by text for scripts of usual size: users submit
    one script many times, and the daemon reads every submission's."""
    if len(script) <= _CACHED_SCRIPT:
        return _cached_script_lines(script)
    return _read_script_lines(script)


@functools.lru_cache(maxsize=1024)
def _cached_script_lines(script: str) -> _ScriptLines:
    return _read_script_lines(script)


def _read_script_lines(script: str) -> _ScriptLines:
    directives = argv.script_options(script) if argv.has_directives(script) else ()
    check_values(directives)
    winners: dict[str, Given] = {}
    for g in directives:
        if g.option.kind is Kind.UNDERSTOOD:
            winners[_SLOT_OF[g.option.name]] = g
    ignore_pbs = "ignore-pbs" in winners
    pbs = ""
    if not ignore_pbs:
        try:
            _refuse_pbs(script)
        except SpecError as e:
            pbs = str(e)
    return _ScriptLines(
        tuple(sorted(winners.items(), key=lambda kv: _ORDER[kv[0]])),
        tuple(argv.words(g for g in directives if g.option.kind is Kind.PASSED)),
        ignore_pbs,
        pbs,
    )


def with_directives(spec: pb.JobSpec) -> pb.JobSpec:
    """What the daemon makes of a request: the script's own #SBATCH lines read with sbatch's
    rules and merged under the spec's fields (its command line), so a client that sends a
    bare script gets the same job as msub, and nothing in the script that the daemon did
    not read can reach the site (the agent neutralises the lines, see argv.neutralise).

    Runs for every submission with #SBATCH lines: a script's lines are read once
    (script_lines), and only the options the spec leaves unset are applied."""
    lines = script_lines(spec.script)
    present = jobspec.given_fields(spec)
    # msub sends the script's passed-through options first: read them once (replaying them
    # twice would mean the same, but the list would grow with every merge).
    script_words = list(lines.passed_words)
    own = list(spec.sbatch_options)
    if script_words and own[: len(script_words)] == script_words:
        own = own[len(script_words) :]
    passed = passed_options(own) if own else []
    winners = dict(lines.winners)
    _spec_memory_rule(present, winners)
    if lines.pbs_refusal and not spec.ignore_pbs:
        raise SpecError(lines.pbs_refusal)
    todo = [(slot, g) for slot, g in lines.winners if present.isdisjoint(_SLOT_FIELDS[slot])]
    words = script_words + argv.words(passed)
    if not todo and words == list(spec.sbatch_options):
        jobspec.check(spec)  # msub resolved it already: nothing to add (no copy of it made)
        return spec
    out = pb.JobSpec()
    out.CopyFrom(spec)
    ctx = _Context(spec.environment, spec.submit_dir)
    if spec.gpu_type:
        ctx.gpu_types["command line"] = spec.gpu_type
    for _, g in todo:
        _APPLY[g.option.name](out, g.value, ctx)
    if words != list(spec.sbatch_options):
        del out.sbatch_options[:]
        out.sbatch_options.extend(words)
    jobspec.check(out)
    return out


def _spec_memory_rule(present: set[str], winners: dict[str, Given]) -> None:
    """Slurm: --mem, --mem-per-cpu and --mem-per-gpu on the command line and in #SBATCH
    lines exclude each other (the spec's fields are the command line)."""
    names = {s for s in _MEMORY if s in winners}
    if present & {"mem_per_node_mb", "mem_whole_node"}:
        names.add("mem")
    if "mem_per_cpu_mb" in present:
        names.add("mem-per-cpu")
    if "mem_per_gpu_mb" in present:
        names.add("mem-per-gpu")
    if len(names) > 1:
        raise SpecError("--mem, --mem-per-cpu, and --mem-per-gpu are mutually exclusive")


def default_submit_dir() -> str:
    try:
        return os.getcwd()
    except OSError:
        return os.environ.get("PWD", "")
