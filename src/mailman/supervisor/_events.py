"""Events: every start, exit, restart and intensity trip, for logs and metrics.

This is the role ``:telemetry`` plays in Elixir: the library *executes* named events with a
metadata mapping; anyone may *attach* a handler to an event name. Each event is also written to
a structlog logger (``mailman.supervisor``): errors (crashes, start failures, intensity trips) at
``error``, the rest at ``debug``.

Event names (tuples, as ``:telemetry`` uses lists of atoms):

=========================================== =====================================================
``("supervisor", "child", "started")``       a child started (``supervisor``, ``id``, ``pid``)
``("supervisor", "child", "start_failed")``  a child's start failed (``id``, ``reason``)
``("supervisor", "child", "exited")``        a child exited (``id``, ``pid``, ``reason``)
``("supervisor", "child", "restarted")``     a child was restarted (``id``, ``pid``)
``("supervisor", "intensity", "exceeded")``  too many restarts: the supervisor shuts down
``("supervisor", "shutdown_error")``         a child left with an unexpected reason at shutdown
``("gen_server", "terminated")``             a GenServer ended abnormally (``pid``, ``reason``)
=========================================== =====================================================

Example::

    def count_restarts(event, metadata):
        metrics[metadata["id"]] += 1

    attach("restart-counter", ("supervisor", "child", "restarted"), count_restarts)

See also: Erlang/Elixir ``:telemetry`` (``attach/4``, ``execute/3``), SASL supervisor reports.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from mailman.supervisor._exit_reason import ExitReason

__all__ = ["EventHandler", "EventName", "attach", "detach", "execute", "reset_logger"]

EventName = tuple[str, ...]
EventHandler = Callable[[EventName, Mapping[str, Any]], None]

_logger = structlog.get_logger("mailman.supervisor")
_ERROR_EVENTS = frozenset(
    {
        ("supervisor", "child", "start_failed"),
        ("supervisor", "intensity", "exceeded"),
        ("supervisor", "shutdown_error"),
        ("gen_server", "terminated"),
    }
)
_handlers: dict[EventName, dict[str, EventHandler]] = {}
_handler_events: dict[str, EventName] = {}


def attach(handler_id: str, event: EventName, handler: EventHandler) -> None:
    """Call ``handler(event, metadata)`` each time ``event`` is executed.

    Raises ``ValueError`` if ``handler_id`` is already attached (``{error, already_exists}``).
    A handler that raises is detached and logged, as ``:telemetry`` does, so a broken metric
    never breaks supervision.
    """
    if handler_id in _handler_events:
        raise ValueError(f"handler {handler_id!r} is already attached; detach it first")
    _handlers.setdefault(event, {})[handler_id] = handler
    _handler_events[handler_id] = event


def detach(handler_id: str) -> None:
    """Remove a handler; detaching an unknown id does nothing."""
    event = _handler_events.pop(handler_id, None)
    if event is not None:
        _handlers[event].pop(handler_id, None)


def execute(event: EventName, metadata: Mapping[str, Any]) -> None:
    """Emit ``event``: log it and call every attached handler."""
    logger, debug_enabled = _bound_logger()
    if event in _ERROR_EVENTS:
        logger.error(_joined(event), **_printable(metadata))
    elif debug_enabled:
        logger.debug(_joined(event), **_printable(metadata))
    handlers = _handlers.get(event)
    if not handlers:
        return
    for handler_id, handler in list(handlers.items()):
        try:
            handler(event, metadata)
        except Exception:
            logger.exception("event handler failed and was detached", handler_id=handler_id)
            detach(handler_id)


def _printable(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Exit reasons as Erlang writes them (``killed``, ``{shutdown, x}``) in log lines."""
    return {k: str(v) if isinstance(v, ExitReason) else v for k, v in metadata.items()}


_names: dict[EventName, str] = {}
_bound: list[tuple[Any, bool]] = []


def _joined(event: EventName) -> str:
    name = _names.get(event)
    if name is None:
        name = _names[event] = ".".join(event)
    return name


def _bound_logger() -> tuple[Any, bool]:
    """The library's logger, bound once, and whether it writes debug lines.

    structlog's lazy proxy would re-bind on every event; like ``cache_logger_on_first_use``,
    configure structlog before the first event. Call :func:`reset_logger` after reconfiguring.
    """
    if not _bound:
        logger = _logger.bind()
        is_enabled_for = getattr(logger, "is_enabled_for", None)
        debug_enabled = True if is_enabled_for is None else bool(is_enabled_for(logging.DEBUG))
        _bound.append((logger, debug_enabled))
    return _bound[0]


def reset_logger() -> None:
    """Forget the bound logger so that the next event picks up a new structlog configuration."""
    _bound.clear()
