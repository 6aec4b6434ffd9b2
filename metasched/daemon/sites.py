"""The sites the daemon knows: their latest report, whether they are online, and the open
stream to each site's agent.

A site is online while its agent is connected and reported within the grace period; past
that it is offline (logged once as site_offline), and placement skips it. An admin may set
a site draining (no new jobs) or retired (given up for good).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from metasched import log
from metasched.placement.estimate import is_blocked
from metasched.placement.model import NodeView, PartitionView, SiteView, Work
from metasched.placement.offers import Offers
from metasched.states import node_usable
from metasched.v1 import metasched_pb2 as pb

ADMIN_STATES = ("online", "draining", "retired")


class AgentLink:
    """The daemon's end of one agent stream: an outbox the stream's sender drains.

    Any thread may send; `wake` (if given) is called when the outbox goes from drained to
    not, so the stream's coroutine sleeps until there is something to send instead of
    holding a thread (it calls `drained()` before each look at the outbox)."""

    def __init__(
        self,
        site: str,
        peer: str,
        wake: Callable[[], None] | None = None,
        agent_version: str = "",
    ) -> None:
        self.site = site
        self.peer = peer
        self.agent_version = agent_version
        self.outbox: queue.Queue[pb.DaemonMessage | None] = queue.Queue()
        self.closed = threading.Event()
        self._wake = wake
        self._woken = False

    def send(self, msg: pb.DaemonMessage) -> None:
        if not self.closed.is_set():
            self.outbox.put(msg)
            self._nudge()

    def close(self) -> None:
        self.closed.set()
        self.outbox.put(None)
        self._nudge()

    def drained(self) -> None:
        """The sender is about to empty the outbox: the next send wakes it again."""
        self._woken = False

    def _nudge(self) -> None:
        # One wake-up per drain, not per message: placement may send thousands in one pass.
        if self._wake is not None and not self._woken:
            self._woken = True
            self._wake()


@dataclass
class Site:
    name: str
    admin_state: str = "online"  # online, draining, retired (what an admin set)
    report: pb.SiteReport | None = None
    last_seen: float = 0.0
    link: AgentLink | None = None
    agent_version: str = ""  # of the agent last connected
    online: bool = False
    # derived from the report once per report, for placement
    view_base: SiteView | None = None
    # Slurm ids of final jobs already fed to the runtime predictor
    seen_final: set[str] = field(default_factory=set)

    @property
    def state(self) -> str:
        if self.admin_state != "online":
            return self.admin_state
        return "online" if self.online else "offline"


def _gpus(counts: Iterable[pb.GpuCount]) -> dict[str, int]:
    out: dict[str, int] = {}
    for g in counts:
        out[g.type] = out.get(g.type, 0) + g.count
    return out


def work_of(j: pb.SlurmJobReport) -> Work:
    return Work(
        partition=j.partition,
        nodes=j.nodes or 1,
        cpus=j.cpus or 1,
        gpus=j.gpus,
        gpu_type=j.gpu_type,
        time_limit_s=(j.time_limit_minutes or 365 * 24 * 60) * 60.0,
        submit_time=j.submit_time,
        start_time=j.start_time if j.state == "RUNNING" else 0.0,
        user=j.user,
        priority=j.priority,
        node_names=tuple(j.node_names),
        job_id=j.slurm_job_id,
    )


def view_of(name: str, report: pb.SiteReport) -> SiteView:
    """A site's report as placement sees it (without the daemon's own in-flight jobs)."""
    nodes = {
        n.name: NodeView(
            name=n.name,
            partitions=tuple(n.partitions),
            usable=node_usable(n.state),
            cpus=n.cpus,
            free_cpus=max(0, n.cpus - n.alloc_cpus),
            mem_mb=n.mem_mb,
            free_mem_mb=max(0, n.mem_mb - n.alloc_mem_mb),
            gpus=_gpus(n.gpus),
            free_gpus={
                t: max(0, c - _gpus(n.alloc_gpus).get(t, 0)) for t, c in _gpus(n.gpus).items()
            },
            features=frozenset(n.features) if report.reports_features else None,
        )
        for n in report.nodes
    }
    parts = [
        PartitionView(
            name=p.name,
            nodes=tuple(n for n in nodes if p.name in nodes[n].partitions),
            max_time_minutes=p.max_time_minutes,
            max_nodes_per_job=p.max_nodes_per_job,
            precisions={x.name: x.peak_tflops for x in p.precisions},
            is_default=p.is_default,
            offers=Offers.of(report.offers, p.offers),
        )
        for p in report.partitions
    ]
    running = [work_of(j) for j in report.jobs if j.state == "RUNNING"]
    # Held or dependent jobs will not start ahead of a new one: leave them out of the queue.
    pending = sorted(
        (work_of(j) for j in report.jobs if j.state == "PENDING" and not is_blocked(j.reason)),
        key=lambda w: (-w.priority, w.submit_time),
    )
    return SiteView(
        name=name,
        online=True,
        partitions=parts,
        nodes=nodes,
        running=running,
        pending=pending,
        mapped_users=None if report.maps_all_users else frozenset(report.mapped_users),
    )


class SiteRegistry:
    def __init__(self, grace_seconds: float) -> None:
        self.grace = grace_seconds
        self._sites: dict[str, Site] = {}
        # all() in name order, kept until a site is added: every submission walks the sites
        # (can any run it? is the user mapped at one?), and sorting 1,000 names each time
        # cost ~200 us a submission
        self._ordered: tuple[Site, ...] = ()
        self._lock = threading.RLock()
        self.log = log.get(component="sites")
        # Moves whenever what placement sees of the sites may have changed (a different report,
        # a site coming or going): the scheduler re-plans its whole queue then, and otherwise
        # only places new submissions (Scheduler.run_cycle).
        self.version = 0

    def get(self, name: str) -> Site | None:
        with self._lock:
            return self._sites.get(name)

    def ensure(self, name: str) -> Site:
        with self._lock:
            site = self._sites.get(name)
            if site is None:
                site = Site(name)
                self._sites[name] = site
                self._ordered = tuple(sorted(self._sites.values(), key=lambda x: x.name))
            return site

    def restore(self, name: str, state: str, last_seen: float, report: bytes | None) -> None:
        """Load what the database remembers of a site at start-up (offline until it calls in)."""
        site = self.ensure(name)
        site.admin_state = state if state in ADMIN_STATES else "online"
        site.last_seen = last_seen
        if report:
            rep = pb.SiteReport()
            rep.ParseFromString(report)
            site.report = rep
            site.view_base = view_of(name, rep)
            self.version += 1

    def connect(self, name: str, link: AgentLink) -> AgentLink | None:
        """Attach a new agent stream; returns the previous one (to be closed)."""
        with self._lock:
            site = self.ensure(name)
            old, site.link = site.link, link
            site.agent_version = link.agent_version
            self.version += 1
            return old

    def disconnect(self, link: AgentLink) -> None:
        with self._lock:
            site = self._sites.get(link.site)
            if site is not None and site.link is link:
                site.link = None
                self.version += 1

    def update(self, name: str, report: pb.SiteReport, now: float) -> tuple[Site, bool]:
        """Take a report; also say whether it changed the site's picture (else it is the same
        as the last one, or Slurm was unreachable and the last good picture is kept)."""
        with self._lock:
            site = self.ensure(name)
            site.last_seen = now
            changed = (report.slurm_reachable or site.report is None) and report != site.report
            if changed:
                site.report = report
                site.view_base = view_of(name, report)
                self.version += 1  # after the change: a pass that reads it sees the new view
            # else: keep the last good picture of the site; it is offline, not gone
            if not site.online and report.slurm_reachable:
                site.online = True
                self.version += 1
                self.log.info("site_online", site=name, slurm_version=report.slurm_version)
            elif site.online and not report.slurm_reachable:
                site.online = False
                self.version += 1
                self.log.warning("site_offline", site=name, reason=report.error or "slurm down")
            return site, changed

    def check_liveness(self, now: float) -> list[str]:
        """Mark sites offline whose agent has been silent past the grace period."""
        gone = []
        with self._lock:
            for site in self._sites.values():
                if site.online and now - site.last_seen > self.grace:
                    site.online = False
                    self.version += 1
                    gone.append(site.name)
                    self.log.warning(
                        "site_offline",
                        site=site.name,
                        reason="agent silent",
                        silent_seconds=round(now - site.last_seen, 1),
                    )
        return gone

    def send(self, name: str, msg: pb.DaemonMessage) -> bool:
        with self._lock:
            site = self._sites.get(name)
            link = site.link if site else None
        if link is None:
            return False
        link.send(msg)
        return True

    def all(self) -> list[Site]:
        with self._lock:
            return list(self._ordered)
