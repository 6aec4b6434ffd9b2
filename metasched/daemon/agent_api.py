"""The AgentService gRPC service: one bidirectional stream per connected site agent.

The agent dials out (sites rarely accept inbound connections) and says Hello with its site
name and credential. With TLS configured, the site is the one its client certificate names
(URI SAN metasched-site:<site>, from the federation CA) and Hello must claim exactly that
site; a site token, when configured, must match too (compared by sha256, docs/security.md).
Everything on the stream afterwards is taken as coming from that site only (a result for a
job placed elsewhere is a stray, never applied). From then on the stream carries the agent's
reports and answers one way and the daemon's submit / cancel / resolve commands the other.
A second connection for the same site replaces the first (an agent restarted before the old
stream timed out).
"""

from __future__ import annotations

import hmac
import queue
import threading
from collections.abc import Iterator
from typing import cast

import grpc

from metasched import auth, log
from metasched.daemon.scheduler import Scheduler
from metasched.daemon.sites import AgentLink
from metasched.v1 import metasched_pb2 as pb
from metasched.v1 import metasched_pb2_grpc as pb_grpc


class AgentService(pb_grpc.AgentServiceServicer):
    def __init__(
        self,
        scheduler: Scheduler,
        site_tokens: dict[str, str],
        report_interval: float,
        require_cert: bool = False,
    ) -> None:
        """site_tokens: site -> sha256 hex of its token ("" = no token, the certificate alone);
        its keys are the sites that may connect at all."""
        self.s = scheduler
        self.token_hashes = site_tokens
        self.report_interval = report_interval
        self.require_cert = require_cert
        self.log = log.get(component="agents")

    def _refuse(self, context: grpc.ServicerContext, code: grpc.StatusCode, why: str) -> None:
        self.log.warning("agent_refused", peer=context.peer(), reason=why)
        context.abort(code, why)

    def _cert_sites(self, context: grpc.ServicerContext) -> list[str] | None:
        """Sites named by the verified client certificate; None if there is none."""
        ac = context.auth_context()
        if not ac.get("x509_pem_cert"):
            return None
        # (grpc-stubs types the values as bytes; they are lists of bytes)
        values = cast(list[bytes], ac.get("peer_uri", []))
        uris = [u.decode(errors="replace") for u in values]
        return [
            u.removeprefix(auth.SITE_URI_PREFIX) for u in uris if u.startswith(auth.SITE_URI_PREFIX)
        ]

    def _authenticate(self, hello: pb.Hello, context: grpc.ServicerContext) -> str:
        site = hello.site
        if site not in self.token_hashes:
            self._refuse(context, grpc.StatusCode.PERMISSION_DENIED, f"unknown site {site!r}")
        if self.require_cert:
            named = self._cert_sites(context)
            if named is None:
                self._refuse(
                    context,
                    grpc.StatusCode.UNAUTHENTICATED,
                    f"no client certificate: the agent of site {site!r} must connect with "
                    "mutual TLS (its certificate, from the federation CA) to the agents' port",
                )
            elif len(named) != 1:
                self._refuse(
                    context,
                    grpc.StatusCode.PERMISSION_DENIED,
                    "the client certificate must name exactly one site as URI SAN "
                    f"{auth.SITE_URI_PREFIX}<site>; it names {len(named)}",
                )
            elif named[0] != site:
                self._refuse(
                    context,
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"the client certificate is for site {named[0]!r}; it may not speak for "
                    f"site {site!r}",
                )
        expected = self.token_hashes[site]
        if expected and not hmac.compare_digest(expected, auth.sha256_hex(hello.token)):
            self._refuse(context, grpc.StatusCode.UNAUTHENTICATED, f"wrong token for site {site!r}")
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
        self.s.dispatch.replay(site)
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
                        self.s.reconcile.on_report(site, msg.report)
                    elif kind == "submit_result":
                        self.s.reconcile.on_submit_result(site, msg.submit_result)
                    elif kind == "cancel_result":
                        self.s.reconcile.on_cancel_result(site, msg.cancel_result)
                    elif kind == "job_update":
                        self.s.reconcile.on_job_update(site, msg.job_update)
                    elif kind == "cancel_results":
                        self.s.reconcile.on_cancel_results(site, list(msg.cancel_results.results))
                    elif kind == "output":
                        self.s.outputs.on_output(site, msg.output)
                except Exception:
                    self.log.exception("agent_message_failed", site=site, kind=kind)
        except grpc.RpcError:
            pass  # the stream ended: the agent went away
        except Exception:
            self.log.exception("agent_stream_failed", site=site)
        finally:
            link.close()
