"""The Shelf gRPC service: apps and results (msub app ..., msub result ...). A thin adapter
over the scheduler's AppShelf, in the user API's shape: who is calling, then the shelf's
answer or a one-line refusal. The shelf reads and writes the store (and FetchResult waits
on the job's site), so every call's work runs on the calls' pool, bounded per user, never
on the event loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from metasched.daemon.calls import Calls, Context
from metasched.daemon.identity import Identity
from metasched.daemon.scheduler import Scheduler
from metasched.daemon.settings import Refused
from metasched.daemon.shelf import Caller
from metasched.v1 import metasched_pb2 as pb
from metasched.v1 import metasched_pb2_grpc as pb_grpc

T = TypeVar("T")
MAX_DEFINITION_REQUEST = 128 << 10


class ShelfService(pb_grpc.ShelfServicer):
    def __init__(self, scheduler: Scheduler, identity: Identity, calls: Calls) -> None:
        self.shelf = scheduler.shelf
        self.identity = identity
        self.calls = calls

    async def _answer(self, context: Context, fn: Callable[[Caller], T]) -> T:
        """fn(the caller) on the pool, as one of the caller's bounded calls."""

        async def body(user: str) -> T:
            who = Caller(user, self.identity.is_admin(user))
            return await self.calls.blocking(user, fn, who)

        return await self.calls.unary(context, self.identity.who, body)

    async def PublishApp(self, request: pb.PublishAppRequest, context: Context) -> pb.App:
        def publish(who: Caller) -> pb.App:
            if request.ByteSize() > MAX_DEFINITION_REQUEST:
                raise Refused("INVALID_ARGUMENT", "the definition is too large")
            return self.shelf.publish(who.user, request.definition)

        return await self._answer(context, publish)

    async def ListApps(self, request: pb.ListAppsRequest, context: Context) -> pb.ListAppsResponse:
        def listing(who: Caller) -> pb.ListAppsResponse:
            if request.name:
                return pb.ListAppsResponse(apps=self.shelf.versions(who, request.name))
            return pb.ListAppsResponse(apps=self.shelf.listing(who, request.include_deprecated))

        return await self._answer(context, listing)

    async def GetApp(self, request: pb.GetAppRequest, context: Context) -> pb.App:
        return await self._answer(
            context, lambda who: self.shelf.get(who, request.name, request.version)
        )

    async def DeprecateApp(
        self, request: pb.DeprecateAppRequest, context: Context
    ) -> pb.ListAppsResponse:
        note = request.note[:1024]
        return await self._answer(
            context,
            lambda who: pb.ListAppsResponse(
                apps=self.shelf.deprecate(who, request.name, request.version, note)
            ),
        )

    async def PublishResult(self, request: pb.PublishResultRequest, context: Context) -> pb.Result:
        return await self._answer(context, lambda who: self.shelf.publish_result(who, request))

    async def ListResults(
        self, request: pb.ListResultsRequest, context: Context
    ) -> pb.ListResultsResponse:
        return await self._answer(
            context,
            lambda who: pb.ListResultsResponse(results=self.shelf.results(who, request.app)),
        )

    async def GetResult(self, request: pb.GetResultRequest, context: Context) -> pb.Result:
        return await self._answer(context, lambda who: self.shelf.result(who, request.id))

    async def FetchResult(
        self, request: pb.FetchResultRequest, context: Context
    ) -> pb.FetchResultResponse:
        return await self._answer(context, lambda who: self.shelf.fetch(who, request))
