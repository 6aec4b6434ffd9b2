"""Which sites may run a job, and where each queued job goes.

Filtering is exact (a job needing fp64 never goes to an fp16-only site; a shape that fits no
node is never sent anywhere); ranking is by estimated start. Within one cycle every job
placed reserves its slot in the chosen partition's profile, so a burst of submissions
spreads over the sites instead of herding onto the one that looked emptiest a moment ago.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

from metasched.jobspec import Shape
from metasched.placement.estimate import Calibrator, Estimate, build_profile
from metasched.placement.model import NodeView, PartitionView, SiteView
from metasched.placement.profile import Need, Profile
from metasched.placement.runtime import RuntimePredictor


@dataclass(frozen=True)
class Request:
    """One job to place: its shape and the user's constraints."""

    job_id: int
    user: str
    shape: Shape
    partition: str = ""
    sites: frozenset[str] = frozenset()  # empty = any
    exclude: frozenset[str] = frozenset()

    @property
    def key(self) -> tuple[object, ...]:
        """Jobs with the same key have the same eligible partitions and the same needs."""
        return (self.user, self.shape, self.partition, self.sites, self.exclude)


@dataclass(frozen=True)
class Decision:
    """Where a job goes. hold=True: keep it in the global queue this cycle (its estimate and
    the site it would go to are current, for msub to show); forward only when hold is False."""

    job_id: int
    site: str
    partition: str
    estimate: Estimate
    hold: bool = False


@dataclass(frozen=True)
class Choice:
    """One site in a plan: eligible with an estimate, or not with the reason."""

    site: str
    eligible: bool
    reason: str = ""
    estimate: Estimate | None = None


def node_fits(node: NodeView, shape: Shape) -> bool:
    """Could this node, empty, hold one node's share of the job?"""
    if shape.cpus_per_node > node.cpus:
        return False
    if shape.mem_per_node_mb and shape.mem_per_node_mb > node.mem_mb:
        return False
    if shape.gpus_per_node:
        if shape.gpu_type:
            return node.gpus.get(shape.gpu_type, 0) >= shape.gpus_per_node
        return any(n >= shape.gpus_per_node for n in node.gpus.values())
    return True


def partition_refusal(site: SiteView, part: PartitionView, shape: Shape) -> str:
    """Why this partition can never run the shape ('' = it can)."""
    if shape.precision and shape.precision not in part.precisions:
        offered = ", ".join(sorted(part.precisions)) or "none declared"
        return f"precision {shape.precision} not offered (offers {offered})"
    if part.max_time_minutes and shape.time_limit_minutes > part.max_time_minutes:
        return (
            f"time limit {shape.time_limit_minutes} min over the partition's "
            f"{part.max_time_minutes}"
        )
    if part.max_nodes_per_job and shape.nodes > part.max_nodes_per_job:
        return f"{shape.nodes} nodes over the partition's per-job limit {part.max_nodes_per_job}"
    fitting = sum(
        site.nodes[n].count
        for n in part.nodes
        if n in site.nodes and node_fits(site.nodes[n], shape)
    )
    if fitting < shape.nodes:
        if (
            shape.gpus_per_node
            and shape.gpu_type
            and not any(shape.gpu_type in site.nodes[n].gpus for n in part.nodes if n in site.nodes)
        ):
            return f"no {shape.gpu_type} GPUs"
        return (
            f"shape does not fit: {shape.nodes} node(s) x {shape.cpus_per_node} CPUs"
            + (f" x {shape.gpus_per_node} GPUs" if shape.gpus_per_node else "")
            + f", {fitting} node(s) big enough"
        )
    return ""


def site_refusal(site: SiteView, req: Request, shape_only: bool = False) -> tuple[list[str], str]:
    """(eligible partitions, reason if none). shape_only ignores the site's current state."""
    if req.sites and site.name not in req.sites:
        return [], "not among the requested sites"
    if site.name in req.exclude:
        return [], "excluded by the request"
    if not shape_only:
        if site.state == "retired":
            return [], "retired by an admin"
        if not site.online:
            return [], "offline"
        if site.state == "draining":
            return [], "draining (takes no new jobs)"
        if site.mapped_users is not None and req.user not in site.mapped_users:
            return [], f"user {req.user} has no account mapping here"
    parts = [p for p in site.partitions if not req.partition or p.name == req.partition]
    if not parts:
        return [], f"no partition {req.partition!r}"
    reasons: list[str] = []
    ok: list[str] = []
    for p in parts:
        why = partition_refusal(site, p, req.shape)
        if why:
            reasons.append(why)
        else:
            ok.append(p.name)
    if ok:
        return ok, ""
    return [], reasons[0] if len(set(reasons)) == 1 else "; ".join(dict.fromkeys(reasons))


def need_of(shape: Shape, runtime_s: float) -> Need:
    return Need(shape.total_cpus, shape.gpus_per_node * shape.nodes, runtime_s)


@dataclass
class Placer:
    """Places queued jobs on sites. Keeps the runtime history and calibration it learns from."""

    runtimes: RuntimePredictor = field(default_factory=RuntimePredictor)
    calibration: Calibrator = field(default_factory=Calibrator)
    # Late binding: a job whose planned start is more than this many seconds away is held in
    # the global queue (Decision.hold) and re-planned next cycle, so it goes wherever capacity
    # actually frees first. None: forward every placeable job at once (early binding).
    hold_horizon_s: float | None = None

    def _profile(
        self,
        cache: dict[tuple[str, str, str], Profile],
        site: SiteView,
        partition: str,
        gpu_type: str,
        now: float,
    ) -> Profile:
        key = (site.name, partition, gpu_type)
        prof = cache.get(key)
        if prof is None:
            prof = build_profile(site, partition, gpu_type, now, self.runtimes)
            cache[key] = prof
        return prof

    def _start(self, prof: Profile, req: Request, now: float) -> float:
        runtime = self.runtimes.predict(req.user, req.shape.time_limit_minutes * 60.0)
        return prof.earliest(need_of(req.shape, runtime), now)

    def plan(self, req: Request, sites: list[SiteView], now: float) -> list[Choice]:
        """Every site, eligible ones best first with their estimate, then the others with why."""
        cache: dict[tuple[str, str, str], Profile] = {}
        good: list[Choice] = []
        bad: list[Choice] = []
        for site in sites:
            parts, why = site_refusal(site, req)
            if not parts:
                bad.append(Choice(site.name, False, why))
                continue
            best = self._best_partition(cache, site, parts, req, now)
            good.append(Choice(site.name, True, "", best))
        good.sort(key=lambda c: (c.estimate.start if c.estimate else math.inf, c.site))
        return good + sorted(bad, key=lambda c: c.site)

    def _best_partition(
        self,
        cache: dict[tuple[str, str, str], Profile],
        site: SiteView,
        parts: list[str],
        req: Request,
        now: float,
    ) -> Estimate:
        best: tuple[float, str] = (math.inf, parts[0])
        for p in parts:
            prof = self._profile(cache, site, p, req.shape.gpu_type, now)
            start = self._start(prof, req, now)
            if start < best[0]:
                best = (start, p)
        basis = "free now" if best[0] <= now else "after work ahead ends"
        return self.calibration.estimate(site.name, best[1], now, best[0], basis)

    def place(self, reqs: list[Request], sites: list[SiteView], now: float) -> list[Decision]:
        """Place each request (in the given priority order) on the site where it starts soonest,
        reserving its slot so later ones see the capacity it takes. Requests no eligible site
        can take now are left out (they stay queued)."""
        by_name = {s.name: s for s in sites}
        cache: dict[tuple[str, str, str], Profile] = {}
        eligible: dict[tuple[object, ...], list[tuple[str, str]]] = {}
        # Per request class, a heap of (start, site, partition, profile version): the start is
        # exact for that version and a lower bound after (reserving only delays a profile),
        # so a popped entry whose version is current is the true minimum.
        heaps: dict[tuple[object, ...], list[tuple[float, str, str, int]]] = {}
        out: list[Decision] = []
        for req in reqs:
            key = req.key
            pairs = eligible.get(key)
            if pairs is None:
                pairs = []
                for site in sites:
                    parts, _ = site_refusal(site, req)
                    pairs.extend((site.name, p) for p in parts)
                eligible[key] = pairs
            if not pairs:
                continue
            heap = heaps.get(key)
            if heap is None:
                heap = []
                for sname, p in pairs:
                    prof = self._profile(cache, by_name[sname], p, req.shape.gpu_type, now)
                    heap.append((self._start(prof, req, now), sname, p, prof.version))
                heapq.heapify(heap)
                heaps[key] = heap
            while True:
                start, sname, p, version = heap[0]
                prof = self._profile(cache, by_name[sname], p, req.shape.gpu_type, now)
                if version == prof.version:
                    break
                heapq.heapreplace(heap, (self._start(prof, req, now), sname, p, prof.version))
            if start == math.inf:
                continue
            runtime = self.runtimes.predict(req.user, req.shape.time_limit_minutes * 60.0)
            need = need_of(req.shape, runtime)
            prof.reserve(start, need)
            # Other GPU-type views of the same partition share its CPUs: mark them stale.
            for (s2, p2, g2), other in cache.items():
                if s2 == sname and p2 == p and g2 != req.shape.gpu_type:
                    other.reserve(start, Need(need.cpus, 0, need.seconds))
            basis = "free now" if start <= now else "after work ahead ends"
            est = self.calibration.estimate(sname, p, now, start, basis)
            hold = self.hold_horizon_s is not None and start > now + self.hold_horizon_s
            out.append(Decision(req.job_id, sname, p, est, hold))
        return out
