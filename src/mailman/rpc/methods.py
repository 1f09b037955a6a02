"""The method table: which RPC methods exist, what params each takes, and who answers them.

The daemon's engine implements :class:`Handlers`, one ``async def`` per method taking that method's
validated params model; :class:`MethodTable` binds such an object to the method names, checks each
request's params against the model, calls the handler and turns what happens into a response.

Example::

    table = MethodTable(engine, error_mapper=engine_errors_to_rpc)
    reply = await table.handle_line(b'{"jsonrpc": "2.0", "id": 1, "method": "letter.status", '
                                    b'"params": {"letter_id": 7}}\\n')

Methods and their handlers (the name with ``.`` replaced by ``_``):

======================= ==================================== =========================================
method                  params                               handler
======================= ==================================== =========================================
``letter.send``         :class:`LetterSendParams`            ``letter_send``
``letter.status``       :class:`LetterStatusParams`          ``letter_status``
``letter.pause``        :class:`LetterPauseParams`           ``letter_pause``
``letter.resume``       :class:`LetterResumeParams`          ``letter_resume``
``letter.cancel``       :class:`LetterCancelParams`          ``letter_cancel``
``letter.retry_failed`` :class:`LetterRetryFailedParams`     ``letter_retry_failed``
``letter.create``       :class:`LetterCreateParams`          ``letter_create``
``newsletter.create``   :class:`NewsletterCreateParams`      ``newsletter_create``
``subscribers.add``     :class:`SubscribersAddParams`        ``subscribers_add``
``system.tree``         :class:`SystemTreeParams`            ``system_tree``
``system.health``       :class:`SystemHealthParams`          ``system_health``
``system.configure``    :class:`SystemConfigureParams`       ``system_configure``
======================= ==================================== =========================================

Params may be given by name (an object) or by position (an array, in the model's field order).

Errors: a handler raises :class:`RpcError` for an expected failure. Any other exception goes to the
``error_mapper`` (the hook that translates the engine's own exceptions, such as its
``NotFoundError``, into ``RpcError``); if that returns None too, the client gets ``-32603 internal
error`` with an ``error_id``, and the traceback is logged (structlog, ``mailman.rpc``) under that id.
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import structlog
from pydantic import ValidationError

from mailman.rpc.params import (
    LetterCancelParams,
    LetterCreateParams,
    LetterPauseParams,
    LetterResumeParams,
    LetterRetryFailedParams,
    LetterSendParams,
    LetterStatusParams,
    NewsletterCreateParams,
    Params,
    SubscribersAddParams,
    SystemConfigureParams,
    SystemHealthParams,
    SystemTreeParams,
)
from mailman.rpc.protocol import (
    ErrorCode,
    Request,
    Response,
    RpcError,
    encode_response,
    parse_request,
)

__all__ = ["METHODS", "ErrorMapper", "Handlers", "MethodSpec", "MethodTable"]

_logger = structlog.get_logger("mailman.rpc")

ErrorMapper = Callable[[Exception], RpcError | None]
"""Translates an exception a handler raised into the :class:`RpcError` to answer with, or None
(not an expected failure: answer ``internal error``)."""

Result = Mapping[str, Any]

_MAX_REPORTED_ERRORS: Final = 20
_MAX_ERRORS_IN_MESSAGE: Final = 3


class Handlers(Protocol):
    """What the daemon's engine implements: one coroutine per RPC method, returning a JSON-able mapping.

    The result shapes below are the contract the client and CLI rely on; a handler may add keys.
    ``state`` is a letter's status (``draft``, ``scheduled``, ``sending``, ``paused``, ``sent``,
    ``cancelled``, ``failed``).
    """

    async def letter_send(self, params: LetterSendParams) -> Result:
        """Start (or join, if already running) the letter's delivery.

        Returns ``{"letter_id": int, "state": str}``, the state once the service has the letter.
        """
        ...

    async def letter_status(self, params: LetterStatusParams) -> Result:
        """Returns ``{"letter_id": int, "state": str, "counts": {"pending": int, "sending": int,
        "delivered": int, "failed": int, "skipped": int}}`` (plus e.g. ``"uncertain"`` in counts)."""
        ...

    async def letter_pause(self, params: LetterPauseParams) -> Result:
        """Returns ``{"letter_id": int, "state": str}``."""
        ...

    async def letter_resume(self, params: LetterResumeParams) -> Result:
        """Returns ``{"letter_id": int, "state": str}``."""
        ...

    async def letter_cancel(self, params: LetterCancelParams) -> Result:
        """Returns ``{"letter_id": int, "state": str}``."""
        ...

    async def letter_retry_failed(self, params: LetterRetryFailedParams) -> Result:
        """Returns the letter's status with ``"retried": int`` (how many went back to pending) and
        ``"message"`` (what happened; a cancelled letter is refused)."""
        ...

    async def letter_create(self, params: LetterCreateParams) -> Result:
        """Returns ``{"letter_id": int, "state": str}`` (``draft``, or ``scheduled`` with ``send_at``)."""
        ...

    async def newsletter_create(self, params: NewsletterCreateParams) -> Result:
        """Returns ``{"newsletter_id": int, "user_id": int}``."""
        ...

    async def subscribers_add(self, params: SubscribersAddParams) -> Result:
        """Returns ``{"newsletter_id": int, "added": int, "existing": int}``: new subscriptions, and
        addresses that were already subscribed (left as they were)."""
        ...

    async def system_tree(self, params: SystemTreeParams) -> Result:
        """Returns ``{"tree": node}``, the supervision tree, where a node is ``{"id": str, "pid": str |
        None, "type": "worker" | "supervisor", "children": [node, ...]}``."""
        ...

    async def system_health(self, params: SystemHealthParams) -> Result:
        """Returns ``{"status": "ok" | "degraded", "checks": {name: str}}``, one check per dependency
        (``"database"``, ``"smtp"``...) with ``"ok"`` or what is wrong."""
        ...

    async def system_configure(self, params: SystemConfigureParams) -> Result:
        """Returns ``{"rate_limit": float | None, "concurrency": int}``, the settings now in effect
        (``rate_limit`` None: unlimited)."""
        ...


@dataclass(frozen=True, slots=True)
class MethodSpec:
    """One RPC method: its wire ``name``, its ``params`` model, and the ``handler`` attribute name."""

    name: str
    params: type[Params]
    handler: str


METHODS: Final[tuple[MethodSpec, ...]] = (
    MethodSpec("letter.send", LetterSendParams, "letter_send"),
    MethodSpec("letter.status", LetterStatusParams, "letter_status"),
    MethodSpec("letter.pause", LetterPauseParams, "letter_pause"),
    MethodSpec("letter.resume", LetterResumeParams, "letter_resume"),
    MethodSpec("letter.cancel", LetterCancelParams, "letter_cancel"),
    MethodSpec("letter.retry_failed", LetterRetryFailedParams, "letter_retry_failed"),
    MethodSpec("letter.create", LetterCreateParams, "letter_create"),
    MethodSpec("newsletter.create", NewsletterCreateParams, "newsletter_create"),
    MethodSpec("subscribers.add", SubscribersAddParams, "subscribers_add"),
    MethodSpec("system.tree", SystemTreeParams, "system_tree"),
    MethodSpec("system.health", SystemHealthParams, "system_health"),
    MethodSpec("system.configure", SystemConfigureParams, "system_configure"),
)
"""Every RPC method the daemon answers."""


@dataclass(frozen=True, slots=True)
class _Bound:
    spec: MethodSpec
    handler: Callable[[Params], Awaitable[Result]]


class MethodTable:
    """Dispatches requests by method name to a :class:`Handlers` object, with validated params.

    Raises ``TypeError`` at once if ``handlers`` lacks a coroutine method for some RPC method.
    """

    def __init__(self, handlers: Handlers, *, error_mapper: ErrorMapper | None = None) -> None:
        bound: dict[str, _Bound] = {}
        for spec in METHODS:
            handler = getattr(handlers, spec.handler, None)
            if handler is None or not inspect.iscoroutinefunction(handler):
                raise TypeError(
                    f"expected {type(handlers).__name__} to implement Handlers: it needs "
                    f"`async def {spec.handler}(self, params: {spec.params.__name__})` for {spec.name!r}"
                )
            bound[spec.name] = _Bound(spec, handler)
        self._methods = bound
        self._error_mapper = error_mapper

    @property
    def methods(self) -> tuple[str, ...]:
        """The names of the methods this table answers."""
        return tuple(self._methods)

    async def handle_line(self, line: bytes) -> bytes | None:
        """Answer one request line: the response line to write, or None (a notification, a blank line).

        Never raises but for cancellation: every failure becomes an error response.
        """
        parsed = parse_request(line)
        if parsed is None:
            return None
        response = parsed if isinstance(parsed, Response) else await self.dispatch(parsed)
        if response is None:
            return None
        try:
            return encode_response(response)
        except (TypeError, ValueError) as exc:
            method = parsed.method if isinstance(parsed, Request) else None
            return encode_response(Response.failure(response.id, _internal_error(exc, method, response.id)))

    async def dispatch(self, request: Request) -> Response | None:
        """Validate ``request``'s params, call its handler, and build the response (None for a
        notification, whose outcome nobody hears of: failures are only logged)."""
        try:
            result = await self.call(request.method, request.params)
        except RpcError as error:
            response = Response.failure(request.id, error)
        except Exception as exc:
            response = Response.failure(request.id, _internal_error(exc, request.method, request.id))
        else:
            response = Response.success(request.id, result)
        return None if request.notification else response

    async def call(
        self, method: str, params: Mapping[str, Any] | Sequence[Any] | None = None
    ) -> dict[str, Any]:
        """Call ``method`` with ``params`` (raw JSON values) and return its result as a dict.

        Raises :class:`RpcError` for an unknown method, invalid params, or a failure the handler or
        the error mapper named; any other exception is a bug, and propagates.
        """
        bound = self._methods.get(method)
        if bound is None:
            raise RpcError(ErrorCode.METHOD_NOT_FOUND, f"method not found: {method!r}")
        arguments = _by_name(bound.spec, params)
        try:
            validated = bound.spec.params.model_validate(arguments)
        except ValidationError as exc:
            raise _invalid_params(method, exc) from None
        try:
            result = await bound.handler(validated)
        except RpcError:
            raise
        except Exception as exc:
            mapped = self._map_error(exc)
            if mapped is None:
                raise
            raise mapped from exc
        if not isinstance(result, Mapping):
            raise TypeError(
                f"handler {bound.spec.handler} returned {type(result).__name__}, expected a mapping"
            )
        return dict(result)

    def _map_error(self, exc: Exception) -> RpcError | None:
        if self._error_mapper is None:
            return None
        try:
            return self._error_mapper(exc)
        except Exception as mapper_exc:  # a broken mapper must not turn a handler error into a crash
            _logger.error("rpc_error_mapper_failed", error=repr(exc), exc_info=mapper_exc)
            return None


def _by_name(spec: MethodSpec, params: Mapping[str, Any] | Sequence[Any] | None) -> Mapping[str, Any]:
    if params is None:
        return {}
    if isinstance(params, Mapping):
        return params
    fields = list(spec.params.model_fields)
    if len(params) > len(fields):
        raise RpcError(
            ErrorCode.INVALID_PARAMS,
            f"invalid params for {spec.name}: it takes at most {len(fields)} positional params "
            f"({', '.join(fields) or 'none'}), got {len(params)}",
        )
    return dict(zip(fields, params, strict=False))


def _field_path(location: tuple[int | str, ...]) -> str:
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "params"


def _invalid_params(method: str, exc: ValidationError) -> RpcError:
    errors = [
        {"field": _field_path(error["loc"]), "message": error["msg"].removeprefix("Value error, ")}
        for error in exc.errors(include_url=False, include_input=False)[:_MAX_REPORTED_ERRORS]
    ]
    shown = "; ".join(f"{error['field']}: {error['message']}" for error in errors[:_MAX_ERRORS_IN_MESSAGE])
    more = exc.error_count() - _MAX_ERRORS_IN_MESSAGE
    if more > 0:
        shown += f"; and {more} more"
    return RpcError(
        ErrorCode.INVALID_PARAMS,
        f"invalid params for {method}: {shown}",
        {"errors": errors, "error_count": exc.error_count()},
    )


def _internal_error(exc: BaseException, method: str | None, request_id: object) -> RpcError:
    # The client learns only that it was our fault, and the id under which the traceback is logged.
    error_id = uuid.uuid4().hex[:12]
    _logger.error("rpc_internal_error", method=method, request_id=request_id, error_id=error_id, exc_info=exc)
    return RpcError(
        ErrorCode.INTERNAL_ERROR,
        "internal error; the daemon's log has the details",
        {"error_id": error_id},
    )
