"""Estimated start of a job at a site: a point from the profile, made honest by calibration.

The profile gives a point: when the job would start if every runtime prediction were right.
They are not, so each site keeps the ratios of actual to predicted wait it has seen and
turns the point into a median and a 90% upper bound (in the spirit of QBETS: an empirical
quantile of the error, per site, rather than a distribution assumed up front).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from metasched.placement.model import SiteView, Work
from metasched.placement.profile import Need, Profile
from metasched.placement.runtime import RuntimePredictor

# Slurm starts a job that fits about a scheduling pass after it arrives, and the agent's
# round trip adds to that: no estimate is ever "now".
DISPATCH_DELAY_S = 5.0
# Pending reasons of jobs that will not start ahead of a new one.
_BLOCKED_REASONS = (
    "held",
    "dependency",
    "begintime",
    "badconstraints",
    "partitiontimelimit",
    "partitionnodelimit",
    "reqnodenotavail",
    "invalid",
    "never",
    "qosmax",
    "assocmax",
    "associationjob",
)


@dataclass(frozen=True)
class Estimate:
    start: float  # median
    start_p90: float
    site: str
    partition: str
    basis: str = ""
    point: float = math.nan  # the uncalibrated profile start (what calibration observes)


def is_blocked(reason: str) -> bool:
    r = reason.lower()
    return any(b in r for b in _BLOCKED_REASONS)


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


def build_profile(
    site: SiteView, partition: str, gpu_type: str, now: float, runtimes: RuntimePredictor
) -> Profile:
    """Free capacity of one partition (GPUs of one type, or all) from now on."""
    fc, fg, tc, tg = _pool(site, partition, gpu_type)
    part = site.partition(partition)
    nodes = frozenset(part.nodes) if part else frozenset()
    releases: list[tuple[float, int, int]] = []
    for w in site.running:
        names = w.node_names
        if w.partition != partition and (not names or nodes.isdisjoint(names)):
            continue
        share = len(nodes.intersection(names)) / len(names) if names and nodes else 1.0
        left = runtimes.remaining(w.user, w.time_limit_s, w.start_time, now)
        releases.append((now + left, round(w.cpus * share), round(_gpus_of(w, gpu_type) * share)))
    prof = Profile.from_releases(now, max(0, fc), max(0, fg), tc, tg, releases)
    for w in [*site.pending, *site.inflight]:
        if w.partition != partition or w.running:
            continue
        need = Need(w.cpus, _gpus_of(w, gpu_type), runtimes.predict(w.user, w.time_limit_s))
        if not prof.fits_ever(need):
            continue
        prof.reserve(prof.earliest(need, now), need)
    return prof


class Calibrator:
    """Per site, recent ratios (actual wait + c) / (predicted wait + c), for quantiles."""

    C = 60.0  # seconds added to both sides: an error of a minute on a zero wait is no error

    def __init__(self, window: int = 200) -> None:
        self._ratios: dict[str, deque[float]] = {}
        self._window = window
        self._quantiles: dict[str, tuple[float, float]] = {}  # until the next observe

    def observe(self, site: str, predicted_wait: float, actual_wait: float) -> None:
        r = (max(0.0, actual_wait) + self.C) / (max(0.0, predicted_wait) + self.C)
        self._ratios.setdefault(site, deque(maxlen=self._window)).append(r)
        self._quantiles.pop(site, None)

    def quantiles(self, site: str) -> tuple[float, float]:
        """(median ratio, 90th percentile ratio); a cautious default until 10 samples exist."""
        q = self._quantiles.get(site)
        if q is None:
            ratios = self._ratios.get(site)
            if not ratios or len(ratios) < 10:
                q = (1.0, 3.0)
            else:
                s = sorted(ratios)
                q = (_quantile(s, 0.5), _quantile(s, 0.9))
            self._quantiles[site] = q
        return q

    def estimate(self, site: str, partition: str, now: float, point: float, basis: str) -> Estimate:
        if point == math.inf:
            return Estimate(math.inf, math.inf, site, partition, basis, point)
        wait = max(0.0, point - now) + DISPATCH_DELAY_S
        m50, m90 = self.quantiles(site)
        w50 = max(DISPATCH_DELAY_S, (wait + self.C) * m50 - self.C)
        w90 = max(w50, (wait + self.C) * m90 - self.C)
        return Estimate(now + w50, now + w90, site, partition, basis, point)


def _quantile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return math.nan
    k = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[k]


def quantile(values: list[float], q: float) -> float:
    return _quantile(sorted(values), q)
