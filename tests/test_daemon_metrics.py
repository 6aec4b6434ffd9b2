"""metaschedd's metrics of a site follow its reports: a site's use is kept between scrapes
only while its report is unchanged (the registry replaces the report object when it differs)."""

from __future__ import annotations

import time
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from metasched.daemon.metrics import DaemonMetrics
from metasched.daemon.sites import SiteRegistry
from metasched.store import Store
from metasched.v1 import metasched_pb2 as pb


def report(alloc_cpus: int) -> pb.SiteReport:
    return pb.SiteReport(
        slurm_reachable=True,
        partitions=[pb.Partition(name="p", nodes=1, precisions=[pb.Precision(name="fp64")])],
        nodes=[
            pb.NodeReport(name="n1", partitions=["p"], state="mixed", cpus=8, alloc_cpus=alloc_cpus)
        ],
    )


def scrape(m: DaemonMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(generate_latest(m.registry).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_a_sites_use_is_computed_again_when_its_report_changes(tmp_path: Path) -> None:
    store = Store(tmp_path / "q.db")
    try:
        sites = SiteRegistry(grace_seconds=60)
        m = DaemonMetrics(store, sites)
        key = ("metasched_precision_cpus", (("precision", "fp64"), ("site", "s"), ("use", "alloc")))
        sites.update("s", report(2), time.time())
        assert scrape(m)[key] == 2
        _, changed = sites.update("s", report(2), time.time())
        assert not changed and scrape(m)[key] == 2
        _, changed = sites.update("s", report(6), time.time())
        assert changed and scrape(m)[key] == 6
        assert scrape(m)[("metasched_site_cpus", (("site", "s"), ("use", "alloc")))] == 6
    finally:
        store.close()
