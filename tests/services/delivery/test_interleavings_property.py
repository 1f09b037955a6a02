"""The guarantees under a random schedule of commands and crashes: a seeded property test.

Two daemons (nodes ``a`` and ``b``, each with its Scheduler) share one database and one SMTP sink
that answers 451 to a few first attempts. Small letters are sent one after the other (a new one as
soon as the last is sent or cancelled, each under ``resend`` or ``hold`` in turn) while a seeded
random schedule interleaves, from either node: send, retry, pause, resume, cancel, a kill of the
letter's service (its LetterSupervisor restarts it), a kill of a whole node (then a new start of
it, which takes its letters back), a graceful restart of a node, and "let it run" (wait for a few
more messages). After every step the invariants are checked for every letter so far; once the
schedule is done the system is brought to rest (both nodes up, the last letter resumed or retried
until it is sent or cancelled) and checked again:

- the deliveries' counts sum to the audience;
- nobody is mailed twice unless a kill happened, and then every copy has the same Message-ID; under
  the ``hold`` policy nobody is ever mailed twice;
- every recipient recorded delivered got the message;
- a ``sent`` letter has no ``pending`` or ``sending`` row;
- at rest, no row is ``sending`` (nobody left without a live owner), and nobody is lost: every
  recipient was mailed, failed, skipped or held uncertain (or, for a cancelled letter, never sent).

``make test`` runs a fixed seed and a bounded number of steps; ``make chaos`` runs more steps with
fresh seeds (``MAILMAN_INTERLEAVING_STEPS``, ``MAILMAN_INTERLEAVING_SEEDS``). A failure names its
seed and the schedule so far: the seed replays it.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from mailman.services.delivery import letter_commands
from mailman.services.delivery.letter_delivery_dispatcher import LetterDeliveryDispatcher
from mailman.services.smtp.mailer import Mailer
from mailman.services.store.models import LetterStatus, UncertainPolicy
from mailman.services.store.queries import deliveries, letters
from mailman.supervisor import KILL, exit, is_alive
from tests.services.engine_fixtures import Engine, EngineFactory, eventually, kill_node, message_ids
from tests.services.smtp_sink import ReceivedMessage

STEPS = int(os.environ.get("MAILMAN_INTERLEAVING_STEPS", "30"))
SEEDS = [int(seed) for seed in os.environ.get("MAILMAN_INTERLEAVING_SEEDS", "14,19,33").split(",")]
AUDIENCE = 300
DONE = (LetterStatus.SENT, LetterStatus.CANCELLED)
ENDED = (*DONE, LetterStatus.FAILED)
"""Statuses in which nobody sends the letter: once no node holds it, no row may be ``sending``."""
RATE = 80.0
"""Messages a second per node: slow enough that most steps land mid-send."""


@dataclass
class Sent:
    """One letter of the run: its id, its policy, and the kills while it was the one being sent."""

    letter_id: int
    policy: UncertainPolicy
    kills: int = 0


@dataclass
class Run:
    """One schedule's world: the nodes, the letters, and what happened so far."""

    nodes: list[Engine]
    rng: random.Random
    letters: list[Sent] = field(default_factory=list)
    mid_send: int = 0
    """Steps taken while a letter was sending."""
    log: list[str] = field(default_factory=list)

    @property
    def letter_id(self) -> int:
        return self.letters[-1].letter_id

    @property
    def kills(self) -> int:
        return sum(sent.kills for sent in self.letters)

    def killed(self) -> None:
        self.letters[-1].kills += 1

    def node(self) -> Engine:
        return self.rng.choice(self.nodes)

    def fail(self, why: str) -> str:
        return f"{why}\nschedule so far: {'; '.join(self.log)}"


# ---------------------------------------------------------------- steps


async def send(run: Run) -> None:
    await letter_commands.send_letter(run.node().context, run.letter_id)


async def retry(run: Run) -> None:
    await letter_commands.retry_failed(run.node().context, run.letter_id)


async def pause(run: Run) -> None:
    await letter_commands.pause_letter(run.node().context, run.letter_id)


async def resume(run: Run) -> None:
    await letter_commands.resume_letter(run.node().context, run.letter_id)


async def cancel(run: Run) -> None:
    await letter_commands.cancel_letter(run.node().context, run.letter_id)


async def kill_service(run: Run) -> None:
    for node in run.nodes:
        service = LetterDeliveryDispatcher.running(node.context, run.letter_id)
        if service is not None:
            run.killed()
            exit(service, KILL)


async def kill_and_restart_node(run: Run) -> None:
    node = run.node()
    run.killed()
    await kill_node(node)
    await start(node)


async def restart_node(run: Run) -> None:
    node = run.node()
    await node.stop()
    await start(node)


async def start(node: Engine) -> None:
    """Start the node's tree, its relay throttled to :data:`RATE`."""
    await node.start()
    (await Mailer.pool(node.context.mailer)).rate_limiter.set_rate(RATE)


async def let_it_run(run: Run) -> None:
    sink = run.nodes[0].sink
    target = len(sink.messages) + run.rng.randint(5, 40)

    async def progressed() -> bool:
        letter = await letters.get_letter(run.nodes[0].pool, run.letter_id)
        return len(sink.messages) >= target or letter.status is not LetterStatus.SENDING

    await eventually(progressed, timeout=20)


STEP_WEIGHTS: list[tuple[Callable[[Run], Awaitable[None]], int]] = [
    (send, 2),
    (retry, 2),
    (pause, 2),
    (resume, 3),
    (cancel, 1),
    (kill_service, 2),
    (kill_and_restart_node, 1),
    (restart_node, 1),
    (let_it_run, 8),
]


# ---------------------------------------------------------------- invariants


def received_by(messages: list[ReceivedMessage]) -> Counter[str]:
    """How many of ``messages`` each address received."""
    return Counter(message.rcpt_tos[0] for message in messages)


def copies_of(run: Run, letter_id: int) -> list[ReceivedMessage]:
    """The messages of one letter the sink received (by their Message-ID)."""
    mark = b"<letter-%d." % letter_id
    return [message for message in run.nodes[0].sink.messages if mark in message.data]


async def check_invariants(run: Run, *, at_rest: bool = False) -> None:
    for sent in run.letters:
        await check_letter(run, sent, at_rest=at_rest and sent is run.letters[-1])


async def check_letter(run: Run, sent: Sent, *, at_rest: bool) -> None:
    pool = run.nodes[0].pool
    letter = await letters.get_letter(pool, sent.letter_id)
    counts = await deliveries.count_deliveries(pool, sent.letter_id)
    where = f"letter {sent.letter_id} ({sent.policy}, {letter.status})"
    if letter.status not in (LetterStatus.DRAFT, LetterStatus.CANCELLED) or counts.total:
        assert counts.total == AUDIENCE, run.fail(f"{where}: counts {counts} do not sum to the audience")
    messages = copies_of(run, sent.letter_id)
    copies = received_by(messages)
    twice = {address for address, n in copies.items() if n > 1}
    if sent.policy is UncertainPolicy.HOLD or sent.kills == 0:
        assert not twice, run.fail(f"{where}: mailed twice without a kill (or under hold): {sorted(twice)}")
    ids = message_ids(messages)
    assert all(len(ids[address]) == 1 for address in twice), run.fail(
        f"{where}: a repeat, another Message-ID"
    )
    rows = await pool.fetch(
        "SELECT s.email, d.state FROM deliveries d JOIN subscriptions s ON s.id = d.subscription_id"
        " WHERE d.letter_id = $1",
        sent.letter_id,
    )
    never = {row["email"] for row in rows if row["state"] == "delivered"} - set(copies)
    assert not never, run.fail(f"{where}: recorded delivered, never received: {never}")
    if letter.status is LetterStatus.SENT:
        assert counts.pending == counts.sending == 0, run.fail(
            f"{where}: sent with unfinished rows: {counts}"
        )
    if at_rest or (letter.status in ENDED and letter.owner_node is None and not running(run, sent)):
        assert counts.sending == 0, run.fail(
            f"{where}: rows sending with nobody sending the letter: {counts}"
        )
    if at_rest and letter.status in (LetterStatus.SENT, LetterStatus.FAILED):
        # Nobody lost: every recipient is mailed, failed for good, skipped, or held uncertain.
        lost = {row["email"] for row in rows if row["state"] == "pending"}
        assert not lost, run.fail(f"{where}: never mailed: {lost}")


def running(run: Run, sent: Sent) -> bool:
    return any(LetterDeliveryDispatcher.running(node.context, sent.letter_id) for node in run.nodes)


async def next_letter(run: Run) -> None:
    """Start the run's next letter, under the policy the last one did not have."""
    if run.letters:
        policy = (
            UncertainPolicy.HOLD
            if run.letters[-1].policy is UncertainPolicy.RESEND
            else UncertainPolicy.RESEND
        )
    else:
        policy = run.rng.choice([UncertainPolicy.RESEND, UncertainPolicy.HOLD])
    letter = await run.nodes[0].letter(f"Letter {len(run.letters) + 1}", uncertain_policy=policy)
    run.letters.append(Sent(letter_id=letter.id, policy=policy))
    run.log.append(f"new letter {letter.id} ({policy})")
    await send(run)


async def finished(run: Run) -> bool:
    """Whether the current letter is done, nobody runs it and no node holds it (one that died
    holding it is taken over once its lease expires, to recover what it left). Done: sent,
    cancelled, or failed by its crash limit with nothing a retry would send again (every recipient
    delivered, failed for good or, under ``hold``, uncertain)."""
    letter = await letters.get_letter(run.nodes[0].pool, run.letter_id)
    if letter.owner_node is not None or running(run, run.letters[-1]):
        return False
    if letter.status is LetterStatus.FAILED:
        counts = await deliveries.count_deliveries(run.nodes[0].pool, run.letter_id)
        resend = run.letters[-1].policy is UncertainPolicy.RESEND
        return not (counts.unfinished or counts.failed or (resend and counts.uncertain))
    return letter.status in DONE


async def bring_to_rest(run: Run) -> LetterStatus:
    """Both nodes up; the letter resumed or retried until it is done (see :func:`finished`)."""
    for node in run.nodes:
        if node.tree is None or not is_alive(node.tree):
            await start(node)
    for _ in range(20):
        letter = await letters.get_letter(run.nodes[0].pool, run.letter_id)
        if await finished(run):
            return letter.status
        match letter.status:
            case LetterStatus.SENT | LetterStatus.CANCELLED:
                await eventually(lambda: finished(run), timeout=30)
                return letter.status
            case LetterStatus.PAUSED:
                await resume(run)
            case LetterStatus.FAILED:
                await retry(run)
            case LetterStatus.DRAFT:
                await send(run)
        for node in run.nodes:
            await node.wait_until_done(run.letter_id, timeout=60)

        async def quiet() -> bool:
            current = await letters.get_letter(run.nodes[0].pool, run.letter_id)
            return current.status is not LetterStatus.SENDING

        await eventually(quiet, timeout=60)
    letter = await letters.get_letter(run.nodes[0].pool, run.letter_id)
    counts = await deliveries.count_deliveries(run.nodes[0].pool, run.letter_id)
    raise AssertionError(
        run.fail(
            f"letter {run.letter_id} never came to rest: {letter.status}, {counts},"
            f" owner {letter.owner_node}, mail_order {dict(letter.mail_order)}"
        )
    )


@pytest.mark.timeout(max(300, STEPS * 10))
@pytest.mark.parametrize("seed", SEEDS)
async def test_random_schedules_keep_the_guarantees(engine_factory: EngineFactory, seed: int) -> None:
    """A seeded random schedule of commands, kills and restarts on two nodes keeps every invariant
    after every step, and at rest the last letter is finished with nobody lost and nobody sending."""
    rng = random.Random(seed)
    settings = {"lease_ttl": 3.0, "scheduler_poll": 0.05, "max_letter_restarts": 3}
    a = await engine_factory(names="a", node_name="node-a", **settings)
    b = await engine_factory(names="b", node_name="node-b", **settings)
    for node in (a, b):
        (await Mailer.pool(node.context.mailer)).rate_limiter.set_rate(RATE)
    await a.newsletter(AUDIENCE)
    a.sink.fail_fraction(0.05, 451, "4.7.1 Greylisted", times=1)
    run = Run(nodes=[a, b], rng=rng)
    steps, weights = zip(*STEP_WEIGHTS, strict=True)

    await next_letter(run)
    for _ in range(STEPS):
        if await finished(run):
            await check_invariants(run, at_rest=True)
            await next_letter(run)
        step = rng.choices(steps, weights)[0]
        run.log.append(step.__name__)
        if (await letters.get_letter(a.pool, run.letter_id)).status is LetterStatus.SENDING:
            run.mid_send += 1
        await step(run)
        await check_invariants(run)
    status = await bring_to_rest(run)
    await check_invariants(run, at_rest=True)

    assert status in (*DONE, LetterStatus.FAILED), run.fail(f"ended {status}")
    assert run.mid_send > 0, run.fail("no step landed mid-send: the schedule tested nothing")
    print(
        f"seed {seed}: {STEPS} steps, {run.mid_send} mid-send, {len(run.letters)} letters, "
        f"{run.kills} kills, {sum(1 for s in run.letters if s.policy is UncertainPolicy.HOLD)} under hold"
    )
