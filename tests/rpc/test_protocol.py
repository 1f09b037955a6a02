"""The wire protocol, as pure functions: every way a line can be wrong, and how responses look."""

from __future__ import annotations

import json

import pytest

from mailman.rpc import (
    MAX_LINE_BYTES,
    ErrorCode,
    Request,
    Response,
    RpcError,
    encode_response,
    line_too_long,
    parse_request,
)


def error_of(line: bytes) -> RpcError:
    parsed = parse_request(line)
    assert isinstance(parsed, Response), f"expected an error response, got {parsed!r}"
    assert parsed.error is not None
    return parsed.error


class TestParseRequest:
    def test_a_request_with_named_params(self) -> None:
        """A well-formed request becomes a Request with its method, params and id."""
        line = b'{"jsonrpc": "2.0", "id": 4, "method": "letter.status", "params": {"letter_id": 9}}\n'
        assert parse_request(line) == Request("letter.status", {"letter_id": 9}, 4)

    def test_a_request_with_positional_params(self) -> None:
        """Params may be an array."""
        parsed = parse_request(b'{"jsonrpc": "2.0", "id": "a", "method": "letter.status", "params": [9]}')
        assert parsed == Request("letter.status", [9], "a")

    def test_params_may_be_left_out(self) -> None:
        """A request without params has params None."""
        parsed = parse_request(b'{"jsonrpc": "2.0", "id": 1, "method": "system.health"}')
        assert parsed == Request("system.health", None, 1)

    def test_a_request_without_id_is_a_notification(self) -> None:
        """No ``id`` member: a notification, which gets no response."""
        parsed = parse_request(b'{"jsonrpc": "2.0", "method": "system.health"}')
        assert isinstance(parsed, Request)
        assert parsed.notification

    def test_a_null_id_is_a_request_not_a_notification(self) -> None:
        """``"id": null`` is allowed (if discouraged) and is answered."""
        parsed = parse_request(b'{"jsonrpc": "2.0", "id": null, "method": "system.health"}')
        assert isinstance(parsed, Request)
        assert not parsed.notification
        assert parsed.id is None

    @pytest.mark.parametrize("line", [b"", b"\n", b"  \r\n", b"\t"])
    def test_a_blank_line_is_ignored(self, line: bytes) -> None:
        """A line of whitespace is neither a request nor an error."""
        assert parse_request(line) is None

    def test_a_crlf_line_ending_is_tolerated(self) -> None:
        """``\\r\\n`` ends a line as well as ``\\n``."""
        parsed = parse_request(b'{"jsonrpc": "2.0", "id": 1, "method": "system.tree"}\r\n')
        assert isinstance(parsed, Request)

    def test_unknown_members_are_ignored(self) -> None:
        """Members other than the four JSON-RPC defines do not make a request invalid."""
        parsed = parse_request(b'{"jsonrpc": "2.0", "id": 1, "method": "system.tree", "trace": "x"}')
        assert parsed == Request("system.tree", None, 1)


class TestParseErrors:
    @pytest.mark.parametrize(
        "line",
        [b"{", b"not json", b'{"jsonrpc": "2.0",}', b"[1, 2", b'"unterminated', b"{'single': 'quotes'}"],
    )
    def test_malformed_json_is_a_parse_error(self, line: bytes) -> None:
        """Anything that is not JSON is answered -32700 with a null id."""
        parsed = parse_request(line)
        assert isinstance(parsed, Response)
        assert parsed.id is None
        assert parsed.error is not None
        assert parsed.error.code == ErrorCode.PARSE_ERROR

    def test_bytes_that_are_not_utf8_are_a_parse_error(self) -> None:
        """Lines must be UTF-8."""
        error = error_of(b'{"jsonrpc": "2.0", "method": "\xff\xfe"}')
        assert error.code == ErrorCode.PARSE_ERROR
        assert "UTF-8" in error.message

    @pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
    def test_nan_and_infinity_are_parse_errors(self, constant: bytes) -> None:
        """Python's JSON extensions are not JSON."""
        line = b'{"jsonrpc": "2.0", "id": 1, "method": "x", "params": [' + constant + b"]}"
        assert error_of(line).code == ErrorCode.PARSE_ERROR

    def test_nesting_deep_enough_to_exhaust_the_parser_is_a_parse_error(self) -> None:
        """A megabyte of ``[`` does not crash the parser's caller."""
        error = error_of(b"[" * 200_000 + b"]" * 200_000)
        assert error.code == ErrorCode.PARSE_ERROR

    def test_an_integer_longer_than_pythons_limit_is_a_parse_error(self) -> None:
        """An id of 5,000 digits is refused rather than raising out of the parser."""
        line = b'{"jsonrpc": "2.0", "method": "x", "id": ' + b"9" * 5000 + b"}"
        assert error_of(line).code == ErrorCode.PARSE_ERROR


class TestInvalidRequests:
    @pytest.mark.parametrize("line", [b"1", b'"text"', b"null", b"true", b"3.5"])
    def test_a_value_that_is_not_an_object_is_invalid(self, line: bytes) -> None:
        """A request must be a JSON object."""
        error = error_of(line)
        assert error.code == ErrorCode.INVALID_REQUEST
        assert "expected a JSON object" in error.message

    @pytest.mark.parametrize("line", [b"[]", b'[{"jsonrpc": "2.0", "id": 1, "method": "system.tree"}]'])
    def test_a_batch_is_declined(self, line: bytes) -> None:
        """Batches (arrays) are answered -32600 with an explanation."""
        error = error_of(line)
        assert error.code == ErrorCode.INVALID_REQUEST
        assert error.message == "batch requests are not supported: send one request per line"

    @pytest.mark.parametrize("version", ['"1.0"', "2.0", "null", '"2"'])
    def test_a_wrong_jsonrpc_version_is_invalid(self, version: str) -> None:
        """``jsonrpc`` must be the string ``"2.0"``; the error keeps the request's id."""
        parsed = parse_request(f'{{"jsonrpc": {version}, "id": 8, "method": "system.tree"}}'.encode())
        assert isinstance(parsed, Response)
        assert parsed.error is not None
        assert parsed.error.code == ErrorCode.INVALID_REQUEST
        assert parsed.id == 8

    def test_a_missing_jsonrpc_member_is_invalid(self) -> None:
        """JSON-RPC 1.0 style requests (no ``jsonrpc``) are refused."""
        assert error_of(b'{"id": 1, "method": "system.tree"}').code == ErrorCode.INVALID_REQUEST

    @pytest.mark.parametrize("request_id", ["1.5", "true", "[1]", '{"a": 1}'])
    def test_a_bad_id_type_is_invalid_and_answered_with_a_null_id(self, request_id: str) -> None:
        """Ids are strings, integers or null; anything else cannot be echoed back."""
        parsed = parse_request(f'{{"jsonrpc": "2.0", "id": {request_id}, "method": "x"}}'.encode())
        assert isinstance(parsed, Response)
        assert parsed.error is not None
        assert parsed.error.code == ErrorCode.INVALID_REQUEST
        assert parsed.id is None

    @pytest.mark.parametrize("method", ["1", "null", "[]", "{}", "true"])
    def test_a_method_that_is_not_a_string_is_invalid(self, method: str) -> None:
        """``method`` must be a string."""
        error = error_of(f'{{"jsonrpc": "2.0", "id": 1, "method": {method}}}'.encode())
        assert error.code == ErrorCode.INVALID_REQUEST
        assert '"method" must be a string' in error.message

    def test_a_missing_method_is_invalid(self) -> None:
        """A request needs a method."""
        assert error_of(b'{"jsonrpc": "2.0", "id": 1}').code == ErrorCode.INVALID_REQUEST

    @pytest.mark.parametrize("params", ["1", '"x"', "null", "true"])
    def test_params_that_are_not_structured_are_invalid(self, params: str) -> None:
        """``params`` must be an object or an array when present."""
        error = error_of(f'{{"jsonrpc": "2.0", "id": 1, "method": "x", "params": {params}}}'.encode())
        assert error.code == ErrorCode.INVALID_REQUEST
        assert '"params" must be an object or an array' in error.message

    def test_an_invalid_notification_is_still_answered(self) -> None:
        """Without a valid request there is no notification: the error is sent (with a null id)."""
        parsed = parse_request(b'{"jsonrpc": "2.0", "method": 5}')
        assert isinstance(parsed, Response)
        assert parsed.id is None

    def test_an_oversized_line_has_its_own_answer(self) -> None:
        """The answer to a line over 1 MiB names the limit."""
        response = line_too_long()
        assert response.error is not None
        assert response.error.code == ErrorCode.INVALID_REQUEST
        assert response.error.message == "request line exceeds 1 MiB"
        assert MAX_LINE_BYTES == 1024 * 1024


class TestEncodeResponse:
    def test_a_success_is_one_compact_line(self) -> None:
        """A result is sent as ``{"jsonrpc", "result", "id"}`` on one line."""
        line = encode_response(Response.success(3, {"state": "sent"}))
        assert line == b'{"jsonrpc":"2.0","result":{"state":"sent"},"id":3}\n'

    def test_an_error_carries_code_message_and_data(self) -> None:
        """An error is sent as ``{"jsonrpc", "error": {code, message, data}, "id"}``."""
        error = RpcError(ErrorCode.NOT_FOUND, "letter 5 does not exist", {"letter_id": 5})
        message = json.loads(encode_response(Response.failure("x", error)))
        assert message == {
            "jsonrpc": "2.0",
            "error": {"code": -32001, "message": "letter 5 does not exist", "data": {"letter_id": 5}},
            "id": "x",
        }

    def test_an_error_without_data_has_no_data_member(self) -> None:
        """``data`` is left out rather than sent as null."""
        message = json.loads(encode_response(Response.failure(None, RpcError(-32000, "busy"))))
        assert "data" not in message["error"]

    def test_newlines_and_non_ascii_text_never_break_the_line(self) -> None:
        """Everything but printable ASCII is escaped: one response is always exactly one line."""
        line = encode_response(Response.success(1, {"subject": "Grüße\nund \u2028 mehr \ud800"}))
        assert line.count(b"\n") == 1
        assert line.endswith(b"\n")
        assert line.isascii()

    def test_a_result_that_is_not_json_raises(self) -> None:
        """Encoding a non-JSON-able result raises TypeError (the caller answers internal error)."""
        with pytest.raises(TypeError):
            encode_response(Response.success(1, {"when": object()}))


class TestRpcError:
    def test_application_codes_are_in_the_server_error_range(self) -> None:
        """The application's own codes sit in -32000..-32099, as JSON-RPC reserves for servers."""
        application = [
            ErrorCode.NOT_FOUND,
            ErrorCode.CONFLICT,
            ErrorCode.UNAVAILABLE,
            ErrorCode.PERMISSION_DENIED,
        ]
        assert all(-32099 <= code <= -32000 for code in application)

    def test_a_code_must_be_an_int(self) -> None:
        """Misuse raises at once: a bool or a string is not an error code."""
        with pytest.raises(TypeError, match="expected an int error code"):
            RpcError(True, "x")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="expected an int error code"):
            RpcError("-32001", "x")  # type: ignore[arg-type]

    def test_its_attributes_hold_the_data(self) -> None:
        """``code``, ``message`` and ``data`` are attributes, and ``code`` is a plain int."""
        error = RpcError(ErrorCode.CONFLICT, "already sent", {"state": "sent"})
        assert (error.code, error.message, error.data) == (-32002, "already sent", {"state": "sent"})
        assert type(error.code) is int
