"""Requests that are not the protobuf message they claim to be get INVALID_ARGUMENT.

Left to itself, gRPC Python answers bytes that do not parse as the method's request message
with INTERNAL "Exception deserializing request!", which reads like a bug in metaschedd. Each
service is registered through `add_service`, which gives every method a deserializer that
never fails and a handler that refuses a malformed unary request with INVALID_ARGUMENT and a
one-line message, and ends a stream on a malformed message with that status (the handler
sees the stream end, as if the peer had closed it). The wrapping is done once, when the
service is added, not on every call. The same wrapper times each call and tells `observe`
(the daemon's metrics) its method, duration and status code as it ends.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import grpc

from metasched import log

_log = log.get(component="wire")
# observe(method name, seconds, status code): once for every call, as it ends
Observe = Callable[[str, float, grpc.StatusCode], None]
Ctx = grpc.aio.ServicerContext[Any, Any]


class _Malformed:
    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


def _message(method: str, m: _Malformed) -> str:
    name = method.rsplit("/", 1)[-1] or "the"
    return f"malformed {name} request: it is not a valid protobuf message ({m.error})"


class _Registrar:
    """What the generated add_*Servicer_to_server calls, passing each method's handler on to
    the real server wrapped."""

    def __init__(self, server: grpc.aio.Server, observe: Observe | None) -> None:
        self.server = server
        self.observe = observe

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass  # the same handlers, unwrapped: add_registered_method_handlers adds them

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        wrapped = {
            name: _wrap(f"/{service}/{name}", h, self.observe) for name, h in handlers.items()
        }
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, wrapped),)
        )
        # (not in grpc-stubs' aio.Server yet)
        cast(Any, self.server).add_registered_method_handlers(service, wrapped)


def add_service(
    server: grpc.aio.Server,
    add: Callable[[Any, Any], None],
    servicer: Any,
    observe: Observe | None = None,
) -> None:
    """add(servicer, server) (a generated add_*Servicer_to_server), with every method made
    tolerant of malformed requests, and observed."""
    add(servicer, _Registrar(server, observe))


def _code_of(
    e: BaseException | None, context: grpc.aio.ServicerContext[Any, Any]
) -> grpc.StatusCode:
    """The status a call ended with: OK, the code it was aborted (or set) with, CANCELLED when
    its client left, UNKNOWN for an exception nothing answered. (context.code() is the value
    set on the call; it does not reach into gRPC's core, which may be gone by now.)"""
    if isinstance(e, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    return grpc.StatusCode.OK if e is None else grpc.StatusCode.UNKNOWN


def _wrap(
    method: str, handler: grpc.RpcMethodHandler[Any, Any], observe: Observe | None
) -> grpc.RpcMethodHandler[Any, Any]:
    parse = handler.request_deserializer
    assert parse is not None
    name = method.rsplit("/", 1)[-1]

    def done(
        t0: float, e: BaseException | None, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        if observe is not None:
            observe(name, time.perf_counter() - t0, _code_of(e, context))

    def tolerant(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception as e:
            return _Malformed(type(e).__name__)

    async def refuse(m: _Malformed, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        _log.info("malformed_request", method=method, peer=context.peer())
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _message(method, m))

    async def requests(
        it: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        async for req in it:
            if isinstance(req, _Malformed):
                _log.info("malformed_request", method=method, peer=context.peer())
                context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
                context.set_details(_message(method, req))
                return
            yield req

    ser = handler.response_serializer
    if handler.unary_unary is not None:
        uu: Any = handler.unary_unary

        async def unary_unary(req: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            t0, err = time.perf_counter(), None
            try:
                if isinstance(req, _Malformed):
                    await refuse(req, context)
                return await uu(req, context)
            except BaseException as e:
                err = e
                raise
            finally:
                done(t0, err, context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, tolerant, ser)
    if handler.unary_stream is not None:
        us: Any = handler.unary_stream

        async def unary_stream(
            req: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            t0, err = time.perf_counter(), None
            try:
                if isinstance(req, _Malformed):
                    await refuse(req, context)
                async for item in us(req, context):
                    yield item
            except BaseException as e:
                err = e
                raise
            finally:
                done(t0, err, context)

        return grpc.unary_stream_rpc_method_handler(unary_stream, tolerant, ser)
    if handler.stream_unary is not None:
        su: Any = handler.stream_unary

        async def stream_unary(
            it: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
        ) -> Any:
            t0, err = time.perf_counter(), None
            try:
                return await su(requests(it, context), context)
            except BaseException as e:
                err = e
                raise
            finally:
                done(t0, err, context)

        return grpc.stream_unary_rpc_method_handler(stream_unary, tolerant, ser)
    ss: Any = handler.stream_stream
    assert ss is not None

    async def stream_stream(
        it: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        t0, err = time.perf_counter(), None
        try:
            async for item in ss(requests(it, context), context):
                yield item
        except BaseException as e:
            err = e
            raise
        finally:
            done(t0, err, context)

    return grpc.stream_stream_rpc_method_handler(stream_stream, tolerant, ser)
