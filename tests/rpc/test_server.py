"""RpcServer on a real Unix socket: round trips, bad input, limits, concurrency, the socket file,
peer credentials, crashes and shutdown."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from mailman import supervisor as otp
from mailman.client import Client, ConnectionLostError, DaemonNotRunningError, RpcRemoteError
from mailman.rpc import (
    MAX_LINE_BYTES,
    AlreadyRunningError,
    ErrorCode,
    LetterCancelParams,
    LetterCreateParams,
    LetterPauseParams,
    LetterResumeParams,
    LetterRetryFailedParams,
    LetterSendParams,
    LetterStatusParams,
    NewsletterCreateParams,
    Params,
    PeerCredentials,
    RpcError,
    RpcServer,
    RpcServerConfig,
    RpcServerError,
    SubscriberParams,
    SubscribersAddParams,
    SystemConfigureParams,
    SystemHealthParams,
    SystemTreeParams,
    parse_peer_credentials,
    peer_allowed,
)
from tests.rpc.conftest import FakeHandlers, RawConnection, exists
from tests.supervisor.processes import WAIT

ClientCall = Callable[[Client], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class RoundTrip:
    """A client call, the handler call and params it must cause, and the result it must return."""

    call: ClientCall
    method: str
    params: Params
    result: dict[str, Any]


def valid_request(request_id: object = "probe", letter_id: int = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "method": "letter.status", "params": {"letter_id": letter_id}}


async def start_server(path: Path, handlers: FakeHandlers, **options: Any) -> otp.Pid:
    return await RpcServer.start(RpcServerConfig(socket_path=path, handlers=handlers, **options))


def precious(path: Path, *, write: bool = True) -> str:
    """Write (or read back) a regular file that must survive: synchronous, as a local file op is."""
    if write:
        path.write_text("precious")
    return path.read_text()


def crash_of(error: otp.StartError) -> BaseException:
    assert isinstance(error.reason, otp.Crash), error.reason
    return error.reason.exception


class TestRoundTrip:
    SEND_AT = datetime(2030, 5, 17, 9, 30, tzinfo=UTC)

    @pytest.mark.parametrize(
        "case",
        [
            RoundTrip(
                lambda c: c.letter_send(4),
                "letter.send",
                LetterSendParams(letter_id=4),
                {"letter_id": 4, "state": "sending"},
            ),
            RoundTrip(
                lambda c: c.letter_send(4, recipients=[10, 11]),
                "letter.send",
                LetterSendParams(letter_id=4, recipients=[10, 11]),
                {"letter_id": 4, "state": "sending"},
            ),
            RoundTrip(
                lambda c: c.letter_status(4),
                "letter.status",
                LetterStatusParams(letter_id=4),
                {
                    "letter_id": 4,
                    "state": "sending",
                    "counts": {"pending": 3, "sending": 1, "delivered": 5, "failed": 0, "skipped": 1},
                },
            ),
            RoundTrip(
                lambda c: c.letter_pause(4),
                "letter.pause",
                LetterPauseParams(letter_id=4),
                {"letter_id": 4, "state": "paused"},
            ),
            RoundTrip(
                lambda c: c.letter_resume(4),
                "letter.resume",
                LetterResumeParams(letter_id=4),
                {"letter_id": 4, "state": "sending"},
            ),
            RoundTrip(
                lambda c: c.letter_cancel(4),
                "letter.cancel",
                LetterCancelParams(letter_id=4),
                {"letter_id": 4, "state": "cancelled"},
            ),
            RoundTrip(
                lambda c: c.letter_retry_failed(4),
                "letter.retry_failed",
                LetterRetryFailedParams(letter_id=4),
                {"letter_id": 4, "state": "sending", "retried": 2},
            ),
            RoundTrip(
                lambda c: c.letter_create(
                    7, "Issue 1", "Hello", html_body="<p>Hello</p>", send_at=TestRoundTrip.SEND_AT
                ),
                "letter.create",
                LetterCreateParams(
                    newsletter_id=7,
                    subject="Issue 1",
                    text_body="Hello",
                    html_body="<p>Hello</p>",
                    send_at=SEND_AT,
                ),
                {"letter_id": 41, "state": "scheduled"},
            ),
            RoundTrip(
                lambda c: c.letter_create(7, "Issue 1", "Hello"),
                "letter.create",
                LetterCreateParams(newsletter_id=7, subject="Issue 1", text_body="Hello"),
                {"letter_id": 41, "state": "draft"},
            ),
            RoundTrip(
                lambda c: c.newsletter_create(
                    "owner@example.org",
                    "Weekly",
                    "news@example.org",
                    reply_to="reply@example.org",
                    unsubscribe_url_template="https://example.org/u/{token}",
                ),
                "newsletter.create",
                NewsletterCreateParams(
                    owner_email="owner@example.org",
                    name="Weekly",
                    from_address="news@example.org",
                    reply_to="reply@example.org",
                    unsubscribe_url_template="https://example.org/u/{token}",
                ),
                {"newsletter_id": 7, "user_id": 3},
            ),
            RoundTrip(
                lambda c: c.subscribers_add(7, ["a@example.org", {"email": "b@example.org", "name": "Bea"}]),
                "subscribers.add",
                SubscribersAddParams(
                    newsletter_id=7,
                    subscribers=[
                        SubscriberParams(email="a@example.org"),
                        SubscriberParams(email="b@example.org", name="Bea"),
                    ],
                ),
                {"newsletter_id": 7, "added": 2, "existing": 0},
            ),
            RoundTrip(
                lambda c: c.system_tree(),
                "system.tree",
                SystemTreeParams(),
                {"tree": {"id": "Application", "pid": "<0.1.0>", "type": "supervisor", "children": []}},
            ),
            RoundTrip(
                lambda c: c.system_health(),
                "system.health",
                SystemHealthParams(),
                {"status": "ok", "checks": {"database": "ok"}},
            ),
            RoundTrip(
                lambda c: c.system_configure(rate_limit=12.5, concurrency=20),
                "system.configure",
                SystemConfigureParams(rate_limit=12.5, concurrency=20),
                {"rate_limit": 12.5, "concurrency": 20},
            ),
        ],
        ids=lambda case: case.method,
    )
    async def test_every_method_round_trips_through_the_client(
        self,
        server: otp.Pid,
        socket_path: Path,
        handlers: FakeHandlers,
        case: RoundTrip,
    ) -> None:
        """The client's typed method reaches the handler with the validated model, and returns its result."""
        async with Client(socket_path) as client:
            assert await case.call(client) == case.result
        assert handlers.calls == [(case.method, case.params)]

    async def test_the_generic_call_reaches_any_method(
        self, server: otp.Pid, socket_path: Path, handlers: FakeHandlers
    ) -> None:
        """``client.call(method, params)`` is the untyped way to the same handlers."""
        async with Client(socket_path) as client:
            assert await client.call("letter.pause", {"letter_id": 8}) == {"letter_id": 8, "state": "paused"}
        assert handlers.calls == [("letter.pause", LetterPauseParams(letter_id=8))]

    async def test_requests_on_one_connection_are_answered_in_order(self, raw: RawConnection) -> None:
        """Several requests written at once come back in the order they were sent."""
        await raw.send(b"".join(json.dumps(valid_request(n, n)).encode() + b"\n" for n in range(1, 21)))
        answers = [await raw.receive() for _ in range(20)]
        assert [message["id"] for message in answers] == list(range(1, 21))
        assert [message["result"]["letter_id"] for message in answers] == list(range(1, 21))


class TestBadInput:
    async def test_malformed_json_is_answered_and_the_connection_stays_open(self, raw: RawConnection) -> None:
        """A parse error does not end the connection: the next request is served."""
        await raw.send(b'{"jsonrpc": "2.0", "id": 1, "method": \n')
        error = await raw.receive()
        assert error["error"]["code"] == ErrorCode.PARSE_ERROR
        assert error["id"] is None
        assert "result" in await raw.request(valid_request())

    async def test_an_unknown_method_is_not_found(self, raw: RawConnection) -> None:
        """-32601 for a method the daemon does not have."""
        message = await raw.request({"jsonrpc": "2.0", "id": 5, "method": "letter.destroy", "params": {}})
        assert message == {
            "jsonrpc": "2.0",
            "error": {"code": -32601, "message": "method not found: 'letter.destroy'"},
            "id": 5,
        }

    async def test_a_batch_is_declined(self, raw: RawConnection) -> None:
        """An array of requests is answered with one -32600 error."""
        message = await raw.request([valid_request(1), valid_request(2)])
        assert message["error"]["code"] == ErrorCode.INVALID_REQUEST
        assert "batch" in message["error"]["message"]

    async def test_a_notification_is_not_answered(self, raw: RawConnection, handlers: FakeHandlers) -> None:
        """The next line read answers the request after the notification."""
        await raw.send_json({"jsonrpc": "2.0", "method": "letter.pause", "params": {"letter_id": 1}})
        message = await raw.request(valid_request("after"))
        assert message["id"] == "after"
        assert [method for method, _ in handlers.calls] == ["letter.pause", "letter.status"]

    async def test_a_last_request_without_newline_is_answered_at_end_of_input(
        self, raw: RawConnection
    ) -> None:
        """A client that shuts down its side after a request without ``\\n`` still gets the answer."""
        await raw.send(json.dumps(valid_request("last")).encode())
        raw.writer.write_eof()
        assert (await raw.receive())["id"] == "last"
        assert await raw.closed_by_server()

    @pytest.mark.parametrize(
        ("method", "params", "field"),
        [
            ("letter.send", {}, "letter_id"),
            ("letter.send", {"letter_id": 0}, "letter_id"),
            ("letter.send", {"letter_id": -3}, "letter_id"),
            ("letter.send", {"letter_id": "5"}, "letter_id"),
            ("letter.send", {"letter_id": 5.0}, "letter_id"),
            ("letter.send", {"letter_id": True}, "letter_id"),
            ("letter.send", {"letter_id": 2**63}, "letter_id"),
            ("letter.send", {"letter_id": 1, "recipients": []}, "recipients"),
            ("letter.send", {"letter_id": 1, "recipients": [1, 0]}, "recipients[1]"),
            ("letter.send", {"letter_id": 1, "recipients": "1,2"}, "recipients"),
            ("letter.send", {"letter_id": 1, "extra": 1}, "extra"),
            ("letter.status", {"letter_id": None}, "letter_id"),
            ("letter.pause", {"letter": 1}, "letter_id"),
            ("letter.resume", {"letter_id": [1]}, "letter_id"),
            ("letter.cancel", {"letter_id": {"id": 1}}, "letter_id"),
            ("letter.retry_failed", {"letter_id": -1}, "letter_id"),
            ("newsletter.create", {"name": "N", "from_address": "a@example.org"}, "owner_email"),
            (
                "newsletter.create",
                {"owner_email": "nobody", "name": "N", "from_address": "a@example.org"},
                "owner_email",
            ),
            (
                "newsletter.create",
                {"owner_email": "a@example.org", "name": "", "from_address": "a@example.org"},
                "name",
            ),
            (
                "newsletter.create",
                {"owner_email": "a@example.org", "name": "  ", "from_address": "a@example.org"},
                "name",
            ),
            (
                "newsletter.create",
                {
                    "owner_email": "a@example.org",
                    "name": "N\r\nBcc: x@evil.test",
                    "from_address": "a@example.org",
                },
                "name",
            ),
            (
                "newsletter.create",
                {"owner_email": "a@example.org", "name": "N", "from_address": "a b@example.org"},
                "from_address",
            ),
            (
                "newsletter.create",
                {
                    "owner_email": "a@example.org",
                    "name": "N",
                    "from_address": "a@example.org",
                    "reply_to": "@x",
                },
                "reply_to",
            ),
            (
                "newsletter.create",
                {
                    "owner_email": "a@example.org",
                    "name": "N",
                    "from_address": "a@example.org",
                    "unsubscribe_url_template": "https://example.org/unsubscribe",
                },
                "unsubscribe_url_template",
            ),
            ("subscribers.add", {"newsletter_id": 1, "subscribers": []}, "subscribers"),
            ("subscribers.add", {"newsletter_id": 1, "subscribers": ["a@example.org"]}, "subscribers[0]"),
            ("subscribers.add", {"newsletter_id": 1, "subscribers": [{"name": "A"}]}, "subscribers[0].email"),
            (
                "subscribers.add",
                {"newsletter_id": 1, "subscribers": [{"email": "a@example.org", "name": "A\nB"}]},
                "subscribers[0].name",
            ),
            (
                "subscribers.add",
                {"newsletter_id": 1, "subscribers": [{"email": "a@example.org", "vip": True}]},
                "subscribers[0].vip",
            ),
            ("subscribers.add", {"subscribers": [{"email": "a@example.org"}]}, "newsletter_id"),
            ("letter.create", {"newsletter_id": 1, "text_body": "x"}, "subject"),
            ("letter.create", {"newsletter_id": 1, "subject": "", "text_body": "x"}, "subject"),
            ("letter.create", {"newsletter_id": 1, "subject": "a\nb", "text_body": "x"}, "subject"),
            ("letter.create", {"newsletter_id": 1, "subject": "s", "text_body": ""}, "text_body"),
            (
                "letter.create",
                {"newsletter_id": 1, "subject": "s", "text_body": "x", "html_body": 3},
                "html_body",
            ),
            (
                "letter.create",
                {"newsletter_id": 1, "subject": "s", "text_body": "x", "send_at": "2030-01-01T09:00:00"},
                "send_at",
            ),
            (
                "letter.create",
                {"newsletter_id": 1, "subject": "s", "text_body": "x", "send_at": "tomorrow"},
                "send_at",
            ),
            (
                "letter.create",
                {"newsletter_id": 1, "subject": "s", "text_body": "x", "send_at": 1893456000},
                "send_at",
            ),
            ("system.tree", {"depth": 2}, "depth"),
            ("system.health", {"deep": True}, "deep"),
            ("system.configure", {}, "params"),
            ("system.configure", {"rate_limit": 0}, "rate_limit"),
            ("system.configure", {"rate_limit": -1.5}, "rate_limit"),
            ("system.configure", {"rate_limit": "fast"}, "rate_limit"),
            ("system.configure", {"concurrency": 0}, "concurrency"),
            ("system.configure", {"concurrency": 1001}, "concurrency"),
            ("system.configure", {"concurrency": 2.5}, "concurrency"),
        ],
    )
    async def test_bad_params_are_invalid_params_naming_the_field(
        self, raw: RawConnection, handlers: FakeHandlers, method: str, params: dict[str, Any], field: str
    ) -> None:
        """Each listed mistake is answered -32602 with the field's path, and no handler runs."""
        message = await raw.request({"jsonrpc": "2.0", "id": 9, "method": method, "params": params})
        error = message["error"]
        assert error["code"] == ErrorCode.INVALID_PARAMS
        assert error["message"].startswith(f"invalid params for {method}: ")
        assert field in [entry["field"] for entry in error["data"]["errors"]]
        assert f"{field}: " in error["message"]
        assert handlers.calls == []


class TestOversizedLines:
    async def test_a_line_over_1_mib_is_answered_and_that_connection_closed(self, raw: RawConnection) -> None:
        """One error line, then the server hangs up on that connection."""
        await raw.send(b"x" * (MAX_LINE_BYTES + 1) + b"\n")
        message = await raw.receive()
        assert message == {
            "jsonrpc": "2.0",
            "error": {"code": -32600, "message": "request line exceeds 1 MiB"},
            "id": None,
        }
        assert await raw.closed_by_server()

    async def test_a_line_over_1_mib_without_newline_is_refused_as_well(self, raw: RawConnection) -> None:
        """The server does not wait for a newline that would take it past the limit."""
        await raw.send(b"{" * (MAX_LINE_BYTES + 10))
        assert (await raw.receive())["error"]["message"] == "request line exceeds 1 MiB"
        assert await raw.closed_by_server()

    async def test_after_an_oversized_line_a_new_connection_works(
        self, raw: RawConnection, server: otp.Pid, socket_path: Path
    ) -> None:
        """Only the offending connection ends; the daemon keeps serving."""
        await raw.send(b" " * (2 * MAX_LINE_BYTES) + b"\n")
        await raw.receive()
        assert await raw.closed_by_server()
        async with Client(socket_path) as client:
            assert (await client.letter_status(1))["letter_id"] == 1
        assert otp.is_alive(server)

    async def test_a_line_of_exactly_1_mib_is_accepted(self, raw: RawConnection) -> None:
        """The limit counts the bytes before the newline: 1 MiB of them is fine."""
        body = json.dumps(valid_request("big")).encode()
        await raw.send(body + b" " * (MAX_LINE_BYTES - len(body)) + b"\n")
        assert (await raw.receive())["id"] == "big"


class TestConcurrency:
    async def test_fifty_clients_are_served_at_once(
        self, server: otp.Pid, socket_path: Path, handlers: FakeHandlers
    ) -> None:
        """Each handler waits until all fifty requests are in flight: served one by one, none would end."""
        handlers.barrier = asyncio.Barrier(50)

        async def one_client(letter_id: int) -> dict[str, Any]:
            async with Client(socket_path) as client:
                return await client.letter_status(letter_id)

        async with asyncio.timeout(WAIT):
            results = await asyncio.gather(*(one_client(n) for n in range(1, 51)))
        assert [result["letter_id"] for result in results] == list(range(1, 51))

    async def test_many_clients_with_many_requests_each_get_their_own_answers(
        self, server: otp.Pid, socket_path: Path
    ) -> None:
        """Fifty clients sending ten requests each never see another's answer."""

        async def one_client(client_number: int) -> list[int]:
            async with Client(socket_path) as client:
                return [(await client.letter_status(client_number * 100 + n))["letter_id"] for n in range(10)]

        results = await asyncio.gather(*(one_client(n) for n in range(1, 51)))
        assert results == [[n * 100 + i for i in range(10)] for n in range(1, 51)]


class TestSocketFile:
    async def test_the_socket_is_mode_0600(self, server: otp.Pid, socket_path: Path) -> None:
        """Only the daemon's user may open the socket file."""
        mode = os.stat(socket_path).st_mode
        assert stat.S_ISSOCK(mode)
        assert stat.S_IMODE(mode) == 0o600

    async def test_starting_leaves_the_process_umask_as_it_was(
        self, socket_path: Path, handlers: FakeHandlers
    ) -> None:
        """The restrictive umask lasts only for the bind."""
        before = os.umask(0o022)
        try:
            pid = await start_server(socket_path, handlers)
            assert os.umask(0o022) == 0o022
        finally:
            os.umask(before)
        await otp.GenServer.stop(pid)

    async def test_a_stale_socket_file_is_replaced(self, socket_path: Path, handlers: FakeHandlers) -> None:
        """A socket file nobody listens on (a daemon that died) is removed and bound afresh."""
        leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        leftover.bind(os.fspath(socket_path))
        leftover.close()
        assert exists(socket_path)
        pid = await start_server(socket_path, handlers)
        try:
            async with Client(socket_path) as client:
                assert (await client.system_health())["status"] == "ok"
        finally:
            await otp.GenServer.stop(pid)

    async def test_a_second_server_on_a_live_socket_refuses_to_start(
        self, server: otp.Pid, socket_path: Path, handlers: FakeHandlers
    ) -> None:
        """The start fails with "another mailman is already running", and the first keeps serving."""
        with pytest.raises(otp.StartError) as caught:
            await start_server(socket_path, FakeHandlers())
        error = crash_of(caught.value)
        assert isinstance(error, AlreadyRunningError)
        assert str(error) == f"another mailman is already running on {socket_path}"
        async with Client(socket_path) as client:
            assert (await client.system_health())["status"] == "ok"

    async def test_a_file_that_is_not_a_socket_is_left_alone(
        self, socket_path: Path, handlers: FakeHandlers
    ) -> None:
        """A regular file at the path is never deleted: the start fails instead."""
        precious(socket_path)
        with pytest.raises(otp.StartError) as caught:
            await start_server(socket_path, handlers)
        error = crash_of(caught.value)
        assert isinstance(error, RpcServerError)
        assert "is not a socket" in str(error)
        assert precious(socket_path, write=False) == "precious"

    async def test_a_missing_directory_is_a_clear_start_error(
        self, tmp_path: Path, handlers: FakeHandlers
    ) -> None:
        """The error names the path it could not listen on."""
        path = tmp_path / "missing" / "mailman.sock"
        with pytest.raises(otp.StartError) as caught:
            await start_server(path, handlers)
        error = crash_of(caught.value)
        assert isinstance(error, RpcServerError)
        assert str(path) in str(error)

    async def test_info_reports_the_path_and_open_connections(
        self, server: otp.Pid, socket_path: Path, raw: RawConnection
    ) -> None:
        """``RpcServer.info`` counts the connections being served."""
        await raw.request(valid_request())
        info = await RpcServer.info(server)
        assert info.socket_path == socket_path
        assert info.connections == 1


class TestPeerCredentials:
    def test_the_daemons_own_uid_is_allowed(self) -> None:
        """A peer running as the daemon's user may connect."""
        assert peer_allowed(1000, own_uid=1000)

    def test_another_uid_is_refused(self) -> None:
        """A peer running as anyone else may not, root included."""
        assert not peer_allowed(1001, own_uid=1000)
        assert not peer_allowed(0, own_uid=1000)

    def test_an_allowed_uid_is_admitted(self) -> None:
        """The allow-list admits other users explicitly."""
        assert peer_allowed(33, own_uid=1000, allowed_uids=frozenset({33}))
        assert not peer_allowed(34, own_uid=1000, allowed_uids=frozenset({33}))

    def test_so_peercred_is_decoded_as_pid_uid_gid(self) -> None:
        """The kernel's ``struct ucred`` is three native ints."""
        assert parse_peer_credentials(struct.pack("3i", 4242, 1000, 100)) == PeerCredentials(
            pid=4242, uid=1000, gid=100
        )

    async def test_a_refused_peer_gets_one_error_line_and_is_disconnected(
        self, socket_path: Path, handlers: FakeHandlers, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A daemon running as another user answers "permission denied: uid N" and hangs up."""
        my_uid = os.geteuid()
        with monkeypatch.context() as patch:
            patch.setattr(os, "geteuid", lambda: my_uid + 4321)
            pid = await start_server(socket_path, handlers)
        try:
            connection = await RawConnection.open(socket_path)
            with capture_logs():
                message = await connection.receive()
                assert await connection.closed_by_server()
            await connection.close()
            assert message == {
                "jsonrpc": "2.0",
                "error": {"code": -32004, "message": f"permission denied: uid {my_uid}"},
                "id": None,
            }
            assert handlers.calls == []
        finally:
            await otp.GenServer.stop(pid)

    async def test_the_client_reports_the_refusal_as_a_remote_error(
        self, socket_path: Path, handlers: FakeHandlers, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """``Client`` raises RpcRemoteError with PERMISSION_DENIED on its first call."""
        with monkeypatch.context() as patch:
            patch.setattr(os, "geteuid", lambda: os.getuid() + 4321)
            pid = await start_server(socket_path, handlers)
        try:
            with capture_logs():
                async with Client(socket_path) as client:
                    with pytest.raises(RpcRemoteError) as caught:
                        await client.system_health()
            assert caught.value.code == ErrorCode.PERMISSION_DENIED
        finally:
            await otp.GenServer.stop(pid)

    async def test_a_peer_on_the_allow_list_is_served(
        self, socket_path: Path, handlers: FakeHandlers, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A daemon running as another user serves the uids it was told to allow."""
        my_uid = os.geteuid()
        with monkeypatch.context() as patch:
            patch.setattr(os, "geteuid", lambda: my_uid + 4321)
            pid = await start_server(socket_path, handlers, allowed_uids=frozenset({my_uid}))
        try:
            async with Client(socket_path) as client:
                assert (await client.system_health())["status"] == "ok"
        finally:
            await otp.GenServer.stop(pid)

    def test_allowed_uids_must_be_user_ids(self, socket_path: Path, handlers: FakeHandlers) -> None:
        """Misuse raises at once: a negative or non-integer uid is refused."""
        with pytest.raises(ValueError, match="allowed_uids"):
            RpcServerConfig(socket_path=socket_path, handlers=handlers, allowed_uids=frozenset({-1}))
        with pytest.raises(ValueError, match="allowed_uids"):
            RpcServerConfig(socket_path=socket_path, handlers=handlers, allowed_uids=frozenset({"root"}))  # type: ignore[arg-type]


class TestResilience:
    async def test_a_handler_exception_is_an_internal_error_and_the_server_keeps_serving(
        self, server: otp.Pid, socket_path: Path, handlers: FakeHandlers
    ) -> None:
        """-32603 without details; the same connection and the server carry on."""
        handlers.failures["letter.cancel"] = ZeroDivisionError("secret detail")
        async with Client(socket_path) as client:
            with capture_logs() as logs, pytest.raises(RpcRemoteError) as caught:
                await client.letter_cancel(3)
            assert caught.value.code == ErrorCode.INTERNAL_ERROR
            assert "secret" not in caught.value.message
            assert caught.value.data["error_id"] == logs[0]["error_id"]
            assert (await client.letter_status(3))["letter_id"] == 3
        assert otp.is_alive(server)

    async def test_an_rpc_error_from_a_handler_reaches_the_client(
        self, server: otp.Pid, socket_path: Path, handlers: FakeHandlers
    ) -> None:
        """The client raises RpcRemoteError with the handler's code, message and data."""
        handlers.failures["letter.send"] = RpcError(
            ErrorCode.NOT_FOUND, "letter 9 does not exist", {"letter_id": 9}
        )
        async with Client(socket_path) as client:
            with pytest.raises(RpcRemoteError) as caught:
                await client.letter_send(9)
        assert (caught.value.code, caught.value.message, caught.value.data) == (
            -32001,
            "letter 9 does not exist",
            {"letter_id": 9},
        )

    async def test_a_client_hanging_up_mid_request_does_not_disturb_the_server(
        self, server: otp.Pid, socket_path: Path, handlers: FakeHandlers
    ) -> None:
        """The handler runs to its end, its answer goes nowhere, and other clients are served."""
        release = handlers.gate("letter.send")
        connection = await RawConnection.open(socket_path)
        await connection.send_json(
            {"jsonrpc": "2.0", "id": 1, "method": "letter.send", "params": {"letter_id": 2}}
        )
        await handlers.entered["letter.send"].wait()
        await connection.close()
        release.set()
        async with Client(socket_path) as client:
            assert (await client.letter_status(2))["letter_id"] == 2
        assert "letter.send" in handlers.finished
        assert otp.is_alive(server)

    async def test_handlers_run_outside_the_servers_process(
        self, server: otp.Pid, socket_path: Path, handlers: FakeHandlers
    ) -> None:
        """A connection is not a process: a handler cannot receive from or link to the RpcServer."""
        async with Client(socket_path) as client:
            await client.system_health()
        assert handlers.caller_pids == [None]


class TestShutdown:
    async def test_stopping_closes_connections_and_removes_the_socket_file(
        self, socket_path: Path, handlers: FakeHandlers
    ) -> None:
        """After stop, connected clients see the connection end and the path is free."""
        pid = await start_server(socket_path, handlers)
        client = Client(socket_path)
        await client.connect()
        await client.system_health()
        await otp.GenServer.stop(pid)
        assert not exists(socket_path)
        with pytest.raises(ConnectionLostError):
            await client.system_health()
        await client.close()
        with pytest.raises(DaemonNotRunningError):
            await Client(socket_path).connect()

    async def test_a_request_in_progress_at_shutdown_is_answered_first(
        self, socket_path: Path, handlers: FakeHandlers
    ) -> None:
        """Stopping waits for a busy connection's answer; idle connections are closed at once."""
        pid = await start_server(socket_path, handlers)
        release = handlers.gate("letter.send")
        busy = await RawConnection.open(socket_path)
        idle = await RawConnection.open(socket_path)
        await busy.send_json({"jsonrpc": "2.0", "id": 1, "method": "letter.send", "params": {"letter_id": 2}})
        await handlers.entered["letter.send"].wait()
        stopping = asyncio.create_task(otp.GenServer.stop(pid))
        assert await idle.closed_by_server()  # terminate has begun
        release.set()
        assert (await busy.receive())["result"] == {"letter_id": 2, "state": "sending"}
        assert await busy.closed_by_server()
        await stopping
        await busy.close()
        await idle.close()

    async def test_a_killed_server_still_closes_its_listener(
        self, socket_path: Path, handlers: FakeHandlers
    ) -> None:
        """``kill`` skips terminate; the linked port owner closes the socket and removes the file."""
        pid = await start_server(socket_path, handlers)
        port_owner = otp.GenServer.get_state(pid).port_owner
        otp.exit(pid, otp.KILL)
        assert await otp.await_exit(pid, timeout=WAIT) == otp.KILLED
        assert await otp.await_exit(port_owner, timeout=WAIT) == otp.KILLED
        assert not exists(socket_path)
        replacement = await start_server(socket_path, handlers)
        async with Client(socket_path) as client:
            assert (await client.system_health())["status"] == "ok"
        await otp.GenServer.stop(replacement)

    async def test_under_a_supervisor_shutdown_removes_the_socket_file(
        self, socket_path: Path, handlers: FakeHandlers
    ) -> None:
        """The server traps exits, so its supervisor's shutdown runs terminate."""
        spec = RpcServer.child_spec(socket_path=socket_path, handlers=handlers)
        supervisor = await otp.Supervisor.start_link(
            otp.SupervisorSpec([spec], strategy=otp.Strategy.ONE_FOR_ONE)
        )
        async with Client(socket_path) as client:
            assert (await client.system_health())["status"] == "ok"
        await otp.Supervisor.stop(supervisor)
        assert not exists(socket_path)

    def test_child_spec_needs_a_path_and_handlers(self) -> None:
        """Misuse raises at once, naming what is missing."""
        with pytest.raises(TypeError, match="socket_path= and handlers="):
            RpcServer.child_spec(socket_path="/tmp/x.sock")
