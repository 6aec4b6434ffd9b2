"""grpc.health.v1 for metaschedd: each service SERVING while the store takes writes,
NOT_SERVING while it does not (locked by another process, disk gone, I/O errors), and
SERVING again once it does. The probe is an empty write transaction through the store's
own writer (BEGIN IMMEDIATE .. COMMIT, nothing written, nothing synced), so it sees exactly
what a submission would: it joins the same group commit and waits on the same lock.
"""

from __future__ import annotations

import time
from concurrent.futures import Future
from typing import Any, Protocol

from grpc_health.v1 import health_pb2

from metasched import log
from metasched.store import Store

SERVICES = ("", "metasched.v1.Scheduler", "metasched.v1.Admin", "metasched.v1.AgentService")


class StatusSetter(Protocol):
    """What StoreHealth tells of each service (the health servicer, or a bridge to it)."""

    def set(self, service: str, status: Any) -> None: ...


class StoreHealth:
    def __init__(self, store: Store, servicer: StatusSetter, stuck_after: float = 5.0):
        self.store = store
        self.servicer = servicer
        self.stuck_after = stuck_after
        self.serving: bool | None = None
        self._probe: Future[None] | None = None
        self._probe_at = 0.0
        self._why = ""
        self.log = log.get(component="health")

    def run_cycle(self) -> None:
        now = time.monotonic()
        probe = self._probe
        if probe is None or probe.done():
            ok = True
            if probe is not None and probe.exception() is not None:
                ok, self._why = False, str(probe.exception())
            self._probe, self._probe_at = self.store.write(lambda b: None), now
            if probe is None:  # the first probe: wait for its answer before saying anything
                return
            self._set(ok)
        elif now - self._probe_at > self.stuck_after:
            self._why = f"no commit for {now - self._probe_at:.0f} s"
            self._set(False)

    def _set(self, ok: bool) -> None:
        if ok == self.serving:
            return
        self.serving = ok
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if ok
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in SERVICES:
            self.servicer.set(name, status)
        if ok:
            self.log.info("store_usable")
        else:
            self.log.error("store_unusable", reason=self._why)
