"""metasched-agent's Prometheus metrics, served on metrics_listen (agent.toml) by
prometheus_client's own HTTP server. What an operator alerts on at one site: Slurm that no
longer answers the agent (poll failures, slow polls), a daemon that no longer hears from it
(connected, the age of the last report sent), commands that fail, sbatch getting slow, and
someone forging metasched tags in their job comments.

    metasched_agent_info{site,version,backend}             1
    metasched_agent_connected                              1 while the stream to metaschedd is up
    metasched_agent_slurm_up                               1 if the last poll reached Slurm
    metasched_agent_slurm_poll_seconds                     histogram: one poll of Slurm
    metasched_agent_slurm_last_poll_seconds                the last poll's duration
    metasched_agent_slurm_poll_failures_total              polls that got no picture of Slurm
    metasched_agent_report_bytes                           size of the last report sent
    metasched_agent_report_age_seconds                     since the last report was sent
    metasched_agent_commands_total{kind,outcome}           commands from metaschedd, answered
    metasched_agent_sbatch_seconds                         histogram: one submission to Slurm
    metasched_agent_slurm_jobs{state,owner}                the site's queue as last polled
                                                           (owner: federation = ours, other)
    metasched_agent_forged_tags_total                      jobs seen with a tag that is not ours
    metasched_agent_journal_entries                        submissions the journal remembers
    metasched_agent_journal_bytes                          its file on disk (database + WAL)

Updated once per poll, per command and per submission: nothing runs per job except the
count of the polled queue by state, one pass over a list the poll has just made. The journal
is measured when Prometheus scrapes, at no cost (its highest rowid and a stat of its files:
counting its rows by state took 1 s under its lock at a million rows).
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client import Counter as PromCounter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from metasched.agent.journal import Journal

_SECONDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class AgentMetrics(Collector):
    def __init__(
        self, site: str, version: str, backend: str, journal: Journal | None = None
    ) -> None:
        self.info = (site, version, backend)
        self.journal = journal
        self.registry = CollectorRegistry(auto_describe=False)
        self.poll_seconds = Histogram(
            "metasched_agent_slurm_poll_seconds",
            "One poll of Slurm: its version, nodes, partitions and queue",
            buckets=_SECONDS,
            registry=self.registry,
        )
        self.poll_failures = PromCounter(
            "metasched_agent_slurm_poll_failures",
            "Polls that got no picture of Slurm (unreachable, a command that failed)",
            registry=self.registry,
        )
        self.commands = PromCounter(
            "metasched_agent_commands",
            "Commands from metaschedd carried out, by kind and outcome",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.sbatch_seconds = Histogram(
            "metasched_agent_sbatch_seconds",
            "One submission to Slurm (sbatch, or pyslurm's submit), call to answer",
            buckets=_SECONDS,
            registry=self.registry,
        )
        self.forged_tags = PromCounter(
            "metasched_agent_forged_tags",
            "Slurm jobs seen with a metasched tag that is not ours (each once)",
            registry=self.registry,
        )
        self._lock = threading.Lock()
        self._connected = False
        self._slurm_up: bool | None = None  # None: not polled yet
        self._last_poll = math.nan
        self._polled_at = 0.0
        self._report_bytes = 0
        self._report_sent = 0.0  # time.monotonic() of the last report sent; 0 = none yet
        self._jobs: Counter[tuple[str, str]] = Counter()
        self.registry.register(self)

    # ---------------------------------------------------------------- told by the agent

    def connected(self, up: bool) -> None:
        self._connected = up
        self._polled_at = time.monotonic()  # the poller starts with the session

    def since_last_poll(self) -> float | None:
        """Seconds since a poll of Slurm last ended (or the session began); None between
        sessions, when the agent polls nothing."""
        return time.monotonic() - self._polled_at if self._connected else None

    def polled(self, seconds: float, reached_slurm: bool) -> None:
        self.poll_seconds.observe(seconds)
        if not reached_slurm:
            self.poll_failures.inc()
        self._slurm_up, self._last_poll = reached_slurm, seconds
        self._polled_at = time.monotonic()

    def report_sent(self, size: int) -> None:
        with self._lock:
            self._report_bytes, self._report_sent = size, time.monotonic()

    def queue_seen(self, every: Counter[str], ours_states: Counter[str]) -> None:
        """The site's queue as just polled: its jobs by state, all and ours."""
        counts: Counter[tuple[str, str]] = Counter()
        for state, n in every.items():
            mine = ours_states.get(state, 0)
            counts[(state, "federation")] = mine
            counts[(state, "other")] = n - mine
        with self._lock:
            self._jobs = counts

    # ---------------------------------------------------------------- at scrape

    def collect(self) -> Iterator[Any]:
        site, version, backend = self.info
        info = GaugeMetricFamily(
            "metasched_agent_info", "The agent", labels=["site", "version", "backend"]
        )
        info.add_metric([site, version, backend], 1.0)
        yield info
        up = GaugeMetricFamily(
            "metasched_agent_connected", "1 while the agent's stream to metaschedd is up"
        )
        up.add_metric([], 1.0 if self._connected else 0.0)
        yield up
        slurm = GaugeMetricFamily(
            "metasched_agent_slurm_up", "1 if the agent's last poll got a picture of Slurm"
        )
        slurm.add_metric([], math.nan if self._slurm_up is None else float(self._slurm_up))
        yield slurm
        last = GaugeMetricFamily(
            "metasched_agent_slurm_last_poll_seconds", "How long the last poll of Slurm took"
        )
        last.add_metric([], self._last_poll)
        yield last
        with self._lock:
            size, sent, jobs = self._report_bytes, self._report_sent, dict(self._jobs)
        rep_size = GaugeMetricFamily(
            "metasched_agent_report_bytes", "Size of the last site report sent to metaschedd"
        )
        rep_size.add_metric([], float(size))
        yield rep_size
        age = GaugeMetricFamily(
            "metasched_agent_report_age_seconds", "Seconds since the last site report was sent"
        )
        age.add_metric([], time.monotonic() - sent if sent else math.nan)
        yield age
        queue = GaugeMetricFamily(
            "metasched_agent_slurm_jobs",
            "Jobs in the site's Slurm queue as last polled, by Slurm state and owner "
            "(federation: ours; other: the site's own users')",
            labels=["state", "owner"],
        )
        for (state, owner), n in sorted(jobs.items()):
            queue.add_metric([state.lower(), owner], float(n))
        yield queue
        if self.journal is not None:
            yield from self._journal()

    def _journal(self) -> Iterator[Any]:
        assert self.journal is not None
        entries = GaugeMetricFamily(
            "metasched_agent_journal_entries",
            "Submissions the agent's journal remembers (what makes forwarding exactly-once)",
        )
        entries.add_metric([], float(self.journal.entries()))
        yield entries
        size = GaugeMetricFamily(
            "metasched_agent_journal_bytes", "The journal's files on disk (database and WAL)"
        )
        size.add_metric([], float(self.journal.size_bytes()))
        yield size


def serve(metrics: AgentMetrics, address: str) -> str:
    """Serve /metrics on host:port (port 0: any free one); returns the address bound."""
    host, _, port = address.rpartition(":")
    server, _thread = start_http_server(
        int(port), addr=host.strip("[]") or "127.0.0.1", registry=metrics.registry
    )
    return f"{host}:{server.server_port}"
