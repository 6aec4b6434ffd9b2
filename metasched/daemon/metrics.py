"""metaschedd's Prometheus metrics (docs/ops.md lists them).

Nothing here runs per job on a hot path. Gauges (jobs by state, sites' capacity and use,
report age) are computed when Prometheus scrapes, from what the daemon keeps anyway (the
store's live jobs, the sites' last reports). Counters and histograms are updated once per
commit (store), once per pass (placement and every service cycle) and once per RPC.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import grpc
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client import Counter as PromCounter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from metasched.daemon.sites import SiteRegistry
from metasched.states import JobState
from metasched.store import JobRow, Store

if TYPE_CHECKING:
    from metasched.daemon.scheduler import Scheduler

_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# How far a job's start was from the estimate it was given at submission (before
# calibration), in seconds: negative = it started earlier than told.
_ERROR = (-3600, -600, -120, -30, -5, 5, 30, 120, 600, 3600, 4 * 3600)


class DaemonMetrics(Collector):
    def __init__(self, store: Store, sites: SiteRegistry) -> None:
        self.store = store
        self.sites = sites
        self.registry = CollectorRegistry(auto_describe=False)
        self.commit_seconds = Histogram(
            "metasched_store_commit_seconds",
            "One write transaction of the global queue (group commit), BEGIN to COMMIT",
            buckets=_FAST,
            registry=self.registry,
        )
        self.cycle_seconds = Histogram(
            "metasched_cycle_seconds",
            "One cycle of a daemon activity (placement: one placement pass)",
            ["service"],
            buckets=_FAST,
            registry=self.registry,
        )
        self.rpc_seconds = Histogram(
            "metasched_rpc_seconds",
            "gRPC calls, from the handler's start to its answer (SubmitJob: intake latency)",
            ["method"],
            buckets=_FAST,
            registry=self.registry,
        )
        self.rpcs = PromCounter(
            "metasched_rpcs",
            "gRPC calls answered, by method and status code",
            ["method", "code"],
            registry=self.registry,
        )
        self.estimate_error = Histogram(
            "metasched_start_estimate_error_seconds",
            "A job's actual start minus the start estimated at its submission",
            buckets=_ERROR,
            registry=self.registry,
        )
        self.uses = SiteUses()
        # updated by the store's listener, once per commit
        self.submitted = 0
        self.ended: Counter[str] = Counter()
        self.registry.register(self)

    def attach(self, scheduler: Scheduler) -> None:
        """Hooks the metrics into the daemon: the store's commits and changes, and every
        service's cycle."""
        self.store.on_commit = self.commit_seconds.observe
        self.store.add_listener(self.on_changes)
        scheduler.instrument(self.timed)

    # ---------------------------------------------------------------- at commit

    def on_changes(self, changes: list[tuple[JobRow, JobState, str]]) -> None:
        """The store's listener: counts what one commit changed (runs on the writer thread)."""
        ended = self.ended
        for row, old, detail in changes:
            state = row.state
            if detail == "submitted":
                self.submitted += 1
            elif state.is_final:
                ended[state.value.lower()] += 1
            elif (
                state == JobState.RUNNING
                and old != JobState.RUNNING
                and row.first_est_at
                and row.first_est_point
                and row.started_at
            ):
                self.estimate_error.observe(row.started_at - row.first_est_point)

    # ---------------------------------------------------------------- at scrape

    def collect(self) -> Iterator[Any]:
        now = time.time()
        live = Counter(j.state.value.lower() for j in list(self.store.live.values()))
        jobs = GaugeMetricFamily("metasched_jobs", "Jobs not yet ended, by state", labels=["state"])
        for state in JobState:
            if not state.is_final:
                jobs.add_metric([state.value.lower()], live.get(state.value.lower(), 0))
        yield jobs
        submitted = CounterMetricFamily(
            "metasched_jobs_submitted", "Jobs accepted into the global queue"
        )
        submitted.add_metric([], self.submitted)
        yield submitted
        ended = CounterMetricFamily(
            "metasched_jobs_ended", "Jobs ended, by final state", labels=["state"]
        )
        for state in JobState:
            if state.is_final:
                ended.add_metric([state.value.lower()], self.ended.get(state.value.lower(), 0))
        yield ended
        yield from self._sites(now)

    def _sites(self, now: float) -> Iterable[Any]:
        up = GaugeMetricFamily("metasched_site_up", "1 while the site is online", labels=["site"])
        state = GaugeMetricFamily(
            "metasched_site_state",
            "The site's state (1 for the one it is in)",
            labels=["site", "state"],
        )
        age = GaugeMetricFamily(
            "metasched_site_report_age_seconds",
            "Seconds since the site's agent last reported",
            labels=["site"],
        )
        cpus = GaugeMetricFamily(
            "metasched_site_cpus", "CPUs of the site's usable nodes", labels=["site", "use"]
        )
        gpus = GaugeMetricFamily(
            "metasched_site_gpus", "GPUs of the site's usable nodes", labels=["site", "use"]
        )
        prec_nodes = GaugeMetricFamily(
            "metasched_precision_nodes", "Nodes offering a precision", labels=["site", "precision"]
        )
        prec_cpus = GaugeMetricFamily(
            "metasched_precision_cpus",
            "CPUs of the nodes offering a precision",
            labels=["site", "precision", "use"],
        )
        prec_gpus = GaugeMetricFamily(
            "metasched_precision_gpus",
            "GPUs of the nodes offering a precision",
            labels=["site", "precision", "use"],
        )
        slurm_jobs = GaugeMetricFamily(
            "metasched_site_slurm_jobs",
            "Jobs in the site's Slurm queue (everyone's), by state",
            labels=["site", "state"],
        )
        ours = GaugeMetricFamily(
            "metasched_site_jobs",
            "Federation jobs sent to the site and not yet ended",
            labels=["site"],
        )
        for site in self.sites.all():
            name = site.name
            up.add_metric([name], 1.0 if site.state == "online" else 0.0)
            for s in ("online", "offline", "draining", "retired"):
                state.add_metric([name, s], 1.0 if site.state == s else 0.0)
            age.add_metric([name], now - site.last_seen if site.last_seen else float("nan"))
            ours.add_metric([name], len(self.store.live_at(name)))
            use = self.uses.of(name, site.report) if site.report is not None else None
            if use is None:
                continue
            for kind in ("total", "alloc"):
                cpus.add_metric([name, kind], use.cpus[kind])
                gpus.add_metric([name, kind], use.gpus[kind])
            for prec, p in sorted(use.precisions.items()):
                prec_nodes.add_metric([name, prec], p["nodes"])
                for kind in ("total", "alloc"):
                    prec_cpus.add_metric([name, prec, kind], p[f"cpus_{kind}"])
                    prec_gpus.add_metric([name, prec, kind], p[f"gpus_{kind}"])
            for s in ("RUNNING", "PENDING"):
                slurm_jobs.add_metric([name, s.lower()], use.jobs.get(s, 0))
        yield from (up, state, age, cpus, gpus, prec_nodes, prec_cpus, prec_gpus, slurm_jobs, ours)

    # ---------------------------------------------------------------- hooks

    def timed(self, service: str, fn: Callable[[], object]) -> Callable[[], object]:
        hist = self.cycle_seconds.labels(service)

        def run() -> object:
            t0 = time.perf_counter()
            try:
                return fn()
            finally:
                hist.observe(time.perf_counter() - t0)

        return run


class SiteUse:
    """A site's capacity and use from its last report: totals and per precision."""

    __slots__ = ("cpus", "gpus", "jobs", "precisions")

    def __init__(self) -> None:
        self.cpus = {"total": 0, "alloc": 0}
        self.gpus = {"total": 0, "alloc": 0}
        self.jobs: Counter[str] = Counter()
        self.precisions: dict[str, dict[str, int]] = {}


class SiteUses:
    """Each site's SiteUse, computed again only when its report changed: the registry keeps a
    site's report object until a report differs. At 1,000 sites (56,000 nodes) computing
    them all was 1 of a scrape's 1.6 CPU s, every scrape, holding the GIL."""

    def __init__(self) -> None:
        self._by_site: dict[str, tuple[Any, SiteUse]] = {}

    def of(self, site: str, report: Any) -> SiteUse:
        hit = self._by_site.get(site)
        if hit is not None and hit[0] is report:
            return hit[1]
        use = site_use(report)
        self._by_site[site] = (report, use)  # one dict store: concurrent scrapes are safe
        return use


def site_use(report: Any) -> SiteUse:
    """From a pb.SiteReport; usable nodes only (a down node is no capacity). A node in
    several partitions offering one precision counts once for it."""
    from metasched.states import node_usable

    use = SiteUse()
    offered: dict[str, set[str]] = {}
    for p in report.partitions:
        for x in p.precisions:
            offered.setdefault(p.name, set()).add(x.name)
    for n in report.nodes:
        if not node_usable(n.state):
            continue
        g_total = sum(g.count for g in n.gpus)
        g_alloc = min(g_total, sum(g.count for g in n.alloc_gpus))
        use.cpus["total"] += n.cpus
        use.cpus["alloc"] += min(n.cpus, n.alloc_cpus)
        use.gpus["total"] += g_total
        use.gpus["alloc"] += g_alloc
        precs: set[str] = set()
        for part in n.partitions:
            precs |= offered.get(part, set())
        for prec in precs:
            p = use.precisions.setdefault(
                prec,
                {"nodes": 0, "cpus_total": 0, "cpus_alloc": 0, "gpus_total": 0, "gpus_alloc": 0},
            )
            p["nodes"] += 1
            p["cpus_total"] += n.cpus
            p["cpus_alloc"] += min(n.cpus, n.alloc_cpus)
            p["gpus_total"] += g_total
            p["gpus_alloc"] += g_alloc
    use.jobs.update(j.state for j in report.jobs)
    return use


class RpcMetrics:
    """Counts every gRPC call by method and status code, and times it: wire.add_service calls
    observe once for each call, as it ends."""

    def __init__(self, metrics: DaemonMetrics) -> None:
        self.m = metrics
        self._by_method: dict[str, Any] = {}  # method -> its histogram child

    def observe(self, method: str, seconds: float, code: grpc.StatusCode) -> None:
        hist = self._by_method.get(method)
        if hist is None:
            hist = self._by_method[method] = self.m.rpc_seconds.labels(method)
        hist.observe(seconds)
        self.m.rpcs.labels(method, code.name.lower()).inc()
