"""A job's output at its site, read by the agent as the job's own user and relayed over the
agent's stream: part of its output file (`msub output`), part of a published result's file
(`msub result fetch`), or the sizes and checksums of a result's files when it is published
(agent/output.py does the reading). The caller's RPC thread waits for the answer, bounded in
time; each user has a few reads in flight at most, so a follower in a loop can tie up neither
the daemon's threads nor an agent."""

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
CHECKSUM_TIMEOUT_S = 30.0  # the agent's own limit (25 s) and the trip
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
        """Part of the job's output file (or its --error file), for its owner."""
        if not job.site or not job.attempt:
            raise Refused("FAILED_PRECONDITION", f"job {job.id} has not been sent to a site yet")
        spec = pb.JobSpec(
            name=job.spec.name,
            workdir=job.spec.workdir,
            output=job.spec.output,
            error=job.spec.error,
        )
        cmd = pb.ReadOutputCommand(
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
        return self.ask(job.user, job.site, cmd, ANSWER_TIMEOUT_S)

    def ask(
        self, caller: str, site: str, cmd: pb.ReadOutputCommand, timeout: float
    ) -> pb.OutputData:
        """Send cmd (its request_id is set here) to site's agent and wait for the answer;
        caller is who asked (the reads in flight are counted per caller)."""
        with self._lock:
            if self._in_flight.get(caller, 0) >= MAX_IN_FLIGHT_PER_USER:
                raise Refused(
                    "RESOURCE_EXHAUSTED",
                    f"user {caller} already has {MAX_IN_FLIGHT_PER_USER} output reads in flight",
                )
            self._in_flight[caller] = self._in_flight.get(caller, 0) + 1
            request_id = next(self._ids)
            answer: Future[pb.OutputData] = Future()
            self._pending[request_id] = (site, answer)
        try:
            msg = pb.ReadOutputCommand()
            msg.CopyFrom(cmd)
            msg.request_id = request_id
            if not self.sites.send(site, pb.DaemonMessage(read_output=msg)):
                raise Refused("UNAVAILABLE", f"site {site} is not connected")
            try:
                return answer.result(timeout)
            except FutureTimeout:
                raise Refused(
                    "UNAVAILABLE", f"site {site} did not answer within {timeout:g}s"
                ) from None
        finally:
            with self._lock:
                self._pending.pop(request_id, None)
                left = self._in_flight.get(caller, 1) - 1
                if left:
                    self._in_flight[caller] = left
                else:
                    self._in_flight.pop(caller, None)

    def on_output(self, site: str, data: pb.OutputData) -> None:
        """An agent's answer: only the site that was asked may answer."""
        with self._lock:
            hit = self._pending.get(data.request_id)
        if hit is None or hit[0] != site:
            self.log.warning("output_answer_ignored", site=site, request_id=data.request_id)
            return
        with contextlib.suppress(InvalidStateError):  # answered twice (a re-sent command)
            hit[1].set_result(data)
