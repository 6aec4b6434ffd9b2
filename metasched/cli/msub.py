"""msub: submit to the federation as you would with sbatch, and follow your jobs.

  msub [sbatch options] [msub options] [script [arguments...]]    (no script: read stdin)
  msub plan [same options] script      where it would go, and why not elsewhere
  msub status | list [-u USER] [-t STATES] [-j IDS] [-n NAMES] [-S TIME] [-o COLUMNS]
                     [--all] [--finished] [--noheader] [-r] [--limit N]
                                  arrays folded (17_[3-999%50]); -r: one line a task
  msub show ID... [--script]    msub watch ID    msub cancel ID...    msub sites    msub --version
  msub hold ID...    msub release ID...                ID: 17, 17_5 or 17_[1-100]
  msub output ID [--follow] [--error]                  the job's output, read at its site
  msub app ...      msub result ...     the app shelf (msub app --help; docs/apps.md)

Every sbatch option of Slurm 22.05-25.11 means what it means to sbatch, from the command
line, SBATCH_* variables or #SBATCH lines (in that order of precedence); the few that
cannot work across sites are refused with the reason (docs/sbatch.md). msub's own options:
--precision P, --site S, --exclude-site S, --submit-key KEY, --json, --daemon ADDRESS.

The daemon is METASCHED_DAEMON (default: the local socket unix:/run/metasched/metaschedd.sock),
where you are known by your Unix account. From elsewhere, use a token an admin created for
you: METASCHED_TOKEN (or METASCHED_TOKEN_FILE), with METASCHED_DAEMON=host:port and
METASCHED_CA=<the daemon's CA file> for TLS.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import grpc

from metasched import __version__, arrays, auth, jobspec
from metasched.cli import errors, jsonout
from metasched.cli.errors import UsageError
from metasched.sbatch import argv as sargv
from metasched.sbatch import resolve
from metasched.sbatch.options import Arg, Kind, Option
from metasched.states import JobState, signal_name
from metasched.v1 import metasched_pb2 as pb
from metasched.v1 import metasched_pb2_grpc as pb_grpc

DEFAULT_DAEMON = "unix:/run/metasched/metaschedd.sock"
PAGE = 1000  # jobs asked for per ListJobs call (the daemon pages listings)
COMMANDS = (
    "submit",
    "plan",
    "status",
    "list",
    "show",
    "watch",
    "cancel",
    "hold",
    "release",
    "output",
    "sites",
    "app",
    "result",
)
# sbatch --wrap's script, byte for byte
WRAP_SCRIPT = "#!/bin/sh\n# This script was created by sbatch --wrap.\n\n{}\n"

# msub's own options, matched together with sbatch's (so an abbreviation must name one
# option of either)
MSUB_OPTIONS: tuple[Option, ...] = (
    Option("precision", "", Arg.REQUIRED, Kind.MSUB, "fp64 fp32 tf32 bf16 fp16 fp8 int8"),
    Option("site", "", Arg.REQUIRED, Kind.MSUB, "only this site (repeatable, or a,b)"),
    Option("exclude-site", "", Arg.REQUIRED, Kind.MSUB, "never this site (repeatable)"),
    Option("submit-key", "", Arg.REQUIRED, Kind.MSUB, "idempotency key (default: a new one)"),
    Option("json", "", Arg.NONE, Kind.MSUB, "machine-readable output"),
    Option("daemon", "", Arg.REQUIRED, Kind.MSUB, "metaschedd's address"),
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _positive(name: str, limit: int = 2**31 - 1) -> Callable[[str], int]:
    def conv(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            msg = f"{name} must be a whole number, not {text!r}"
            raise argparse.ArgumentTypeError(msg) from None
        if v <= 0:
            raise argparse.ArgumentTypeError(f"{name} must be at least 1, not {v}")
        if v > limit:
            raise argparse.ArgumentTypeError(f"{name} {v} is too large (at most {limit})")
        return v

    return conv


# ---------------------------------------------------------------- the request


@dataclass
class Submission:
    """What msub's command line asks for: the spec, and what msub itself should do."""

    spec: pb.JobSpec
    msub: resolve.Msub
    json: bool = False
    daemon: str = ""
    warnings: list[str] = field(default_factory=list)
    own: list[sargv.Given] = field(default_factory=list)  # the caller's own options (app run)
    words: list[str] = field(default_factory=list)  # an app run's words after the options


def _read_script(path: str) -> str:
    p = Path(path)
    try:
        raw = p.read_bytes() if path != "-" else sys.stdin.buffer.read()
    except FileNotFoundError:
        raise UsageError(f"unable to open file {path}") from None
    except (OSError, ValueError) as e:  # ValueError: stdin closed or not readable
        raise UsageError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    return _text_of(raw, path)


def _text_of(raw: bytes, what: str) -> str:
    if len(raw) > jobspec.MAX_SCRIPT_BYTES:
        raise UsageError(f"{what} is {len(raw)} bytes; the limit is {jobspec.MAX_SCRIPT_BYTES}")
    if b"\x00" in raw:
        raise UsageError(f"{what} is not a text script (it contains NUL bytes)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{what} is not UTF-8 text") from None


def _stdin_script() -> str:
    try:
        if sys.stdin is None or sys.stdin.isatty():
            raise UsageError(
                "no batch script: give a script file, --wrap=COMMAND, or a script on stdin"
            )
        raw = sys.stdin.buffer.read()
    except (OSError, ValueError, AttributeError) as e:
        raise UsageError(f"cannot read the script from stdin: {e}") from None
    if not raw.strip():
        raise UsageError("the batch script on stdin is empty")
    return _text_of(raw, "the script on stdin")


def parse_submission(
    args: list[str],
    environ: dict[str, str] | None = None,
    app_options: tuple[Option, ...] | None = None,
) -> Submission:
    """msub's command line (and the submitter's environment) -> the request, with sbatch's
    rules: options before the script, then the script and its arguments.

    app_options: an app's run (msub app run|plan), which takes the same options but brings
    no script (the daemon renders the app's): these options of its own are returned in
    .own, and the words after the options (the app) in .words."""
    env = dict(os.environ if environ is None else environ)
    own_options = app_options or ()
    try:
        given, rest = sargv.parse(args, sargv.CLI, extra=MSUB_OPTIONS + own_options)
        if app_options is not None and rest:  # the app, with options before and after it
            more, left = sargv.parse(rest[1:], sargv.CLI, extra=MSUB_OPTIONS + own_options)
            given, rest = given + more, rest[:1] + left
    except jobspec.SpecError as e:
        raise UsageError(str(e)) from None
    base = pb.JobSpec()
    out = Submission(base, resolve.Msub(), daemon=env.get("METASCHED_DAEMON", DEFAULT_DAEMON))
    sbatch_given = []
    for g in given:
        name = g.option.name
        if g.option in own_options:
            out.own.append(g)
        elif g.option not in MSUB_OPTIONS:
            sbatch_given.append(g)
        elif name == "precision":
            base.precision = g.value or ""
        elif name == "site":
            base.sites.extend(jobspec.split_list(g.value or ""))
        elif name == "exclude-site":
            base.exclude_sites.extend(jobspec.split_list(g.value or ""))
        elif name == "submit-key":
            base.submit_key = g.value or ""
        elif name == "json":
            out.json = True
        elif name == "daemon":
            out.daemon = g.value or ""
    wrap = next((g.value for g in reversed(sbatch_given) if g.option.name == "wrap"), None)
    if app_options is not None:
        if wrap is not None:
            raise UsageError("--wrap: an app's run brings no script of its own")
        script, default_name = "", ""  # the daemon names it after the app
        out.words = rest
    elif wrap is not None:
        if rest:
            raise UsageError("script arguments not permitted with --wrap option")
        script, default_name = WRAP_SCRIPT.format(wrap), "wrap"
    elif rest:
        script, default_name = _read_script(rest[0]), Path(rest[0]).name
        base.script_args.extend(rest[1:])
    elif any(g.option.name in ("help", "usage", "version") for g in sbatch_given):
        script, default_name = "#!/bin/sh\n", ""
    else:
        script, default_name = _stdin_script(), "sbatch"
    try:
        env_given = sargv.env_options(env)
        spec, out.msub = resolve.resolve(
            script,
            sbatch_given,
            env_given,
            environ=env,
            submit_dir=resolve.default_submit_dir(),
            base=base,
        )
    except jobspec.SpecError as e:
        raise UsageError(str(e)) from None
    except (ValueError, TypeError) as e:  # e.g. text that is not valid Unicode (surrogates)
        raise UsageError(f"bad option value: {e}") from None
    if not spec.name:
        spec.name = default_name
    if not spec.export_mode:  # sbatch's default: the submitter's whole environment
        spec.export_mode = "all"
        spec.environment.update({k: v for k, v in env.items() if jobspec.exportable(k)})
    if not spec.submit_key:
        spec.submit_key = uuid.uuid4().hex
    out.spec = spec
    return out


# ---------------------------------------------------------------- output


def when(t: float, now: float | None = None) -> str:
    if not t:
        return "-"
    now = now or time.time()
    d = t - now
    if d <= 60:
        return "now" if d <= 10 else "within a minute"
    return "in ~" + duration(d)


def duration(seconds: float) -> str:
    s = int(max(0, seconds))
    if s < 90:
        return f"{s}s"
    if s < 90 * 60:
        return f"{round(s / 60)} min"
    if s < 48 * 3600:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


def clock(seconds: float) -> str:
    """Elapsed time as squeue and sacct show it: [D-]HH:MM:SS."""
    s = int(max(0, seconds))
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return f"{d}-{h:02d}:{m:02d}:{s:02d}" if d else f"{h:02d}:{m:02d}:{s:02d}"


def stamp(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def state_name(value: int) -> str:
    return str(JobState.from_pb(value))


def estimate_text(e: pb.Estimate) -> str:
    if not e.start:
        return ""
    now = time.time()
    bound = duration(e.start_p90 - now) if e.start_p90 > now + 60 else "a minute"
    return f"expected start {when(e.start, now)} (90%: within {bound})"


def elapsed(j: pb.Job, now: float | None = None) -> float:
    if not j.started_at:
        return 0.0
    end = j.ended_at or (now or time.time())
    return max(0.0, end - j.started_at)


def exit_text(j: pb.Job) -> str:
    """The exit column: the script's exit status, or how it was killed ('-' when it did not
    exit on its own and nothing more is known: a TIMEOUT is not an exit code 0)."""
    state = JobState.from_pb(j.state)
    if not state.is_final:
        return "-"
    code = j.exit_code
    name = signal_name(code)
    if name:
        return f"{code} ({name})"
    if state in (JobState.COMPLETED, JobState.FAILED) or code:
        return str(code)
    return "-"


# ---------------------------------------------------------------- commands


class Client:
    def __init__(self, address: str) -> None:
        self.address = address
        self.channel = auth.client_channel(address)
        self.stub = pb_grpc.SchedulerStub(self.channel)
        self._metadata: tuple[tuple[str, str], ...] | None = None

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        if self._metadata is None:  # fetched at the first call: usage errors come first
            self._metadata = auth.client_metadata(self.address)
        return self._metadata

    def call(self, method: str, request: Any, timeout: float = 30) -> Any:
        return getattr(self.stub, method)(request, metadata=self.metadata, timeout=timeout)

    def stream(self, method: str, request: Any) -> Iterator[Any]:
        yield from getattr(self.stub, method)(request, metadata=self.metadata)


def _warn(message: str) -> None:
    print(f"msub: warning: {message}", file=sys.stderr)


def cmd_submit(c: Client, sub: Submission, out: Callable[[str], None]) -> int:
    if sub.msub.test_only:
        return cmd_plan(c, sub, out)
    resp = c.call("SubmitJob", pb.SubmitJobRequest(spec=sub.spec))
    if sub.json:
        out(jsonout.dumps(resp))
    elif sub.msub.parsable:
        out(str(resp.job_id))
    elif not sub.msub.quiet:
        out(_submitted_text(resp, sub.spec))
    if sub.msub.wait:
        quiet = sub.json or sub.msub.parsable or sub.msub.quiet
        return wait_for(c, resp.job_id, bool(sub.spec.array), quiet=quiet, out=out)
    return 0


def _submitted_text(resp: pb.SubmitJobResponse, spec: pb.JobSpec) -> str:
    if spec.array:
        tasks = arrays.parse_array(spec.array)
        return (
            f"Submitted array job {resp.job_id}: {tasks.count} tasks "
            f"{resp.job_id}_[{arrays.fold(tasks.tasks, tasks.max_running)}]"
        )
    e = resp.estimate
    held = JobState.from_pb(resp.state) == JobState.QUEUED if resp.state else not e.site
    if e.site and not held:
        return (
            f"Submitted job {resp.job_id} to site {e.site} (partition {e.partition}); "
            f"{estimate_text(e)}"
        )
    if e.site:  # late binding: it waits here and goes to whichever site can start it first
        return (
            f"Submitted job {resp.job_id}; waiting in the global queue, best site now {e.site}; "
            f"{estimate_text(e)}"
        )
    return f"Submitted job {resp.job_id}; queued" + (f" ({e.basis})" if e.basis else "")


def wait_for(c: Client, job_id: int, array: bool, quiet: bool, out: Callable[[str], None]) -> int:
    """sbatch -W: wait for the job to end; exit with its exit code (1 if it did not exit
    on its own with one). An array: every task, and the highest of their codes."""
    ids = [job_id]
    if array:
        req = pb.ListJobsRequest(array_id=job_id, include_final=True)
        ids = [t.id for t in list_jobs(c, req)[0]] or ids
    worst = 0
    for i in ids:
        final = pb.Job()
        for j in c.stream("WatchJob", pb.WatchJobRequest(job_id=i)):
            final = j
        state = JobState.from_pb(final.state) if final.id else None
        if state is None or not state.is_final:
            raise UsageError(f"lost track of job {job_name(final) if final.id else i}")
        if not quiet:
            ended = f"ended {state_name(final.state)}, exit code {exit_text(final)}"
            out(f"Job {job_name(final)} {ended}")
        if state != JobState.COMPLETED:
            code = final.exit_code
            worst = max(worst, code if 0 < code < 256 else 1)
    return worst


def cmd_plan(c: Client, sub: Submission, out: Callable[[str], None]) -> int:
    resp = c.call("Plan", pb.PlanRequest(spec=sub.spec))
    if sub.json:
        out(jsonout.dumps(resp))
        return 0
    out(f"{'SITE':<16} {'PARTITION':<12} {'EXPECTED START':<20} {'90% WITHIN':<12} WHY NOT")
    now = time.time()
    for ch in resp.choices:
        if ch.eligible and ch.estimate.start:
            out(
                f"{ch.site:<16} {ch.estimate.partition:<12} {when(ch.estimate.start, now):<20} "
                f"{duration(ch.estimate.start_p90 - now):<12}"
            )
        else:
            out(f"{ch.site:<16} {'-':<12} {'-':<20} {'-':<12} {ch.reason}")
    return 0


# squeue / sacct state names and their short forms -> msub's states
_STATE_WORDS: dict[str, tuple[JobState, ...]] = {
    "pd": (JobState.QUEUED, JobState.FORWARDING, JobState.PENDING),
    "pending": (JobState.QUEUED, JobState.FORWARDING, JobState.PENDING),
    "r": (JobState.RUNNING,),
    "cg": (JobState.CANCELLING,),
    "completing": (JobState.CANCELLING,),
    "cd": (JobState.COMPLETED,),
    "f": (JobState.FAILED,),
    "ca": (JobState.CANCELLED,),
    "to": (JobState.TIMEOUT,),
    "oom": (JobState.OUT_OF_MEMORY,),
    "nf": (JobState.NODE_FAIL,),
    "all": tuple(JobState),
}


def parse_states(text: str) -> list[JobState]:
    out: list[JobState] = []
    for word in jobspec.split_list(text):
        w = word.lower()
        if w in _STATE_WORDS:
            out.extend(_STATE_WORDS[w])
            continue
        try:
            out.append(JobState(w.upper()))
        except ValueError:
            names = ", ".join(str(s) for s in JobState)
            raise UsageError(
                f"unknown state {word!r}: use {names} (or squeue's PD, R, CD...)"
            ) from None
    return list(dict.fromkeys(out))


def parse_since(text: str, now: float | None = None) -> float:
    """sacct -S: an absolute time (YYYY-MM-DD[THH:MM[:SS]], HH:MM[:SS] today) or now-N
    [minutes|hours|days|weeks], or a duration back from now (30m, 2h, 3d)."""
    now = time.time() if now is None else now
    s = text.strip()
    units = {
        "s": 1,
        "m": 60,
        "min": 60,
        "minutes": 60,
        "h": 3600,
        "hours": 3600,
        "d": 86400,
        "days": 86400,
        "w": 604800,
        "weeks": 604800,
    }
    low = s.lower().removeprefix("now-")
    num = low.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = low[len(num) :] or ("m" if s.lower().startswith("now-") else "")
    if num.isdigit() and unit in units:
        return now - int(num) * units[unit]
    for fmt in ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d", "%Y-%m-%d %H:%M:%S"):
        try:
            return time.mktime(time.strptime(s, fmt))
        except ValueError:
            pass
    for fmt in ("%H:%M:%S", "%H:%M"):
        try:
            t = time.strptime(s, fmt)
        except ValueError:
            continue
        day = time.localtime(now)
        return time.mktime(
            (day.tm_year, day.tm_mon, day.tm_mday, t.tm_hour, t.tm_min, t.tm_sec, 0, 0, -1)
        )
    raise UsageError(f"bad time {text!r}: use e.g. 2025-06-01T09:00, 09:00, now-2hours or 3d")


# (header, width, value of a job) for each column `msub status -o` knows
def _start(j: pb.Job, now: float) -> str:
    if j.started_at:
        return stamp(j.started_at)
    if j.estimate.start and not JobState.from_pb(j.state).is_final:
        bound = duration(j.estimate.start_p90 - now) if j.estimate.start_p90 > now else "now"
        return f"{when(j.estimate.start, now)} ({bound})"
    return "-"


COLUMNS: dict[str, tuple[str, int, Callable[[pb.Job, float], str]]] = {
    "id": ("JOBID", 12, lambda j, now: job_name(j)),
    "user": ("USER", 10, lambda j, now: j.user),
    "name": ("NAME", 18, lambda j, now: j.spec.name),
    "state": ("STATE", 12, lambda j, now: state_name(j.state)),
    "site": ("SITE", 10, lambda j, now: j.site or "-"),
    "partition": ("PARTITION", 10, lambda j, now: j.partition or "-"),
    "slurm_id": ("SLURMID", 8, lambda j, now: j.slurm_job_id or "-"),
    "submitted": ("SUBMITTED", 19, lambda j, now: stamp(j.submitted_at)),
    "started": ("STARTED", 19, lambda j, now: stamp(j.started_at)),
    "ended": ("ENDED", 19, lambda j, now: stamp(j.ended_at)),
    "elapsed": ("ELAPSED", 11, lambda j, now: clock(elapsed(j, now)) if j.started_at else "-"),
    "time_limit": (
        "TIMELIMIT",
        11,
        lambda j, now: (
            "UNLIMITED"
            if j.spec.time_unlimited
            else (
                clock(j.spec.time_limit_minutes * 60) if j.spec.time_limit_minutes else "partition"
            )
        ),
    ),
    "exit": ("EXIT", 10, lambda j, now: exit_text(j)),
    "start": ("START (90% BY)", 26, _start),
    "reason": ("REASON", 0, lambda j, now: j.reason[:80]),
}
DEFAULT_COLUMNS = "id,user,name,state,site,slurm_id,elapsed,start,reason"
FINISHED_COLUMNS = "id,user,name,state,site,slurm_id,elapsed,exit,reason"


def cmd_list(c: Client, opts: argparse.Namespace, out: Callable[[str], None]) -> int:
    req = pb.ListJobsRequest(all_users=opts.all, include_final=opts.finished)
    if opts.user:
        req.users.extend(jobspec.split_list(opts.user))
    refs = _refs(opts.jobs) if opts.jobs else []
    if refs:
        req.job_ids.extend(dict.fromkeys(r.job_id for r in refs))
        req.include_final = True
    if opts.name:
        req.names.extend(jobspec.split_list(opts.name))
    if opts.states:
        states = parse_states(opts.states)
        req.states.extend(s.to_pb() for s in states)
        req.include_final = req.include_final or any(s.is_final for s in states)
    if opts.since:
        req.since = parse_since(opts.since)
        req.include_final = True
    jobs, more = list_jobs(c, req, opts.limit or 0)
    if more:
        print(
            f"msub: {len(jobs)} jobs shown; there are more (raise --limit, or leave it out to "
            "list them all)",
            file=sys.stderr,
        )
    if refs:  # squeue -j 17_5 or 17_[1-3]: the daemon lists array 17; keep those tasks
        jobs = [j for j in jobs if any(_names_job(r, j) for r in refs)]
    if opts.json:
        out(jsonout.dumps(jobs))
        return 0
    columns = opts.format or (FINISHED_COLUMNS if req.include_final else DEFAULT_COLUMNS)
    names = [n.strip().lower() for n in columns.split(",") if n.strip()]
    unknown = [n for n in names if n not in COLUMNS]
    if unknown or not names:
        raise UsageError(
            f"unknown column {unknown[0] if unknown else columns!r}: use {', '.join(COLUMNS)}"
        )
    cols = [COLUMNS[n] for n in names]

    def row(values: list[str]) -> str:
        cells = []
        for (_, width, _), v in zip(cols, values, strict=True):
            cells.append(f"{v[: max(width, 1) * 4]:<{width}}" if width else v)
        return " ".join(cells).rstrip()

    if not opts.noheader:
        out(row([h for h, _, _ in cols]))
    now = time.time()
    shown = [(job_name(j), j) for j in jobs] if opts.array_tasks else fold_arrays(jobs)
    for name, j in shown:
        out(
            row(
                [
                    name if n == "id" else fn(j, now)
                    for n, (_, _, fn) in zip(names, cols, strict=True)
                ]
            )
        )
    return 0


def _refs(words: list[str]) -> list[arrays.JobRef]:
    """Job ids as squeue -j takes them (a,b, repeatable), each 17, 17_5 or 17_[1-3]."""
    out = []
    for w in words:
        for part in _split_refs(w):
            try:
                out.append(arrays.parse_job_ref(part))
            except arrays.ArrayError as e:
                raise UsageError(str(e)) from None
    if not out:
        raise UsageError("give at least one job id")
    return out


def _split_refs(text: str) -> list[str]:
    """a,b,17_[1,3] -> a, b, 17_[1,3]: commas inside brackets stay."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def _names_job(ref: arrays.JobRef, j: pb.Job) -> bool:
    if ref.tasks is None:
        return j.id == ref.job_id or j.array_id == ref.job_id
    return j.array_id == ref.job_id and j.array_task in ref.tasks


def job_name(j: pb.Job) -> str:
    """17, or 17_5 for an array task."""
    return f"{j.array_id}_{j.array_task}" if j.array_id else str(j.id)


def fold_arrays(jobs: list[pb.Job]) -> list[tuple[str, pb.Job]]:
    """(shown id, job) per line as squeue shows arrays: the tasks still in the global queue
    (not yet placed) of one array and state on one line, 17_[3-999%50]; the rest one a line."""
    lines: list[tuple[str, pb.Job]] = []
    groups: dict[tuple[int, int], list[pb.Job]] = {}
    for j in jobs:
        state = JobState.from_pb(j.state)
        if j.array_id and state in (JobState.QUEUED, JobState.WAITING):
            key = (j.array_id, j.state)
            if key not in groups:
                groups[key] = []
                lines.append(("", j))  # placeholder, in the order of its first task
            groups[key].append(j)
        else:
            lines.append((job_name(j), j))
    out = []
    for shown, j in lines:
        if shown:
            out.append((shown, j))
            continue
        group = groups[(j.array_id, j.state)]
        limit = arrays.parse_array(j.spec.array).max_running if j.spec.array else 0
        if len(group) == 1:
            out.append((job_name(j), j))
        else:
            folded = arrays.fold([t.array_task for t in group], limit)
            out.append((f"{j.array_id}_[{folded}]", j))
    return out


def list_jobs(c: Client, req: pb.ListJobsRequest, most: int = 0) -> tuple[list[pb.Job], bool]:
    """Every job the listing has, following the daemon's pages, or the first `most` of them;
    and whether there were more than `most`."""
    jobs: list[pb.Job] = []
    req.cursor = ""
    while True:
        req.limit = min(PAGE, most - len(jobs)) if most else PAGE
        resp = c.call("ListJobs", req)
        jobs.extend(resp.jobs)
        if not resp.next_cursor:
            return jobs, False
        if most and len(jobs) >= most:
            return jobs, True
        req.cursor = resp.next_cursor


def show_text(j: pb.Job) -> list[str]:
    s = j.spec
    lines = [
        f"Job {job_name(j)} ({s.name}) of {j.user}: {state_name(j.state)}"
        + ("  (held by an admin)" if j.held_by_admin else "  (held)" if j.held else "")
        + (f"  priority {j.priority}" if j.priority else ""),
        f"  site {j.site or '-'}  partition {j.partition or '-'}  slurm job {j.slurm_job_id or '-'}"
        f"  attempt {j.attempt}",
        f"  submitted {stamp(j.submitted_at)}  started {stamp(j.started_at)}"
        f"  ended {stamp(j.ended_at)}" + (f"  elapsed {clock(elapsed(j))}" if j.started_at else ""),
    ]
    if JobState.from_pb(j.state).is_final:
        lines.append(f"  exit code {exit_text(j)}")
    elif j.estimate.start and not j.started_at:
        lines.append(f"  {estimate_text(j.estimate)} at {j.estimate.site}")
    if j.reason:
        lines.append(f"  reason: {j.reason}")
    if s.dependency:
        lines.append(f"  dependency: {s.dependency}")
    lines.append(f"  output {j.stdout_path}")
    if j.stderr_path != j.stdout_path:
        lines.append(f"  error  {j.stderr_path}")
    options = resolve.to_words(s)
    if s.partition:
        options.append(f"--partition={s.partition}")
    if options:
        lines.append("  options: " + " ".join(options))
    lines.append("  history:")
    for ev in j.events:
        where = f" {ev.site}" if ev.site else ""
        sid = f" slurm {ev.slurm_job_id}" if ev.slurm_job_id else ""
        lines.append(
            f"    {stamp(ev.at)}  {state_name(ev.state):<12}{where}{sid}"
            f"{'  ' + ev.detail if ev.detail else ''}"
        )
    return lines


def _resolve(c: Client, text: str) -> list[pb.Job]:
    """The jobs a user's name stands for: 17 (a job, or all of array 17), 17_5, 17_[1-3]."""
    try:
        ref = arrays.parse_job_ref(text)
    except arrays.ArrayError as e:
        raise UsageError(str(e)) from None
    j = c.call("GetJob", pb.GetJobRequest(job_id=ref.job_id))
    if j.array_id != ref.job_id and ref.tasks is None:
        return [j]  # a plain job (or a task asked for by its own job id)
    if j.array_id != ref.job_id:
        raise UsageError(f"job {ref.job_id} is not an array")
    every, _ = list_jobs(c, pb.ListJobsRequest(array_id=ref.job_id, include_final=True))
    wanted = set(ref.tasks) if ref.tasks is not None else None
    tasks = [t for t in every if wanted is None or t.array_task in wanted]
    if not tasks:
        raise UsageError(f"array {ref.job_id} has no task {ref}")
    return tasks


def cmd_show(c: Client, opts: argparse.Namespace, out: Callable[[str], None]) -> int:
    shown: list[list[pb.Job]] = []
    for name in opts.jobs:
        jobs = _resolve(c, name)
        if opts.script:  # (an array's tasks share one script)
            script = c.call("GetJobScript", pb.GetJobScriptRequest(job_id=jobs[0].id))
            if opts.json:
                out(jsonout.dumps(script))
            else:
                sys.stdout.write(script.script)  # as submitted, byte for byte
                sys.stdout.flush()
            continue
        if len(jobs) == 1 and jobs[0].array_id:
            jobs = [c.call("GetJob", pb.GetJobRequest(job_id=jobs[0].id))]  # with its history
        shown.append(jobs)
    if opts.script:
        return 0
    if opts.json:
        flat = [j for jobs in shown for j in jobs]
        out(jsonout.dumps(flat[0] if len(flat) == 1 else flat))
        return 0
    for k, jobs in enumerate(shown):
        if k:
            out("")
        for line in show_text(jobs[0]) if len(jobs) == 1 else array_text(jobs):
            out(line)
    return 0


def array_text(jobs: list[pb.Job]) -> list[str]:
    first = jobs[0]
    counts: dict[str, int] = {}
    for t in jobs:
        counts[state_name(t.state).lower()] = counts.get(state_name(t.state).lower(), 0) + 1
    lines = [
        f"Array job {first.array_id} ({first.spec.name}) of {first.user}: {len(jobs)} tasks, "
        + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())),
        f"  output {first.stdout_path}"
        + ("" if first.stderr_path == first.stdout_path else f"  error {first.stderr_path}"),
        f"  {'TASK':>12} {'STATE':<12} {'SITE':<10} {'SLURMID':>8} EXIT",
    ]
    for name, t in fold_arrays(jobs):
        lines.append(
            f"  {name:>12} {state_name(t.state):<12} {t.site or '-':<10} "
            f"{t.slurm_job_id or '-':>8} {exit_text(t)}"
        )
    return lines


def _names(opts: argparse.Namespace) -> list[str]:
    names = [n for w in opts.jobs for n in _split_refs(w)]
    for name in names:
        try:
            arrays.parse_job_ref(name)
        except arrays.ArrayError as e:
            raise UsageError(str(e)) from None
    return names


def cmd_cancel(c: Client, opts: argparse.Namespace, out: Callable[[str], None]) -> int:
    resp = c.call("CancelJobs", pb.CancelJobsRequest(jobs=_names(opts)))
    if opts.json:
        out(jsonout.dumps(list(resp.jobs)))
        return 0
    counts: dict[str, int] = {}
    for j in resp.jobs:
        counts[state_name(j.state).lower()] = counts.get(state_name(j.state).lower(), 0) + 1
    if len(resp.jobs) == 1:
        out(f"Job {job_name(resp.jobs[0])}: {state_name(resp.jobs[0].state).lower()}")
    else:
        out(f"{len(resp.jobs)} jobs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return 0


def cmd_hold(c: Client, opts: argparse.Namespace, out: Callable[[str], None]) -> int:
    release = opts.command == "release"
    resp = c.call("HoldJobs", pb.HoldJobsRequest(jobs=_names(opts), release=release))
    if opts.json:
        out(jsonout.dumps(list(resp.jobs)))
        return 0
    for j in resp.jobs:
        out(
            f"Job {job_name(j)}: {state_name(j.state).lower()}"
            + (f" ({j.reason})" if j.reason else "")
        )
    return 0


FOLLOW_POLL_S = 1.0


def cmd_output(c: Client, opts: argparse.Namespace, out: Callable[[str], None]) -> int:
    """The job's output (or --error) as it is at its site; --follow: keep printing what is
    appended until the job has ended and everything is read."""
    offset = 0
    stream = sys.stdout.buffer
    while True:
        try:
            resp = c.call(
                "ReadOutput",
                pb.ReadOutputRequest(job=opts.job_id, stderr=opts.error, offset=offset),
            )
        except grpc.RpcError as e:
            # following a job that has not started (or written) yet: wait for its file
            if not opts.follow or e.code() != grpc.StatusCode.FAILED_PRECONDITION:
                raise
            jobs = _resolve(c, opts.job_id)
            if len(jobs) != 1 or JobState.from_pb(jobs[0].state).is_final:
                raise
            time.sleep(FOLLOW_POLL_S)
            continue
        if resp.data:
            stream.write(resp.data)
            stream.flush()
            offset = resp.offset + len(resp.data)
        more = offset < resp.size
        if more:
            continue
        if not opts.follow or JobState.from_pb(resp.state).is_final:
            return 0
        time.sleep(FOLLOW_POLL_S)


def cmd_watch(c: Client, opts: argparse.Namespace, out: Callable[[str], None]) -> int:
    last = None
    final = pb.Job()
    # The daemon ends a watch that lasts longer than its watch_max_seconds: open another.
    while not (final.id and JobState.from_pb(final.state).is_final):
        for j in c.stream("WatchJob", pb.WatchJobRequest(job_id=opts.job_id)):
            final = j
            if opts.json:
                out(jsonout.dumps(j))
                continue
            key = (j.state, j.site, j.slurm_job_id)
            if key != last:
                last = key
                extra = (
                    f" at {j.site} (slurm {j.slurm_job_id})"
                    if j.slurm_job_id
                    else (f" at {j.site}" if j.site else "")
                )
                out(
                    f"{stamp(time.time())}  job {j.id} {state_name(j.state)}{extra}"
                    + (f"  {j.reason}" if j.reason and not j.started_at else "")
                )
        if not final.id:
            break
    if final.id and JobState.from_pb(final.state).is_final and not opts.json:
        if JobState.from_pb(final.state) == JobState.LOST:  # no exit code is known
            out(f"job {final.id} ended {state_name(final.state)}: {final.reason}")
        else:
            out(f"job {final.id} ended {state_name(final.state)}, exit code {exit_text(final)}")
    return 0 if final.id and JobState.from_pb(final.state) == JobState.COMPLETED else 1


def cmd_sites(c: Client, opts: argparse.Namespace, out: Callable[[str], None]) -> int:
    resp = c.call("ListSites", pb.ListSitesRequest())
    if opts.json:
        out(jsonout.dumps(list(resp.sites)))
        return 0
    for line in sites_table(resp.sites):
        out(line)
    return 0


def wait_text(s: pb.SiteSummary) -> str:
    """A site's WAIT: "none" only when a one-core job would start there at once."""
    if s.est_wait_seconds < 0 or s.state != "online":
        return "-"
    return "none" if s.est_wait_seconds == 0 else duration(max(1.0, s.est_wait_seconds))


def sites_table(sites: Sequence[pb.SiteSummary]) -> list[str]:
    lines = [
        f"{'SITE':<12} {'STATE':<9} {'CPUS FREE':>11} {'GPUS FREE':>10} {'RUN':>4} {'PEND':>5} "
        f"{'WAIT (1 cpu,1h)':<16} PARTITIONS / PRECISIONS"
    ]
    for s in sites:
        parts = "; ".join(
            f"{p.name}: {p.nodes}x{p.cpus_per_node}c"
            + "".join(f"+{g.count}x{g.type}" for g in p.gpus_per_node)
            + " ["
            + " ".join(x.name for x in p.precisions)
            + "]"
            for p in s.partitions
        )
        lines.append(
            f"{s.name:<12} {s.state:<9} {s.free_cpus:>5}/{s.total_cpus:<5} "
            f"{s.free_gpus:>4}/{s.total_gpus:<5} {s.running_jobs:>4} {s.pending_jobs:>5} "
            f"{wait_text(s):<16} {parts}"
        )
    return lines


def parser_for(command: str) -> argparse.ArgumentParser:
    """The parser of a following command (status, show, ...); submit and plan take sbatch's
    command line instead (parse_submission)."""
    p = _Parser(
        prog=f"msub {command}",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
        add_help=command not in ("status", "list"),  # -h is squeue's --noheader there
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--daemon", default=os.environ.get("METASCHED_DAEMON", DEFAULT_DAEMON))
    p.add_argument("--version", action="version", version=f"msub {__version__}")
    if command in ("status", "list"):
        p.add_argument("-a", "--all", action="store_true", help="every user's jobs (admins)")
        p.add_argument("--finished", action="store_true", help="include ended jobs")
        p.add_argument("-u", "--user", help="only these users' jobs (a,b; others: admins)")
        p.add_argument("-t", "--states", "--state", help="only jobs in these states (a,b)")
        p.add_argument("-j", "--jobs", action="append", help="only these job ids (a,b)")
        p.add_argument("-n", "--name", help="only jobs with these names (a,b)")
        p.add_argument("-S", "--since", help="jobs submitted or ended since (sacct -S)")
        p.add_argument("-o", "--format", help=f"columns: {','.join(COLUMNS)}")
        p.add_argument("-h", "--noheader", action="store_true", help="no header line")
        p.add_argument(
            "-r", "--array", dest="array_tasks", action="store_true", help="one line a task"
        )
        p.add_argument(
            "--limit", type=_positive("limit"), help="at most N jobs (default: all of them)"
        )
        p.add_argument("--help", action="help")
    elif command in ("show", "cancel", "hold", "release"):
        p.add_argument("jobs", nargs="+", metavar="ID", help="17, 17_5 or 17_[1-100]")
        p.set_defaults(command=command)
        if command == "show":
            p.add_argument("--script", action="store_true", help="print the job's batch script")
    elif command == "output":
        p.add_argument("job_id", metavar="ID", help="17 or 17_5")
        p.add_argument("-f", "--follow", action="store_true", help="until the job ends")
        p.add_argument("--error", action="store_true", help="the --error file")
    elif command == "watch":
        p.add_argument("job_id", type=_positive("job id", 2**63 - 1))
    return p


HANDLERS: dict[str, Callable[[Client, argparse.Namespace, Callable[[str], None]], int]] = {
    "status": cmd_list,
    "list": cmd_list,
    "show": cmd_show,
    "watch": cmd_watch,
    "cancel": cmd_cancel,
    "hold": cmd_hold,
    "release": cmd_hold,
    "output": cmd_output,
    "sites": cmd_sites,
}


def usage() -> str:
    return __doc__ or ""


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    command = "submit"
    if args and args[0] in COMMANDS:
        command = args.pop(0)
    elif args and not args[0].startswith("-") and "/" not in args[0] and not Path(args[0]).exists():
        # sbatch would say "Unable to open file"; a bare word may as well be a mistyped command
        word = errors.one_line(args[0])[:40]
        return errors.run(
            "msub",
            lambda: _fail(
                f"{word!r} is neither a command ({', '.join(COMMANDS)}) nor a script file"
            ),
            lambda: "",
        )
    address = os.environ.get("METASCHED_DAEMON", DEFAULT_DAEMON)
    printer: Callable[[str], None] = lambda line: print(line, flush=True)  # noqa: E731

    def body() -> int:
        nonlocal address
        if command in ("app", "result"):
            from metasched.cli import shelf  # it builds on this module

            for i, a in enumerate(args[:-1]):
                if a == "--daemon":
                    address = args[i + 1]
            return shelf.main(command, args, printer)
        if command in ("submit", "plan"):
            sub = parse_submission(args)
            address = sub.daemon
            if sub.msub.help:
                printer(usage())
                return 0
            if sub.msub.version:
                printer(f"msub {__version__}")
                return 0
            if command == "plan":
                return cmd_plan(Client(sub.daemon), sub, printer)
            return cmd_submit(Client(sub.daemon), sub, printer)
        opts = parser_for(command).parse_args(args)
        address = opts.daemon
        return HANDLERS[command](Client(opts.daemon), opts, printer)

    return errors.run("msub", body, lambda: address)


def _fail(message: str) -> int:
    raise UsageError(message)


if __name__ == "__main__":
    sys.exit(main())
