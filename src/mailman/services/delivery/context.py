"""What a letter's service needs to know: where its collaborators are and how to behave.

A :class:`DeliveryContext` is plain data handed down the supervision tree when a letter's service
starts: the *names* of the processes it talks to (the Repo, the Mailer, the task supervisor, the
letters Registry), never their pids, so that a restarted collaborator is found again by name.
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass, field
from datetime import timedelta

from mailman.services.delivery.retry_policy import RetryPolicy
from mailman.services.store.models import UncertainPolicy

__all__ = ["DeliveryContext", "DeliverySettings", "default_node_name"]

_WRITE_GRACE = 15.0
"""Seconds of a graceful stop left, after the last message in flight, to write the outcomes."""


def default_node_name() -> str:
    """A name no other running daemon has: ``<hostname>-<pid>-<6 random hex digits>``.

    The pid tells two daemons on one host apart, the random part two containers that share a
    hostname and a pid. It differs on every start, so a daemon that was killed finds its letters'
    leases held by its former self and takes them back only once they expire: give each daemon a
    stable ``node_name`` of its own for it to take them back at once.
    """
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliverySettings:
    """How letters are sent. Defaults suit a relay that takes a few thousand messages a second."""

    concurrency: int = 50
    """Recipient tasks in flight per letter."""
    claim_batch: int = 50
    """Recipients claimed (pending -> sending) per query.

    A row stays ``sending`` from its claim until its outcome is flushed, so what a kill leaves
    uncertain (resent, or held) is at most ``concurrency`` in flight + ``claim_batch`` claimed and
    not started + the outcomes not yet flushed (``flush_size``, and the driver's batch of 32 on its
    way to the service): 232 at these defaults. Fewer, larger claims and flushes cost Postgres
    less per message (measured: claims of 50 and flushes of 100 about a fifth less than 25 and
    200), which is why these two are balanced rather than each made as small as possible."""
    flush_size: int = 100
    """Outcomes buffered before they are written to Postgres in one transaction."""
    flush_interval: float = 0.25
    """Seconds after which buffered outcomes are written anyway."""
    task_timeout: float = 120.0
    """A recipient task running longer is killed and retried (with the same Message-ID)."""
    subscription_recheck: float = 2.0
    """Seconds after its claim from which a recipient's subscription is read again right before
    its message goes out: an unsubscribe never waits longer than this to stop a message that has
    not started (at a low rate a claimed recipient may wait minutes for its turn)."""
    idle_poll: float = 1.0
    """Longest wait between claims while every pending recipient is backing off."""
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    message_domain: str = "mailman.localhost"
    uncertain_policy: UncertainPolicy | None = None
    """Overrides each letter's own policy when set."""
    max_letter_restarts: int = 5
    """A letter whose service crashed more often than this ends failed, with the reason."""
    breaker_base_delay: float = 1.0
    breaker_max_delay: float = 60.0
    node_name: str = field(default_factory=default_node_name)
    """This daemon's name among those sharing the database: the holder of its letters' leases.
    Two daemons running at once must never share one."""
    incarnation: str = field(default_factory=lambda: secrets.token_hex(8))
    """This run of the daemon (a new one at every start): what a letter's sender writes in
    ``mail_order.running``, so that its successor can tell a crash of the sender in this same run
    (counted against ``max_letter_restarts``) from the death of the whole daemon or node (not the
    letter's fault: recovered, not counted)."""
    lease_ttl: float = 15.0
    """Seconds a letter's lease lasts unless renewed (it is renewed every third of that): how long
    other nodes wait before they take over the letters of a node that died."""

    def __post_init__(self) -> None:
        for name in ("concurrency", "claim_batch", "flush_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"expected {name} to be an int >= 1, got {value!r}")
        if self.max_letter_restarts < 0:
            raise ValueError(f"expected max_letter_restarts >= 0, got {self.max_letter_restarts}")
        if not isinstance(self.node_name, str) or not self.node_name.strip():
            raise ValueError(f"expected node_name to be a non-empty string, got {self.node_name!r}")
        if not self.lease_ttl > 0:
            raise ValueError(f"expected lease_ttl > 0 seconds, got {self.lease_ttl!r}")

    @property
    def stop_budget(self) -> float:
        """Seconds a letter's service is given to stop gracefully before it is killed.

        A stop gives back at once every recipient still waiting for its turn; it waits only for the
        messages already handed to the relay, each of which ends within ``task_timeout``, and then
        writes their outcomes: a graceful stop therefore mails nobody twice, whatever the rate."""
        return self.task_timeout + _WRITE_GRACE

    @property
    def lease_duration(self) -> timedelta:
        """:attr:`lease_ttl` as the ``timedelta`` the lease queries take."""
        return timedelta(seconds=self.lease_ttl)


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryContext:
    """The registered names of a letter's collaborators, and the settings."""

    repo: str = "mailman.repo"
    mailer: str = "mailman.mailer"
    tasks: str = "mailman.tasks"
    """The TaskSupervisor running recipient tasks (``MailmanSupervisor`` in the design)."""
    letters: str = "mailman.letters"
    """The unique Registry: letter id -> the LetterDeliveryService sending it."""
    dispatcher: str = "mailman.dispatcher"
    settings: DeliverySettings = field(default_factory=DeliverySettings)
