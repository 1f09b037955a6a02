"""OutcomeBuffer: the verdicts a letter's service holds until Postgres has them, and their writing.

A letter's recipients finish one by one; writing each outcome alone would cost a round trip per
message. The service therefore buffers verdicts and writes them in batches (one statement per batch:
the fenced ``UPDATE`` of the deliveries and the ``INSERT`` of the messages the relay accepted, see
:func:`mailman.services.store.queries.deliveries.ack_deliveries`).

The promise this module keeps: **a verdict leaves memory only once Postgres has it.** A write that
fails (a Postgres restart, a dropped connection, a statement error) keeps the whole batch, says how
long to wait before the next try (exponential back-off, capped), and clears :attr:`writable` so that
the letter's driver claims nobody more until a write succeeds again. Retrying a batch is safe even if
the failed try was applied after all (a connection lost at the commit): an ack applies only to a row
still ``sending`` under the claim's token, so an applied outcome is not applied twice, and its
message row exists once.

Before, a failed write lost the batch with the crashed service, and recovery then resent every one
of those recipients although the relay had accepted their messages (issue: "one failed write of a
batch of outcomes loses the batch and resends delivered messages").

OTP counterpart: none; it is the state a GenServer keeps between ``handle_info`` calls, in a class of
its own so that the rule above lives in one place.

Example::

    buffer = OutcomeBuffer(letter_id=42)
    buffer.add(verdicts)
    if not await buffer.write(pool):
        send_after(self_pid(), FLUSH, buffer.retry_in)   # the verdicts are still there
"""

from __future__ import annotations

import asyncio

import structlog

from mailman.services.delivery.retry_policy import RecipientVerdict
from mailman.services.errors import DatabaseError
from mailman.services.store.database import Executor, transaction
from mailman.services.store.queries import deliveries, subscriptions

__all__ = ["OutcomeBuffer"]

_log = structlog.get_logger("mailman.delivery")


class OutcomeBuffer:
    """Verdicts not yet in Postgres, written in batches; kept whole when a write fails."""

    __slots__ = ("failures", "first_retry", "letter_id", "max_retry", "sent", "verdicts", "writable")

    def __init__(self, letter_id: int, *, first_retry: float = 0.1, max_retry: float = 5.0) -> None:
        self.letter_id = letter_id
        self.verdicts: list[RecipientVerdict] = []
        self.failures = 0
        """Writes failed in a row (0 once one succeeds)."""
        self.first_retry = first_retry
        self.max_retry = max_retry
        self.sent = 0
        """Messages the relay accepted whose outcome was written (by this buffer's service)."""
        self.writable = asyncio.Event()
        """Set while writes succeed; cleared by a failed one: the driver claims nobody meanwhile."""
        self.writable.set()

    def __len__(self) -> int:
        return len(self.verdicts)

    def add(self, verdicts: list[RecipientVerdict]) -> None:
        """Hold ``verdicts`` until the next write."""
        self.verdicts += verdicts

    @property
    def retry_in(self) -> float:
        """Seconds to wait before the next write after :attr:`failures` failed ones in a row."""
        if self.failures == 0:
            return 0.0
        return min(self.max_retry, self.first_retry * 2.0 ** (self.failures - 1))

    async def write(self, pool: Executor) -> bool:
        """Write every verdict held; True when none is left, False when the write failed (all kept).

        A subscription a verdict bounces is marked bounced in the same transaction as the outcome.
        """
        if not self.verdicts:
            return True
        batch = self.verdicts
        try:
            applied = await _write(pool, self.letter_id, batch)
        except DatabaseError as error:
            self.failures += 1
            self.writable.clear()
            _log.warning(
                "outcomes not written yet: kept, and tried again",
                letter_id=self.letter_id,
                outcomes=len(batch),
                failures=self.failures,
                retry_in=self.retry_in,
                error=str(error),
            )
            return False
        # Nothing was added meanwhile (the service is one process, and awaits this write).
        self.verdicts = []
        if self.failures:
            _log.info("outcomes written again", letter_id=self.letter_id, after_failures=self.failures)
        self.failures = 0
        self.writable.set()
        self.sent += sum(
            1
            for verdict in batch
            if verdict.sent_email is not None and verdict.outcome.subscription_id in applied
        )
        if len(applied) != len(batch):
            _log.warning("outcomes fenced out", letter_id=self.letter_id, dropped=len(batch) - len(applied))
        return True


async def _write(pool: Executor, letter_id: int, batch: list[RecipientVerdict]) -> set[int]:
    outcomes = [verdict.outcome for verdict in batch]
    sent = [verdict.sent_email for verdict in batch if verdict.sent_email is not None]
    bounced = [(v.outcome.subscription_id, v.bounce_reason) for v in batch if v.bounce_reason is not None]
    if not bounced:
        # The common case: the outcomes and the emails sent, in one statement (one round trip).
        return await deliveries.ack_deliveries(pool, letter_id, outcomes, sent)
    async with transaction(pool) as connection:
        applied = await deliveries.ack_deliveries(connection, letter_id, outcomes, sent)
        for subscription_id, reason in bounced:
            if subscription_id in applied:
                await subscriptions.mark_bounced(connection, subscription_id, reason)
    return applied
