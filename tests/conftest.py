"""Suite-wide test setup.

- structlog prints nothing below WARNING, so that the suite's output stays readable.
- An asyncio loop exception handler records every "Task exception was never retrieved" and
  every other unhandled loop error, and fails the test that produced it.
- Every test gets the event-recording fixture ``events`` (see tests/supervisor/conftest.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
import structlog

structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

pytest_plugins = [
    "tests.services.postgres_fixtures",
    "tests.services.smtp_fixtures",
    "tests.services.engine_fixtures",
]


@pytest.fixture(autouse=True)
async def _fail_on_loop_errors() -> AsyncIterator[None]:
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    yield
    loop.set_exception_handler(previous)
    if errors:
        pytest.fail(f"unhandled errors in the event loop: {errors}")
