"""The AgentService gRPC service: one bidirectional stream per connected site agent.

The agent dials out (sites rarely accept inbound connections) and says Hello with its site
name and credential. From then on the stream carries the agent's reports and answers one
way and the daemon's submit / cancel / resolve commands the other. A second connection for
the same site replaces the first (an agent restarted before the old stream timed out).
"""

from __future__ import annotations

import hmac
import queue
import threading
from collections.abc import Iterator

import grpc

from metasched import log
from metasched.daemon.scheduler import Scheduler
from metasched.daemon.sites import AgentLink
from metasched.v1 import metasched_pb2 as pb
from metasched.v1 import metasched_pb2_grpc as pb_grpc


class AgentService(pb_grpc.AgentServiceServicer):
    def __init__(
        self, scheduler: Scheduler, site_tokens: dict[str, str], report_interval: float
    ) -> None:
        self.s = scheduler
        self.tokens = site_tokens
        self.report_interval = report_interval
        self.log = log.get(component="agents")

    def _authenticate(self, hello: pb.Hello, context: grpc.ServicerContext) -> str:
        site = hello.site
        expected = self.tokens.get(site)
        if expected is None:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, f"unknown site {site!r}")
        assert expected is not None
        if not hmac.compare_digest(expected.encode(), hello.token.encode()):
            self.log.warning("agent_refused", site=site, peer=context.peer(), reason="bad token")
            context.abort(grpc.StatusCode.UNAUTHENTICATED, f"wrong credential for site {site!r}")
        return site

    def Connect(
        self, request_iterator: Iterator[pb.AgentMessage], context: grpc.ServicerContext
    ) -> Iterator[pb.DaemonMessage]:
        try:
            first = next(request_iterator)
        except StopIteration:
            return
        if first.WhichOneof("body") != "hello":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be Hello")
        site = self._authenticate(first.hello, context)
        link = AgentLink(site, context.peer())
        old = self.s.sites.connect(site, link)
        if old is not None:
            old.close()
        self.log.info(
            "agent_connected",
            site=site,
            peer=context.peer(),
            agent_version=first.hello.agent_version,
        )
        link.send(
            pb.DaemonMessage(
                welcome=pb.Welcome(
                    federation=self.s.federation, report_interval=self.report_interval
                )
            )
        )
        self.s.agent_connected(site)
        reader = threading.Thread(
            target=self._read,
            args=(site, link, request_iterator),
            name=f"agent-{site}",
            daemon=True,
        )
        reader.start()
        try:
            while context.is_active():
                try:
                    msg = link.outbox.get(timeout=1.0)
                except queue.Empty:
                    continue
                if msg is None:
                    break
                yield msg
        finally:
            link.close()
            self.s.sites.disconnect(link)
            self.log.info("agent_disconnected", site=site, peer=context.peer())

    def _read(self, site: str, link: AgentLink, it: Iterator[pb.AgentMessage]) -> None:
        try:
            for msg in it:
                kind = msg.WhichOneof("body")
                try:
                    if kind == "report":
                        self.s.on_report(site, msg.report)
                    elif kind == "submit_result":
                        self.s.on_submit_result(site, msg.submit_result)
                    elif kind == "cancel_result":
                        self.s.on_cancel_result(site, msg.cancel_result)
                    elif kind == "job_update":
                        self.s.on_job_update(site, msg.job_update)
                except Exception:
                    self.log.exception("agent_message_failed", site=site, kind=kind)
        except grpc.RpcError:
            pass  # the stream ended: the agent went away
        except Exception:
            self.log.exception("agent_stream_failed", site=site)
        finally:
            link.close()
