"""A frozen copy of the placement cycle as it was before the fast path (commit 8d362ef):
Profile, build_profile and Placer.place, verbatim but for names. Only bench/placement_speed.py
uses it, to time the old cycle side by side with the new one in the same run and check that
both make the same decisions. Not used by the daemon.
"""

from __future__ import annotations

import bisect
import heapq
import math
from dataclasses import dataclass

from metasched.placement.model import SiteView, Work
from metasched.placement.policy import Decision, Placer, Request, need_of, site_refusal
from metasched.placement.profile import INF, Need
from metasched.placement.runtime import RuntimePredictor


class _Profile:
    __slots__ = ("free_cpus", "free_gpus", "times", "total_cpus", "total_gpus", "version")

    def __init__(
        self, now: float, free_cpus: int, free_gpus: int, total_cpus: int, total_gpus: int
    ):
        self.times: list[float] = [now]
        self.free_cpus: list[int] = [free_cpus]
        self.free_gpus: list[int] = [free_gpus]
        self.total_cpus = total_cpus
        self.total_gpus = total_gpus
        self.version = 0  # bumped on every change, so cached answers know they are stale

    def _split(self, t: float) -> int:
        """Make t a step boundary; return the index of the step starting at t."""
        i = bisect.bisect_right(self.times, t) - 1
        if i < 0:
            # before the profile starts: the past is not plannable, clamp to now
            return 0
        if self.times[i] == t:
            return i
        self.times.insert(i + 1, t)
        self.free_cpus.insert(i + 1, self.free_cpus[i])
        self.free_gpus.insert(i + 1, self.free_gpus[i])
        return i + 1

    def release(self, at: float, cpus: int, gpus: int) -> None:
        """A running job ends at `at`, giving back what it holds from then on."""
        i = self._split(max(at, self.times[0]))
        self.free_cpus[i:] = [c + cpus for c in self.free_cpus[i:]]
        if gpus:
            self.free_gpus[i:] = [g + gpus for g in self.free_gpus[i:]]
        self.version += 1

    def fits_ever(self, need: Need) -> bool:
        return need.cpus <= self.total_cpus and need.gpus <= self.total_gpus

    def earliest(self, need: Need, not_before: float = 0.0) -> float:
        """Earliest start >= not_before at which `need` fits for its whole duration (INF: never)."""
        if not self.fits_ever(need):
            return INF
        times, fc, fg = self.times, self.free_cpus, self.free_gpus
        cpus, gpus, secs = need.cpus, need.gpus, need.seconds
        n = len(times)
        i = max(0, bisect.bisect_right(times, not_before) - 1)
        start = max(times[i], not_before)
        while i < n:
            # the steps the window [start, start + secs) overlaps are i .. j-1
            j = bisect.bisect_left(times, start + secs, i + 1) if secs != INF else n
            bad = -1
            for k in range(j - 1, i - 1, -1):  # from the end: jump past the last shortfall
                if fc[k] < cpus or fg[k] < gpus:
                    bad = k
                    break
            if bad < 0:
                return start
            i = bad + 1
            if i >= n:
                return INF  # the last step is short of capacity forever (should not happen)
            start = times[i]
        return INF

    def reserve(self, start: float, need: Need) -> None:
        """Take `need` from start for its duration (a job placed or planned here)."""
        if start == INF:
            return
        i = self._split(start)
        k = self._split(start + need.seconds) if need.seconds != INF else len(self.times)
        c, g = need.cpus, need.gpus
        self.free_cpus[i:k] = [x - c for x in self.free_cpus[i:k]]
        if g:
            self.free_gpus[i:k] = [x - g for x in self.free_gpus[i:k]]
        self.version += 1

    def free_at(self, t: float) -> tuple[int, int]:
        i = max(0, bisect.bisect_right(self.times, t) - 1)
        return self.free_cpus[i], self.free_gpus[i]


def _pool(site: SiteView, partition: str, gpu_type: str) -> tuple[int, int, int, int]:
    """(free cpus, free gpus, total cpus, total gpus) over the partition's usable nodes."""
    part = site.partition(partition)
    fc = fg = tc = tg = 0
    if part is None:
        return 0, 0, 0, 0
    for name in part.nodes:
        node = site.nodes.get(name)
        if node is None or not node.usable:
            continue
        fc += node.free_cpus
        tc += node.cpus * node.count
        if gpu_type:
            fg += node.free_gpus.get(gpu_type, 0)
            tg += node.gpus.get(gpu_type, 0) * node.count
        else:
            fg += sum(node.free_gpus.values())
            tg += sum(node.gpus.values()) * node.count
    return fc, fg, tc, tg


def _gpus_of(work: Work, gpu_type: str) -> int:
    if not work.gpus:
        return 0
    if gpu_type and work.gpu_type and work.gpu_type != gpu_type:
        return 0
    return work.gpus


def _build_profile(
    site: SiteView, partition: str, gpu_type: str, now: float, runtimes: RuntimePredictor
) -> _Profile:
    """Free capacity of one partition (GPUs of one type, or all) from now on."""
    fc, fg, tc, tg = _pool(site, partition, gpu_type)
    prof = _Profile(now, max(0, fc), max(0, fg), tc, tg)
    part = site.partition(partition)
    nodes = set(part.nodes) if part else set()
    for w in site.running:
        if w.partition != partition and not (nodes & set(w.node_names)):
            continue
        if w.node_names and nodes:
            share = len(nodes & set(w.node_names)) / len(w.node_names)
        else:
            share = 1.0
        left = runtimes.remaining(w.user, w.time_limit_s, w.start_time, now)
        prof.release(now + left, round(w.cpus * share), round(_gpus_of(w, gpu_type) * share))
    for w in [*site.pending, *site.inflight]:
        if w.partition != partition or w.running:
            continue
        need = Need(w.cpus, _gpus_of(w, gpu_type), runtimes.predict(w.user, w.time_limit_s))
        if not prof.fits_ever(need):
            continue
        prof.reserve(prof.earliest(need, now), need)
    return prof


def place(placer: Placer, reqs: list[Request], sites: list[SiteView], now: float) -> list[Decision]:
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
    cache: dict[tuple[str, str, str], _Profile] = {}
    views: dict[tuple[str, str], list[tuple[str, _Profile]]] = {}
    mapping = any(s.mapped_users is not None for s in sites)
    runtimes = [placer.runtimes.predict(r.user, r.shape.time_limit_minutes * 60.0) for r in reqs]
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
    classes: dict[tuple[object, ...], _LegacyClass] = {}

    def profile(sname: str, part: str, gpu_type: str) -> _Profile:
        ck = (sname, part, gpu_type)
        prof = cache.get(ck)
        if prof is None:
            prof = _build_profile(by_name[sname], part, gpu_type, now, placer.runtimes)
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
            cls = classes[k] = _LegacyClass(lb_need, heap)
        heap = cls.heap
        if not heap:
            continue
        need = need_of(req.shape, rt)
        best_t, best_site, best_part = math.inf, "", ""
        best_prof: _Profile | None = None
        popped: list[tuple[float, str, str, int]] = []
        while heap:
            lb, sname, p, version = heap[0]
            if lb >= best_t:
                break
            prof = profile(sname, p, gpu_type)
            if version != prof.version:
                heapq.heapreplace(heap, (prof.earliest(cls.lb_need, now), sname, p, prof.version))
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
        est = placer.calibration.estimate(best_site, best_part, now, best_t, basis)
        hold = placer.hold_horizon_s is not None and best_t > now + placer.hold_horizon_s
        out.append(Decision(req.job_id, best_site, best_part, est, hold))
    return out


@dataclass
class _LegacyClass:
    lb_need: Need
    heap: list[tuple[float, str, str, int]]
