"""Signed approvals: bound to the exact command, usable once, expiring, quorum, across restarts."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from symbiote.bootstrap import register_key, revoke_key, set_policy
from symbiote.bus.envelope import Envelope, make_event
from symbiote.bus.ids import new_event_id
from symbiote.cli.approvals import sign_answer
from symbiote.dispatcher import Dispatcher, Executors
from symbiote.registry.commands import load_life, pending_approvals
from symbiote.registry.definition import ApprovalPolicy
from symbiote.registry.follower import RegistryFollower
from symbiote.signers.keys import SigningKey, sign_event
from tests.helpers import World, is_terminal

pytestmark = pytest.mark.timeout(60)


async def requested(world: World, argv: list[str]) -> Envelope:
    proposal = await world.propose("shell.run", {"argv": argv})
    await world.wait_for(proposal.id, lambda evs: "command.approval_requested" in [e.type for e in evs])
    return proposal


def notes(events: list[Envelope]) -> list[str]:
    return [e.body["reason"] for e in events if e.type == "command.denied" and e.cause != e.body["command_id"]]


async def test_approved_command_runs_exactly_once(world: World, dispatcher: Dispatcher) -> None:
    proposal = await requested(world, ["echo", "approved"])
    request = next(e for e in await world.command_events(proposal.id) if e.type == "command.approval_requested")
    assert request.body["digest"] == proposal.digest()
    assert request.body["principals"] == ["user:alice"] and request.body["needs"] == 1
    pending = await pending_approvals(world.bus, RegistryFollower(world.bus))
    assert [life.command_id for life in pending] == [proposal.id]
    approval = sign_answer(proposal, world.user, approve=True)
    await world.bus.publish(approval)
    outcome = await world.wait_terminal(proposal.id)
    assert outcome.type == "command.succeeded" and outcome.body["output"]["stdout"] == "approved\n"
    # the same approval replayed (new message id) changes nothing but a note
    await world.bus.publish_raw(f"sym.cmd.{proposal.id}.approved", approval.to_wire(), msg_id=new_event_id())
    events = await world.wait_for(proposal.id, lambda evs: "duplicate" in notes(evs))
    assert [e.type for e in events].count("command.started") == 1
    # a fresh approval for a decided command changes nothing either
    await world.bus.publish(sign_answer(proposal, world.user, approve=True))
    events = await world.wait_for(proposal.id, lambda evs: notes(evs).count("duplicate") == 2)
    assert [e.type for e in events].count("command.started") == 1


async def test_rejection_ends_the_command(world: World, dispatcher: Dispatcher) -> None:
    proposal = await requested(world, ["echo", "no"])
    await world.bus.publish(sign_answer(proposal, world.user, approve=False))
    outcome = await world.wait_terminal(proposal.id)
    assert outcome.type == "command.denied" and outcome.body["reason"] == "rejected_by_user"
    assert "command.started" not in [e.type for e in await world.command_events(proposal.id)]


async def test_approval_over_other_arguments_is_refused(world: World, dispatcher: Dispatcher) -> None:
    proposal = await requested(world, ["echo", "safe"])
    # an approval of a *different* command (changed arguments) for this command id
    other = world.proposal("shell.run", {"argv": ["rm", "-rf", "/workspace"]})
    forged = sign_event(
        make_event(
            "command.approved",
            world.user.principal,
            {"command_id": proposal.id, "digest": other.digest()},
            cause=proposal.id,
        ),
        world.user,
    )
    await world.bus.publish(forged)
    events = await world.wait_for(proposal.id, lambda evs: "approval_digest_mismatch" in notes(evs))
    assert "command.started" not in [e.type for e in events]
    life = await load_life(world.bus, RegistryFollower(world.bus), proposal.id)
    assert life.pending_approval and not life.approvals


@pytest.mark.parametrize("attacker", ["agent", "runtime", "unregistered", "revoked", "tampered"])
async def test_approvals_from_the_wrong_signer_change_nothing(
    world: World, dispatcher: Dispatcher, attacker: str
) -> None:
    proposal = await requested(world, ["echo", "x"])
    if attacker == "agent":
        event = sign_event(
            make_event("command.approved", "user:alice", {"command_id": proposal.id, "digest": proposal.digest()}),
            world.agent,
        )
        expected = "wrong_role"
    elif attacker == "runtime":
        event = sign_answer(proposal, SigningKey(world.runtime.private, "runtime:main"), approve=True)
        expected = "wrong_role"
    elif attacker == "unregistered":
        event = sign_answer(proposal, SigningKey.generate("user:mallory"), approve=True)
        expected = "unknown_key"
    elif attacker == "revoked":
        bob = SigningKey.generate("user:bob")
        await register_key(world.bus, world.owner, bob.kid, "user:bob")
        await revoke_key(world.bus, world.owner, bob.kid, "user:bob")
        event = sign_answer(proposal, bob, approve=True)
        expected = "revoked_key"
    else:
        event = sign_answer(proposal, world.user, approve=True).model_copy(update={"actor": "user:alice", "at": 1})
        expected = "bad_signature"
    await world.bus.publish(event)
    events = await world.wait_for(proposal.id, lambda evs: expected in notes(evs))
    assert "command.started" not in [e.type for e in events]


async def test_two_of_three_quorum(world: World, dispatcher: Dispatcher) -> None:
    users = {name: SigningKey.generate(f"user:{name}") for name in ("ann", "ben", "cat")}
    for name, key in users.items():
        await register_key(world.bus, world.owner, key.kid, f"user:{name}")
    await set_policy(
        world.bus,
        world.owner,
        "shell.run",
        ApprovalPolicy(mode="user", quorum=2, principals=[f"user:{n}" for n in users]),
    )
    proposal = await requested(world, ["echo", "quorum"])
    # alice is not listed; ann twice counts once
    await world.bus.publish(sign_answer(proposal, world.user, approve=True))
    await world.bus.publish(sign_answer(proposal, users["ann"], approve=True))
    await world.bus.publish(sign_answer(proposal, users["ann"], approve=True))
    await world.wait_for(proposal.id, lambda evs: "not_permitted" in notes(evs))
    life = await load_life(world.bus, RegistryFollower(world.bus), proposal.id)
    assert sorted(life.approvals) == ["user:ann"] and life.pending_approval
    await world.bus.publish(sign_answer(proposal, users["cat"], approve=True))
    outcome = await world.wait_terminal(proposal.id)
    assert outcome.type == "command.succeeded"
    assert [e.type for e in await world.command_events(proposal.id)].count("command.started") == 1


async def test_expiry_ends_the_request_and_late_approvals_are_refused(world: World, dispatcher: Dispatcher) -> None:
    await set_policy(world.bus, world.owner, "shell.run", ApprovalPolicy(mode="user", expires_in=1))
    proposal = await requested(world, ["echo", "late"])
    outcome = await world.wait_terminal(proposal.id, timeout=10)
    assert outcome.type == "command.denied" and outcome.body["reason"] == "expired"
    await world.bus.publish(sign_answer(proposal, world.user, approve=True))
    events = await world.wait_for(proposal.id, lambda evs: len(notes(evs)) >= 1)
    assert "command.started" not in [e.type for e in events]


async def test_an_approval_signed_after_the_expiry_never_counts(world: World, dispatcher: Dispatcher) -> None:
    """The phone's clock says it signed after the request expired, while the dispatcher's clock
    says the request is still open: the approval is refused and does not count later either."""
    await set_policy(world.bus, world.owner, "shell.run", ApprovalPolicy(mode="user", expires_in=60))
    proposal = await requested(world, ["echo", "skewed"])
    request = next(e for e in await world.command_events(proposal.id) if e.type == "command.approval_requested")
    body = {"command_id": proposal.id, "digest": proposal.digest()}
    late = make_event(
        "command.approved", world.user.principal, body, corr=proposal.corr, cause=proposal.id,
        at=request.body["expires_at"] + 1,
    )  # fmt: skip
    await world.bus.publish(sign_event(late, world.user))
    events = await world.wait_for(proposal.id, lambda evs: "expired" in notes(evs))
    life = await load_life(world.bus, RegistryFollower(world.bus), proposal.id)
    assert life.pending_approval and not life.approvals
    assert "command.started" not in [e.type for e in events]
    # a timely approval still works
    await world.bus.publish(sign_answer(proposal, world.user, approve=True))
    outcome = await world.wait_terminal(proposal.id)
    assert outcome.type == "command.succeeded"


async def test_approval_while_the_dispatcher_is_down(world: World, tmp_path: Path) -> None:
    async with Dispatcher(world.bus, world.runtime, Executors(tmp_path / "ws")):
        proposal = await requested(world, ["echo", "offline"])
    # dispatcher stopped: the approval waits in the log
    await world.bus.publish(sign_answer(proposal, world.user, approve=True))
    assert "command.started" not in [e.type for e in await world.command_events(proposal.id)]
    async with Dispatcher(world.bus, world.runtime, Executors(tmp_path / "ws")):
        outcome = await world.wait_terminal(proposal.id)
    assert outcome.type == "command.succeeded" and outcome.body["output"]["stdout"] == "offline\n"


async def test_approval_arriving_twice_at_once(world: World, dispatcher: Dispatcher) -> None:
    proposal = await requested(world, ["echo", "twice"])
    approval = sign_answer(proposal, world.user, approve=True)
    await world.bus.publish(approval)
    await world.bus.publish_raw(f"sym.cmd.{proposal.id}.approved", approval.to_wire(), msg_id=new_event_id())
    outcome = await world.wait_terminal(proposal.id)
    assert outcome.type == "command.succeeded"
    events = await world.wait_for(proposal.id, lambda evs: "duplicate" in notes(evs))
    assert [e.type for e in events].count("command.started") == 1


async def test_confidence_never_lowers_what_a_command_needs(world: World, dispatcher: Dispatcher) -> None:
    proposal = await world.propose("shell.run", {"argv": ["echo", "sure"]}, confidence=1.0)
    events = await world.wait_for(proposal.id, lambda evs: "command.approval_requested" in [e.type for e in evs])
    assert "command.started" not in [e.type for e in events]


async def test_approval_for_unknown_command_is_noted(world: World, dispatcher: Dispatcher) -> None:
    ghost = world.proposal("shell.run", {"argv": ["true"]})  # never published
    await world.bus.publish(sign_answer(ghost, world.user, approve=True))
    events = await world.wait_for(ghost.id, lambda evs: any(e.type == "command.denied" for e in evs))
    assert notes(events) == ["malformed"]


async def test_forged_decisions_change_nothing(world: World, dispatcher: Dispatcher) -> None:
    proposal = await requested(world, ["echo", "still-mine"])
    for key, kind, body in (
        (world.user, "command.denied", {"reason": "rejected_by_user", "detail": "forged"}),
        (world.agent, "command.started", {"sandbox": {}}),
        (world.owner, "command.succeeded", {"exit_code": 0, "output": {}, "duration_ms": 0}),
    ):
        forged = sign_event(
            make_event(kind, key.principal, {"command_id": proposal.id, **body}, cause=proposal.id), key
        )
        await world.bus.publish(forged)
    life = await load_life(world.bus, RegistryFollower(world.bus), proposal.id)
    assert life.pending_approval and life.terminal is None and not life.started_seq, "only the runtime decides"
    await world.bus.publish(sign_answer(proposal, world.user, approve=True))
    outcome = await world.wait_for(
        proposal.id, lambda evs: any(e.type == "command.succeeded" and e.actor == "runtime:main" for e in evs)
    )
    assert [e.type for e in outcome if e.actor == "runtime:main"].count("command.started") == 1


async def test_decisions_copied_from_another_command_change_nothing(world: World, dispatcher: Dispatcher) -> None:
    """The runtime's signed start and outcome of command A, copied onto B's subjects by someone who
    can publish (no key needed), must not end B: a decision counts only for the command it names."""
    done = await world.propose("echo", {"text": "A"})
    await world.wait_terminal(done.id)
    pending = await requested(world, ["echo", "B"])
    for event in await world.command_events(done.id):
        if event.type in ("command.started", "command.succeeded"):
            phase = event.type.rsplit(".", 1)[1]
            await world.bus.publish_raw(f"sym.cmd.{pending.id}.{phase}", event.to_wire(), msg_id=new_event_id())
    life = await load_life(world.bus, RegistryFollower(world.bus), pending.id)
    assert life.pending_approval and not life.started_seq and life.terminal is None
    await world.bus.publish(sign_answer(pending, world.user, approve=True))
    outcome = await world.wait_for(
        pending.id,
        lambda evs: any(e.type == "command.succeeded" and e.body["command_id"] == pending.id for e in evs),
    )
    mine = [e for e in outcome if e.body.get("command_id") == pending.id]
    assert [e.type for e in mine].count("command.started") == 1
    assert next(e for e in mine if e.type == "command.succeeded").body["output"]["stdout"] == "B\n"


async def test_two_approvals_for_one_command_run_it_once_and_keep_its_outcome(
    world: World, dispatcher: Dispatcher
) -> None:
    """A double tap (or phone and terminal both): the second approval, logged before the start but
    handled while the command runs, must not close the running command as outcome_unknown."""
    proposal = await requested(world, ["sh", "-c", "sleep 1; echo done"])
    first, second = sign_answer(proposal, world.user, approve=True), sign_answer(proposal, world.user, approve=True)
    await asyncio.gather(world.bus.publish(first), world.bus.publish(second))
    outcome = await world.wait_terminal(proposal.id)
    assert outcome.type == "command.succeeded" and outcome.body["output"]["stdout"] == "done\n"
    await asyncio.sleep(0.5)  # anything the second approval would still write
    events = await world.command_events(proposal.id)
    assert [e.type for e in events].count("command.started") == 1
    assert not [e for e in events if e.type == "command.denied" and e.body["reason"] == "outcome_unknown"]
    assert [e for e in events if is_terminal(e, proposal.id)] == [outcome]


async def test_a_command_flooded_with_junk_still_takes_its_approval(world: World, dispatcher: Dispatcher) -> None:
    """Anyone who can publish can add messages on a command's subjects: its history is read whole."""
    proposal = await requested(world, ["echo", "through"])
    subject = f"sym.cmd.{proposal.id}.junk"
    for start in range(0, 1100, 100):
        await asyncio.gather(*(world.bus.publish_raw(subject, b"\xc0") for _ in range(start, start + 100)))
    await world.bus.publish(sign_answer(proposal, world.user, approve=True))
    outcome = await world.wait_terminal(proposal.id, timeout=30)
    assert outcome.type == "command.succeeded" and outcome.body["output"]["stdout"] == "through\n"
