"""What the daemon knows of each site, in the plain form placement works on.

Built from agent reports (protobuf) by the daemon, and from a simulated cluster by the
replay benchmark, so the same placement code runs in both.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from metasched.placement.offers import NO_OFFERS, Offers


@dataclass(frozen=True)
class NodeView:
    """One node, or `count` identical nodes reported as one group (as sinfo groups them).

    cpus, mem_mb and gpus are per node (what one node of the group can hold); free_cpus,
    free_mem_mb and free_gpus are totals over the group.
    """

    name: str
    partitions: tuple[str, ...]
    usable: bool
    cpus: int
    free_cpus: int
    mem_mb: int
    free_mem_mb: int
    gpus: dict[str, int] = field(default_factory=dict)  # type -> count
    free_gpus: dict[str, int] = field(default_factory=dict)
    count: int = 1
    features: frozenset[str] | None = None  # None: not reported (an older agent)


@dataclass(frozen=True)
class PartitionView:
    name: str
    nodes: tuple[str, ...]
    max_time_minutes: int = 0  # 0 = unlimited
    max_nodes_per_job: int = 0  # 0 = all
    precisions: dict[str, float] = field(default_factory=dict)  # name -> peak TFLOPS per node
    is_default: bool = False
    offers: Offers = NO_OFFERS  # software for apps' recipes (the site's and its own)


@dataclass(frozen=True)
class Work:
    """A job occupying or waiting for a partition's resources (anybody's, not just ours)."""

    partition: str
    nodes: int
    cpus: int  # total
    gpus: int  # total
    gpu_type: str
    time_limit_s: float
    submit_time: float
    start_time: float = 0.0  # running: when it started; 0 = pending
    user: str = ""
    priority: int = 0
    node_names: tuple[str, ...] = ()
    job_id: str = ""  # Slurm id, or the global id for jobs not yet visible

    @property
    def running(self) -> bool:
        return self.start_time > 0


@dataclass
class SiteView:
    name: str
    online: bool
    partitions: list[PartitionView]
    nodes: dict[str, NodeView]
    running: list[Work] = field(default_factory=list)
    pending: list[Work] = field(default_factory=list)  # in the order Slurm will consider them
    # Jobs we forwarded that the site has not shown yet: they will take capacity soon.
    inflight: list[Work] = field(default_factory=list)
    # Global users with an account here; None = everyone (no mapping configured).
    mapped_users: frozenset[str] | None = None
    state: str = "online"  # online, offline, draining, retired

    def partition(self, name: str) -> PartitionView | None:
        for p in self.partitions:
            if p.name == name:
                return p
        return None
