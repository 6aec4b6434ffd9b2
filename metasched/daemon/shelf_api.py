"""The Shelf gRPC service: apps and results (msub app ..., msub result ...). A thin adapter
over the scheduler's AppShelf: who is calling, then the answer or a one-line refusal."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import grpc

from metasched.daemon.identity import Identity
from metasched.daemon.scheduler import Scheduler
from metasched.daemon.settings import Refused
from metasched.daemon.shelf import Caller
from metasched.v1 import metasched_pb2 as pb
from metasched.v1 import metasched_pb2_grpc as pb_grpc

T = TypeVar("T")
MAX_DEFINITION_REQUEST = 128 << 10


class ShelfService(pb_grpc.ShelfServicer):
    def __init__(self, scheduler: Scheduler, identity: Identity) -> None:
        self.shelf = scheduler.shelf
        self.identity = identity

    def _caller(self, context: grpc.ServicerContext) -> Caller:
        user = self.identity.who(context)
        return Caller(user, self.identity.is_admin(user))

    @staticmethod
    def _guard(context: grpc.ServicerContext, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except Refused as e:
            context.abort(getattr(grpc.StatusCode, e.code), str(e))
        raise AssertionError("unreachable")

    def PublishApp(self, request: pb.PublishAppRequest, context: grpc.ServicerContext) -> pb.App:
        who = self._caller(context)
        if request.ByteSize() > MAX_DEFINITION_REQUEST:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the definition is too large")
        return self._guard(context, lambda: self.shelf.publish(who.user, request.definition))

    def ListApps(
        self, request: pb.ListAppsRequest, context: grpc.ServicerContext
    ) -> pb.ListAppsResponse:
        who = self._caller(context)
        if request.name:
            apps = self._guard(context, lambda: self.shelf.versions(who, request.name))
        else:
            apps = self.shelf.listing(who, request.include_deprecated)
        return pb.ListAppsResponse(apps=apps)

    def GetApp(self, request: pb.GetAppRequest, context: grpc.ServicerContext) -> pb.App:
        who = self._caller(context)
        return self._guard(context, lambda: self.shelf.get(who, request.name, request.version))

    def DeprecateApp(
        self, request: pb.DeprecateAppRequest, context: grpc.ServicerContext
    ) -> pb.ListAppsResponse:
        who = self._caller(context)
        note = request.note[:1024]
        apps = self._guard(
            context, lambda: self.shelf.deprecate(who, request.name, request.version, note)
        )
        return pb.ListAppsResponse(apps=apps)

    def PublishResult(
        self, request: pb.PublishResultRequest, context: grpc.ServicerContext
    ) -> pb.Result:
        who = self._caller(context)
        return self._guard(context, lambda: self.shelf.publish_result(who, request))

    def ListResults(
        self, request: pb.ListResultsRequest, context: grpc.ServicerContext
    ) -> pb.ListResultsResponse:
        who = self._caller(context)
        return pb.ListResultsResponse(results=self.shelf.results(who, request.app))

    def GetResult(self, request: pb.GetResultRequest, context: grpc.ServicerContext) -> pb.Result:
        who = self._caller(context)
        return self._guard(context, lambda: self.shelf.result(who, request.id))

    def FetchResult(
        self, request: pb.FetchResultRequest, context: grpc.ServicerContext
    ) -> pb.FetchResultResponse:
        who = self._caller(context)
        return self._guard(context, lambda: self.shelf.fetch(who, request))
