"""The pyslurm backend, for Slurm 25.11 sites with pyslurm 25.11 built against their Slurm.

pyslurm is imported lazily (only this backend needs it, and it only builds against a
site's own Slurm headers). The conversions from pyslurm objects are plain functions of
attributes, so they are tested without pyslurm. Facts from a real 25.11.7 cluster:
time_limit must be an int (minutes); user_id without group_id runs the job with gid root;
a purged job's Job.load raises RPCError('Invalid job id specified') and Job(id).cancel()
does not; there is no will-run (test-only) call.
"""

from __future__ import annotations

import importlib
import os
import pwd
from collections.abc import Iterable, Iterator, Mapping
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
)
from metasched.sbatch import argv as sargv

# Slurm errnos meaning "could not talk to slurmctld" (slurm_errno.h: communication errors
# 1000-1010, protocol socket errors 5000-5010).
_UNAVAILABLE_ERRNOS = frozenset(range(1000, 1011)) | frozenset(range(5000, 5011))


def _num(value: Any) -> int:
    """pyslurm gives None for unset/unlimited and plain ints otherwise."""
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def _gres_counts(value: Any) -> dict[str, int]:
    """pyslurm GRES dicts {'gpu:h100': 4} or {'gpu': 2} (other GRES ignored) -> {type: n}."""
    if isinstance(value, str):
        return parse.parse_gres(value)
    out: dict[str, int] = {}
    for key, count in (value or {}).items():
        name, _, gtype = str(key).partition(":")
        if name == "gpu":
            out[gtype] = out.get(gtype, 0) + _num(count)
    return out


def _exit(obj: Any) -> int:
    sig = _num(getattr(obj, "exit_code_signal", 0))
    return 128 + sig if sig else _num(getattr(obj, "exit_code", 0))


# ------------------------------------------------------------------ pure conversions
def job_from_pyslurm(job: Any) -> SlurmJob:
    """pyslurm.Job or pyslurm.db.Job -> SlurmJob."""
    nodes = _num(getattr(job, "num_nodes", 1)) or 1
    per_node = _gres_counts(getattr(job, "gres_per_node", None))
    types = [t for t in per_node if t]
    user = getattr(job, "user_name", None) or getattr(job, "user", None) or ""
    return SlurmJob(
        job_id=str(getattr(job, "id", "")),
        state=parse.base_state(getattr(job, "state", "")),
        partition=str(getattr(job, "partition", "") or ""),
        reason=str(getattr(job, "state_reason", "") or ""),
        name=str(getattr(job, "name", "") or ""),
        user=str(user),
        comment=str(getattr(job, "comment", "") or ""),
        nodes=nodes,
        cpus=_num(getattr(job, "cpus", 1)) or 1,
        gpus=sum(per_node.values()) * nodes,
        gpu_type=types[0] if types else "",
        time_limit_minutes=_num(getattr(job, "time_limit", 0)),
        submit_time=float(_num(getattr(job, "submit_time", 0))),
        start_time=float(_num(getattr(job, "start_time", 0))),
        end_time=float(_num(getattr(job, "end_time", 0))),
        exit_code=_exit(job),
        priority=_num(getattr(job, "priority", 0)),
        node_names=tuple(parse.expand_hostlist(str(getattr(job, "nodes", "") or ""))),
    )


def node_from_pyslurm(node: Any) -> Node:
    return Node(
        name=str(node.name),
        partitions=tuple(getattr(node, "partitions", None) or ()),
        state=parse.node_state(str(getattr(node, "state", "") or "").split("+")),
        cpus=_num(getattr(node, "total_cpus", 0)),
        alloc_cpus=_num(getattr(node, "allocated_cpus", 0)),
        mem_mb=_num(getattr(node, "real_memory", 0)),
        alloc_mem_mb=_num(getattr(node, "allocated_memory", 0)),
        gpus=_gres_counts(getattr(node, "configured_gres", None)),
        alloc_gpus=_gres_counts(getattr(node, "allocated_gres", None)),
        features=parse.features(getattr(node, "active_features", None)),
    )


def partition_from_pyslurm(part: Any) -> PartitionInfo:
    nodes = getattr(part, "nodes", "") or ""
    return PartitionInfo(
        name=str(part.name),
        nodes=tuple(parse.expand_hostlist(nodes) if isinstance(nodes, str) else nodes),
        max_time_minutes=_num(getattr(part, "max_time", 0)),
        default_time_minutes=_num(getattr(part, "default_time", 0)),
        max_nodes_per_job=_num(getattr(part, "max_nodes", 0)),
        is_default=bool(getattr(part, "is_default", False)),
        state=str(getattr(part, "state", "UP") or "UP").lower(),
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


def submit_kwargs(req: SubmitRequest, uid: int | None, gid: int | None) -> dict[str, Any]:
    """JobSubmitDescription arguments for req. The environment is always given: pyslurm
    otherwise copies the agent's whole environment into the job."""
    if req.script_args:
        raise SlurmError("script arguments cannot be given to the pyslurm backend (script text)")
    if req.export_mode == "nil":
        raise SlurmError("--export=NIL cannot be given to the pyslurm backend")
    kw: dict[str, Any] = {
        "script": req.script,
        "comment": tags.comment(req.tag, req.comment),
        "environment": {**req.environment, **req.slurm_environment},
        # as sbatch --export=NONE/names: start from the user's login environment; ALL: the
        # environment given is the job's whole environment
        "get_user_environment": req.export_mode != "all",
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
        "working_directory": req.workdir,
        "standard_output": req.output,
        "standard_error": req.error,
        "account": req.account,
        "excluded_nodes": req.exclude_nodes,
    }
    kw.update({k: v for k, v in optional.items() if v})
    if req.mem_per_node_mb:
        kw["memory_per_node"] = f"{req.mem_per_node_mb}M"
    if req.gpus_per_node:
        gtype = f"{req.gpu_type}:" if req.gpu_type else ""
        kw["gres_per_node"] = f"gpu:{gtype}{req.gpus_per_node}"
    kw.update(option_kwargs(req.options))
    if uid is not None:
        kw["user_id"] = uid
        kw["group_id"] = gid  # user_id alone runs the job with gid root
    return kw


def iter_loaded(collection: Any) -> Iterator[Any]:
    """Objects of a pyslurm collection: 25.11 keys Jobs by cluster, then id; others by id."""
    values: Iterable[Any] = collection.values() if hasattr(collection, "values") else collection
    for v in values:
        if isinstance(v, Mapping) or (hasattr(v, "values") and not hasattr(v, "id")):
            yield from iter_loaded(v)
        else:
            yield v


# ------------------------------------------------------------------ the backend
class PyslurmBackend(SlurmBackend):
    name = "pyslurm"

    def __init__(self, slurm_conf: str | None = None) -> None:
        # libslurm reads SLURM_CONF when pyslurm is first imported: set it before
        if slurm_conf:
            os.environ["SLURM_CONF"] = slurm_conf
        self._ps: Any = importlib.import_module("pyslurm")

    def _call(self, what: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as e:
            if type(e).__name__ != "RPCError":
                raise
            errno = getattr(e, "errno", 0) or 0
            msg = str(e)
            if errno in _UNAVAILABLE_ERRNOS or parse.is_unavailable(msg):
                raise SlurmUnavailable(f"{what}: {msg}") from None
            raise SlurmError(f"{what}: {msg}") from None

    def version(self) -> str:
        # slurm_version() is libslurm's; version() is pyslurm's own, which tracks it (25.11.x)
        fn = getattr(self._ps, "slurm_version", None) or getattr(self._ps, "version", None)
        return str(fn()) if fn else ""

    def submit(self, req: SubmitRequest) -> str:
        uid = gid = None
        if req.local_user:
            try:
                pw = pwd.getpwnam(req.local_user)
            except KeyError:
                raise SlurmError(f"no such local user {req.local_user!r}") from None
            uid, gid = pw.pw_uid, pw.pw_gid
        desc = self._ps.JobSubmitDescription(**submit_kwargs(req, uid, gid))
        return str(self._call("submit", desc.submit))

    def jobs(self) -> list[SlurmJob]:
        loaded = self._call("load jobs", self._ps.Jobs.load)
        return [job_from_pyslurm(j) for j in iter_loaded(loaded)]

    def cancel(self, job_id: str, only_pending: bool = False) -> None:
        if only_pending:
            # pyslurm has no state filter on cancel: check, then cancel. The window between
            # the two is one RPC; a job that starts inside it is cancelled while starting.
            job = self._call("load", self._ps.Job.load, int(job_id))
            if str(getattr(job, "state", "")).upper() != "PENDING":
                return
        self._call("cancel", self._ps.Job(int(job_id)).cancel)  # idempotent in 25.11

    def nodes(self) -> list[Node]:
        return [node_from_pyslurm(n) for n in iter_loaded(self._call("nodes", self._ps.Nodes.load))]

    def partitions(self) -> list[PartitionInfo]:
        loaded = self._call("partitions", self._ps.Partitions.load)
        return [partition_from_pyslurm(p) for p in iter_loaded(loaded)]

    def finished(self, job_ids: list[str], tags: list[str]) -> list[SlurmJob]:
        """Needs slurmdbd (pyslurm.db). Lookup by tag loads the filter's whole window."""
        if not job_ids and not tags:
            return []
        db = self._ps.db
        flt = (
            db.JobFilter(ids=[int(i) for i in job_ids]) if job_ids and not tags else db.JobFilter()
        )
        loaded = self._call("accounting", db.Jobs.load, flt)
        ids, want = set(job_ids), set(tags)
        out = []
        for j in iter_loaded(loaded):
            job = job_from_pyslurm(j)
            if job.job_id in ids or (job.comment and job.comment in want):
                out.append(job)
        return out
