"""What every daemon activity works on, made once by the Scheduler and handed to each."""

from __future__ import annotations

from dataclasses import dataclass

from metasched.daemon.dispatch import Dispatcher
from metasched.daemon.settings import Settings
from metasched.daemon.sites import SiteRegistry
from metasched.placement.policy import Placer
from metasched.store import Store


@dataclass(frozen=True)
class Core:
    store: Store  # the global queue
    sites: SiteRegistry  # the sites' last reports and agent streams
    settings: Settings
    placer: Placer  # the placement policy, with what it has learned
    dispatch: Dispatcher  # commands to agents


class Activity:
    """One of the daemon's activities (intake, placing, reconcile, ...): it sees the Core's
    parts as its own attributes."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.store = core.store
        self.sites = core.sites
        self.settings = core.settings
        self.placer = core.placer
        self.dispatch = core.dispatch
