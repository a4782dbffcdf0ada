"""How a request can fail, and the one table that turns each failure into a gRPC status.

Every part of the frontend raises one of the exceptions below; `BuboService` catches whatever reaches
it and answers with `status_of(exc)`. Anything not in the table is a bug: it becomes INTERNAL with the
request id in the message (the traceback is logged under that id), never UNKNOWN.
"""

from __future__ import annotations

import grpc


class ServingError(Exception):
    """Base of the failures a client can act on; the message is what the client reads."""


class InvalidArgument(ServingError, ValueError):
    """The request itself is wrong; the message starts with the offending field (`turns[2].role: ...`)."""


class PartUnavailable(ServingError):
    """A part the request needs (Triton, the LLM engine) is down, restarting or not answering."""

    def __init__(self, part: str, message: str):
        super().__init__(message)
        self.part = part


class PartFailed(ServingError):
    """A part answered with an error of its own (a model that raised): the server's fault, not the
    client's, and not a matter of waiting."""

    def __init__(self, part: str, message: str):
        super().__init__(message)
        self.part = part


class ShuttingDown(ServingError):
    """The server is draining: in-flight requests finish, new ones go elsewhere."""


class Overloaded(ServingError):
    """A limit of the server is reached (concurrent streams); retrying later can succeed."""


class Unsupported(ServingError):
    """The server cannot do what was asked at all (grounding without grounding models)."""


class RequestTimeout(ServingError):
    """The server's own per-request time limit ran out."""


class Unauthenticated(ServingError):
    """No valid token in the `authorization: Bearer` metadata."""


# exception type -> (gRPC status, HTTP status); looked up along the exception's MRO.
STATUS: dict[type[BaseException], tuple[grpc.StatusCode, int]] = {
    InvalidArgument: (grpc.StatusCode.INVALID_ARGUMENT, 400),
    Unauthenticated: (grpc.StatusCode.UNAUTHENTICATED, 401),
    Unsupported: (grpc.StatusCode.FAILED_PRECONDITION, 400),
    Overloaded: (grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
    PartUnavailable: (grpc.StatusCode.UNAVAILABLE, 503),
    ShuttingDown: (grpc.StatusCode.UNAVAILABLE, 503),
    RequestTimeout: (grpc.StatusCode.DEADLINE_EXCEEDED, 504),
    PartFailed: (grpc.StatusCode.INTERNAL, 500),
}
INTERNAL = (grpc.StatusCode.INTERNAL, 500)


def status_of(exc: BaseException, request_id: str) -> tuple[grpc.StatusCode, int, str]:
    """(gRPC status, HTTP status, message) for a failure; unexpected ones name the request id."""
    for kind in type(exc).__mro__:
        if kind in STATUS:
            code, http = STATUS[kind]
            return code, http, str(exc)
    code, http = INTERNAL
    return code, http, f"internal error ({type(exc).__name__}); request id {request_id} in the server log"
