"""metaschedd's activities over one store and one site registry, wired together.

Each activity is a module of its own, with its own loop shape (Balsam's site services):

    intake.py      users' requests: submit, plan, cancel           per call (RPC thread)
    placing.py     the placement pass                              woken by changes; >= every
                                                                   placement_interval
    reconcile.py   agents' reports, answers and resolved jobs      per message (agent stream)
    recall.py      pull back jobs stuck pending (rebalancing)      every rebalance_interval
    dispatch.py    commands to agents; re-send what is unanswered  every second (upkeep)
    site_admin.py  drain / resume / retire                         per call
    job_admin.py   admins' requeue and priority of any user's job  per call
    shelf.py       apps and results (publish, run, fetch)          per call
    learning.py    run times and start calibration                 per report / per start
    waiting.py     dependencies, begin times, holds (WAITING jobs)  settled before each pass
    outputs.py     a job's output, read at its site (msub output)   per call

The rules that make forwarding exactly-once hold across all of them:
  - a job is sent to a site only as FORWARDING(site, attempt), durably, first;
  - every Slurm job carries the tag metasched:<federation>:<job>:<attempt>, and the agent's
    submit is idempotent per tag (it looks for the tag before calling sbatch);
  - a Slurm job whose tag does not match the job's current site and attempt is a stray and
    is cancelled; a job already at a site is never placed again unless that site confirmed
    it is gone (cancelled before it started, or finished).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from metasched import log
from metasched.daemon.core import Core
from metasched.daemon.dispatch import Dispatcher
from metasched.daemon.intake import Intake
from metasched.daemon.job_admin import JobAdmin
from metasched.daemon.learning import Learning
from metasched.daemon.outputs import OutputRelay
from metasched.daemon.placing import PlacementPass
from metasched.daemon.recall import Recall
from metasched.daemon.reconcile import Reconciler
from metasched.daemon.service import Service
from metasched.daemon.settings import Refused, Settings
from metasched.daemon.shelf import AppShelf
from metasched.daemon.site_admin import SiteAdmin
from metasched.daemon.sites import SiteRegistry
from metasched.daemon.views import site_views
from metasched.placement.model import SiteView
from metasched.placement.policy import Placer
from metasched.store import Store

# Refused and Settings are the activities' shared vocabulary; importable from here as before.
__all__ = ["Refused", "Scheduler", "Settings"]

UPKEEP_PERIOD = 1.0


class Scheduler:
    def __init__(self, store: Store, sites: SiteRegistry, settings: Settings) -> None:
        self.store = store
        self.sites = sites
        self.settings = settings
        self.placer = Placer(hold_horizon_s=settings.hold_horizon_s)
        self.log = log.get(component="scheduler")
        for name, state, last_seen, report in store.sites():
            sites.restore(name, state, last_seen, report)
        self.dispatch = Dispatcher(store, sites, settings)
        self.learning = Learning(store, self.placer)
        core = Core(store, sites, settings, self.placer, self.dispatch)
        self.placement = PlacementPass(core)
        self.outputs = OutputRelay(sites)
        self.shelf = AppShelf(core, self.outputs)
        self.intake = Intake(core, self.placement, self.placement.waiting, self.shelf)
        self.reconcile = Reconciler(core, self.learning, self.placement)
        self.recall = Recall(core)
        self.site_admin = SiteAdmin(core, self.placement)
        self.job_admin = JobAdmin(core, self.intake, self.placement)
        self.learning.from_history()
        self._services = [
            Service(
                "placement",
                settings.placement_interval,
                self.placement.run_cycle,
                self.log,
                rest=0.05,
                wake=self.placement.wake,
            ),
            Service("upkeep", UPKEEP_PERIOD, self.upkeep, self.log),
            Service("recall", settings.rebalance_interval, self.recall.run_cycle, self.log),
        ]

    @property
    def federation(self) -> str:
        return self.store.federation

    # ---------------------------------------------------------------- running it

    def upkeep(self) -> None:
        """Every second: sites whose agent went silent go offline; unanswered commands are
        sent again."""
        now = time.time()
        for name in self.sites.check_liveness(now):
            self.store.save_site(name, self.sites.ensure(name).admin_state, now, None)
        self.dispatch.resend_stale(now)

    def views(self, now: float) -> list[SiteView]:
        return site_views(self.sites, self.store, now)

    def run_cycle(self) -> int:
        """One cycle of every periodic activity, in order, on the caller's thread (tests and
        benchmarks step the daemon with it); returns how many jobs the placement pass sent."""
        self.upkeep()
        return self.placement.run_cycle()

    def instrument(self, wrap: Callable[[str, Callable[[], object]], Callable[[], object]]) -> None:
        """Wrap every service's cycle (the daemon's metrics time them)."""
        for service in self._services:
            service.run_cycle = wrap(service.name, service.run_cycle)

    def start(self) -> None:
        self.store.add_listener(self.learning.on_changes)
        for service in self._services:
            service.start()

    def stop(self) -> None:
        for service in self._services:
            service.stop()
