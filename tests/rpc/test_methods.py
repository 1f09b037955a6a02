"""The method table: binding handlers, validating params, and turning outcomes into responses.

These run without a socket: :meth:`MethodTable.handle_line` is the whole request path but the I/O.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from structlog.testing import capture_logs

from mailman.rpc import (
    METHODS,
    ErrorCode,
    LetterSendParams,
    LetterStatusParams,
    MethodTable,
    Params,
    RpcError,
    SystemConfigureParams,
)
from tests.rpc.conftest import FakeHandlers


def request(method: str, params: object = None, request_id: object = 1) -> bytes:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": request_id}
    if params is not None:
        message["params"] = params
    return json.dumps(message).encode() + b"\n"


async def answer(table: MethodTable, line: bytes) -> dict[str, Any]:
    reply = await table.handle_line(line)
    assert reply is not None
    assert reply.endswith(b"\n")
    message = json.loads(reply)
    assert isinstance(message, dict)
    return message


@pytest.fixture
def table(handlers: FakeHandlers) -> MethodTable:
    return MethodTable(handlers)


class TestConstruction:
    def test_it_answers_every_method_of_the_protocol(self, table: MethodTable) -> None:
        """The table knows the twelve methods, each with its own params model."""
        assert set(table.methods) == {
            "letter.send",
            "letter.status",
            "letter.pause",
            "letter.resume",
            "letter.cancel",
            "letter.retry_failed",
            "letter.create",
            "newsletter.create",
            "subscribers.add",
            "system.tree",
            "system.health",
            "system.configure",
        }
        assert len({spec.params for spec in METHODS}) == len(METHODS)

    def test_every_params_model_is_strict_and_forbids_extra_fields(self) -> None:
        """No coercion, and a misspelt field is an error."""
        for spec in METHODS:
            assert issubclass(spec.params, Params)
            assert spec.params.model_config.get("strict") is True
            assert spec.params.model_config.get("extra") == "forbid"

    def test_handlers_missing_a_method_are_refused_at_once(self) -> None:
        """Misuse raises TypeError naming the coroutine to write."""

        class Incomplete:
            async def letter_send(self, params: LetterSendParams) -> dict[str, Any]:
                return {}

        with pytest.raises(TypeError, match=r"async def letter_status\(self, params: LetterStatusParams\)"):
            MethodTable(Incomplete())  # type: ignore[arg-type]

    def test_a_handler_that_is_not_a_coroutine_is_refused(self) -> None:
        """A plain ``def`` handler would hand back a dict where an awaitable is needed."""

        class Synchronous(FakeHandlers):
            def letter_status(self, params: LetterStatusParams) -> dict[str, Any]:  # type: ignore[override]
                return {}

        with pytest.raises(TypeError, match="letter_status"):
            MethodTable(Synchronous())  # type: ignore[arg-type]


class TestDispatch:
    async def test_a_request_gets_its_handlers_result(
        self, table: MethodTable, handlers: FakeHandlers
    ) -> None:
        """The handler gets the validated model; the client gets its result under the request's id."""
        message = await answer(table, request("letter.pause", {"letter_id": 12}, "req-1"))
        assert message == {"jsonrpc": "2.0", "result": {"letter_id": 12, "state": "paused"}, "id": "req-1"}
        [(method, params)] = handlers.calls
        assert method == "letter.pause"
        assert params.model_dump() == {"letter_id": 12}

    async def test_positional_params_follow_the_models_field_order(
        self, table: MethodTable, handlers: FakeHandlers
    ) -> None:
        """``[letter_id, recipients]`` is ``{"letter_id": ..., "recipients": ...}``."""
        await answer(table, request("letter.send", [5, [1, 2]]))
        assert handlers.calls[0][1] == LetterSendParams(letter_id=5, recipients=[1, 2])

    async def test_too_many_positional_params_are_invalid(self, table: MethodTable) -> None:
        """Extra positional params are refused, naming the ones the method takes."""
        message = await answer(table, request("letter.status", [5, 6]))
        assert message["error"]["code"] == ErrorCode.INVALID_PARAMS
        assert "at most 1 positional params (letter_id), got 2" in message["error"]["message"]

    async def test_a_notification_runs_but_gets_no_response(
        self, table: MethodTable, handlers: FakeHandlers
    ) -> None:
        """A request without id is handled and nothing is written back."""
        line = json.dumps({"jsonrpc": "2.0", "method": "letter.cancel", "params": {"letter_id": 2}}).encode()
        assert await table.handle_line(line) is None
        assert [method for method, _ in handlers.calls] == ["letter.cancel"]

    async def test_a_failing_notification_gets_no_response_either(
        self, table: MethodTable, handlers: FakeHandlers
    ) -> None:
        """Even an unknown method or a crash in a notification is not answered."""
        handlers.failures["system.tree"] = RuntimeError("boom")
        assert await table.handle_line(b'{"jsonrpc": "2.0", "method": "no.such"}') is None
        assert await table.handle_line(b'{"jsonrpc": "2.0", "method": "system.tree"}') is None

    async def test_an_unknown_method_is_not_found(self, table: MethodTable) -> None:
        """-32601 names the method."""
        message = await answer(table, request("letter.explode", {}))
        assert message["error"] == {"code": -32601, "message": "method not found: 'letter.explode'"}
        assert message["id"] == 1

    async def test_a_blank_line_gets_no_response(self, table: MethodTable) -> None:
        """Whitespace between requests is ignored."""
        assert await table.handle_line(b"   \n") is None


class TestInvalidParams:
    async def test_the_message_lists_each_wrong_field_by_path(self, table: MethodTable) -> None:
        """Nested fields read ``subscribers[1].email``; pydantic's prefixes and urls are gone."""
        params = {"newsletter_id": 1, "subscribers": [{"email": "a@example.org"}, {"email": "nope"}]}
        message = await answer(table, request("subscribers.add", params))
        error = message["error"]
        assert error["code"] == ErrorCode.INVALID_PARAMS
        assert error["message"] == (
            "invalid params for subscribers.add: subscribers[1].email: "
            "expected an email address like name@example.org"
        )
        assert error["data"] == {
            "errors": [
                {
                    "field": "subscribers[1].email",
                    "message": "expected an email address like name@example.org",
                }
            ],
            "error_count": 1,
        }

    async def test_a_long_list_of_errors_is_cut_short(self, table: MethodTable) -> None:
        """The message shows three errors and counts the rest; data holds at most twenty."""
        params = {"letter_id": 1, "recipients": [-1] * 50}
        error = (await answer(table, request("letter.send", params)))["error"]
        assert error["message"].endswith("; and 47 more")
        assert error["message"].count("Input should be greater than 0") == 3
        assert len(error["data"]["errors"]) == 20
        assert error["data"]["error_count"] == 50

    async def test_missing_and_unknown_fields_are_both_reported(self, table: MethodTable) -> None:
        """A misspelt field shows as one missing and one extra."""
        error = (await answer(table, request("letter.status", {"leter_id": 1})))["error"]
        assert "letter_id: Field required" in error["message"]
        assert "leter_id: Extra inputs are not permitted" in error["message"]

    async def test_a_model_level_error_is_reported_against_params(self, table: MethodTable) -> None:
        """A rule over several fields is reported as ``params: ...``."""
        error = (await answer(table, request("system.configure", {})))["error"]
        assert (
            error["message"]
            == "invalid params for system.configure: params: give rate_limit, concurrency or both"
        )

    async def test_params_may_not_be_given_to_a_method_that_takes_none(self, table: MethodTable) -> None:
        """``system.tree`` takes nothing, and says so."""
        error = (await answer(table, request("system.tree", {"verbose": True})))["error"]
        assert error["code"] == ErrorCode.INVALID_PARAMS


class TestValidParams:
    @pytest.mark.parametrize(
        ("method", "params"),
        [
            ("letter.send", {"letter_id": 2**63 - 1}),
            ("letter.send", {"letter_id": 1, "recipients": None}),
            (
                "letter.create",
                {"newsletter_id": 1, "subject": "Hi", "text_body": "x", "send_at": "2030-01-01T09:00Z"},
            ),
            (
                "letter.create",
                {
                    "newsletter_id": 1,
                    "subject": "Grüße",
                    "text_body": "x",
                    "html_body": "<p>x</p>",
                    "send_at": None,
                },
            ),
            (
                "newsletter.create",
                {"owner_email": "me@example.org", "name": "News", "from_address": "n@example.org"},
            ),
            (
                "newsletter.create",
                {
                    "owner_email": "me+tag@mail.example.org",
                    "name": "News",
                    "from_address": "n@localhost",
                    "reply_to": "r@example.org",
                    "unsubscribe_url_template": "https://example.org/u/{token}",
                },
            ),
            (
                "subscribers.add",
                {"newsletter_id": 1, "subscribers": [{"email": "a@b.co", "name": "Ann Smith"}]},
            ),
            ("system.configure", {"rate_limit": 10}),
            ("system.configure", {"rate_limit": 0.5, "concurrency": 1000}),
            ("system.configure", {"concurrency": 1}),
        ],
    )
    async def test_a_valid_request_reaches_the_handler(
        self, table: MethodTable, method: str, params: object
    ) -> None:
        """Boundary values and every optional field are accepted."""
        message = await answer(table, request(method, params))
        assert "result" in message, message

    async def test_send_at_becomes_an_aware_datetime(
        self, table: MethodTable, handlers: FakeHandlers
    ) -> None:
        """The handler gets a ``datetime`` with the offset the client gave."""
        params = {
            "newsletter_id": 1,
            "subject": "Hi",
            "text_body": "x",
            "send_at": "2030-01-01T09:00:00+02:00",
        }
        await answer(table, request("letter.create", params))
        send_at = handlers.calls[0][1].send_at  # type: ignore[attr-defined]
        assert send_at.isoformat() == "2030-01-01T09:00:00+02:00"

    async def test_an_integer_rate_limit_is_a_float(self, table: MethodTable, handlers: FakeHandlers) -> None:
        """JSON does not tell ``10`` from ``10.0``; a rate of 10 is fine."""
        await answer(table, request("system.configure", {"rate_limit": 10}))
        assert handlers.calls[0][1] == SystemConfigureParams(rate_limit=10.0)


class TestErrors:
    async def test_an_rpc_error_from_a_handler_is_sent_as_is(
        self, table: MethodTable, handlers: FakeHandlers
    ) -> None:
        """A handler's RpcError is the client's error: code, message, data."""
        handlers.failures["letter.resume"] = RpcError(
            ErrorCode.CONFLICT, "letter 3 is sent", {"state": "sent"}
        )
        error = (await answer(table, request("letter.resume", {"letter_id": 3})))["error"]
        assert error == {"code": -32002, "message": "letter 3 is sent", "data": {"state": "sent"}}

    async def test_a_crash_is_an_internal_error_without_details(
        self, table: MethodTable, handlers: FakeHandlers
    ) -> None:
        """-32603 says nothing of the exception, but gives the id its logged traceback is under."""
        handlers.failures["system.health"] = RuntimeError("password=hunter2 in /etc/mailman.conf")
        with capture_logs() as logs:
            message = await answer(table, request("system.health"))
        error = message["error"]
        assert error["code"] == ErrorCode.INTERNAL_ERROR
        assert "hunter2" not in json.dumps(message)
        assert "Traceback" not in json.dumps(message)
        [logged] = [entry for entry in logs if entry["event"] == "rpc_internal_error"]
        assert logged["error_id"] == error["data"]["error_id"]
        assert logged["method"] == "system.health"
        assert isinstance(logged["exc_info"], RuntimeError)

    async def test_the_error_mapper_translates_engine_exceptions(self, handlers: FakeHandlers) -> None:
        """An exception the mapper recognises becomes the RpcError it returns."""

        class EngineNotFoundError(LookupError):
            pass

        def mapper(exc: Exception) -> RpcError | None:
            if isinstance(exc, EngineNotFoundError):
                return RpcError(ErrorCode.NOT_FOUND, str(exc))
            return None

        handlers.failures["letter.status"] = EngineNotFoundError("letter 99 does not exist")
        table = MethodTable(handlers, error_mapper=mapper)
        error = (await answer(table, request("letter.status", {"letter_id": 99})))["error"]
        assert error == {"code": -32001, "message": "letter 99 does not exist"}

    async def test_an_exception_the_mapper_declines_is_internal(self, handlers: FakeHandlers) -> None:
        """The mapper returning None leaves the exception an internal error."""
        handlers.failures["letter.status"] = KeyError("x")
        table = MethodTable(handlers, error_mapper=lambda _exc: None)
        with capture_logs():
            error = (await answer(table, request("letter.status", {"letter_id": 1})))["error"]
        assert error["code"] == ErrorCode.INTERNAL_ERROR

    async def test_a_broken_mapper_is_an_internal_error_not_a_crash(self, handlers: FakeHandlers) -> None:
        """A mapper that raises is logged; the client still gets -32603."""

        def broken(_exc: Exception) -> RpcError | None:
            raise ZeroDivisionError

        handlers.failures["letter.status"] = KeyError("x")
        table = MethodTable(handlers, error_mapper=broken)
        with capture_logs() as logs:
            error = (await answer(table, request("letter.status", {"letter_id": 1})))["error"]
        assert error["code"] == ErrorCode.INTERNAL_ERROR
        assert any(entry["event"] == "rpc_error_mapper_failed" for entry in logs)

    async def test_a_result_that_is_not_a_mapping_is_an_internal_error(self, handlers: FakeHandlers) -> None:
        """A handler must return a mapping; anything else is the daemon's bug."""

        class ReturnsList(FakeHandlers):
            async def system_tree(self, params: Any) -> Any:
                return ["not", "a", "mapping"]

        table = MethodTable(ReturnsList())
        with capture_logs():
            error = (await answer(table, request("system.tree")))["error"]
        assert error["code"] == ErrorCode.INTERNAL_ERROR

    async def test_a_result_that_is_not_json_is_an_internal_error(self) -> None:
        """A result holding a non-JSON value cannot be sent; the client gets -32603 for its id."""

        class ReturnsObject(FakeHandlers):
            async def system_tree(self, params: Any) -> Any:
                return {"tree": object()}

        table = MethodTable(ReturnsObject())
        with capture_logs():
            message = await answer(table, request("system.tree", request_id=77))
        assert message["error"]["code"] == ErrorCode.INTERNAL_ERROR
        assert message["id"] == 77

    async def test_an_error_mappers_unserialisable_data_is_an_internal_error(
        self, handlers: FakeHandlers
    ) -> None:
        """Even an RpcError whose data is not JSON still produces a valid response line."""
        handlers.failures["letter.status"] = RpcError(ErrorCode.CONFLICT, "x", {"bad": {1, 2}})
        table = MethodTable(handlers)
        with capture_logs():
            message = await answer(table, request("letter.status", {"letter_id": 1}))
        assert message["error"]["code"] == ErrorCode.INTERNAL_ERROR


def test_letter_status_params_name_the_letter() -> None:
    """The params models can be built directly, for callers in the same process."""
    assert LetterStatusParams(letter_id=3).letter_id == 3
