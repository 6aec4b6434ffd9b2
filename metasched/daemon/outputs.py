"""`msub output`: part of a job's output file, read at its site by the agent (as the job's
own user) and relayed over the agent's stream. The caller's RPC thread waits for the answer,
bounded in time; each user has a few reads in flight at most, so a follower in a loop can
tie up neither the daemon's threads nor an agent."""

from __future__ import annotations

import contextlib
import itertools
import threading
from concurrent.futures import Future, InvalidStateError
from concurrent.futures import TimeoutError as FutureTimeout

from metasched import log
from metasched.daemon.settings import Refused
from metasched.daemon.sites import SiteRegistry
from metasched.store import JobRow
from metasched.v1 import metasched_pb2 as pb

ANSWER_TIMEOUT_S = 15.0
MAX_IN_FLIGHT_PER_USER = 4


class OutputRelay:
    def __init__(self, sites: SiteRegistry) -> None:
        self.sites = sites
        self.log = log.get(component="outputs")
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._pending: dict[int, tuple[str, Future[pb.OutputData]]] = {}  # id -> (site, answer)
        self._in_flight: dict[str, int] = {}

    def read(self, job: JobRow, stderr: bool, offset: int, max_bytes: int) -> pb.OutputData:
        if not job.site or not job.attempt:
            raise Refused("FAILED_PRECONDITION", f"job {job.id} has not been sent to a site yet")
        with self._lock:
            if self._in_flight.get(job.user, 0) >= MAX_IN_FLIGHT_PER_USER:
                raise Refused(
                    "RESOURCE_EXHAUSTED",
                    f"user {job.user} already has {MAX_IN_FLIGHT_PER_USER} output reads in flight",
                )
            self._in_flight[job.user] = self._in_flight.get(job.user, 0) + 1
            request_id = next(self._ids)
            answer: Future[pb.OutputData] = Future()
            self._pending[request_id] = (job.site, answer)
        try:
            spec = pb.JobSpec(
                name=job.spec.name,
                workdir=job.spec.workdir,
                output=job.spec.output,
                error=job.spec.error,
            )
            cmd = pb.ReadOutputCommand(
                request_id=request_id,
                job_id=job.id,
                attempt=job.attempt,
                user=job.user,
                spec=spec,
                array_id=job.array_id,
                array_task=job.array_task,
                stderr=stderr,
                offset=offset,
                max_bytes=max_bytes,
            )
            if not self.sites.send(job.site, pb.DaemonMessage(read_output=cmd)):
                raise Refused("UNAVAILABLE", f"site {job.site} is not connected")
            try:
                return answer.result(ANSWER_TIMEOUT_S)
            except FutureTimeout:
                raise Refused(
                    "UNAVAILABLE", f"site {job.site} did not answer within {ANSWER_TIMEOUT_S:g}s"
                ) from None
        finally:
            with self._lock:
                self._pending.pop(request_id, None)
                left = self._in_flight.get(job.user, 1) - 1
                if left:
                    self._in_flight[job.user] = left
                else:
                    self._in_flight.pop(job.user, None)

    def on_output(self, site: str, data: pb.OutputData) -> None:
        """An agent's answer: only the site that was asked may answer."""
        with self._lock:
            hit = self._pending.get(data.request_id)
        if hit is None or hit[0] != site:
            self.log.warning("output_answer_ignored", site=site, request_id=data.request_id)
            return
        with contextlib.suppress(InvalidStateError):  # answered twice (a re-sent command)
            hit[1].set_result(data)
