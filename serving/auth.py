"""A shared token for the frontend: `authorization: Bearer <token>` metadata on every RPC except health
checks (load balancers and kubelets probe without credentials). Reflection needs the token too: what
the server offers is only for those who may call it.

The token comes from `bubo serve --api-key` or the BUBO_API_KEY environment variable; clients
(`bubo chat`, serving.client) send it from the same two places.
"""

from __future__ import annotations

import hmac
import os

import grpc

API_KEY_ENV = "BUBO_API_KEY"
OPEN_METHODS = ("/grpc.health.v1.Health/",)


def api_key_from(value: str | None) -> str | None:
    """The explicit value, else the environment's; empty means none."""
    key = value if value is not None else os.environ.get(API_KEY_ENV)
    return key or None


class TokenAuth(grpc.aio.ServerInterceptor):
    def __init__(self, token: str, metrics=None):
        self._expected = f"Bearer {token}".encode()
        self.metrics = metrics

    async def intercept_service(self, continuation, details):
        if details.method.startswith(OPEN_METHODS):
            return await continuation(details)
        supplied = next((value for key, value in (details.invocation_metadata or ()) if key == "authorization"), "")
        if isinstance(supplied, str):
            supplied = supplied.encode()
        if hmac.compare_digest(supplied, self._expected):
            return await continuation(details)
        handler = await continuation(details)
        if self.metrics is not None:
            self.metrics.observe_request(details.method.rsplit("/", 1)[-1], "UNAUTHENTICATED", 0.0)
        return _refusal(handler, "missing or wrong token: send `authorization: Bearer <api key>` metadata")


def _refusal(handler, message: str):
    """A handler of the same shape as `handler` that answers UNAUTHENTICATED."""
    if handler is None:
        return None

    async def refuse(request_or_iterator, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    kinds = (
        ("unary_unary", grpc.unary_unary_rpc_method_handler),
        ("unary_stream", grpc.unary_stream_rpc_method_handler),
        ("stream_unary", grpc.stream_unary_rpc_method_handler),
        ("stream_stream", grpc.stream_stream_rpc_method_handler),
    )
    for attribute, make in kinds:
        if getattr(handler, attribute) is not None:
            return make(refuse, request_deserializer=handler.request_deserializer,
                        response_serializer=handler.response_serializer)
    return None
