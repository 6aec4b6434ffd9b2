"""Requests that are not the protobuf message they claim to be get INVALID_ARGUMENT.

Left to itself, gRPC Python answers bytes that do not parse as the method's request message
with INTERNAL "Exception deserializing request!", which reads like a bug in metaschedd. This
interceptor parses each request itself: a malformed unary request is refused with
INVALID_ARGUMENT and a one-line message; a malformed message on a stream ends the stream with
that status (the handler sees the stream end, as if the peer had closed it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import grpc

from metasched import log


class _Malformed:
    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


def _message(method: str, m: _Malformed) -> str:
    name = method.rsplit("/", 1)[-1] or "the"
    return f"malformed {name} request: it is not a valid protobuf message ({m.error})"


if TYPE_CHECKING:
    _Interceptor = grpc.ServerInterceptor[Any, Any]
else:
    _Interceptor = grpc.ServerInterceptor


class MalformedRequests(_Interceptor):
    def __init__(self) -> None:
        self.log = log.get(component="wire")
        # method -> (the service's handler, our wrapper of it). gRPC asks for the handler on
        # every call, on its one polling thread; building the wrapper once per method keeps
        # that thread, which every request waits on, free for the next call.
        self._wrapped: dict[str, tuple[Any, grpc.RpcMethodHandler[Any, Any]]] = {}

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        method: str = handler_call_details.method
        hit = self._wrapped.get(method)
        if hit is not None and hit[0] is handler:
            return hit[1]
        wrapped = self._wrap(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        parse = handler.request_deserializer
        assert parse is not None

        def tolerant(data: bytes) -> Any:
            try:
                return parse(data)
            except Exception as e:
                return _Malformed(type(e).__name__)

        def refuse(m: _Malformed, context: grpc.ServicerContext) -> None:
            self.log.info("malformed_request", method=method, peer=context.peer())
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, _message(method, m))

        def requests(it: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
            for req in it:
                if isinstance(req, _Malformed):
                    self.log.info("malformed_request", method=method, peer=context.peer())
                    context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
                    context.set_details(_message(method, req))
                    return
                yield req

        ser = handler.response_serializer
        if handler.unary_unary is not None:
            uu = handler.unary_unary

            def unary_unary(req: Any, context: grpc.ServicerContext) -> Any:
                if isinstance(req, _Malformed):
                    refuse(req, context)
                return uu(req, context)

            return grpc.unary_unary_rpc_method_handler(unary_unary, tolerant, ser)
        if handler.unary_stream is not None:
            us = handler.unary_stream

            def unary_stream(req: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                if isinstance(req, _Malformed):
                    refuse(req, context)
                yield from us(req, context)

            return grpc.unary_stream_rpc_method_handler(unary_stream, tolerant, ser)
        if handler.stream_unary is not None:
            su = handler.stream_unary

            def stream_unary(it: Iterator[Any], context: grpc.ServicerContext) -> Any:
                return su(requests(it, context), context)

            return grpc.stream_unary_rpc_method_handler(stream_unary, tolerant, ser)
        ss = handler.stream_stream
        assert ss is not None

        def stream_stream(it: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
            yield from ss(requests(it, context), context)

        return grpc.stream_stream_rpc_method_handler(stream_stream, tolerant, ser)
