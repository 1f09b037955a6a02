"""Call: a request that names the type of its reply (the typing of ``gen_server:call/3``).

OTP's requests are plain terms and its replies untyped. In Python, a request class may say what a
server owes its caller, so that :meth:`~mailman.supervisor.GenServer.call` returns that type and
mypy checks the caller. The library's own requests (``which_children``, ``start_child``...) are
typed this way; a request of any other class still works, with a reply typed ``Any``.
"""

from __future__ import annotations

from typing import Generic, TypeVar

__all__ = ["Call"]

R_co = TypeVar("R_co", covariant=True)


class Call(Generic[R_co]):
    """A call request that names the type of its reply, so that :meth:`GenServer.call` is typed.

    Subclass it for each request of a server's client API; mypy then checks what the caller does
    with the reply, and a ``handle_call`` answering it documents what it owes::

        @dataclass(frozen=True, slots=True)
        class Lookup(Call[int | None]):
            key: str

        value = await GenServer.call(server, Lookup("answer"))     # typed int | None

    Any other object can still be sent as a request (OTP's requests are plain terms); its reply is
    then typed ``Any``. Deviation: Erlang has no such type; this is Python's typing of
    ``gen_server:call/3``, and it checks nothing at run time.
    """

    __slots__ = ()
