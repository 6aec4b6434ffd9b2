"""Which sites may run a job, and where each queued job goes.

Filtering is exact (a job needing fp64 never goes to an fp16-only site; a shape that fits no
node is never sent anywhere); ranking is by estimated start. Within one cycle every job
placed reserves its slot in the chosen partition's profile, so a burst of submissions
spreads over the sites instead of herding onto the one that looked emptiest a moment ago.
"""

from __future__ import annotations

import gc
import heapq
import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from metasched.jobspec import Shape, constraint_ok
from metasched.placement.estimate import Calibrator, Estimate, build_profile
from metasched.placement.model import NodeView, PartitionView, SiteView
from metasched.placement.offers import AppNeeds, first_runnable
from metasched.placement.profile import Need, Profile
from metasched.placement.runtime import RuntimePredictor

# Held jobs planned in full per cycle under late binding (Slurm's bf_max_job_test is 500 by
# default; sites raise it to thousands). Measured in bench/README.md.
PLAN_DEPTH = 1000


@dataclass(frozen=True)
class Request:
    """One job to place: its shape and the user's constraints."""

    job_id: int
    user: str
    shape: Shape
    partition: str = ""  # -p: one partition or several (a,b); any of them at any site
    sites: frozenset[str] = frozenset()  # empty = any
    exclude: frozenset[str] = frozenset()
    app: AppNeeds | None = None  # an app's job: only partitions one of its recipes can run on

    @property
    def partitions(self) -> frozenset[str]:
        return frozenset(p for p in self.partition.split(",") if p) if self.partition else _ANY

    def partition_ok(self, name: str) -> bool:
        return not self.partition or name == self.partition or name in self.partitions

    @property
    def key(self) -> tuple[object, ...]:
        """Jobs with the same key have the same eligible partitions and the same needs."""
        return (self.user, self.shape, self.partition, self.sites, self.exclude, self.app)


@dataclass(slots=True)  # not frozen: a pass makes one per queued job, and frozen is 4x slower
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
    recipe: str = ""  # an app's job: the recipe that would run there


_ANY: frozenset[str] = frozenset()


def node_units(node: NodeView, shape: Shape) -> int:
    """How much of the job one empty node of this kind holds: for a job of a fixed node
    count 1 (it holds one node's share) or 0; for one Slurm spreads over as many nodes as it
    needs (-n without -N, or -N MIN-MAX), how many of its tasks."""
    features = node.features
    if shape.constraint and features is not None and not constraint_ok(shape.constraint, features):
        return 0
    if not shape.spread:
        return 1 if _holds_share(node, shape) else 0
    if shape.gpu_type:
        gpus = node.gpus.get(shape.gpu_type, 0)
    else:
        gpus = max(node.gpus.values(), default=0)
    if (shape.task_gpus or shape.total_gpus_asked) and not gpus:
        return 0
    return shape.tasks_on(node.cpus, node.mem_mb, gpus)


def units_needed(shape: Shape) -> int:
    """What node_units must add up to over a partition's nodes."""
    return shape.tasks if shape.spread else shape.nodes


def node_fits(node: NodeView, shape: Shape) -> bool:
    """Could this node, empty, hold one node's share of the job (one task of a spread one)?"""
    return node_units(node, shape) > 0


def _holds_share(node: NodeView, shape: Shape) -> bool:
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
    why = shape.time_at(part.max_time_minutes)
    if why:
        return why
    if part.max_nodes_per_job and shape.nodes > part.max_nodes_per_job:
        return f"{shape.nodes} nodes over the partition's per-job limit {part.max_nodes_per_job}"
    members = [site.nodes[n] for n in part.nodes if n in site.nodes]
    fitting = sum(node.count * node_units(node, shape) for node in members)
    gpus_short = shape.total_gpus_asked and shape.total_gpus_asked > sum(
        node.count
        * (node.gpus.get(shape.gpu_type, 0) if shape.gpu_type else sum(node.gpus.values()))
        for node in members
    )
    if fitting < units_needed(shape) or gpus_short:
        if (
            (shape.gpus_per_node or shape.task_gpus or shape.total_gpus_asked)
            and shape.gpu_type
            and not any(shape.gpu_type in node.gpus for node in members)
        ):
            return f"no {shape.gpu_type} GPUs"
        if shape.constraint and not any(
            n.features is None or constraint_ok(shape.constraint, n.features) for n in members
        ):
            return f"no node with the features {shape.constraint!r}"
        if shape.spread:
            return (
                f"shape does not fit: {shape.tasks} task(s) x {shape.cpus_per_task} CPUs"
                + (f" x {shape.task_gpus} GPUs" if shape.task_gpus else "")
                + (f", {shape.total_gpus_asked} GPUs in all" if shape.total_gpus_asked else "")
                + f", room for {fitting} task(s)"
            )
        return _does_not_fit(members, shape, fitting)
    return ""


def _mem(mb: int) -> str:
    return f"{mb} MB" if mb < 1024 else f"{mb / 1024:.1f}".removesuffix(".0") + " GB"


def _does_not_fit(nodes: list[NodeView], shape: Shape, fitting: int) -> str:
    """Why too few of a partition's nodes can hold one node's share of the shape, naming
    what does not fit: memory, GPUs or CPUs per node, or the number of nodes."""
    gpu = f"{shape.gpu_type} GPUs" if shape.gpu_type else "GPUs"
    if shape.gpus_per_node and shape.gpu_type and not any(shape.gpu_type in n.gpus for n in nodes):
        return f"no {gpu}"
    if not nodes:
        return "shape does not fit: the partition has no nodes"
    if fitting:
        return (
            f"shape does not fit: {shape.nodes} nodes asked, {fitting} node(s) big enough "
            "for one node's share"
        )
    over = []
    most_cpus = max(n.cpus for n in nodes)
    if shape.cpus_per_node > most_cpus:
        over.append(f"{shape.cpus_per_node} CPUs per node (the largest node has {most_cpus})")
    most_mem = max(n.mem_mb for n in nodes)
    if shape.mem_per_node_mb > most_mem:
        over.append(
            f"memory {_mem(shape.mem_per_node_mb)} per node (the largest node has {_mem(most_mem)})"
        )
    most_gpus = max(
        n.gpus.get(shape.gpu_type, 0) if shape.gpu_type else max(n.gpus.values(), default=0)
        for n in nodes
    )
    if shape.gpus_per_node > most_gpus:
        over.append(f"{shape.gpus_per_node} {gpu} per node (the most on a node is {most_gpus})")
    if over:
        return "shape does not fit: " + "; ".join(over)
    return (
        f"shape does not fit: no node has {shape.cpus_per_node} CPUs"
        + (f", {_mem(shape.mem_per_node_mb)}" if shape.mem_per_node_mb else "")
        + (f" and {shape.gpus_per_node} {gpu}" if shape.gpus_per_node else "")
        + " at once"
    )


def gpus_per_node(site: SiteView, part: PartitionView) -> dict[str, int]:
    """The accelerator types of a partition's nodes, each with the most one node has (what an
    app recipe may target)."""
    most: dict[str, int] = {}
    for n in part.nodes:
        node = site.nodes.get(n)
        for gpu_type, count in node.gpus.items() if node is not None else ():
            if count > 0:
                most[gpu_type] = max(most.get(gpu_type, 0), count)
    return most


def recipe_for(site: SiteView, part: PartitionView, app: AppNeeds) -> tuple[str, str]:
    """(the app's recipe to run on this partition, '') or ('', why none of them can)."""
    return first_runnable(site.name, gpus_per_node(site, part), part.precisions, part.offers, app)


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
    parts = [p for p in site.partitions if req.partition_ok(p.name)]
    if not parts:
        return [], f"no partition {req.partition!r}"
    reasons: list[str] = []
    ok: list[str] = []
    for p in parts:
        why = partition_refusal(site, p, req.shape)
        if not why and req.app is not None:
            why = recipe_for(site, p, req.app)[1]
        if why:
            reasons.append(why)
        else:
            ok.append(p.name)
    if ok:
        return ok, ""
    return [], reasons[0] if len(set(reasons)) == 1 else "; ".join(dict.fromkeys(reasons))


class _Partitions:
    """The partitions open to new work this cycle, for finding a shape class's eligible ones
    (site_refusal(site, req)[0] without the reasons) without walking every site per class:
    indexed by the precisions they offer, and with node fits counted once per per-node shape
    for all of them."""

    def __init__(self, sites: list[SiteView]) -> None:
        # (site, partition, whether its nodes have accelerators)
        self.entries: list[tuple[SiteView, PartitionView, bool]] = []
        self.by_precision: dict[str, list[int]] = {}
        for site in sites:
            if site.state in ("retired", "draining") or not site.online:
                continue
            for p in site.partitions:
                gpus = any(site.nodes[n].gpus for n in p.nodes if n in site.nodes)
                for prec in p.precisions:
                    self.by_precision.setdefault(prec, []).append(len(self.entries))
                self.entries.append((site, p, gpus))
        self._fitting: dict[tuple[object, ...], list[int]] = {}
        self._gpus: dict[str, list[int]] = {}
        self._runnable: dict[AppNeeds, list[bool]] = {}

    def runnable(self, app: AppNeeds) -> list[bool]:
        """Per entry, whether one of the app's recipes can run there (once per app version)."""
        ok = self._runnable.get(app)
        if ok is None:
            ok = self._runnable[app] = [
                not recipe_for(site, p, app)[1] for site, p, _ in self.entries
            ]
        return ok

    def fitting(self, shape: Shape) -> list[int]:
        """Per entry, how much of the shape its nodes hold (node_units: nodes that hold one
        node's share, or tasks of a spread job; 0 where --gpus asks more than it has)."""
        key: tuple[object, ...] = (
            shape.cpus_per_node,
            shape.mem_per_node_mb,
            shape.gpus_per_node,
            shape.gpu_type,
        )
        if shape.spread:
            key = (*key, shape.task_mem_mb, shape.task_gpus, shape.total_gpus_asked)
        if shape.constraint:
            key = (*key, shape.constraint)
        counts = self._fitting.get(key)
        if counts is None:
            counts = self._fitting[key] = [
                sum(
                    site.nodes[n].count * node_units(site.nodes[n], shape)
                    for n in p.nodes
                    if n in site.nodes
                )
                for site, p, _ in self.entries
            ]
            if shape.total_gpus_asked:  # --gpus: the job's GPUs in all must be there too
                gpus = self.gpus(shape.gpu_type)
                counts[:] = [
                    c if g >= shape.total_gpus_asked else 0
                    for c, g in zip(counts, gpus, strict=True)
                ]
        return counts

    def gpus(self, gpu_type: str) -> list[int]:
        """Per entry, its GPUs (of that type; "" = any) over all its nodes."""
        totals = self._gpus.get(gpu_type)
        if totals is None:
            totals = self._gpus[gpu_type] = [
                sum(
                    site.nodes[n].count
                    * (
                        site.nodes[n].gpus.get(gpu_type, 0)
                        if gpu_type
                        else sum(site.nodes[n].gpus.values())
                    )
                    for n in p.nodes
                    if n in site.nodes
                )
                for site, p, _ in self.entries
            ]
        return totals

    def eligible(self, req: Request) -> list[int]:
        """Indices of the entries the request may use."""
        shape = req.shape
        fitting = self.fitting(shape)
        need = units_needed(shape)
        entries = self.entries
        runnable = self.runnable(req.app) if req.app is not None else None
        ok = []
        if shape.precision:
            indices: Iterable[int] = self.by_precision.get(shape.precision, [])
        else:
            indices = range(len(entries))
        for i in indices:
            site, p, _ = entries[i]
            if req.sites and site.name not in req.sites:
                continue
            if site.name in req.exclude:
                continue
            if site.mapped_users is not None and req.user not in site.mapped_users:
                continue
            if req.partition and not req.partition_ok(p.name):
                continue
            if p.max_time_minutes and shape.time_at(p.max_time_minutes):
                continue
            if p.max_nodes_per_job and shape.nodes > p.max_nodes_per_job:
                continue
            if runnable is not None and not runnable[i]:
                continue
            if fitting[i] >= need:
                ok.append(i)
        return ok


def need_of(shape: Shape, runtime_s: float) -> Need:
    return Need(shape.total_cpus, shape.total_gpus, runtime_s)


@dataclass
class Placer:
    """Places queued jobs on sites. Keeps the runtime history and calibration it learns from."""

    runtimes: RuntimePredictor = field(default_factory=RuntimePredictor)
    calibration: Calibrator = field(default_factory=Calibrator)
    # Late binding: a job whose planned start is more than this many seconds away is held in
    # the global queue (Decision.hold) and re-planned next cycle, so it goes wherever capacity
    # actually frees first. None: forward every placeable job at once (early binding).
    hold_horizon_s: float | None = None
    # Late binding only: how many held jobs (in priority order) get a full plan with a
    # reservation each cycle, like Slurm's bf_max_job_test; later jobs are only checked for
    # a start now (see place). None: plan every job.
    plan_depth: int | None = PLAN_DEPTH
    # The last cycle, for place_more to continue; its planned starts of held jobs are the
    # next cycle's floor for their estimates once deep.
    _cycle: _Cycle | None = field(default=None, init=False, repr=False)

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
            recipe = ""
            part = site.partition(best.partition)
            if req.app is not None and part is not None:
                recipe = recipe_for(site, part, req.app)[0]
            good.append(Choice(site.name, True, "", best, recipe))
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

        Planning depth (late binding only, plan_depth): once plan_depth jobs have been held
        with a reservation, later jobs are only asked "can it start now anywhere, given the
        reservations so far?" (exact; it then starts and reserves as before), from a per-class
        heap of how long the class's size stays free from now. Otherwise it is held without a
        reservation, with a cheap estimate (see _deep).

        Guard (late binding only): the first held job planned on a partition is guarded as
        Slurm's EASY backfill guards its head job. Later jobs start there ahead of it only if
        they fit by their time limit, not merely by their predicted runtime: a held job is
        invisible to the site's own backfill, and with predictions alone every too-short guess
        pushed its start back again, cycle after cycle (big jobs with one eligible site waited
        up to 3x longer than under the clairvoyant oracle in the replay; bench/README.md).
        """
        prev_points = self._cycle.points if self._cycle is not None else {}
        with _gc_paused():
            cycle = _Cycle(self, sites, now, prev_points)
            out = self._run(cycle, reqs)
        self._cycle = cycle
        return out

    def place_more(self, reqs: list[Request]) -> list[Decision] | None:
        """Continue the last cycle with requests queued after all of its own (lower priority):
        the same decisions a full cycle over both lists would make at that cycle's time, with
        the same site views (only the unplanned estimates of jobs past the planning depth may
        differ: they are their class's lower bound), at the cost of the new requests alone.
        The caller owns the premise: nothing the views or the runtime history say has changed
        since that cycle, and little time has passed (its estimates are as of then). Requests
        it has already placed are left out. None if there is no cycle to continue."""
        cycle = self._cycle
        if cycle is None:
            return None
        with _gc_paused():
            return self._run(cycle, [r for r in reqs if r.job_id not in cycle.seen])

    def _run(self, cycle: _Cycle, reqs: list[Request]) -> list[Decision]:
        """Place reqs, in order, after everything the cycle has placed so far."""
        mapping = cycle.mapping
        predict = self.runtimes.predict
        rt_cache = cycle.rt_cache
        runtimes: list[float] = []
        index = cycle.class_of  # class key -> class number
        cls_of: list[int] = []  # per request (hashing a key costs ~1 us: once per job)
        shortest = cycle.shortest  # per class
        classes = cycle.classes
        seen = cycle.seen
        for req in reqs:
            seen.add(req.job_id)
            user, shape = req.user, req.shape
            rk = (user, shape.time_limit_minutes)
            rt = rt_cache.get(rk)
            if rt is None:
                rt = rt_cache[rk] = predict(user, shape.time_limit_minutes * 60.0)
            runtimes.append(rt)
            k = (user if mapping else "", shape, req.partition, req.sites, req.exclude, req.app)
            c = index.get(k)
            if c is not None and rt < shortest[c] and classes[c] is not None:
                # An earlier call built this class's heap (classes are built only below) with
                # bounds for longer runtimes, which do not bound this job: its class starts
                # afresh from here on.
                c = None
            if c is None:
                c = index[k] = len(shortest)
                shortest.append(rt)
                classes.append(None)
            elif rt < shortest[c]:
                shortest[c] = rt
            cls_of.append(c)
        if not reqs:
            return []
        now = cycle.now
        open_parts = cycle.open_parts
        fresh = cycle.fresh
        horizon = self.hold_horizon_s
        depth = self.plan_depth if horizon is not None else None
        held_planned = cycle.held_planned
        points = cycle.points
        estimate = cycle.estimate
        needs = cycle.needs  # (class, runtime) -> Need
        # Partitions whose first held job (in priority order) is guarded as Slurm's EASY
        # backfill guards its head job: later jobs start ahead of it only if they fit by
        # their time limit, not just by their predicted runtime.
        guarded = cycle.guarded
        profile = cycle.profile
        take = cycle.take

        out: list[Decision] = []
        for req, rt, c in zip(reqs, runtimes, cls_of, strict=True):
            cls = classes[c]
            gpu_type = req.shape.gpu_type
            if cls is None:
                lb_need = need_of(req.shape, max(1.0, shortest[c]))
                # Every bound starts at now (true of any start) with version -1, so it is made
                # exact only when it reaches the top: most partitions never need it.
                # Between equal starts, CPU-only work prefers partitions without accelerators
                # (pref 0): it should not take a GPU site's CPUs while a CPU site is as free.
                cpu_job = not req.shape.total_gpus
                entries = fresh.setdefault((gpu_type, cpu_job), {})
                heap: list[tuple[float, int, str, str, int, Profile]] = []
                for i in open_parts.eligible(req):
                    entry = entries.get(i)
                    if entry is None:
                        site, pv, gpus = open_parts.entries[i]
                        sname, p = site.name, pv.name
                        pref = int(cpu_job and gpus)
                        entry = entries[i] = (now, pref, sname, p, -1, profile(sname, p, gpu_type))
                    heap.append(entry)
                heapq.heapify(heap)
                by_limit_need = need_of(req.shape, req.shape.time_limit_minutes * 60.0)
                cls = classes[c] = _Class(lb_need, heap, by_limit_need)
            heap = cls.heap
            if not heap:
                continue
            need = needs.get((c, rt))
            if need is None:
                need = needs[(c, rt)] = need_of(req.shape, rt)
            by_limit = cls.by_limit if guarded else need
            if depth is not None and held_planned >= depth:
                # Deep in the queue: start now if it fits somewhere now, else hold it unplanned.
                d = self._deep(cycle, cls, req, need, by_limit)
                if d is not None:
                    out.append(d)
                continue
            top = heap[0]
            if (
                top[0] <= now
                and top[5].fits_now(need)
                and ((top[2], top[3]) not in guarded or top[5].fits_now(by_limit))
            ):
                # The top bound is now and the job fits there now: nothing starts sooner, and
                # the top's exact bound would be now too, so it stays the top (ties included).
                best_t, best_site, best_part, best_prof = now, top[2], top[3], top[5]
            else:
                found = self._search(cls, need, by_limit, guarded, now)
                if found is None:
                    continue
                best_t, best_site, best_part, best_prof = found
            take(best_prof, best_site, best_part, gpu_type, best_t, need)
            basis = "free now" if best_t <= now else "after work ahead ends"
            est = estimate(best_site, best_part, best_t, basis)
            hold = horizon is not None and best_t > now + horizon
            if hold:
                held_planned += 1
                points[req.job_id] = best_t
                guarded.add((best_site, best_part))
            out.append(Decision(req.job_id, best_site, best_part, est, hold))
        cycle.held_planned = held_planned
        return out

    @staticmethod
    def _search(
        cls: _Class, need: Need, by_limit: Need, guarded: set[tuple[str, str]], now: float
    ) -> tuple[float, str, str, Profile] | None:
        """The job's earliest (start, site, partition, profile) by branch and bound over the
        class's heap (see place); None if no eligible partition can ever run it."""
        heap = cls.heap
        best_t, best_site, best_part = math.inf, "", ""
        best_key: tuple[int, str, str] = (2, "", "")
        best_prof: Profile | None = None
        popped: list[tuple[float, int, str, str, int, Profile]] = []
        while heap:
            lb, pref, sname, p, version, prof = heap[0]
            # Equal starts go to the first (preference, site, partition), whatever the bounds:
            # a plan continued later (place_more) then decides as one made in one go.
            if lb > best_t or (lb == best_t and (pref, sname, p) >= best_key):
                break
            if version != prof.version:
                heapq.heapreplace(
                    heap, (prof.earliest(cls.lb_need, now), pref, sname, p, prof.version, prof)
                )
                continue
            popped.append(heapq.heappop(heap))
            t = prof.earliest(need, now) if lb != math.inf else math.inf
            if t <= now and (sname, p) in guarded and not prof.fits_now(by_limit):
                t = prof.earliest(by_limit, now)  # no start ahead of a guarded job on a guess
            if t < best_t or (t == best_t != math.inf and (pref, sname, p) < best_key):
                best_t, best_site, best_part, best_prof = t, sname, p, prof
                best_key = (pref, sname, p)
        for e in popped:
            heapq.heappush(heap, e)
        if best_prof is None:
            return None
        return best_t, best_site, best_part, best_prof

    @staticmethod
    def _deep(
        cycle: _Cycle, cls: _Class, req: Request, need: Need, by_limit: Need
    ) -> Decision | None:
        """A job past the planning depth: forwarded if it fits now on an eligible partition
        (the one with the longest room now for the class's size, from a heap of upper bounds
        refreshed lazily: reservations only shorten the room), else held with no reservation
        and an estimate from the class's lower bound (or last cycle's planned start if later)."""
        now, guarded = cycle.now, cycle.guarded
        room = cls.room
        if room is None:
            room = cls.room = [
                (-prof.room_now(cls.lb_need), sname, p, -1, prof)
                for _, _, sname, p, _, prof in cls.heap
            ]
            heapq.heapify(room)
        passed: list[tuple[float, str, str, int, Profile]] = []
        try:
            while room:
                neg, sname, p, version, prof = room[0]
                if -neg < need.seconds:
                    break  # the longest room (an upper bound) is too short: none fits now
                if version != prof.version:
                    heapq.heapreplace(
                        room, (-prof.room_now(cls.lb_need), sname, p, prof.version, prof)
                    )
                    continue
                if -neg < by_limit.seconds and (sname, p) in guarded:
                    passed.append(heapq.heappop(room))  # fits by its guess, not by its limit
                    continue
                cycle.take(prof, sname, p, req.shape.gpu_type, now, need)
                est = cycle.estimate(sname, p, now, "free now")
                return Decision(req.job_id, sname, p, est, False)
        finally:
            for e in passed:
                heapq.heappush(room, e)
        heap = cls.heap
        while heap and heap[0][4] != heap[0][5].version:
            _, pref, sname, p, _, prof = heap[0]
            heapq.heapreplace(
                heap, (prof.earliest(cls.lb_need, now), pref, sname, p, prof.version, prof)
            )
        if not heap or heap[0][0] == math.inf:
            return None
        lb, _, sname, p, _, _ = heap[0]
        t = max(lb, cycle.prev_points.get(req.job_id, lb))
        cycle.points[req.job_id] = t
        est = cycle.estimate(sname, p, t, "deep in the queue (not planned)")
        return Decision(req.job_id, sname, p, est, True)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a cycle runs: it allocates millions of short-lived
    tuples that form no cycles, and each full collection walks every object the daemon holds
    (10-20% of the cycle in bench/placement_speed.py). Collection resumes afterwards; the
    state is restored only if it was on, so overlapping callers cannot leave it off."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


class _Cycle:
    """What one placement cycle has built and decided so far: the profiles with every
    reservation made, the shape classes' heaps, the guarded partitions, the planned starts.
    Placer.place starts one; Placer.place_more continues it with later requests."""

    def __init__(
        self, placer: Placer, sites: list[SiteView], now: float, prev_points: dict[int, float]
    ) -> None:
        self.now = now
        self.runtimes = placer.runtimes
        self.calibrated = placer.calibration.estimate
        self.mapping = any(s.mapped_users is not None for s in sites)
        self.by_name = {s.name: s for s in sites}
        self.open_parts = _Partitions(sites)
        self.cache: dict[tuple[str, str, str], Profile] = {}
        self.views: dict[tuple[str, str], list[tuple[str, Profile]]] = {}
        # Initial heap entries per (GPU type, CPU-only) and partition entry: classes share them.
        self.fresh: dict[tuple[str, bool], dict[int, tuple[float, int, str, str, int, Profile]]]
        self.fresh = {}
        self.class_of: dict[tuple[object, ...], int] = {}
        self.shortest: list[float] = []
        self.classes: list[_Class | None] = []
        self.rt_cache: dict[tuple[str, int], float] = {}
        self.needs: dict[tuple[int, float], Need] = {}
        self.estimates: dict[tuple[str, str, float, str], Estimate] = {}
        self.guarded: set[tuple[str, str]] = set()
        self.held_planned = 0
        self.prev_points = prev_points
        self.points: dict[int, float] = {}
        self.seen: set[int] = set()

    def estimate(self, sname: str, part: str, t: float, basis: str) -> Estimate:
        # Calibration does not change within a cycle, and most jobs share a few starts
        # (every job that starts now on a partition gets the same estimate).
        key = (sname, part, t, basis)
        est = self.estimates.get(key)
        if est is None:
            est = self.estimates[key] = self.calibrated(sname, part, self.now, t, basis)
        return est

    def profile(self, sname: str, part: str, gpu_type: str) -> Profile:
        ck = (sname, part, gpu_type)
        prof = self.cache.get(ck)
        if prof is None:
            prof = build_profile(self.by_name[sname], part, gpu_type, self.now, self.runtimes)
            self.cache[ck] = prof
            self.views.setdefault((sname, part), []).append((gpu_type, prof))
        return prof

    def take(
        self, prof: Profile, sname: str, part: str, gpu_type: str, t: float, need: Need
    ) -> None:
        prof.reserve(t, need)
        # Other GPU-type views of the same partition share its CPUs.
        for g2, other in self.views.get((sname, part), ()):
            if g2 != gpu_type:
                other.reserve(t, Need(need.cpus, 0, need.seconds))


@dataclass
class _Class:
    """Jobs of one shape class in one placement cycle: the need whose earliest start bounds
    theirs from below, and the heap of (bound, preference, site, partition, profile version,
    profile); preference 1 marks a partition whose accelerators CPU-only work would strand."""

    lb_need: Need
    heap: list[tuple[float, int, str, str, int, Profile]]
    by_limit: Need  # a job of the class at its time limit (the guard's test)
    # For jobs past the planning depth: (-room now for lb_need's size, site, partition,
    # version, profile), built on first use.
    room: list[tuple[float, str, str, int, Profile]] | None = None
