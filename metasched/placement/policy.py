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
        reserving its slot so later ones see the capacity it takes (a burst spreads instead of
        herding). Requests no eligible site can ever take are left out (they stay queued); with
        hold_horizon_s set, those whose start is further away come back with hold=True.

        Speed (the daemon places ~100k queued jobs over ~1000 sites per cycle): jobs of one
        shape class (same shape and constraints; the user only through the predicted runtime)
        share a heap of eligible partitions keyed by a lower bound of the start, the earliest
        slot for the class's shortest runtime. The bound holds for every job of the class
        (a longer job cannot start sooner) and for every later version of a profile (reserving
        only delays), so each job computes exact starts only for the partitions whose bound
        beats the best start found so far (branch and bound), not for all of them.
        """
        by_name = {s.name: s for s in sites}
        cache: dict[tuple[str, str, str], Profile] = {}
        views: dict[tuple[str, str], list[tuple[str, Profile]]] = {}
        mapping = any(s.mapped_users is not None for s in sites)
        runtimes = [self.runtimes.predict(r.user, r.shape.time_limit_minutes * 60.0) for r in reqs]
        keys: list[tuple[object, ...]] = []
        shortest: dict[tuple[object, ...], float] = {}
        for req, rt in zip(reqs, runtimes, strict=True):
            k: tuple[object, ...] = (
                req.user if mapping else "",
                req.shape,
                req.partition,
                req.sites,
                req.exclude,
            )
            keys.append(k)
            shortest[k] = min(rt, shortest.get(k, math.inf))
        classes: dict[tuple[object, ...], _Class] = {}

        def profile(sname: str, part: str, gpu_type: str) -> Profile:
            ck = (sname, part, gpu_type)
            prof = cache.get(ck)
            if prof is None:
                prof = build_profile(by_name[sname], part, gpu_type, now, self.runtimes)
                cache[ck] = prof
                views.setdefault((sname, part), []).append((gpu_type, prof))
            return prof

        out: list[Decision] = []
        for req, rt, k in zip(reqs, runtimes, keys, strict=True):
            cls = classes.get(k)
            gpu_type = req.shape.gpu_type
            if cls is None:
                pairs: list[tuple[str, str]] = []
                for site in sites:
                    parts, _ = site_refusal(site, req)
                    pairs.extend((site.name, p) for p in parts)
                lb_need = need_of(req.shape, max(1.0, shortest[k]))
                heap = []
                for sname, p in pairs:
                    prof = profile(sname, p, gpu_type)
                    heap.append((prof.earliest(lb_need, now), sname, p, prof.version))
                heapq.heapify(heap)
                cls = classes[k] = _Class(lb_need, heap)
            heap = cls.heap
            if not heap:
                continue
            need = need_of(req.shape, rt)
            best_t, best_site, best_part = math.inf, "", ""
            best_prof: Profile | None = None
            popped: list[tuple[float, str, str, int]] = []
            while heap:
                lb, sname, p, version = heap[0]
                if lb >= best_t:
                    break
                prof = profile(sname, p, gpu_type)
                if version != prof.version:
                    heapq.heapreplace(
                        heap, (prof.earliest(cls.lb_need, now), sname, p, prof.version)
                    )
                    continue
                popped.append(heapq.heappop(heap))
                t = prof.earliest(need, now) if lb != math.inf else math.inf
                if t < best_t:
                    best_t, best_site, best_part, best_prof = t, sname, p, prof
            for e in popped:
                heapq.heappush(heap, e)
            if best_prof is None:
                continue
            best_prof.reserve(best_t, need)
            # Other GPU-type views of the same partition share its CPUs.
            for g2, other in views.get((best_site, best_part), ()):
                if g2 != gpu_type:
                    other.reserve(best_t, Need(need.cpus, 0, need.seconds))
            basis = "free now" if best_t <= now else "after work ahead ends"
            est = self.calibration.estimate(best_site, best_part, now, best_t, basis)
            hold = self.hold_horizon_s is not None and best_t > now + self.hold_horizon_s
            out.append(Decision(req.job_id, best_site, best_part, est, hold))
        return out


@dataclass
class _Class:
    """Jobs of one shape class in one placement cycle: the need whose earliest start bounds
    theirs from below, and the heap of (bound, site, partition, profile version)."""

    lb_need: Need
    heap: list[tuple[float, str, str, int]]
