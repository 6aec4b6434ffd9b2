"""The one small interface between a metasched-agent and its Slurm cluster.

A backend is a Parsl-style provider: submit / jobs / cancel, plus what the site has
(nodes, partitions) and how to resolve a job that has left the queue. Two implementations:
`cli` (sbatch/squeue/sinfo/scancel/sacct, any Slurm from 21.08 on) and `pyslurm`
(Slurm 25.11 sites with the pyslurm package built against their Slurm).
"""

from __future__ import annotations

import abc
import os
import pwd
from dataclasses import dataclass, field

from metasched.states import node_usable


class SlurmError(Exception):
    """Slurm answered, but refused (bad request, unknown partition, ...)."""


class SlurmUnavailable(SlurmError):
    """slurmctld cannot be reached (down, network, munge): try again later."""


class JobRefused(SlurmError):
    """The job itself is wrong, wherever it goes (a bad environment, a script sbatch cannot
    take): no site will run it, so it fails at once instead of trying the next site."""


@dataclass(frozen=True)
class LocalAccount:
    """A local user to submit as: who the job runs as, and who sbatch runs as."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]  # supplementary groups, as login gives them
    home: str

    @classmethod
    def of(cls, name: str) -> LocalAccount:
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            raise SlurmError(f"no such local user {name!r} at this site") from None
        groups = tuple(g for g in os.getgrouplist(name, pw.pw_gid) if g != pw.pw_gid)
        return cls(pw.pw_name, pw.pw_uid, pw.pw_gid, groups, pw.pw_dir)


@dataclass(frozen=True)
class SubmitRequest:
    """What the agent asks Slurm to run: a validated job, placed on this site.

    `options` are the user's own sbatch options (metasched.sbatch.resolve.to_words), which
    Slurm sizes and limits the job from exactly as sbatch would have; the script's own
    #SBATCH lines are already neutralised. The fields below them are what the agent decides
    for this site. The shape fields (0 = not given) are for callers without options."""

    script: str
    tag: str  # goes into --comment (before the user's own); how we find the job after a crash
    options: tuple[str, ...] = ()
    name: str = ""
    partition: str = ""  # one, or a comma-separated list (all at this site)
    nodes: int = 0
    ntasks: int = 0
    cpus_per_task: int = 0
    mem_per_node_mb: int = 0  # 0 = site default
    gpus_per_node: int = 0
    gpu_type: str = ""
    time_limit_minutes: int = 0  # 0 = the partition's default
    workdir: str = ""
    output: str = ""
    error: str = ""
    account: str = ""
    comment: str = ""  # the user's --comment
    exclude_nodes: str = ""  # the user's --exclude, only the names this site has
    # the job's own variables, already checked by metasched.jobenv (the agent builds every
    # SubmitRequest through SiteAgent.submit): they go to the job only, never into the
    # environment of a process the agent runs
    environment: dict[str, str] = field(default_factory=dict)
    # all: environment is the job's whole environment; none/list/"": the user's login
    # environment at the site, with environment over it; nil: nothing (see JobSpec)
    export_mode: str = ""
    script_args: tuple[str, ...] = ()
    local_user: str = ""  # run as this account (agent runs as root); "" = the agent's own
    # Slurm's own variables the agent sets for the job (an array task's SLURM_ARRAY_*: each
    # task runs as a plain Slurm job). Never the user's: their SLURM_* names are refused.
    slurm_environment: dict[str, str] = field(default_factory=dict)


def submitter(req: SubmitRequest) -> LocalAccount | None:
    """The local account req is submitted as (None: the agent's own, when it names none).
    An agent that is not root may only submit as itself."""
    if not req.local_user:
        return None
    if os.geteuid() != 0 and req.local_user != pwd.getpwuid(os.geteuid()).pw_name:
        raise SlurmError(f"cannot submit as {req.local_user!r}: the agent is not root")
    return LocalAccount.of(req.local_user)


@dataclass(frozen=True)
class SlurmJob:
    """One job as Slurm shows it, normalised across versions and backends."""

    job_id: str
    state: str  # base state name, upper case: PENDING RUNNING COMPLETED CANCELLED ...
    partition: str = ""
    reason: str = ""
    name: str = ""
    user: str = ""
    comment: str = ""
    nodes: int = 1
    cpus: int = 1
    gpus: int = 0  # total over all nodes
    gpu_type: str = ""
    time_limit_minutes: int = 0  # 0 = unlimited / unknown
    submit_time: float = 0.0
    start_time: float = 0.0  # actual when running/finished, Slurm's estimate when pending, 0 = none
    end_time: float = 0.0
    exit_code: int = 0  # the job's own exit status (0-255); -1 unknown
    priority: int = 0
    node_names: tuple[str, ...] = ()  # expanded hostlist of a running job ('n[1-2]' -> n1, n2)


@dataclass(frozen=True)
class Node:
    name: str
    partitions: tuple[str, ...]
    state: str  # lower case, e.g. idle, mixed, allocated, down, drained
    cpus: int
    alloc_cpus: int
    mem_mb: int
    alloc_mem_mb: int
    gpus: dict[str, int] = field(default_factory=dict)  # type -> count ("" = untyped)
    alloc_gpus: dict[str, int] = field(default_factory=dict)
    features: tuple[str, ...] = ()  # active features (what -C/--constraint matches)

    @property
    def usable(self) -> bool:
        """Can take new work (not down, drained, failing, ...)."""
        return node_usable(self.state)


@dataclass(frozen=True)
class PartitionInfo:
    name: str
    nodes: tuple[str, ...]
    max_time_minutes: int = 0  # 0 = unlimited
    default_time_minutes: int = 0
    max_nodes_per_job: int = 0  # 0 = unlimited
    is_default: bool = False
    state: str = "up"


class SlurmBackend(abc.ABC):
    """How an agent talks to its Slurm. Every call may raise SlurmUnavailable."""

    name: str = "abstract"
    # How many submissions may run at once through this backend (the agent's submit_workers
    # is capped by it): sbatch processes are independent; a library's calls may not be.
    max_concurrent_submits: int = 64

    @abc.abstractmethod
    def version(self) -> str:
        """Slurm's version string, e.g. '22.05.8'."""

    def describe(self) -> str:
        """Which Slurm the backend talks through, for a one-line diagnosis."""
        return f"{self.name}, Slurm {self.version()}"

    @abc.abstractmethod
    def submit(self, req: SubmitRequest) -> str:
        """Submit; return Slurm's job id. Raises SlurmError if Slurm refuses the job."""

    @abc.abstractmethod
    def jobs(self) -> list[SlurmJob]:
        """Every job Slurm currently shows (all users, all states it still keeps)."""

    def cancel_many(self, job_ids: list[str]) -> None:
        """Cancel several jobs at once (an array); like cancel() for each."""
        for job_id in job_ids:
            self.cancel(job_id)

    @abc.abstractmethod
    def cancel(self, job_id: str, only_pending: bool = False) -> None:
        """Cancel; a job that is already finished or unknown is not an error.
        only_pending: leave it alone if it has started (atomically, in slurmctld), as
        rebalancing must never kill work that is already running."""

    @abc.abstractmethod
    def nodes(self) -> list[Node]: ...

    @abc.abstractmethod
    def partitions(self) -> list[PartitionInfo]: ...

    @abc.abstractmethod
    def finished(self, job_ids: list[str], tags: list[str]) -> list[SlurmJob]:
        """Final records (from accounting or the completion log) of jobs no longer in the queue,
        looked up by Slurm id and by tag (comment). Jobs with no record are left out."""
