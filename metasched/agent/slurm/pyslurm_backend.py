"""The pyslurm backend, for Slurm 25.11 sites with pyslurm 25.11 built against their Slurm.

pyslurm gives jobs, nodes, partitions, submit and cancel over libslurm's RPCs. What it cannot
know without slurmdbd is derived the way the cli backend derives it:
  - GPUs in use: Node.allocated_gres comes from allocated TRES, which carry GPUs only with
    AccountingStorageTRES=gres/gpu, fatal to slurmctld without slurmdbd; so a node's GPUs in
    use are summed over the jobs' per-node allocations (Job.get_resource_layout_per_node, the
    same numbers sinfo's GresUsed shows).
  - finished jobs: pyslurm.db needs slurmdbd; a job that left the queue is looked up by the
    cli backend's finished() (sacct --json with slurmdbd, else the completion log, sacct -c),
    which is why this backend also needs the site's Slurm commands (slurm_bin_dir).

Facts from a real 25.11.7 site with pyslurm 25.11.2 (recorded objects: tests/data/pyslurm/):
`import pyslurm` with no configuration ends the process in libslurm (fatal, no exception), so
a child process tries the import with this site's slurm.conf first (load()); there is no
slurm_version() (pyslurm.version is a module): the version is slurm_api_version(); Jobs.load()
is keyed by id; Job.gres_per_node keys read 'gres/gpu:h100' and a job's nodes are
`allocated_nodes`; Job.tres_per_job does not parse '--gpus=N' (None); time_limit must be an
int; user_id without group_id runs the job with gid root; Job.load() of a purged job raises
RPCError 'Invalid job id specified' (Job(id).cancel() does not); a job cancelled while running
shows exit_code_signal 15. pyslurm holds the GIL through a submission (and at times a load): a
call to a slurmctld that does not answer blocks the agent's other threads until Slurm's
MessageTimeout (SIGTERM still ends the agent in time: agent/stop_deadline.py).
"""

from __future__ import annotations

import importlib
import os
import pwd
import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from metasched import jobspec, tags
from metasched.agent.slurm import parse
from metasched.agent.slurm.base import (
    Node,
    PartitionInfo,
    SlurmBackend,
    SlurmError,
    SlurmJob,
    SlurmUnavailable,
    SubmitRequest,
    submitter,
)
from metasched.agent.slurm.cli import CliBackend
from metasched.sbatch import argv as sargv

# Slurm errnos meaning "could not talk to slurmctld" (slurm_errno.h: communication errors
# 1000-1010, protocol socket errors 5000-5010).
_UNAVAILABLE_ERRNOS = frozenset(range(1000, 1011)) | frozenset(range(5000, 5011))
_INVALID_JOB_ID = 2017  # ESLURM_INVALID_JOB_ID: a job slurmctld no longer keeps
# Where libslurm looks without SLURM_CONF (Debian's and most sites' builds).
DEFAULT_SLURM_CONF = "/etc/slurm/slurm.conf"


def _num(value: Any) -> int:
    """pyslurm gives None (unset) or 'UNLIMITED' for no limit, and plain ints otherwise."""
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def gpu_counts(gres: Any) -> dict[str, int]:
    """A pyslurm GRES dict -> {gpu type: count} (other GRES ignored, untyped GPUs under '').
    Keys read 'gpu:h100' (Node.configured_gres), 'gres/gpu:h100' (Job.gres_per_node) or 'gpu';
    values are counts, or {'count': n, 'indexes': ...} in a job's per-node layout."""
    out: dict[str, int] = {}
    for key, value in (gres or {}).items():
        name, _, gtype = str(key).removeprefix("gres/").removeprefix("gres:").partition(":")
        if name != "gpu":
            continue
        count = value.get("count") if isinstance(value, Mapping) else value
        out[gtype] = out.get(gtype, 0) + _num(count)
    return out


def _add(into: dict[str, int], more: Mapping[str, int], times: int = 1) -> None:
    for k, v in more.items():
        into[k] = into.get(k, 0) + v * times


def job_layout(job: Any) -> dict[str, dict[str, int]]:
    """GPUs a job holds on each node: {node: {type: count}} ({} when it holds none)."""
    layout = job.get_resource_layout_per_node() or {}
    return {node: gpu_counts(part.get("gres")) for node, part in layout.items()}


# ------------------------------------------------------------------ pure conversions
def job_from_pyslurm(job: Any, layout: Mapping[str, Mapping[str, int]] | None = None) -> SlurmJob:
    """pyslurm.Job -> SlurmJob. layout: job_layout(job); a running job's GPUs are what it
    holds (exact for --gpus per job too), other jobs' what they ask for per node."""
    state = parse.base_state(job.state)
    nodes = _num(job.num_nodes) or 1
    gpus: dict[str, int] = {}
    for per_node in (layout or {}).values():
        _add(gpus, per_node)
    if not any(gpus.values()):
        gpus = {}
        _add(gpus, gpu_counts(job.gres_per_node), nodes)
    types = [t for t, n in gpus.items() if t and n]
    return SlurmJob(
        job_id=str(job.id),
        state=state,
        partition=str(job.partition or ""),
        reason=str(job.state_reason or ""),
        name=str(job.name or ""),
        user=str(job.user_name or ""),
        comment=str(job.comment or ""),
        nodes=nodes,
        cpus=_num(job.cpus) or 1,
        gpus=sum(gpus.values()),
        gpu_type=types[0] if types else "",
        time_limit_minutes=_num(job.time_limit),
        submit_time=float(_num(job.submit_time)),
        start_time=float(_num(job.start_time)),
        end_time=float(_num(job.end_time)),
        exit_code=parse.exit_code(_num(job.exit_code), _num(job.exit_code_signal), state),
        priority=_num(job.priority),
        node_names=tuple(parse.expand_hostlist(str(job.allocated_nodes or ""))),
    )


def node_from_pyslurm(node: Any, in_use: Mapping[str, int] | None = None) -> Node:
    """pyslurm.Node -> Node. in_use: GPUs its jobs hold (see module doc), by type."""
    gpus = gpu_counts(node.configured_gres)
    alloc = dict.fromkeys(gpus, 0)  # as sinfo: every configured type, 0 when idle
    _add(alloc, in_use or {})
    return Node(
        name=str(node.name),
        partitions=tuple(node.partitions or ()),
        state=parse.node_state(str(node.state or "").split("+")),
        cpus=_num(node.total_cpus),
        alloc_cpus=_num(node.allocated_cpus),
        mem_mb=_num(node.real_memory),
        alloc_mem_mb=_num(node.allocated_memory),
        gpus=gpus,
        alloc_gpus=alloc,
        features=parse.features(node.active_features),
    )


def partition_from_pyslurm(part: Any) -> PartitionInfo:
    nodes = part.nodes or ""
    return PartitionInfo(
        name=str(part.name),
        nodes=tuple(parse.expand_hostlist(nodes) if isinstance(nodes, str) else nodes),
        max_time_minutes=_num(part.max_time),
        default_time_minutes=_num(part.default_time),
        max_nodes_per_job=_num(part.max_nodes),
        is_default=bool(part.is_default),
        state=str(part.state or "UP").lower(),
    )


# sbatch options -> pyslurm 25.11 JobSubmitDescription attributes (its documented names):
# (attribute, how the value is given): "str" as written, "int" a number, "minutes" a time
# limit in minutes (pyslurm takes an int there: "10" raises TypeError), "list" appended to
# a comma list (--mail-type adds up), or a constant for flags.
_ATTRS: dict[str, tuple[str, Any]] = {
    "job-name": ("name", "str"),
    "account": ("account", "str"),
    "qos": ("qos", "str"),
    "constraint": ("constraints", "str"),
    "nodes": ("nodes", "str"),
    "ntasks": ("ntasks", "int"),
    "ntasks-per-node": ("ntasks_per_node", "int"),
    "cpus-per-task": ("cpus_per_task", "int"),
    "mem": ("memory_per_node", "str"),
    "mem-per-cpu": ("memory_per_cpu", "str"),
    "mem-per-gpu": ("memory_per_gpu", "str"),
    "gres": ("gres_per_node", "str"),
    "gpus": ("gpus", "str"),
    "gpus-per-task": ("gpus_per_task", "str"),
    "gpus-per-socket": ("gpus_per_socket", "str"),
    "cpus-per-gpu": ("cpus_per_gpu", "int"),
    "time": ("time_limit", "minutes"),
    "time-min": ("time_limit_min", "minutes"),
    "output": ("standard_output", "str"),
    "error": ("standard_error", "str"),
    "input": ("standard_in", "str"),
    "mail-type": ("mail_types", "list"),
    "mail-user": ("mail_user", "str"),
    "nice": ("nice", "int"),
    "priority": ("priority", "int"),
    "licenses": ("licenses", "str"),
    "reservation": ("reservations", "str"),
    "nodelist": ("required_nodes", "str"),
    "distribution": ("distribution", "str"),
    "deadline": ("deadline", "str"),
    "tmp": ("temporary_disk_per_node", "str"),
    "mincpus": ("min_cpus_per_node", "str"),
    "sockets-per-node": ("sockets_per_node", "int"),
    "cores-per-socket": ("cores_per_socket", "int"),
    "threads-per-core": ("threads_per_core", "int"),
    "ntasks-per-core": ("ntasks_per_core", "int"),
    "ntasks-per-socket": ("ntasks_per_socket", "int"),
    "ntasks-per-gpu": ("ntasks_per_gpu", "int"),
    "core-spec": ("cores_reserved_for_system", "int"),
    "thread-spec": ("threads_reserved_for_system", "int"),
    "switches": ("switches", "str"),
    "signal": ("signal", "str"),
    "wckey": ("wckey", "str"),
    "network": ("network", "str"),
    "mcs-label": ("mcs_label", "str"),
    "container": ("container", "str"),
    "container-id": ("container_id", "str"),
    "gpu-bind": ("gpu_binding", "str"),
    "open-mode": ("log_files_open_mode", "str"),
    "cluster-constraint": ("cluster_constraints", "str"),
    "batch": ("batch_constraints", "str"),
    "extra": ("extra", "str"),
    "delay-boot": ("delay_boot_time", "str"),
    "acctg-freq": ("accounting_gather_frequency", "str"),
    "cpu-freq": ("cpu_frequency", "str"),
    "segment": ("segment_size", "int"),
    "exclusive": ("resource_sharing", "exclusive"),
    "oversubscribe": ("resource_sharing", "oversubscribe"),
    "no-requeue": ("is_requeueable", False),
    "requeue": ("is_requeueable", True),
    "contiguous": ("requires_contiguous_nodes", True),
    "reboot": ("requires_node_reboot", True),
    "overcommit": ("overcommit", True),
    "spread-job": ("spreads_over_nodes", True),
    "use-min-nodes": ("use_min_nodes", True),
    "no-kill": ("kill_on_node_fail", False),
    "kill-on-invalid-dep": ("kill_on_invalid_dependency", "yes"),
    "wait-all-nodes": ("wait_all_nodes", "1"),
}
_ATTRS["tasks-per-node"] = _ATTRS["ntasks-per-node"]


def option_kwargs(words: tuple[str, ...]) -> dict[str, Any]:
    """The user's sbatch options (SubmitRequest.options) as JobSubmitDescription arguments.
    An option pyslurm has no attribute for cannot be given at this site: refused, so the
    daemon tries another site."""
    given, rest = sargv.parse(list(words), sargv.CLI)
    if rest:
        raise SlurmError(f"bad option {rest[0][:40]!r}")
    kw: dict[str, Any] = {}
    for g in given:
        name, value = g.option.name, g.value
        if name not in _ATTRS:
            raise SlurmError(f"--{name} cannot be given to this site's Slurm (pyslurm backend)")
        attr, how = _ATTRS[name]
        if how == "str":
            kw[attr] = value
        elif how == "int":
            kw[attr] = int(value or 0)
        elif how == "minutes":
            minutes = jobspec.parse_time(value or "")
            if not minutes:
                raise SlurmError(f"--{name}=UNLIMITED cannot be given to the pyslurm backend")
            kw[attr] = minutes
        elif how == "list":
            kw[attr] = ",".join(x for x in (kw.get(attr, ""), value or "") if x)
        elif how == "exclusive":
            kw[attr] = (value or "exclusive").lower()
        elif how in ("yes", "1"):
            kw[attr] = (value or "").lower() == how
        elif isinstance(how, bool):
            kw[attr] = how if value is None else (value or "").lower() not in ("off", "no")
        else:
            kw[attr] = how
    return kw


def submit_kwargs(
    req: SubmitRequest, uid: int | None, gid: int | None, home: str, wckey: bool
) -> dict[str, Any]:
    """JobSubmitDescription arguments for req: only what req carries. The environment is
    always given (pyslurm otherwise copies the agent's whole environment into the job), and so
    is the working directory (otherwise the agent's own): the user's home when req has none,
    as the cli backend does. wckey: also put the tag there unless the user gave --wckey (no
    slurmdbd: the completion log keeps the WCKey, not the comment). pyslurm adds the agent's
    SLURM_* variables, as sbatch does with --export (SLURM_CONF, the site's own)."""
    if req.script_args:
        raise SlurmError("script arguments cannot be given to the pyslurm backend (script text)")
    if req.export_mode == "nil":
        raise SlurmError("--export=NIL cannot be given to the pyslurm backend")
    kw: dict[str, Any] = {
        "script": req.script,
        "comment": tags.comment(req.tag, req.comment),
        # pyslurm exports the agent's whole environment for an empty dict (it tests `not
        # environment`): "NONE" is sbatch's --export=NONE, a dict its --export=NAMES. The
        # job's variables are checked by metasched.jobenv; SLURM_ARRAY_* are the agent's own.
        "environment": {**req.environment, **req.slurm_environment} or "NONE",
        # as sbatch --export=NONE/names: start from the user's login environment (never the
        # agent's); ALL: the environment given is the job's whole environment
        "get_user_environment": req.export_mode != "all",
        "working_directory": req.workdir or home,
    }
    for attr, number in (
        ("nodes", req.nodes),
        ("ntasks", req.ntasks),
        ("cpus_per_task", req.cpus_per_task),
        ("time_limit", req.time_limit_minutes),  # an int: "10" raises TypeError
    ):
        if number:
            kw[attr] = number
    optional = {
        "name": req.name,
        "partitions": req.partition,
        "standard_output": req.output,
        "standard_error": req.error,
        "account": req.account,
        "excluded_nodes": req.exclude_nodes,
        "wckey": req.tag if wckey else "",
    }
    kw.update({k: v for k, v in optional.items() if v})
    if req.mem_per_node_mb:
        kw["memory_per_node"] = f"{req.mem_per_node_mb}M"
    if req.gpus_per_node:
        gtype = f"{req.gpu_type}:" if req.gpu_type else ""
        kw["gres_per_node"] = f"gpu:{gtype}{req.gpus_per_node}"
    kw.update(option_kwargs(req.options))  # the user's own --wckey replaces the tag there
    if uid is not None:
        kw["user_id"] = uid
        kw["group_id"] = gid  # user_id alone runs the job with gid root
    return kw


def iter_loaded(collection: Any) -> Iterator[Any]:
    """Objects of a pyslurm collection: by id (25.11 on one cluster), or by cluster then id
    (a multi-cluster load)."""
    values: Iterable[Any] = collection.values() if hasattr(collection, "values") else collection
    for v in values:
        if isinstance(v, Mapping) or (hasattr(v, "values") and not hasattr(v, "id")):
            yield from iter_loaded(v)
        else:
            yield v


# ------------------------------------------------------------------ loading pyslurm safely
def slurm_conf_for(slurm_conf: str | None) -> str:
    """The slurm.conf libslurm will read: the configured one, $SLURM_CONF, or the default.
    Raises SlurmError naming the missing file: pyslurm must never be imported without one."""
    conf = slurm_conf or os.environ.get("SLURM_CONF") or DEFAULT_SLURM_CONF
    if not Path(conf).is_file():
        how = "slurm_conf" if slurm_conf else "$SLURM_CONF" if "SLURM_CONF" in os.environ else ""
        raise SlurmError(
            f"no slurm.conf at {conf}{f' ({how})' if how else ''}: pyslurm needs one "
            "(set agent.slurm_conf)"
        )
    return conf


def probe(slurm_conf: str) -> str:
    """Import pyslurm in a child process with this slurm.conf; its Slurm version, or
    SlurmError with the child's last words (libslurm's 'fatal: ...' when it ends the process)."""
    code = "import pyslurm; print('.'.join(map(str, pyslurm.slurm_api_version())))"
    env = {**os.environ, "SLURM_CONF": slurm_conf}
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            cwd="/",
        )
    except subprocess.TimeoutExpired:
        raise SlurmError("importing pyslurm did not finish within 120s") from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
        last = lines[-1] if lines else f"exited {proc.returncode}"
        raise SlurmError(f"pyslurm cannot load with {slurm_conf}: {last}")
    return proc.stdout.strip()


# libslurm keeps one configuration per process: backends of different sites (tests) take
# turns, re-initialising it; within one site nothing changes hands.
_ACTIVE: dict[str, str] = {}
_ACTIVE_LOCK = threading.RLock()


# ------------------------------------------------------------------ the backend
class PyslurmBackend(SlurmBackend):
    name = "pyslurm"
    max_concurrent_submits = 1  # libslurm's calls from several threads: not shown to be safe

    def __init__(self, slurm_conf: str | None = None, bin_dir: str = "", timeout: float = 30):
        self.slurm_conf = slurm_conf_for(slurm_conf)
        self._version = probe(self.slurm_conf)
        with _ACTIVE_LOCK:
            if "conf" not in _ACTIVE:
                os.environ["SLURM_CONF"] = self.slurm_conf  # read by libslurm at import
                _ACTIVE["conf"] = self.slurm_conf
            self._ps: Any = importlib.import_module("pyslurm")
        # finished jobs and the accounting question go through the site's own commands
        self._cli = CliBackend(self.slurm_conf, bin_dir=bin_dir, timeout=timeout)

    def _call(self, what: str, fn: Any, *args: Any) -> Any:
        with _ACTIVE_LOCK:
            if _ACTIVE.get("conf") != self.slurm_conf:
                self._ps.slurm_fini()
                self._ps.slurm_init(self.slurm_conf)
                _ACTIVE["conf"] = self.slurm_conf
            try:
                return fn(*args)
            except self._ps.RPCError as e:
                errno = getattr(e, "errno", 0) or 0
                msg = str(e)
                if errno in _UNAVAILABLE_ERRNOS or parse.is_unavailable(msg):
                    raise SlurmUnavailable(f"{what}: {msg}") from None
                if errno == _INVALID_JOB_ID:
                    raise _Gone(f"{what}: {msg}") from None
                raise SlurmError(f"{what}: {msg}") from None

    def version(self) -> str:
        return self._version

    def submit(self, req: SubmitRequest) -> str:
        # libslurm submits from this (root) process: the job runs as its user (uid and gid),
        # but nothing of the user's is read here, unlike the cli backend's sbatch
        account = submitter(req)
        uid, gid = (account.uid, account.gid) if account else (None, None)
        home = account.home if account else pwd.getpwuid(os.geteuid()).pw_dir
        kw = submit_kwargs(req, uid, gid, home, wckey=not self._cli.has_slurmdbd())
        desc = self._ps.JobSubmitDescription(**kw)
        return str(self._call("submit", desc.submit))

    def _loaded_jobs(self) -> list[Any]:
        return list(iter_loaded(self._call("load jobs", self._ps.Jobs.load)))

    def jobs(self) -> list[SlurmJob]:
        return [job_from_pyslurm(j, job_layout(j)) for j in self._loaded_jobs()]

    def cancel(self, job_id: str, only_pending: bool = False) -> None:
        if not job_id.isdigit():
            raise SlurmError(f"bad job id {job_id!r}")
        try:
            if only_pending:
                # pyslurm has no state filter on cancel: check, then cancel. The window between
                # the two is one RPC; a job that starts inside it is cancelled while starting.
                job = self._call("load", self._ps.Job.load, int(job_id))
                if parse.base_state(job.state) != "PENDING":
                    return
            self._call("cancel", self._ps.Job(int(job_id)).cancel)
        except _Gone:
            return  # purged: already finished, so cancelling it is done

    def nodes(self) -> list[Node]:
        loaded = self._call("load nodes", self._ps.Nodes.load)
        in_use: dict[str, dict[str, int]] = {}
        for job in self._loaded_jobs():
            for node, gpus in job_layout(job).items():
                _add(in_use.setdefault(node, {}), gpus)
        return [node_from_pyslurm(n, in_use.get(str(n.name))) for n in iter_loaded(loaded)]

    def partitions(self) -> list[PartitionInfo]:
        loaded = self._call("load partitions", self._ps.Partitions.load)
        return [partition_from_pyslurm(p) for p in iter_loaded(loaded)]

    def finished(self, job_ids: list[str], tags: list[str]) -> list[SlurmJob]:
        return self._cli.finished(job_ids, tags)

    def objects(self, kind: str) -> list[Any]:
        """pyslurm's own objects of a kind (jobs, nodes, partitions), unconverted: for checking
        recordings of them against the real thing."""
        loaders = {"jobs": "Jobs", "nodes": "Nodes", "partitions": "Partitions"}
        return list(iter_loaded(self._call(f"load {kind}", getattr(self._ps, loaders[kind]).load)))


class _Gone(SlurmError):
    """slurmctld does not know the job (any more)."""
