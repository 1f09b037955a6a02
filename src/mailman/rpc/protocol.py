"""The wire protocol: newline-delimited JSON-RPC 2.0, one request or response per line.

Pure functions and data: nothing here does I/O. :func:`parse_request` turns one received line into
a :class:`Request` or, when the line is not a valid request, the error :class:`Response` to send
back; :func:`encode_response` turns a response into the line to write.

Example::

    match parse_request(b'{"jsonrpc": "2.0", "id": 1, "method": "system.health"}\\n'):
        case Request() as request:
            line = encode_response(Response.success(request.id, {"status": "ok"}))
        case Response() as error:
            line = encode_response(error)

The framing rules, beyond JSON-RPC 2.0 itself:

- One JSON value per line, UTF-8, ended by ``\\n`` (a trailing ``\\r`` is tolerated). Lines holding
  only whitespace are ignored. Responses are written one per line and never contain a raw newline
  (they are ASCII: ``json.dumps`` escapes everything else).
- A line may hold at most :data:`MAX_LINE_BYTES` (1 MiB) before its newline. A longer one is
  answered with ``-32600 request line exceeds 1 MiB`` and the server closes that connection, since
  it cannot know where the next request would start.
- Batch requests (a JSON array) are answered with ``-32600 batch requests are not supported``:
  requests on one connection are answered in order anyway, so a batch gains a client nothing over
  writing several lines (or opening several connections).
- ``id`` must be a string, an integer or null; fractional and boolean ids are invalid requests.
- ``NaN``, ``Infinity`` and nesting deep enough to exhaust the parser are parse errors.
- Request objects may carry members other than the four JSON-RPC defines; they are ignored.

Error codes are :class:`ErrorCode`: the five the specification reserves, and the application's own
in the ``-32000..-32099`` "server error" range. A handler signals an expected failure by raising
:class:`RpcError` with one of them; every other exception becomes ``-32603 internal error`` with no
detail but an ``error_id`` that is also in the daemon's log.

See also: the JSON-RPC 2.0 specification (https://www.jsonrpc.org/specification). Declining
batches is this protocol's one deviation from it, for the reason above.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "JSONRPC_VERSION",
    "MAX_LINE_BYTES",
    "ErrorCode",
    "Request",
    "RequestId",
    "Response",
    "RpcError",
    "encode_response",
    "line_too_long",
    "parse_request",
]

JSONRPC_VERSION: Final = "2.0"
MAX_LINE_BYTES: Final = 1024 * 1024
"""The longest request line accepted, newline excluded: 1 MiB."""

RequestId = int | str | None
"""A request's ``id``: an integer, a string, or null (allowed by JSON-RPC 2.0, if discouraged)."""


class ErrorCode(enum.IntEnum):
    """The ``code`` of a JSON-RPC error: the reserved ones, then the application's (-32000..-32099)."""

    PARSE_ERROR = -32700
    """The line is not JSON (or not UTF-8, or nested too deep)."""
    INVALID_REQUEST = -32600
    """The JSON is not a request object (a batch, a line over 1 MiB, a bad member)."""
    METHOD_NOT_FOUND = -32601
    INVALID_PARAMS = -32602
    INTERNAL_ERROR = -32603
    """A bug in the daemon: its log has the traceback under the response's ``data.error_id``."""
    NOT_FOUND = -32001
    """The letter, newsletter or subscription named does not exist."""
    CONFLICT = -32002
    """The request contradicts the current state (a duplicate, a letter already sent...)."""
    UNAVAILABLE = -32003
    """The daemon cannot serve it now (its database is down, it is shutting down): retry later."""
    PERMISSION_DENIED = -32004
    """The connecting user is not allowed to use this daemon."""


class RpcError(Exception):
    """An error response to send: raise it in a handler to answer with ``code`` and ``message``.

    ``data`` is any JSON-able value giving details (field names, ids); keep secrets out of it.

    Example::

        raise RpcError(ErrorCode.NOT_FOUND, f"letter {letter_id} does not exist", {"letter_id": letter_id})
    """

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        if isinstance(code, bool) or not isinstance(code, int):
            raise TypeError(f"expected an int error code (an ErrorCode), got {code!r}")
        if not isinstance(message, str):
            raise TypeError(f"expected a str message, got {type(message).__name__}")
        super().__init__(code, message)
        self.code = int(code)
        self.message = message
        self.data = data

    def __str__(self) -> str:
        return f"{self.message} (code {self.code})"


@dataclass(frozen=True, slots=True)
class Request:
    """A well-formed request: ``params`` still unchecked against the method's own model.

    ``notification`` is true when the request had no ``id`` member: it gets no response at all.
    """

    method: str
    params: Mapping[str, Any] | Sequence[Any] | None = None
    id: RequestId = None
    notification: bool = False


@dataclass(frozen=True, slots=True)
class Response:
    """A response: either ``result`` (a success) or ``error`` (an :class:`RpcError`), for ``id``."""

    id: RequestId
    result: Any = None
    error: RpcError | None = None

    @classmethod
    def success(cls, request_id: RequestId, result: Any) -> Response:
        return cls(request_id, result=result)

    @classmethod
    def failure(cls, request_id: RequestId, error: RpcError) -> Response:
        return cls(request_id, error=error)


def _invalid(message: str, request_id: RequestId = None) -> Response:
    return Response.failure(request_id, RpcError(ErrorCode.INVALID_REQUEST, message))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _is_valid_id(value: object) -> bool:
    return value is None or isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def parse_request(line: bytes) -> Request | Response | None:
    """Read one line: a :class:`Request`, the error :class:`Response` to send, or None (a blank line).

    Never raises for any input: a line is data from outside, and every malformed one has an answer.
    """
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return Response.failure(None, RpcError(ErrorCode.PARSE_ERROR, "parse error: the line is not UTF-8"))
    if not text.strip():
        return None
    try:
        message = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        return Response.failure(None, RpcError(ErrorCode.PARSE_ERROR, "parse error: JSON nested too deeply"))
    except ValueError as exc:  # JSONDecodeError, NaN/Infinity, integers past Python's digit limit
        return Response.failure(None, RpcError(ErrorCode.PARSE_ERROR, f"parse error: {exc}"))
    if isinstance(message, list):
        return _invalid("batch requests are not supported: send one request per line")
    if not isinstance(message, dict):
        return _invalid(f"invalid request: expected a JSON object, got {_json_type(message)}")
    has_id = "id" in message
    request_id = message.get("id")
    if not _is_valid_id(request_id):
        return _invalid(
            f"invalid request: id must be a string, an integer or null, got {_json_type(request_id)}"
        )
    if message.get("jsonrpc") != JSONRPC_VERSION:
        return _invalid('invalid request: "jsonrpc" must be "2.0"', request_id)
    method = message.get("method")
    if not isinstance(method, str):
        return _invalid(f'invalid request: "method" must be a string, got {_json_type(method)}', request_id)
    params = message.get("params")
    if "params" in message and not isinstance(params, dict | list):
        return _invalid(
            f'invalid request: "params" must be an object or an array, got {_json_type(params)}', request_id
        )
    return Request(method, params, request_id, notification=not has_id)


def line_too_long() -> Response:
    """The answer to a line over :data:`MAX_LINE_BYTES`; the connection is closed after it."""
    return _invalid("request line exceeds 1 MiB")


def encode_response(response: Response) -> bytes:
    """The line to send for ``response``, newline included: compact, ASCII-only JSON.

    Raises ``TypeError`` or ``ValueError`` if the result (or an error's ``data``) is not JSON, a
    handler's bug: :class:`~mailman.rpc.MethodTable` then answers ``internal error`` instead.
    """
    message: dict[str, Any] = {"jsonrpc": JSONRPC_VERSION}
    if response.error is None:
        message["result"] = response.result
    else:
        error: dict[str, Any] = {"code": response.error.code, "message": response.error.message}
        if response.error.data is not None:
            error["data"] = response.error.data
        message["error"] = error
    message["id"] = response.id
    return json.dumps(message, separators=(",", ":"), allow_nan=False).encode("ascii") + b"\n"


def _json_type(value: object) -> str:
    match value:
        case None:
            return "null"
        case bool():
            return "a boolean"
        case int() | float():
            return "a number"
        case str():
            return "a string"
        case list():
            return "an array"
        case _:
            return "an object"
