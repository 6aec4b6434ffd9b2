"""Questions about a finished job's files, asked of the agent at its site and answered over
the agent's stream (checksums when a result is published, bytes when it is fetched).

The caller's RPC thread waits for the answer, bounded in time; each user has a few questions
in flight at most, so a fetch in a loop ties up neither the daemon's threads nor an agent.
Only the site that was asked may answer.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from concurrent.futures import Future, InvalidStateError
from concurrent.futures import TimeoutError as FutureTimeout

from metasched import log
from metasched.daemon.settings import Refused
from metasched.daemon.sites import SiteRegistry
from metasched.v1 import metasched_pb2 as pb

ANSWER_TIMEOUT_S = 30.0  # checksums of large outputs take a while
MAX_IN_FLIGHT_PER_USER = 4


class FileRelay:
    def __init__(self, sites: SiteRegistry) -> None:
        self.sites = sites
        self.log = log.get(component="file_relay")
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._pending: dict[int, tuple[str, Future[pb.FilesAnswer]]] = {}
        self._in_flight: dict[str, int] = {}

    def ask(self, caller: str, site: str, cmd: pb.FilesCommand) -> pb.FilesAnswer:
        """Send cmd (its request_id is set here) to site's agent and wait for the answer."""
        with self._lock:
            if self._in_flight.get(caller, 0) >= MAX_IN_FLIGHT_PER_USER:
                raise Refused(
                    "RESOURCE_EXHAUSTED",
                    f"user {caller} already has {MAX_IN_FLIGHT_PER_USER} file requests in flight",
                )
            self._in_flight[caller] = self._in_flight.get(caller, 0) + 1
            request_id = next(self._ids)
            answer: Future[pb.FilesAnswer] = Future()
            self._pending[request_id] = (site, answer)
        try:
            msg = pb.FilesCommand()
            msg.CopyFrom(cmd)
            msg.request_id = request_id
            if not self.sites.send(site, pb.DaemonMessage(files=msg)):
                raise Refused("UNAVAILABLE", f"site {site} is not connected")
            try:
                got = answer.result(ANSWER_TIMEOUT_S)
            except FutureTimeout:
                raise Refused(
                    "UNAVAILABLE", f"site {site} did not answer within {ANSWER_TIMEOUT_S:g}s"
                ) from None
            if got.error:
                raise Refused("FAILED_PRECONDITION", f"at site {site}: {got.error}")
            return got
        finally:
            with self._lock:
                self._pending.pop(request_id, None)
                left = self._in_flight.get(caller, 1) - 1
                if left:
                    self._in_flight[caller] = left
                else:
                    self._in_flight.pop(caller, None)

    def on_answer(self, site: str, answer: pb.FilesAnswer) -> None:
        with self._lock:
            hit = self._pending.get(answer.request_id)
        if hit is None or hit[0] != site:
            self.log.warning("files_answer_ignored", site=site, request_id=answer.request_id)
            return
        with contextlib.suppress(InvalidStateError):  # answered twice
            hit[1].set_result(answer)
