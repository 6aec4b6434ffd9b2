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

A connection is two coroutines (grpc.aio), not threads: one reads the agent's messages and
hands each to the scheduler on the agents' pool of threads, in order; the other sleeps until
the site's outbox has commands and sends them. A submit command leaves the scheduler without
its script (jobs in memory have none); the script is read from the database here, a few
commands at a time, as the command goes on the wire, so a long outbox costs no scripts'
worth of memory.
"""

from __future__ import annotations

import asyncio
import hmac
import queue
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import grpc

from metasched import auth, log
from metasched.daemon.calls import Context
from metasched.daemon.scheduler import Scheduler
from metasched.daemon.sites import AgentLink
from metasched.states import JobState
from metasched.store import Batch
from metasched.v1 import metasched_pb2 as pb
from metasched.v1 import metasched_pb2_grpc as pb_grpc

# Commands sent per read of the outbox (and so the most scripts in memory per stream at once).
SEND_BATCH = 16


class AgentService(pb_grpc.AgentServiceServicer):
    def __init__(
        self,
        scheduler: Scheduler,
        site_tokens: dict[str, str],
        report_interval: float,
        pool: ThreadPoolExecutor,
        require_cert: bool = False,
    ) -> None:
        """site_tokens: site -> sha256 hex of its token ("" = no token, the certificate alone);
        its keys are the sites that may connect at all. pool: where agents' messages are
        handled (the scheduler's handlers wait on the store)."""
        self.s = scheduler
        self.token_hashes = site_tokens
        self.report_interval = report_interval
        self.pool = pool
        self.require_cert = require_cert
        self.log = log.get(component="agents")

    def _refuse(self, context: Context, code: str, why: str) -> None:
        self.log.warning("agent_refused", peer=context.peer(), reason=why)
        raise auth.AuthError(why, code)

    def _cert_sites(self, context: Context) -> list[str] | None:
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

    def _authenticate(self, hello: pb.Hello, context: Context) -> str:
        site = hello.site
        if site not in self.token_hashes:
            self._refuse(context, "PERMISSION_DENIED", f"unknown site {site!r}")
        if self.require_cert:
            named = self._cert_sites(context)
            if named is None:
                self._refuse(
                    context,
                    "UNAUTHENTICATED",
                    f"no client certificate: the agent of site {site!r} must connect with "
                    "mutual TLS (its certificate, from the federation CA) to the agents' port",
                )
            elif len(named) != 1:
                self._refuse(
                    context,
                    "PERMISSION_DENIED",
                    "the client certificate must name exactly one site as URI SAN "
                    f"{auth.SITE_URI_PREFIX}<site>; it names {len(named)}",
                )
            elif named[0] != site:
                self._refuse(
                    context,
                    "PERMISSION_DENIED",
                    f"the client certificate is for site {named[0]!r}; it may not speak for "
                    f"site {site!r}",
                )
        expected = self.token_hashes[site]
        if expected and not hmac.compare_digest(expected, auth.sha256_hex(hello.token)):
            self._refuse(context, "UNAUTHENTICATED", f"wrong token for site {site!r}")
        return site

    async def Connect(
        self, request_iterator: AsyncIterator[pb.AgentMessage], context: Context
    ) -> AsyncIterator[pb.DaemonMessage]:
        try:
            first = await anext(request_iterator)
        except StopAsyncIteration:
            return
        if first.WhichOneof("body") != "hello":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be Hello")
        try:
            site = self._authenticate(first.hello, context)
        except auth.AuthError as e:
            await context.abort(getattr(grpc.StatusCode, e.code), str(e))
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()

        def wake() -> None:  # any thread
            loop.call_soon_threadsafe(ready.set)

        link = AgentLink(site, context.peer(), wake=wake, agent_version=first.hello.agent_version)
        old = self.s.sites.connect(site, link)
        if old is not None:
            old.close()
        self.log.info(
            "agent_connected", site=site, peer=link.peer, agent_version=first.hello.agent_version
        )
        link.send(
            pb.DaemonMessage(
                welcome=pb.Welcome(
                    federation=self.s.federation, report_interval=self.report_interval
                )
            )
        )
        reader = asyncio.create_task(self._read(site, link, request_iterator))
        try:
            await loop.run_in_executor(self.pool, self.s.dispatch.replay, site)
            while True:
                ready.clear()
                link.drained()
                batch, closed = _take(link.outbox, SEND_BATCH)
                for msg in await self._with_scripts(site, batch):
                    yield msg
                if closed:
                    return
                if not batch:
                    await ready.wait()
        finally:
            # (not context.peer(): after the stream is cancelled, gRPC's call is gone and
            # asking it anything crashes the process; seen as a SIGSEGV in the crash test)
            reader.cancel()
            link.close()
            self.s.sites.disconnect(link)
            self.log.info("agent_disconnected", site=site, peer=link.peer)

    async def _with_scripts(
        self, site: str, batch: list[pb.DaemonMessage]
    ) -> list[pb.DaemonMessage]:
        """The commands with each submit's script, read from the database now. A job whose
        script is not there cannot run anywhere: it fails, with the reason, instead of being
        re-sent forever. An app's run has its script already: its recipe's, rendered for the
        site by the dispatcher (app_runs.spec_to_send; the one stored is a stand-in)."""
        ids = [m.submit.job_id for m in batch if _needs_script(m)]
        if not ids:
            return batch
        loop = asyncio.get_running_loop()
        scripts = await loop.run_in_executor(self.pool, self.s.store.scripts, ids)
        out = []
        for m in batch:
            if _needs_script(m):
                script = scripts.get(m.submit.job_id)
                if script is None:
                    self._script_missing(site, m.submit.job_id)
                    continue
                m.submit.spec.script = script
            out.append(m)
        return out

    def _script_missing(self, site: str, job_id: int) -> None:
        self.log.error("script_missing", job_id=job_id, site=site)
        why = "its batch script is missing from the database"

        def op(b: Batch) -> None:
            b.move(job_id, JobState.FAILED, why, expect=[JobState.FORWARDING], reason=why)

        self.s.store.write(op)

    async def _read(self, site: str, link: AgentLink, it: AsyncIterator[pb.AgentMessage]) -> None:
        loop = asyncio.get_running_loop()
        handlers: dict[str, Callable[[str, Any], None]] = {
            "report": self.s.reconcile.on_report,
            "submit_result": self.s.reconcile.on_submit_result,
            "cancel_result": self.s.reconcile.on_cancel_result,
            "job_update": self.s.reconcile.on_job_update,
            "cancel_results": lambda site, m: self.s.reconcile.on_cancel_results(
                site, list(m.results)
            ),
            "output": self.s.outputs.on_output,
        }
        try:
            async for msg in it:
                kind = msg.WhichOneof("body")
                handle = handlers.get(kind or "")
                if handle is None:
                    continue
                try:
                    # one at a time, in order: a job's update must not overtake its submit result
                    await loop.run_in_executor(self.pool, handle, site, getattr(msg, kind or ""))
                except Exception:
                    self.log.exception("agent_message_failed", site=site, kind=kind)
        except (grpc.RpcError, asyncio.CancelledError):
            pass  # the stream ended: the agent went away
        except Exception:
            self.log.exception("agent_stream_failed", site=site)
        finally:
            link.close()


def _take(
    outbox: queue.Queue[pb.DaemonMessage | None], most: int
) -> tuple[list[pb.DaemonMessage], bool]:
    """Up to `most` messages from the outbox without waiting, and whether it was closed."""
    out: list[pb.DaemonMessage] = []
    while len(out) < most:
        try:
            msg = outbox.get_nowait()
        except queue.Empty:
            return out, False
        if msg is None:
            return out, True
        out.append(msg)
    return out, False


def _needs_script(m: pb.DaemonMessage) -> bool:
    """A submit command whose script is read from the database (not an app's run)."""
    return m.WhichOneof("body") == "submit" and not m.submit.spec.app
