"""msub: submit to the federation as you would to sbatch, and follow your jobs.

  msub [sbatch options] [--precision P] [--site S] [--exclude-site S] script.sh
  msub plan [same options] script.sh    where it would go, and why not elsewhere
  msub status | list [--all] [--finished] [-r]    arrays folded (17_[3-999%50]); -r: one line a task
  msub show ID      msub watch ID      msub cancel ID...   msub sites
  msub hold ID...   msub release ID...               ID: 17, 17_5 or 17_[1-100]
  msub output ID [--follow] [--error]                the job's output, read at its site
  msub app ...      msub result ...     the app shelf (msub app --help; docs/apps.md)
Every command takes --json for scripts. The daemon is METASCHED_DAEMON (default: the local
socket unix:/run/metasched/metaschedd.sock), where you are known by your Unix account. From
elsewhere, use a token an admin created for you: METASCHED_TOKEN (or METASCHED_TOKEN_FILE),
with METASCHED_DAEMON=host:port and METASCHED_CA=<the daemon's CA file> for TLS.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import grpc

from metasched import arrays, auth, jobspec
from metasched.cli import errors, jsonout
from metasched.cli.errors import UsageError
from metasched.states import JobState
from metasched.v1 import metasched_pb2 as pb
from metasched.v1 import metasched_pb2_grpc as pb_grpc

DEFAULT_DAEMON = "unix:/run/metasched/metaschedd.sock"
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
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _sbatch_options(p: argparse.ArgumentParser) -> None:
    """The sbatch options msub understands, with sbatch's own names."""
    p.add_argument("-J", "--job-name", dest="name")
    p.add_argument("-N", "--nodes", type=_positive("nodes"))
    p.add_argument("-n", "--ntasks", type=_positive("ntasks"))
    p.add_argument("-c", "--cpus-per-task", type=_positive("cpus-per-task"))
    p.add_argument("--mem", type=_checked(jobspec.parse_mem))
    p.add_argument("--gres", type=_checked(jobspec.parse_gres))
    p.add_argument("--gpus-per-node", type=_checked(_gpus_per_node))
    p.add_argument("-t", "--time", type=_checked(jobspec.parse_time))
    p.add_argument("-p", "--partition")
    p.add_argument("-D", "--chdir")
    p.add_argument("-o", "--output")
    p.add_argument("-e", "--error")
    p.add_argument("-A", "--account")
    p.add_argument("--export", help="VAR=value[,VAR=value...] exported into the job")
    p.add_argument("--precision", help="fp64 fp32 tf32 bf16 fp16 fp8 int8")
    p.add_argument("--site", action="append", default=None, help="only this site (repeatable)")
    p.add_argument("--exclude-site", action="append", default=None, help="never this site")
    p.add_argument("-a", "--array", type=_checked(_array_text))
    p.add_argument("-d", "--dependency", type=_checked(_dependency_text))
    p.add_argument("-b", "--begin", type=_checked(jobspec.parse_begin))
    p.add_argument("-H", "--hold", action="store_const", const=True)
    p.add_argument("--kill-on-invalid-dep", choices=("yes", "no"))


def _array_text(text: str) -> str:
    jobspec.parse_array(text)
    return text.strip()


def _dependency_text(text: str) -> str:
    return str(jobspec.parse_dependency(text))


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


def _checked(fn: Callable[[str], Any]) -> Callable[[str], Any]:
    def conv(text: str) -> Any:
        try:
            return fn(text)
        except jobspec.SpecError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return conv


def _gpus_per_node(text: str) -> tuple[str, int]:
    gpu_type, _, count = text.rpartition(":")
    if not count.isdigit() or int(count) <= 0:
        raise jobspec.SpecError(f"bad --gpus-per-node {text!r}: use [type:]count")
    if int(count) > jobspec.MAX_GPUS_PER_NODE:
        raise jobspec.SpecError(f"bad --gpus-per-node {text!r}: more than any node has")
    return gpu_type.lower(), int(count)


def script_directives(script: str) -> list[str]:
    """The #SBATCH options of a script, as sbatch reads them: up to the first command."""
    args: list[str] = []
    for line in script.splitlines()[1:]:
        s = line.strip()
        if not s:
            continue
        if not s.startswith("#"):
            break
        if s.startswith("#SBATCH"):
            body = s[len("#SBATCH") :].split(" #", 1)[0]
            try:
                args += shlex.split(body)
            except ValueError as e:
                raise UsageError(f"bad #SBATCH line {s!r}: {e}") from None
    return args


def build_spec(
    opts: argparse.Namespace, script_path: str, warn: Callable[[str], None]
) -> pb.JobSpec:
    path = Path(script_path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read {script_path}: {e.strerror}") from None
    if len(raw) > jobspec.MAX_SCRIPT_BYTES:
        raise UsageError(
            f"{script_path} is {len(raw)} bytes; the limit is {jobspec.MAX_SCRIPT_BYTES}"
        )
    if b"\x00" in raw:
        raise UsageError(f"{script_path} is not a text script (it contains NUL bytes)")
    try:
        script = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{script_path} is not UTF-8 text") from None
    # #SBATCH lines first, the command line over them (as sbatch does)
    p = _Parser(add_help=False)
    _sbatch_options(p)
    from_script, unknown = p.parse_known_args(script_directives(script))
    for u in unknown:
        if u.startswith("-"):
            warn(f"#SBATCH {u} is not understood by msub; the site's sbatch will see it")
    merged = vars(from_script)
    merged.update({k: v for k, v in vars(opts).items() if v is not None})
    try:
        return _spec_of(argparse.Namespace(**merged), script, path)
    except (ValueError, TypeError) as e:  # e.g. text that is not valid Unicode (surrogates)
        raise UsageError(f"bad option value: {e}") from None


def _spec_of(o: argparse.Namespace, script: str, path: Path) -> pb.JobSpec:
    spec = pb.JobSpec(script=script, name=o.name or path.name)
    if o.nodes:
        spec.nodes = o.nodes
    if o.ntasks:
        spec.ntasks = o.ntasks
    if o.cpus_per_task:
        spec.cpus_per_task = o.cpus_per_task
    if o.mem:
        spec.mem_per_node_mb = o.mem
    gpu = o.gpus_per_node or o.gres
    if gpu:
        spec.gpu_type, spec.gpus_per_node = gpu
    if o.time:
        spec.time_limit_minutes = o.time
    for field, value in (
        ("partition", o.partition),
        ("workdir", o.chdir or os.getcwd()),
        ("output", o.output),
        ("error", o.error),
        ("account", o.account),
        ("precision", o.precision),
    ):
        if value:
            setattr(spec, field, value)
    if o.array:
        spec.array = o.array
    if o.dependency:
        spec.dependency = o.dependency
    if o.begin:
        spec.begin_time = o.begin
    spec.hold = bool(o.hold)
    spec.keep_invalid_dependency = o.kill_on_invalid_dep == "no"
    spec.sites.extend(o.site or [])
    spec.exclude_sites.extend(o.exclude_site or [])
    if o.export:
        for item in o.export.split(","):
            if item in ("NONE", "ALL"):
                continue
            key, eq, value = item.partition("=")
            spec.environment[key] = value if eq else os.environ.get(key, "")
    return spec


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


def cmd_submit(c: Client, opts: argparse.Namespace, out: Callable[[str], None]) -> int:
    spec = build_spec(opts, opts.script, _warn)
    resp = c.call("SubmitJob", pb.SubmitJobRequest(spec=spec))
    if opts.json:
        out(jsonout.dumps(resp))
        return 0
    e = resp.estimate
    if spec.array:
        tasks = arrays.parse_array(spec.array)
        out(
            f"Submitted array job {resp.job_id}: {tasks.count} tasks "
            f"{resp.job_id}_[{arrays.fold(tasks.tasks, tasks.max_running)}]"
        )
        return 0
    held = JobState.from_pb(resp.state) == JobState.QUEUED if resp.state else not e.site
    if e.site and not held:
        out(
            f"Submitted job {resp.job_id} to site {e.site} (partition {e.partition}); "
            f"{estimate_text(e)}"
        )
    elif e.site:
        # late binding: it waits here and goes to whichever site can start it first
        out(
            f"Submitted job {resp.job_id}; waiting in the global queue, best site now {e.site}; "
            f"{estimate_text(e)}"
        )
    else:
        out(f"Submitted job {resp.job_id}; queued" + (f" ({e.basis})" if e.basis else ""))
    return 0


def cmd_plan(c: Client, opts: argparse.Namespace, out: Callable[[str], None]) -> int:
    spec = build_spec(opts, opts.script, _warn)
    resp = c.call("Plan", pb.PlanRequest(spec=spec))
    if opts.json:
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


def cmd_list(c: Client, opts: argparse.Namespace, out: Callable[[str], None]) -> int:
    resp = c.call("ListJobs", pb.ListJobsRequest(all_users=opts.all, include_final=opts.finished))
    if opts.json:
        out(jsonout.dumps(list(resp.jobs)))
        return 0
    out(
        f"{'JOBID':>12} {'USER':<10} {'NAME':<18} {'STATE':<12} {'SITE':<10} {'SLURMID':>8} "
        f"{'START (90% BY)':<26} REASON"
    )
    now = time.time()
    shown = (
        [(job_name(j), j) for j in resp.jobs] if opts.array_tasks else fold_arrays(list(resp.jobs))
    )
    for name, j in shown:
        if j.started_at:
            start = stamp(j.started_at)
        elif j.estimate.start and not JobState.from_pb(j.state).is_final:
            bound = duration(j.estimate.start_p90 - now) if j.estimate.start_p90 > now else "now"
            start = f"{when(j.estimate.start, now)} ({bound})"
        else:
            start = "-"
        out(
            f"{name:>12} {j.user[:10]:<10} {j.spec.name[:18]:<18} {state_name(j.state):<12} "
            f"{j.site or '-':<10} {j.slurm_job_id or '-':>8} {start:<26} "
            f"{j.reason[:60]}"
        )
    return 0


def show_text(j: pb.Job) -> list[str]:
    lines = [
        f"Job {job_name(j)} ({j.spec.name}) of {j.user}: {state_name(j.state)}"
        + ("  (held)" if j.held else ""),
        f"  site {j.site or '-'}  partition {j.partition or '-'}  slurm job {j.slurm_job_id or '-'}"
        f"  attempt {j.attempt}",
        f"  submitted {stamp(j.submitted_at)}  started {stamp(j.started_at)}"
        f"  ended {stamp(j.ended_at)}",
    ]
    if JobState.from_pb(j.state).is_final:
        lines.append(f"  exit code {j.exit_code}")
    elif j.estimate.start and not j.started_at:
        lines.append(f"  {estimate_text(j.estimate)} at {j.estimate.site}")
    if j.reason:
        lines.append(f"  reason: {j.reason}")
    if j.spec.dependency:
        lines.append(f"  dependency: {j.spec.dependency}")
    lines.append(f"  output {j.stdout_path}")
    if j.stderr_path != j.stdout_path:
        lines.append(f"  error  {j.stderr_path}")
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
    resp = c.call(
        "ListJobs",
        pb.ListJobsRequest(array_id=ref.job_id, include_final=True, limit=100_000),
    )
    wanted = set(ref.tasks) if ref.tasks is not None else None
    tasks = [t for t in resp.jobs if wanted is None or t.array_task in wanted]
    if not tasks:
        raise UsageError(f"array {ref.job_id} has no task {ref}")
    return tasks


def cmd_show(c: Client, opts: argparse.Namespace, out: Callable[[str], None]) -> int:
    jobs = _resolve(c, opts.job_id)
    if len(jobs) == 1 and jobs[0].array_id:
        jobs = [c.call("GetJob", pb.GetJobRequest(job_id=jobs[0].id))]  # with its history
    if opts.json:
        out(jsonout.dumps(jobs[0] if len(jobs) == 1 else jobs))
        return 0
    if len(jobs) == 1:
        for line in show_text(jobs[0]):
            out(line)
        return 0
    first = jobs[0]
    counts: dict[str, int] = {}
    for t in jobs:
        counts[state_name(t.state).lower()] = counts.get(state_name(t.state).lower(), 0) + 1
    out(
        f"Array job {first.array_id} ({first.spec.name}) of {first.user}: {len(jobs)} tasks, "
        + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    )
    out(
        f"  output {first.stdout_path}"
        + ("" if first.stderr_path == first.stdout_path else f"  error {first.stderr_path}")
    )
    out(f"  {'TASK':>12} {'STATE':<12} {'SITE':<10} {'SLURMID':>8} EXIT")
    for name, t in fold_arrays(jobs):
        final = JobState.from_pb(t.state).is_final
        out(
            f"  {name:>12} {state_name(t.state):<12} {t.site or '-':<10} "
            f"{t.slurm_job_id or '-':>8} {t.exit_code if final else '-'}"
        )
    return 0


def _names(opts: argparse.Namespace) -> list[str]:
    for name in opts.jobs:
        try:
            arrays.parse_job_ref(name)
        except arrays.ArrayError as e:
            raise UsageError(str(e)) from None
    return list(opts.jobs)


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
    if final.id and JobState.from_pb(final.state).is_final and not opts.json:
        if JobState.from_pb(final.state) == JobState.LOST:  # no exit code is known
            out(f"job {final.id} ended {state_name(final.state)}: {final.reason}")
        else:
            out(f"job {final.id} ended {state_name(final.state)}, exit code {final.exit_code}")
    return 0 if final.id and JobState.from_pb(final.state) == JobState.COMPLETED else 1


def cmd_sites(c: Client, opts: argparse.Namespace, out: Callable[[str], None]) -> int:
    resp = c.call("ListSites", pb.ListSitesRequest())
    if opts.json:
        out(jsonout.dumps(list(resp.sites)))
        return 0
    out(
        f"{'SITE':<12} {'STATE':<9} {'CPUS FREE':>11} {'GPUS FREE':>10} {'RUN':>4} {'PEND':>5} "
        f"{'WAIT (1 cpu,1h)':<16} PARTITIONS / PRECISIONS"
    )
    for s in resp.sites:
        wait = (
            "-"
            if s.est_wait_seconds < 0 or s.state != "online"
            else (duration(s.est_wait_seconds) if s.est_wait_seconds > 60 else "none")
        )
        parts = "; ".join(
            f"{p.name}: {p.nodes}x{p.cpus_per_node}c"
            + "".join(f"+{g.count}x{g.type}" for g in p.gpus_per_node)
            + " ["
            + " ".join(x.name for x in p.precisions)
            + "]"
            for p in s.partitions
        )
        out(
            f"{s.name:<12} {s.state:<9} {s.free_cpus:>5}/{s.total_cpus:<5} "
            f"{s.free_gpus:>4}/{s.total_gpus:<5} {s.running_jobs:>4} {s.pending_jobs:>5} "
            f"{wait:<16} {parts}"
        )
    return 0


def parser_for(command: str) -> argparse.ArgumentParser:
    p = _Parser(
        prog=f"msub {command}" if command != "submit" else "msub",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--daemon", default=os.environ.get("METASCHED_DAEMON", DEFAULT_DAEMON))
    if command in ("submit", "plan"):
        _sbatch_options(p)
        p.add_argument("script")
    elif command in ("status", "list"):
        p.add_argument("--all", action="store_true", help="every user's jobs (admins)")
        p.add_argument("--finished", action="store_true", help="include ended jobs")
        p.add_argument(
            "-r", "--array", dest="array_tasks", action="store_true", help="one line a task"
        )
    elif command in ("cancel", "hold", "release"):
        p.add_argument("jobs", nargs="+", metavar="ID", help="17, 17_5 or 17_[1-100]")
        p.set_defaults(command=command)
    elif command in ("show", "output"):
        p.add_argument("job_id", metavar="ID", help="17 or 17_5")
        if command == "output":
            p.add_argument("-f", "--follow", action="store_true", help="until the job ends")
            p.add_argument("--error", action="store_true", help="the --error file")
    elif command == "watch":
        p.add_argument("job_id", type=_positive("job id", 2**63 - 1))
    return p


HANDLERS = {
    "submit": cmd_submit,
    "plan": cmd_plan,
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


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    command = "submit"
    if args and args[0] in COMMANDS:
        command = args.pop(0)
    address = os.environ.get("METASCHED_DAEMON", DEFAULT_DAEMON)

    def body() -> int:
        nonlocal address
        if args and args[0] in ("app", "result"):
            from metasched.cli import shelf  # it builds on this module

            for i, a in enumerate(args[:-1]):
                if a == "--daemon":
                    address = args[i + 1]
            return shelf.main(args[0], args[1:], lambda line: print(line, flush=True))
        opts = parser_for(command).parse_args(args)
        address = opts.daemon
        return HANDLERS[command](Client(opts.daemon), opts, lambda line: print(line, flush=True))

    return errors.run("msub", body, lambda: address)


if __name__ == "__main__":
    sys.exit(main())
