"""Estimated start of a job at a site: a point from the profile, made honest by calibration.

The profile gives a point: when the job would start if every runtime prediction were right.
They are not, so each site keeps the ratios of actual to predicted wait it has seen and
turns the point into a median and a 90% upper bound (in the spirit of QBETS: an empirical
quantile of the error, per site, rather than a distribution assumed up front).
"""

from __future__ import annotations

import bisect
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


@dataclass(slots=True)  # not frozen: a pass makes up to one per queued job (4x cheaper so)
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


# Upper edges (seconds of predicted wait) of the calibration buckets: errors scale
# differently for a job that starts now, waits minutes, or waits hours.
WAIT_BUCKETS: tuple[float, ...] = (DISPATCH_DELAY_S + 1.0, 600.0, 3600.0, 4 * 3600.0)


TARGET_LEVEL = 0.9  # the bound is a 90% bound
MIN_LEVEL, MAX_LEVEL = 0.5, 1.0  # where the adapted level may go


class Calibrator:
    """Per site and predicted-wait bucket, recent ratios (actual wait + c) / (predicted wait
    + c), for quantiles. A bucket with fewer than `min_samples` falls back to the site's
    ratios over all buckets (off by default: measured in bench/README.md, per-bucket 90%
    bounds cover ~90% per bucket, and with the many jobs that start at once, whose bound
    always holds, far more than 90% of all jobs).

    The upper bound's quantile level adapts per site (adaptive conformal inference, Gibbs and
    Candes 2021): each observed start counts as a miss if its ratio is over the site's
    current upper quantile, and the level moves by `gamma` x (miss - 10%), so the share of
    starts under the bound tracks 90% even when recent errors are not like the next ones.
    gamma = 0: the plain empirical 90th percentile."""

    C = 60.0  # seconds added to both sides: an error of a minute on a zero wait is no error

    def __init__(
        self,
        window: int = 200,
        buckets: tuple[float, ...] = (),
        min_samples: int = 20,
        gamma: float = 0.005,
    ) -> None:
        self._ratios: dict[tuple[str, int], deque[float]] = {}
        self._gamma = gamma
        self._level: dict[str, float] = {}  # per site: the upper quantile's level
        self._window = window
        self._buckets = buckets
        self._min = min_samples
        self._quantiles: dict[tuple[str, int], tuple[float, float]] = {}  # until next observe

    def bucket(self, predicted_wait: float) -> int:
        """The bucket of a predicted wait; -1 is the site's ratios over all buckets."""
        return bisect.bisect_left(self._buckets, predicted_wait)

    def observe(self, site: str, predicted_wait: float, actual_wait: float) -> None:
        r = (max(0.0, actual_wait) + self.C) / (max(0.0, predicted_wait) + self.C)
        if self._gamma:
            pooled = self._ratios.get((site, -1))
            if pooled is not None and len(pooled) >= 10:
                miss = r > self.quantiles(site, predicted_wait)[1] + 1e-9
                level = self._level.get(site, TARGET_LEVEL) + self._gamma * (
                    float(miss) - (1.0 - TARGET_LEVEL)
                )
                self._level[site] = min(MAX_LEVEL, max(MIN_LEVEL, level))
                for k in [k for k in self._quantiles if k[0] == site]:
                    del self._quantiles[k]
        for b in (-1, self.bucket(predicted_wait)) if self._buckets else (-1,):
            self._ratios.setdefault((site, b), deque(maxlen=self._window)).append(r)
            self._quantiles.pop((site, b), None)

    def quantiles(self, site: str, predicted_wait: float | None = None) -> tuple[float, float]:
        """(median ratio, 90th percentile ratio) for the site, in the bucket of
        `predicted_wait` when it has enough samples; a cautious default until 10 exist."""
        key = (site, -1)
        if predicted_wait is not None and self._buckets:
            b = (site, self.bucket(predicted_wait))
            ratios = self._ratios.get(b)
            if ratios is not None and len(ratios) >= self._min:
                key = b
        q = self._quantiles.get(key)
        if q is None:
            ratios = self._ratios.get(key)
            if not ratios or len(ratios) < 10:
                q = (1.0, 3.0)
            else:
                s = sorted(ratios)
                q = (_quantile(s, 0.5), _quantile(s, self._level.get(site, TARGET_LEVEL)))
            self._quantiles[key] = q
        return q

    def estimate(self, site: str, partition: str, now: float, point: float, basis: str) -> Estimate:
        if point == math.inf:
            return Estimate(math.inf, math.inf, site, partition, basis, point)
        wait = max(0.0, point - now) + DISPATCH_DELAY_S
        m50, m90 = self.quantiles(site, max(0.0, point - now))
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
