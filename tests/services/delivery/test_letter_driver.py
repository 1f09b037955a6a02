"""The letter's driver, in its parts: the outbox of verdicts, and the verdict for a task that exited.

The driver as a whole (claims, the stream, the breaker, drains) runs in every engine test
(``test_letter_delivery*.py``, ``test_several_nodes.py``); these check the pieces whose timing or
choices those tests cannot pin down.
"""

from __future__ import annotations

import asyncio
import random

from mailman import supervisor as otp
from mailman.services.delivery.context import DeliverySettings
from mailman.services.delivery.letter_driver import REPORT_BATCH, RecipientsDone, _Reporter, _verdict
from mailman.services.delivery.recipient_task import RecipientTask
from mailman.services.delivery.retry_policy import RecipientVerdict, RetryPolicy
from mailman.services.smtp.message import LetterTemplate
from mailman.services.smtp.pool import SmtpPool
from mailman.services.store.models import (
    ClaimedDelivery,
    ClaimedRecipient,
    DeliveryOutcome,
    DeliveryState,
    SubscriptionStatus,
)
from mailman.supervisor import KILLED, Exit, Ok
from tests.supervisor.processes import WAIT


def claimed(subscription_id: int, attempts: int = 1) -> ClaimedRecipient:
    return ClaimedRecipient(
        claim=ClaimedDelivery(subscription_id=subscription_id, attempts=attempts, lease_token=7),
        email=f"reader{subscription_id}@example.org",
        name="Reader",
        status=SubscriptionStatus.ACTIVE,
        unsubscribe_token="abc",
    )


def delivered(subscription_id: int) -> RecipientVerdict:
    return RecipientVerdict(outcome=DeliveryOutcome.delivered(claimed(subscription_id).claim))


def recipient_task(*, hold_uncertain: bool) -> RecipientTask:
    template = LetterTemplate.render(
        subject="News",
        text_body="Hello {{ name }}",
        from_address="news@example.com",
        message_domain="example.com",
        unsubscribe_url="https://example.com/u/{token}",
    )
    return RecipientTask(
        letter_id=1,
        template=template,
        smtp=SmtpPool("smtp://127.0.0.1:9"),  # never used: no task sends here
        policy=RetryPolicy(),
        rng=random.Random(1),
        hold_uncertain=hold_uncertain,
    )


class TestReporter:
    async def test_a_full_batch_goes_at_once(self) -> None:
        """REPORT_BATCH verdicts are sent together, the moment the batch is full."""
        service = otp.spawn(otp.receive)  # a stand-in service: its mailbox is read below
        reporter = _Reporter(service)
        for i in range(REPORT_BATCH):
            reporter.report(delivered(i))

        message = service._process.mailbox.take()
        assert message[0]
        assert isinstance(message[1], RecipientsDone)
        assert [v.outcome.subscription_id for v in message[1].verdicts] == list(range(REPORT_BATCH))
        assert reporter.pending == []
        assert reporter.timer is None
        otp.exit(service, otp.KILL)

    async def test_a_partial_batch_goes_within_the_delay(self) -> None:
        """A few verdicts are not held back: the timer sends them, without a full batch."""
        got: asyncio.Future[object] = asyncio.get_running_loop().create_future()

        async def service_body() -> None:
            got.set_result(await otp.receive())

        service = otp.spawn(service_body)
        reporter = _Reporter(service)
        reporter.report(delivered(1))
        reporter.report(delivered(2))

        message = await asyncio.wait_for(got, WAIT)
        assert isinstance(message, RecipientsDone)
        assert [v.outcome.subscription_id for v in message.verdicts] == [1, 2]

    async def test_send_pending_sends_now_and_cancels_the_timer(self) -> None:
        """Before a claim (and when the driver ends) what is queued goes at once."""
        service = otp.spawn(otp.receive)
        reporter = _Reporter(service)
        reporter.report(delivered(3))
        reporter.send_pending()

        found, message = service._process.mailbox.take()
        assert found
        assert isinstance(message, RecipientsDone)
        assert reporter.timer is None
        reporter.send_pending()  # nothing queued: nothing sent
        assert service._process.mailbox.take() == (False, None)
        otp.exit(service, otp.KILL)


class TestVerdictOfAnExitedTask:
    def test_a_returned_verdict_is_taken_as_it_is(self) -> None:
        verdict = delivered(5)
        assert _verdict(Ok(verdict), recipient_task(hold_uncertain=False), DeliverySettings()) is verdict

    def test_under_resend_a_killed_task_is_retried_later(self) -> None:
        """The task may have been mid-DATA; under resend it is tried again, after a back-off."""
        verdict = _verdict(
            Exit((claimed(5), KILLED)), recipient_task(hold_uncertain=False), DeliverySettings()
        )
        assert verdict.outcome.state is DeliveryState.PENDING
        assert verdict.outcome.last_error == "recipient task exited: killed"

    def test_under_resend_the_last_attempt_fails_the_recipient(self) -> None:
        settings = DeliverySettings(retry=RetryPolicy(max_attempts=2))
        verdict = _verdict(
            Exit((claimed(5, attempts=2), KILLED)), recipient_task(hold_uncertain=False), settings
        )
        assert verdict.outcome.state is DeliveryState.FAILED

    def test_under_hold_a_killed_task_is_uncertain(self) -> None:
        """Under hold nobody may get two copies: the recipient is held as uncertain."""
        verdict = _verdict(
            Exit((claimed(5), KILLED)), recipient_task(hold_uncertain=True), DeliverySettings()
        )
        assert verdict.outcome.state is DeliveryState.UNCERTAIN
