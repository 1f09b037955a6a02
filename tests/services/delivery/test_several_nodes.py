"""Guarantee 5: several daemons (nodes) on one Postgres; each letter is driven by one node at a time,
and if that node dies, another takes the letter over and finishes it.

Each node is a whole Application tree with its own registered names and ``node_name``, all of them
in the test's process, on the test's database and SMTP sink (see ``engine_fixtures``). Leases are
short here (:data:`TTL`), so that a takeover takes about a second; Schedulers tick every
:data:`POLL` seconds. Nothing sleeps to synchronise: the tests wait on process exits, held SMTP
replies, and conditions read from Postgres.

A node "dies" as a SIGKILL would kill it (:func:`kill_node`): its letters' services are killed, so
nothing is flushed, released or cleared, and only then is the rest of its tree stopped (its pool
and SMTP connections closed). What it leaves in Postgres is exactly what a dead daemon leaves.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from mailman.services.delivery import letter_commands
from mailman.services.delivery.letter_delivery_dispatcher import LetterDeliveryDispatcher, LetterSupervisor
from mailman.services.delivery.letter_delivery_service import ServiceArgs
from mailman.services.smtp.message import message_id
from mailman.services.store.models import LetterStatus, UncertainPolicy
from mailman.services.store.queries import deliveries, letters
from mailman.supervisor import (
    NORMAL,
    DynamicSupervisor,
    GenServer,
    Pid,
    Registry,
    Restart,
    await_exit,
    whereis,
)
from tests.services.engine_fixtures import (
    NO_FLUSH,
    POOL_SIZE,
    Engine,
    EngineFactory,
    eventually,
    hold_replies,
    kill_node,
    message_ids,
    received,
    while_draining,
)

TTL = 1.0
"""Seconds a lease lasts unless renewed (renewed every third of that)."""
POLL = 0.05
"""Seconds between two ticks of a node's Scheduler (the daemon's default is 1)."""
DOMAIN = "mailman.localhost"


async def start_nodes(engine_factory: EngineFactory, **a_settings: Any) -> tuple[Engine, Engine]:
    """Nodes ``node-a`` (with ``a_settings``) and ``node-b``, each with its Scheduler."""
    a = await engine_factory(names="a", node_name="node-a", lease_ttl=TTL, scheduler_poll=POLL, **a_settings)
    b = await engine_factory(names="b", node_name="node-b", lease_ttl=TTL, scheduler_poll=POLL)
    return a, b


def node_name(node: Engine) -> str:
    return node.context.settings.node_name


async def freeze_mid_send(node: Engine, letter_id: int) -> frozenset[str]:
    """Let 40 messages through, then hold every SMTP connection at its end-of-DATA reply; the
    addresses the sink accepted a message for (unrecorded in Postgres under :data:`NO_FLUSH`)."""
    await node.sink.wait_for_messages(40)
    await hold_replies(node.sink)
    return frozenset(received(node.sink))


async def taken_over(node: Engine, letter_id: int, *, timeout: float) -> None:
    """Wait until ``node`` runs a service for the letter (its Scheduler took the letter over)."""

    async def running() -> bool:
        return LetterDeliveryDispatcher.running(node.context, letter_id) is not None

    await eventually(running, timeout=timeout)


async def claimed_rows(node: Engine, letter_id: int) -> int:
    """Deliveries ever claimed (attempts > 0)."""
    count: int = await node.pool.fetchval(
        "SELECT count(*) FROM deliveries WHERE letter_id = $1 AND attempts > 0", letter_id
    )
    return count


async def steal_lease(node: Engine, letter_id: int) -> None:
    """Hand the letter's lease to a node ``node-x`` as a takeover would: a new token, live an hour."""
    await node.pool.execute(
        "UPDATE letters SET owner_node = 'node-x', owner_token = nextval('letter_lease_token'),"
        " lease_expires_at = now() + interval '1 hour' WHERE id = $1",
        letter_id,
    )


class TestOneNodeAtATime:
    async def test_two_nodes_asked_to_send_one_letter_drive_it_once(
        self, engine_factory: EngineFactory
    ) -> None:
        """Both nodes are asked at the same moment to send the same draft: exactly one of them starts
        a service and drives the letter; the other starts nothing and answers which node sends it;
        each recipient gets exactly one message, and no restart is counted."""
        a, b = await start_nodes(engine_factory)
        await a.newsletter(200)
        letter = await a.letter()
        holds = [a.sink.hold("END") for _ in range(POOL_SIZE)]  # the send is still on when both answer

        answers = await asyncio.gather(a.send(letter.id), b.send(letter.id))

        [sender] = [n for n in (a, b) if LetterDeliveryDispatcher.running(n.context, letter.id) is not None]
        other, other_answer = (b, answers[1]) if sender is a else (a, answers[0])
        assert (await DynamicSupervisor.count_children(other.context.dispatcher)).active == 0
        assert f"by node {node_name(sender)}" in other_answer["message"]
        assert other_answer["running"] is False
        assert other_answer["node"] == node_name(sender)
        status = await letter_commands.letter_status(other.context, letter.id)
        assert (status["state"], status["node"]) == ("sending", node_name(sender))
        for hold in holds:
            hold.release()
        done = await sender.wait_until_done(letter.id)

        assert done.status is LetterStatus.SENT
        assert done.mail_order.get("restarts", 0) == 0
        assert done.owner_node is None  # released: the letter is done
        emails = await a.emails()
        assert received(a.sink) == dict.fromkeys(emails.values(), 1)

    async def test_a_service_that_finds_the_lease_held_elsewhere_stops_touching_nothing(
        self, engine_factory: EngineFactory, restarts: list[Pid]
    ) -> None:
        """The guard of last resort, for a race between nodes: a letter service started on node B
        (bypassing the dispatcher's own check) while node A sends the letter finds A's live lease as
        it loads and stops normally, without a restart, a recovery or any change to the letter."""
        a, b = await start_nodes(engine_factory)
        await a.newsletter(100)
        letter = await a.letter()
        await a.send(letter.id)
        holds = await hold_replies(a.sink)
        before = await letters.get_letter(a.pool, letter.id)
        counts = await deliveries.count_deliveries(a.pool, letter.id)

        args = ServiceArgs(letter_id=letter.id, context=b.context)
        spec = LetterSupervisor.child_spec(args, id=("letter", letter.id), restart=Restart.TEMPORARY)
        await DynamicSupervisor.start_child(b.context.dispatcher, spec)
        service = whereis(Registry.via(b.context.letters, letter.id))
        if service is not None:
            assert await await_exit(service) == NORMAL

        after = await letters.get_letter(a.pool, letter.id)
        assert (after.status, after.mail_order, after.owner_node) == (
            before.status,
            before.mail_order,
            "node-a",
        )
        assert await deliveries.count_deliveries(a.pool, letter.id) == counts
        assert LetterDeliveryDispatcher.running(a.context, letter.id) is not None
        assert restarts == []
        for hold in holds:
            hold.release()


class TestTakeover:
    """If the node sending a letter dies, another takes the letter over once its lease expires."""

    @pytest.mark.parametrize("policy", [UncertainPolicy.RESEND, UncertainPolicy.HOLD])
    async def test_a_dead_nodes_letter_is_finished_by_another(
        self, engine_factory: EngineFactory, policy: UncertainPolicy
    ) -> None:
        """Node A dies mid-send with messages in flight (accepted by the relay but not recorded, or
        held at the relay). Node B's Scheduler takes the letter over once A's lease has expired,
        recovers what A left in flight (A's death is not counted as a crash of the letter), and
        finishes the letter.
        Nobody is lost. With ``resend``, the only repeats are messages that were in flight, each with
        the same Message-ID; with ``hold``, nobody is mailed twice and those rows are reported
        uncertain."""
        a, b = await start_nodes(engine_factory, **NO_FLUSH)
        await a.newsletter(300)
        letter = await a.letter(uncertain_policy=policy)
        await a.send(letter.id)
        accepted = await freeze_mid_send(a, letter.id)
        assert (await deliveries.count_deliveries(a.pool, letter.id)).delivered == 0

        await kill_node(a)
        dead = await letters.get_letter(a.pool, letter.id)
        assert (dead.owner_node, dead.mail_order["running"]) == ("node-a", a.context.settings.incarnation)

        await taken_over(b, letter.id, timeout=TTL + 10)
        taken = await letters.get_letter(b.pool, letter.id)
        done = await b.wait_until_done(letter.id)

        assert dead.lease_expires_at is not None
        assert taken.owner_node == "node-b"
        assert taken.lease_expires_at is not None
        # B took the lease only after A's had expired (both on the database's clock).
        assert taken.lease_expires_at.timestamp() - TTL >= dead.lease_expires_at.timestamp()
        assert done.status is LetterStatus.SENT
        assert done.owner_node is None
        assert done.mail_order.get("restarts", 0) == 0  # A's death is not a crash of the letter
        found = done.mail_order["uncertain_found"]
        assert found >= len(accepted) + POOL_SIZE  # the accepted ones and the held ones were in flight
        emails = await a.emails()
        by_email = {email: i for i, email in emails.items()}
        counts = received(a.sink)
        states = await a.delivery_states(letter.id)
        if policy is UncertainPolicy.RESEND:
            assert set(counts) == set(emails.values())  # nobody lost
            assert {email for email, n in counts.items() if n > 1} == accepted
            assert max(counts.values()) == 2
            ids = message_ids(a.sink.messages)
            for email in accepted:
                assert ids[email] == {message_id(letter.id, by_email[email], DOMAIN)}
            assert {state for state, _, _ in states.values()} == {"delivered"}
        else:
            assert max(counts.values()) == 1  # nobody mailed twice
            uncertain = {i for i, (state, _, _) in states.items() if state == "uncertain"}
            assert len(uncertain) == found
            assert {by_email[email] for email in accepted} <= uncertain
            # Everyone else got the letter: nobody lost but the uncertain ones never accepted.
            assert set(counts) == set(emails.values()) - {
                emails[i] for i in uncertain if emails[i] not in accepted
            }
            status = await letter_commands.letter_status(b.context, letter.id)
            assert status["uncertain"] == found

    async def test_a_node_stopped_gracefully_hands_its_letter_over_at_once(
        self, engine_factory: EngineFactory
    ) -> None:
        """A node shut down mid-send (as on SIGTERM) finishes its messages in flight, records them and
        releases the lease: another node resumes the letter at its next tick, without waiting for
        the lease to expire (it lasts a minute here), counts no restart, and every recipient gets
        exactly one message."""
        a = await engine_factory(names="a", node_name="node-a", lease_ttl=60.0)
        b = await engine_factory(names="b", node_name="node-b", lease_ttl=60.0, scheduler_poll=POLL)
        await a.newsletter(300)
        letter = await a.letter()
        await a.send(letter.id)
        await while_draining(a, letter.id, a.stop, after_messages=40)
        await taken_over(b, letter.id, timeout=10)  # well within the lease's minute
        done = await b.wait_until_done(letter.id)

        assert done.status is LetterStatus.SENT
        assert done.mail_order.get("restarts", 0) == 0
        emails = await a.emails()
        assert received(a.sink) == dict.fromkeys(emails.values(), 1)

    async def test_a_node_stopping_keeps_its_lease_while_its_messages_in_flight_finish(
        self, engine_factory: EngineFactory
    ) -> None:
        """A node shutting down waits for its messages in flight; however long that takes, it keeps
        renewing the lease, so no other node takes the letter over and sends those messages again.
        Then it releases the lease, the other node resumes at once, and each recipient gets exactly
        one message."""
        a, b = await start_nodes(engine_factory)
        await a.newsletter(300)
        letter = await a.letter()
        await a.send(letter.id)
        await a.sink.wait_for_messages(40)
        holds = await hold_replies(a.sink)
        drain = GenServer.get_state(a.service(letter.id)).drain
        expiry = (await letters.get_letter(a.pool, letter.id)).lease_expires_at

        stopping = asyncio.create_task(a.stop())
        async with asyncio.timeout(10):
            await drain.wait()

        async def renewed_while_stopping() -> bool:
            lease = (await letters.get_letter(a.pool, letter.id)).lease_expires_at
            return lease is not None and expiry is not None and lease > expiry

        async def lease_would_have_expired() -> bool:
            past: bool = await a.pool.fetchval("SELECT now() > $1", expiry)
            return past

        await eventually(renewed_while_stopping)
        await eventually(lease_would_have_expired)
        still = await letters.get_letter(a.pool, letter.id)
        assert still.owner_node == "node-a"
        assert LetterDeliveryDispatcher.running(b.context, letter.id) is None
        for hold in holds:
            hold.release()
        await stopping
        await taken_over(b, letter.id, timeout=10)
        done = await b.wait_until_done(letter.id)

        assert done.status is LetterStatus.SENT
        assert done.mail_order.get("restarts", 0) == 0
        emails = await a.emails()
        assert received(a.sink) == dict.fromkeys(emails.values(), 1)


class TestLeaseLost:
    """A node whose lease was taken over (it stalled past the lease, say) stops sending the letter."""

    async def test_a_node_whose_lease_was_taken_claims_nobody_more(
        self, engine_factory: EngineFactory, restarts: list[Pid]
    ) -> None:
        """The lease is taken from under a sending node. Its next claim is refused: it lets the
        messages in flight finish, records them, gives back those still waiting for an SMTP turn,
        claims nobody more, and stops normally without touching the letter (status, summary and
        lease stay the new holder's)."""
        a = await engine_factory(names="a", node_name="node-a", lease_ttl=60.0)
        await a.newsletter(300)
        letter = await a.letter()
        await a.send(letter.id)
        await a.sink.wait_for_messages(40)
        holds = await hold_replies(a.sink)
        service = a.service(letter.id)
        stolen_at = await claimed_rows(a, letter.id)
        await steal_lease(a, letter.id)
        before = await letters.get_letter(a.pool, letter.id)

        for hold in holds:
            hold.release()
        assert await await_exit(service, timeout=10) == NORMAL

        after = await letters.get_letter(a.pool, letter.id)
        assert after.status is LetterStatus.SENDING
        assert (after.owner_node, after.mail_order) == ("node-x", before.mail_order)
        assert await claimed_rows(a, letter.id) <= stolen_at  # given back: attempt refunded
        assert len(a.sink.messages) <= stolen_at
        assert LetterDeliveryDispatcher.running(a.context, letter.id) is None
        assert restarts == []

    async def test_a_renewal_that_finds_the_lease_taken_stops_sending_at_once(
        self, engine_factory: EngineFactory
    ) -> None:
        """The lease is taken while every SMTP reply of the node is held: its next renewal finds it
        lost and the service kills its recipient tasks at once, without waiting for them, and stops
        normally; none of the held messages is ever accepted, and the letter is left alone."""
        a = await engine_factory(names="a", node_name="node-a", lease_ttl=TTL)
        await a.newsletter(300)
        letter = await a.letter()
        await a.send(letter.id)
        await a.sink.wait_for_messages(40)
        holds = await hold_replies(a.sink)
        service = a.service(letter.id)
        await steal_lease(a, letter.id)
        accepted = len(a.sink.messages)

        assert await await_exit(service, timeout=10) == NORMAL

        assert all(not hold.released.is_set() for hold in holds)  # killed, not drained
        for hold in holds:
            hold.release()
        after = await letters.get_letter(a.pool, letter.id)
        assert (after.status, after.owner_node) == (LetterStatus.SENDING, "node-x")
        assert len(a.sink.messages) == accepted


class TestCommandsAcrossNodes:
    async def test_a_letter_paused_on_another_node_stops_where_it_is_sent(
        self, engine_factory: EngineFactory
    ) -> None:
        """Node B pauses a letter node A is sending: A sees it at its next claim or renewal, lets its
        messages in flight finish, and stops, releasing the lease; resumed on B, the letter is sent
        by B, and every recipient gets exactly one message."""
        a, b = await start_nodes(engine_factory)
        await a.newsletter(300)
        letter = await a.letter()
        await a.send(letter.id)
        await a.sink.wait_for_messages(40)
        service = a.service(letter.id)

        paused = await letter_commands.pause_letter(b.context, letter.id)
        assert await await_exit(service, timeout=10) == NORMAL

        assert paused["state"] == "paused"
        stopped = await letters.get_letter(a.pool, letter.id)
        assert (stopped.status, stopped.owner_node) == (LetterStatus.PAUSED, None)
        assert (await deliveries.count_deliveries(a.pool, letter.id)).sending == 0
        resumed = await letter_commands.resume_letter(b.context, letter.id)
        assert resumed["message"] == "resumed"
        done = await b.wait_until_done(letter.id)
        assert done.status is LetterStatus.SENT
        emails = await a.emails()
        assert received(a.sink) == dict.fromkeys(emails.values(), 1)
