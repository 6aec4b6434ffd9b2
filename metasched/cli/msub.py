"""msub: submit to the federation as you would to sbatch, and follow your jobs.

  msub [sbatch options] [--precision P] [--site S] [--exclude-site S] script.sh
  msub plan [same options] script.sh    where it would go, and why not elsewhere
  msub status | list [--all] [--finished]
  msub show ID      msub watch ID      msub cancel ID      msub sites
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

from metasched import auth, jobspec
from metasched.cli import errors, jsonout
from metasched.cli.errors import UsageError
from metasched.states import JobState
from metasched.v1 import metasched_pb2 as pb
from metasched.v1 import metasched_pb2_grpc as pb_grpc

DEFAULT_DAEMON = "unix:/run/metasched/metaschedd.sock"
COMMANDS = ("submit", "plan", "status", "list", "show", "watch", "cancel", "sites")


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


def cmd_list(c: Client, opts: argparse.Namespace, out: Callable[[str], None]) -> int:
    resp = c.call("ListJobs", pb.ListJobsRequest(all_users=opts.all, include_final=opts.finished))
    if opts.json:
        out(jsonout.dumps(list(resp.jobs)))
        return 0
    out(
        f"{'JOBID':>8} {'USER':<10} {'NAME':<18} {'STATE':<12} {'SITE':<10} {'SLURMID':>8} "
        f"{'START (90% BY)':<26} REASON"
    )
    now = time.time()
    for j in resp.jobs:
        if j.started_at:
            start = stamp(j.started_at)
        elif j.estimate.start and not JobState.from_pb(j.state).is_final:
            bound = duration(j.estimate.start_p90 - now) if j.estimate.start_p90 > now else "now"
            start = f"{when(j.estimate.start, now)} ({bound})"
        else:
            start = "-"
        out(
            f"{j.id:>8} {j.user[:10]:<10} {j.spec.name[:18]:<18} {state_name(j.state):<12} "
            f"{j.site or '-':<10} {j.slurm_job_id or '-':>8} {start:<26} "
            f"{j.reason[:60]}"
        )
    return 0


def show_text(j: pb.Job) -> list[str]:
    lines = [
        f"Job {j.id} ({j.spec.name}) of {j.user}: {state_name(j.state)}",
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
    lines.append("  history:")
    for ev in j.events:
        where = f" {ev.site}" if ev.site else ""
        sid = f" slurm {ev.slurm_job_id}" if ev.slurm_job_id else ""
        lines.append(
            f"    {stamp(ev.at)}  {state_name(ev.state):<12}{where}{sid}"
            f"{'  ' + ev.detail if ev.detail else ''}"
        )
    return lines


def cmd_show(c: Client, opts: argparse.Namespace, out: Callable[[str], None]) -> int:
    j = c.call("GetJob", pb.GetJobRequest(job_id=opts.job_id))
    if opts.json:
        out(jsonout.dumps(j))
    else:
        for line in show_text(j):
            out(line)
    return 0


def cmd_cancel(c: Client, opts: argparse.Namespace, out: Callable[[str], None]) -> int:
    j = c.call("CancelJob", pb.CancelJobRequest(job_id=opts.job_id))
    if opts.json:
        out(jsonout.dumps(j))
    else:
        out(f"Job {j.id}: {state_name(j.state).lower()}")
    return 0


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
    elif command in ("show", "watch", "cancel"):
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
        opts = parser_for(command).parse_args(args)
        address = opts.daemon
        return HANDLERS[command](Client(opts.daemon), opts, lambda line: print(line, flush=True))

    return errors.run("msub", body, lambda: address)


if __name__ == "__main__":
    sys.exit(main())
