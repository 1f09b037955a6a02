"""The guarantees under a random schedule of commands and crashes: a seeded property test.

Two daemons (nodes ``a`` and ``b``, each with its Scheduler) share one database and one SMTP sink
that answers 451 to a few first attempts. One small letter is sent while a seeded random schedule
interleaves, from either node: send, retry, pause, resume, cancel, a kill of the letter's service
(its LetterSupervisor restarts it), a kill of a whole node (then a new start of it, which takes its
letters back), a graceful restart of a node, and "let it run" (wait for a few more messages). After
every step the invariants are checked; once the schedule is done the system is brought to rest
(both nodes up, the letter resumed or retried until it is sent or cancelled) and checked again:

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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from mailman.services import letter_commands
from mailman.services.letter_delivery_dispatcher import LetterDeliveryDispatcher
from mailman.services.mailer_server import Mailer
from mailman.services.models import LetterStatus, UncertainPolicy
from mailman.services.queries import deliveries, letters
from mailman.supervisor import KILL, exit, is_alive
from tests.services.engine_fixtures import Engine, EngineFactory, eventually, kill_node, message_ids, received

STEPS = int(os.environ.get("MAILMAN_INTERLEAVING_STEPS", "24"))
SEEDS = [int(seed) for seed in os.environ.get("MAILMAN_INTERLEAVING_SEEDS", "14,19,33").split(",")]
AUDIENCE = 300
RATE = 80.0
"""Messages a second per node: slow enough that most steps land mid-send."""


@dataclass
class Run:
    """One schedule's world: the nodes, the letter, and what happened so far."""

    nodes: list[Engine]
    letter_id: int
    policy: UncertainPolicy
    rng: random.Random
    kills: int = 0
    mid_send: int = 0
    """Steps taken while the letter was sending."""
    log: list[str] = field(default_factory=list)

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
            run.kills += 1
            exit(service, KILL)


async def kill_and_restart_node(run: Run) -> None:
    node = run.node()
    run.kills += 1
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
    target = len(sink.messages) + run.rng.randint(5, 25)

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


async def check_invariants(run: Run, *, at_rest: bool = False) -> None:
    pool = run.nodes[0].pool
    sink = run.nodes[0].sink
    letter = await letters.get_letter(pool, run.letter_id)
    counts = await deliveries.count_deliveries(pool, run.letter_id)
    if letter.status not in (LetterStatus.DRAFT, LetterStatus.CANCELLED) or counts.total:
        assert counts.total == AUDIENCE, run.fail(f"counts {counts} do not sum to the audience")
    copies = received(sink)
    twice = {address for address, n in copies.items() if n > 1}
    if run.policy is UncertainPolicy.HOLD or run.kills == 0:
        assert not twice, run.fail(f"mailed twice without a kill (or under hold): {sorted(twice)}")
    ids = message_ids(sink.messages)
    assert all(len(ids[address]) == 1 for address in twice), run.fail("a repeat with another Message-ID")
    rows = await pool.fetch(
        "SELECT s.email, d.state FROM deliveries d JOIN subscriptions s ON s.id = d.subscription_id"
        " WHERE d.letter_id = $1",
        run.letter_id,
    )
    delivered = {row["email"] for row in rows if row["state"] == "delivered"}
    never = delivered - set(copies)
    assert not never, run.fail(f"recorded delivered, never received: {never}")
    if letter.status is LetterStatus.SENT:
        assert counts.pending == counts.sending == 0, run.fail(f"sent with unfinished rows: {counts}")
    if at_rest:
        assert counts.sending == 0, run.fail(f"rows sending with nobody sending the letter: {counts}")
        if letter.status is LetterStatus.SENT:
            lost = {row["email"] for row in rows if row["state"] == "pending"}
            assert not lost, run.fail(f"never mailed: {lost}")


async def bring_to_rest(run: Run) -> LetterStatus:
    """Both nodes up; the letter resumed or retried until it is sent or cancelled."""
    for node in run.nodes:
        if node.tree is None or not is_alive(node.tree):
            await start(node)
    for _ in range(20):
        letter = await letters.get_letter(run.nodes[0].pool, run.letter_id)
        match letter.status:
            case LetterStatus.SENT | LetterStatus.CANCELLED:
                if not any(LetterDeliveryDispatcher.running(n.context, run.letter_id) for n in run.nodes):
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
    raise AssertionError(run.fail("the letter never came to rest"))


@pytest.mark.timeout(max(300, STEPS * 10))
@pytest.mark.parametrize("seed", SEEDS)
async def test_random_schedules_keep_the_guarantees(engine_factory: EngineFactory, seed: int) -> None:
    """A seeded random schedule of commands, kills and restarts on two nodes keeps every invariant
    after every step, and at rest the letter is finished with nobody lost and nobody sending."""
    rng = random.Random(seed)
    settings = {"lease_ttl": 3.0, "scheduler_poll": 0.05, "max_letter_restarts": 3}
    a = await engine_factory(names="a", node_name="node-a", **settings)
    b = await engine_factory(names="b", node_name="node-b", **settings)
    for node in (a, b):
        (await Mailer.pool(node.context.mailer)).rate_limiter.set_rate(RATE)
    await a.newsletter(AUDIENCE)
    a.sink.fail_fraction(0.05, 451, "4.7.1 Greylisted", times=1)
    policy = (UncertainPolicy.RESEND, UncertainPolicy.HOLD)[seed % 2]
    letter = await a.letter(uncertain_policy=policy)
    run = Run(nodes=[a, b], letter_id=letter.id, policy=policy, rng=rng)
    steps, weights = zip(*STEP_WEIGHTS, strict=True)

    await send(run)
    run.log.append("send")
    for _ in range(STEPS):
        step = rng.choices(steps, weights)[0]
        run.log.append(step.__name__)
        if (await letters.get_letter(a.pool, letter.id)).status is LetterStatus.SENDING:
            run.mid_send += 1
        await step(run)
        await check_invariants(run)
    status = await bring_to_rest(run)
    await check_invariants(run, at_rest=True)

    assert status in (LetterStatus.SENT, LetterStatus.CANCELLED), run.fail(f"ended {status}")
    assert run.mid_send > 0, run.fail("no step landed mid-send: the schedule tested nothing")
    print(f"seed {seed}: {STEPS} steps, {run.mid_send} mid-send, {run.kills} kills, {policy}, {status}")
