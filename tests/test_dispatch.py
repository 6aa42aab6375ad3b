"""The dispatcher against a real nats-server and real bubblewrap: every rule, every refusal."""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest

from symbiote.bootstrap import define_command, register_key, revoke_key, set_policy
from symbiote.bus.canonical import canon
from symbiote.bus.envelope import Envelope, make_event
from symbiote.bus.ids import new_event_id, now_ms
from symbiote.bus.server import NatsServer
from symbiote.bus.stream import Bus
from symbiote.dispatcher import Dispatcher, Executors
from symbiote.dispatcher.service import ORPHAN_GRACE_S
from symbiote.errors import ConflictError
from symbiote.registry.definition import ApprovalPolicy, CommandDefinition, validate_args
from symbiote.signers.keys import SigningKey, sign_event
from tests.helpers import World, eventually, is_terminal

pytestmark = pytest.mark.timeout(60)


def types(events: list[Envelope]) -> list[str]:
    return [e.type.rsplit(".", 1)[1] for e in events]


async def test_auto_command_runs_once_and_reports(world: World, dispatcher: Dispatcher) -> None:
    proposal = await world.propose("echo", {"text": "hello"})
    outcome = await world.wait_terminal(proposal.id)
    assert outcome.type == "command.succeeded"
    assert outcome.body["output"] == {"text": "hello"}
    assert outcome.actor == "runtime:main" and outcome.sigs[0].kid == world.runtime.kid
    assert types(await world.command_events(proposal.id)) == ["proposed", "started", "succeeded"]


async def test_a_start_is_stamped_with_the_time_its_proposal_was_judged_at(world: World, tmp_path: Path) -> None:
    """The audit re-judges the proposal's expiry at the start's ``at``: it must be the dispatcher's
    time of judgement, not a later moment (a proposal expiring in between would look expired)."""
    judged_at = now_ms()
    async with Dispatcher(world.bus, world.runtime, Executors(tmp_path / "ws"), clock=lambda: judged_at):
        proposal = await world.propose("echo", {"text": "on time"})
        await world.wait_terminal(proposal.id)
    started = next(e for e in await world.command_events(proposal.id) if e.type == "command.started")
    assert started.at == judged_at


def test_a_schema_reference_it_does_not_hold_is_a_problem_not_a_crash_nor_a_fetch() -> None:
    for ref in ("#/$defs/missing", "http://127.0.0.1:9/schema.json"):
        definition = CommandDefinition(name="x", description="d", executor="noop", args_schema={"$ref": ref})
        problem = validate_args(definition, {"a": 1})
        assert problem is not None and "does not hold" in problem and ref in problem
    local = {"$defs": {"word": {"type": "string"}}, "properties": {"w": {"$ref": "#/$defs/word"}}}
    definition = CommandDefinition(name="x", description="d", executor="noop", args_schema=local)
    assert validate_args(definition, {"w": "ok"}) is None
    assert validate_args(definition, {"w": 5}) == "w: 5 is not of type 'string'"


async def test_sandboxed_command_writes_only_its_workspace(
    world: World, dispatcher: Dispatcher, tmp_path: Path
) -> None:
    proposal = await world.propose("note.write", {"name": "todo.txt", "text": "buy milk\n"})
    outcome = await world.wait_terminal(proposal.id)
    assert outcome.type == "command.succeeded", outcome.body
    started = next(e for e in await world.command_events(proposal.id) if e.type == "command.started")
    assert started.body["sandbox"]["backend"] == "bwrap"
    assert started.body["sandbox"]["profile"]["network"] is None
    note = tmp_path / "ws" / proposal.id / "notes" / "todo.txt"
    assert note.read_text() == "buy milk\n"


async def _denial(world: World, command_id: str) -> Envelope:
    outcome = await world.wait_terminal(command_id)
    assert outcome.type == "command.denied", outcome
    return outcome


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("unknown_command", "unknown_command"),
        ("invalid_args", "invalid_args"),
        ("expired", "expired"),
        ("unregistered_key", "unknown_key"),
        ("user_key_proposes", "wrong_role"),
        ("agent_key_signs_as_user", "wrong_role"),
        ("tampered_body", "bad_signature"),
        ("forged_signature", "bad_signature"),
        ("unsigned", "bad_signature"),
    ],
)
async def test_bad_proposals_are_denied_with_their_reason(
    world: World, dispatcher: Dispatcher, case: str, reason: str
) -> None:
    if case == "unknown_command":
        event = world.proposal("rm.everything", {})
    elif case == "invalid_args":
        event = world.proposal("echo", {"text": 42})
    elif case == "expired":
        event = world.proposal("echo", {"text": "late"}, expires_in_ms=-1)
    elif case == "unregistered_key":
        event = world.proposal("echo", {"text": "x"}, key=SigningKey.generate("agent:rogue"))
    elif case == "user_key_proposes":
        event = world.proposal("echo", {"text": "x"}, key=world.user)
    elif case == "agent_key_signs_as_user":
        event = world.proposal("echo", {"text": "x"}, actor="user:alice")
    elif case == "tampered_body":
        event = world.proposal("echo", {"text": "x"}).model_copy(
            update={
                "body": {
                    "command": "echo",
                    "args": {"text": "tampered"},
                    "confidence": 0.9,
                    "expires_at": now_ms() + 60_000,
                }
            }
        )
    elif case == "forged_signature":
        signed = world.proposal("echo", {"text": "x"})
        event = signed.model_copy(update={"sigs": ()}).with_sig(world.agent.kid, b"\x01" * 64)
    else:
        event = world.proposal("echo", {"text": "x"}).model_copy(update={"sigs": ()})
    await world.bus.publish(event)
    denied = await _denial(world, event.id)
    assert denied.body["reason"] == reason, denied.body
    assert denied.body["command_id"] == event.id
    assert "command.started" not in [e.type for e in await world.command_events(event.id)]


async def test_revoked_key_is_denied(world: World, dispatcher: Dispatcher) -> None:
    await revoke_key(world.bus, world.owner, world.agent.kid, "agent:main")
    proposal = await world.propose("echo", {"text": "x"})
    assert (await _denial(world, proposal.id)).body["reason"] == "revoked_key"


async def test_malformed_bytes_are_denied_or_counted_and_kept(world: World, dispatcher: Dispatcher) -> None:
    good = world.proposal("echo", {"text": "x"})
    raw = msgpack.unpackb(good.to_wire(), raw=False)
    noncanonical = msgpack.packb(dict(reversed(list(raw.items()))), use_bin_type=True)
    await world.bus.publish_raw(f"sym.cmd.{good.id}.proposed", noncanonical, msg_id=good.id)
    assert (await _denial(world, good.id)).body["reason"] == "malformed"

    garbage_id = new_event_id()
    await world.bus.publish_raw(f"sym.cmd.{garbage_id}.proposed", b"\xc1not msgpack", msg_id=garbage_id)
    assert (await _denial(world, garbage_id)).body["reason"] == "malformed"

    other = world.proposal("echo", {"text": "y"})
    big = canon({**msgpack.unpackb(other.to_wire(), raw=False), "pad": b"x" * 300_000})
    await world.bus.publish_raw(f"sym.cmd.{other.id}.proposed", big, msg_id=other.id)
    assert (await _denial(world, other.id)).body["reason"] == "malformed"

    mismatched = world.proposal("echo", {"text": "z"})
    wrong_subject = new_event_id()
    await world.bus.publish_raw(f"sym.cmd.{wrong_subject}.proposed", mismatched.to_wire(), msg_id=wrong_subject)
    assert (await _denial(world, wrong_subject)).body["reason"] == "malformed"

    before = dispatcher.counts["rejected_unreadable"]
    await world.bus.publish_raw("sym.cmd.not-an-id.proposed", b"junk", msg_id=new_event_id())
    await eventually(lambda: _gt(dispatcher.counts["rejected_unreadable"], before))
    # nothing is lost: every input is still in the stream
    subjects = [m.subject for m, _ in await world.events("sym.cmd.>")]
    assert "sym.cmd.not-an-id.proposed" in subjects
    assert subjects.count(f"sym.cmd.{garbage_id}.proposed") == 1


async def _gt(a: int, b: int) -> bool:
    return a > b


async def test_replayed_proposal_is_denied_as_duplicate_and_runs_once(world: World, dispatcher: Dispatcher) -> None:
    proposal = await world.propose("echo", {"text": "once"})
    await world.wait_terminal(proposal.id)
    # replay the same signed bytes after the fact (a different Nats-Msg-Id defeats de-duplication)
    await world.bus.publish_raw(f"sym.cmd.{proposal.id}.proposed", proposal.to_wire(), msg_id=new_event_id())
    events = await world.wait_for(
        proposal.id, lambda evs: any(e.type == "command.denied" and e.body["reason"] == "duplicate" for e in evs)
    )
    assert types(events).count("started") == 1
    assert types(events).count("succeeded") == 1
    duplicate = next(e for e in events if e.type == "command.denied")
    assert duplicate.cause is None, "a note about a replay does not end the command"


async def test_same_event_id_is_deduplicated_by_the_stream(world: World, dispatcher: Dispatcher) -> None:
    proposal = world.proposal("echo", {"text": "dedupe"})
    first = await world.bus.publish(proposal)
    second = await world.bus.publish(proposal)
    assert second.duplicate and second.seq == first.seq


async def test_a_duplicate_is_checked_against_what_holds_its_id(world: World) -> None:
    """The same event made again (after a crash: a later time, the same signer) is a duplicate,
    quietly; another message published first under the event's id is not: IdTakenError."""
    from symbiote.errors import IdTakenError

    proposal = world.proposal("echo", {"text": "once"})
    first = await world.bus.publish(proposal)
    remade = sign_event(proposal.model_copy(update={"at": proposal.at + 5, "sigs": ()}), world.agent)
    again = await world.bus.publish(remade)
    assert again.duplicate and again.seq == first.seq
    squatted = world.proposal("echo", {"text": "mine"})
    await world.bus.publish_raw("sym.in.text", b"\x93squat", msg_id=squatted.id)
    with pytest.raises(IdTakenError) as info:
        await world.bus.publish(squatted)
    assert info.value.fields["event_id"] == squatted.id
    forged = world.proposal("echo", {"text": "other"}, key=SigningKey.generate("agent:main"))
    await world.bus.publish_raw(f"sym.cmd.{forged.id}.proposed", forged.to_wire(), msg_id=forged.id)
    real = forged.model_copy(update={"sigs": ()})
    with pytest.raises(IdTakenError):  # same id and actor, another key: not this event made again
        await world.bus.publish(sign_event(real, world.agent))
    from symbiote.bus.envelope import Sig

    mine = world.proposal("echo", {"text": "mine"})
    junk = mine.model_copy(
        update={"body": {**mine.body, "args": {"text": "theirs"}}, "sigs": (Sig(kid=world.agent.kid, sig=bytes(64)),)}
    )
    await world.bus.publish_raw(f"sym.cmd.{mine.id}.proposed", junk.to_wire(), msg_id=mine.id)
    with pytest.raises(IdTakenError):  # the agent's kid, with a signature that does not hold
        await world.bus.publish(mine)


async def test_a_conditional_publish_whose_answer_was_lost_is_not_taken_for_a_lost_race(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server stores a publish that expects the command's last sequence, and its answer is
    lost on the way: the retry, refused for the sequence (the server checks that before
    duplicates), is found to be our own message, not another writer's."""
    import nats.errors

    proposal = await world.propose("echo", {"text": "x"})
    last = (await world.bus.history(f"sym.cmd.{proposal.id}.>"))[-1].seq
    real_publish = world.bus.js.publish
    calls = 0

    async def answer_lost(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        ack = await real_publish(*args, **kwargs)
        if calls == 1:
            raise nats.errors.TimeoutError  # stored, but no answer came back
        return ack

    monkeypatch.setattr(world.bus.js, "publish", answer_lost)
    started = sign_event(
        make_event("command.started", world.runtime.principal, {"command_id": proposal.id, "sandbox": {}}),
        world.runtime,
    )
    ack = await world.bus.publish(started, expect_last_seq=last, expect_subject=f"sym.cmd.{proposal.id}.>")
    assert calls == 2 and ack.duplicate and ack.seq == last + 1
    assert [e.id for e in await world.command_events(proposal.id)] == [proposal.id, started.id]
    other = sign_event(
        make_event("command.started", world.runtime.principal, {"command_id": proposal.id}), world.runtime
    )
    with pytest.raises(ConflictError):  # a real lost race is still one
        await world.bus.publish(other, expect_last_seq=last, expect_subject=f"sym.cmd.{proposal.id}.>")


async def test_crash_after_start_gives_outcome_unknown_unless_idempotent(world: World, tmp_path: Path) -> None:
    # a command whose "started" exists but whose outcome was never written (the executor died)
    results = {}
    for command, args in (("note.write", {"name": "a.txt", "text": "x"}), ("echo", {"text": "again"})):
        proposal = world.proposal(command, args)
        ack = await world.bus.publish(proposal)
        started = sign_event(
            make_event(
                "command.started", "runtime:main", {"command_id": proposal.id, "sandbox": {}}, cause=proposal.id
            ),
            world.runtime,
        )
        await world.bus.publish(started, expect_last_seq=ack.seq, expect_subject=f"sym.cmd.{proposal.id}.>")
        results[command] = proposal.id
    # a start this recent may still be running elsewhere: nothing is done about it yet
    async with Dispatcher(world.bus, world.runtime, Executors(tmp_path / "ws"), durable="early") as early:

        async def both_seen() -> bool:
            return early.counts["running_elsewhere"] >= 2

        await eventually(both_seen)
    for cid in results.values():
        assert types(await world.command_events(cid)) == ["proposed", "started"]
    # once past its time limit and the grace after it, the runner is taken for dead
    overdue = (30 + ORPHAN_GRACE_S) * 1000 + 5_000
    async with Dispatcher(world.bus, world.runtime, Executors(tmp_path / "ws"), clock=lambda: now_ms() + overdue):
        unknown = await world.wait_terminal(results["note.write"])
        rerun = await world.wait_terminal(results["echo"])
    assert unknown.type == "command.denied" and unknown.body["reason"] == "outcome_unknown"
    assert rerun.type == "command.succeeded", "echo is idempotent: it is re-run"


async def test_no_approver_means_not_permitted(world: World, dispatcher: Dispatcher) -> None:
    await set_policy(world.bus, world.owner, "shell.run", ApprovalPolicy(mode="user", principals=["user:nobody"]))
    proposal = await world.propose("shell.run", {"argv": ["true"]})
    denied = await _denial(world, proposal.id)
    assert denied.body["reason"] == "not_permitted"


async def test_policy_is_judged_at_the_proposal_position(world: World, dispatcher: Dispatcher) -> None:
    # shell.run made auto by a policy change: proposals after it run without approval, and
    # proposals before a later tightening keep the policy they were judged with.
    await set_policy(world.bus, world.owner, "shell.run", ApprovalPolicy(mode="none"))
    proposal = await world.propose("shell.run", {"argv": ["echo", "policy"]})
    outcome = await world.wait_terminal(proposal.id)
    assert outcome.type == "command.succeeded" and outcome.body["output"]["stdout"] == "policy\n"
    await set_policy(world.bus, world.owner, "shell.run", ApprovalPolicy(mode="user"))
    later = await world.propose("shell.run", {"argv": ["echo", "later"]})
    await world.wait_for(later.id, lambda evs: "command.approval_requested" in [e.type for e in evs])


async def test_an_old_definition_published_again_does_not_undo_a_later_policy(
    world: World, dispatcher: Dispatcher
) -> None:
    """Every log holds the owner-signed ``command.defined`` events of ``init``: a copy of one
    published again (past the stream's de-duplication) must not bring back the policy it had."""
    await set_policy(world.bus, world.owner, "echo", ApprovalPolicy(mode="user"))
    original = next(
        m for m, e in await world.events("sym.reg.>") if e and e.body.get("definition", {}).get("name") == "echo"
    )
    await world.bus.publish_raw(original.subject, original.data)  # no Nats-Msg-Id: stored again
    proposal = await world.propose("echo", {"text": "needs a yes"})
    await world.wait_for(proposal.id, lambda evs: "command.approval_requested" in [e.type for e in evs])
    assert "command.started" not in types(await world.command_events(proposal.id))


async def test_two_dispatchers_never_run_a_command_twice(world: World, tmp_path: Path) -> None:
    ids = []
    async with (
        Dispatcher(world.bus, world.runtime, Executors(tmp_path / "ws1")),
        Dispatcher(world.bus, world.runtime, Executors(tmp_path / "ws2")),
    ):
        for i in range(100):
            ids.append((await world.propose("echo", {"text": str(i)})).id)
        for cid in ids:
            await world.wait_terminal(cid)
    for cid in ids:
        kinds = types(await world.command_events(cid))
        assert kinds.count("started") == 1 and kinds.count("succeeded") == 1, kinds


async def test_consumers_survive_a_nats_server_restart(
    world: World, dispatcher: Dispatcher, nats_server: NatsServer
) -> None:
    first = await world.propose("echo", {"text": "before"})
    await world.wait_terminal(first.id)
    await nats_server.restart()
    second = await world.propose("echo", {"text": "after"})
    outcome = await world.wait_terminal(second.id, timeout=30)
    assert outcome.type == "command.succeeded"


async def test_a_dispatcher_stops_at_once_when_nats_is_gone_before_it_ran(
    world: World, nats_server: NatsServer, tmp_path: Path
) -> None:
    """The server dies between ``async with`` and the dispatcher's first step: stopping it does
    not wait for minutes of retries to create a consumer that already exists."""
    import signal

    dispatcher = Dispatcher(world.bus, world.runtime, Executors(tmp_path / "ws"))
    await dispatcher.__aenter__()  # the durable consumer is created here, with the server up
    assert nats_server.pid is not None
    os.kill(nats_server.pid, signal.SIGKILL)  # before the dispatcher's task has taken a step
    await asyncio.wait_for(nats_server.exited(), 10)
    started = time.monotonic()
    await asyncio.wait_for(dispatcher.__aexit__(None, None, None), 15)
    assert time.monotonic() - started < 10


async def test_unknown_key_registered_later_does_not_count_earlier(world: World, dispatcher: Dispatcher) -> None:
    newcomer = SigningKey.generate("agent:late")
    early = world.proposal("echo", {"text": "x"}, key=newcomer)
    await world.bus.publish(early)
    assert (await _denial(world, early.id)).body["reason"] == "unknown_key"
    await register_key(world.bus, world.owner, newcomer.kid, "agent:late")
    late = await world.propose("echo", {"text": "x"}, key=newcomer)
    assert (await world.wait_terminal(late.id)).type == "command.succeeded"


async def test_bad_input_does_not_stop_the_dispatcher(world: World, dispatcher: Dispatcher) -> None:
    for _ in range(20):
        cid = new_event_id()
        await world.bus.publish_raw(f"sym.cmd.{cid}.proposed", b"\x92\x01", msg_id=cid)
        await world.bus.publish_raw(f"sym.cmd.{cid}.approved", b"\xff", msg_id=new_event_id())
    proposal = await world.propose("echo", {"text": "still alive"})
    assert (await world.wait_terminal(proposal.id)).type == "command.succeeded"
    assert dispatcher._service_task is not None and not dispatcher._service_task.done()
    await asyncio.sleep(0)
    assert is_terminal(await world.wait_terminal(proposal.id), proposal.id)


async def test_an_unreadable_first_message_followed_by_more_is_closed_once(world: World, tmp_path: Path) -> None:
    """A command's first message cannot be its proposal (unreadable, or another id) and more
    messages follow before the dispatcher gets to it: it is closed with one terminal denial after
    them (a denial that expected only the first message lost every retry, forever, and such
    messages piled up until the dispatcher took nothing new)."""
    poisoned = []
    for first in (b"\xc1garbage", world.proposal("echo", {"text": "another id"}).to_wire()):
        cid = new_event_id()
        await world.bus.publish_raw(f"sym.cmd.{cid}.proposed", first, msg_id=cid)
        await world.bus.publish_raw(f"sym.cmd.{cid}.approved", b"anything", msg_id=new_event_id())
        poisoned.append(cid)
    async with Dispatcher(world.bus, world.runtime, Executors(tmp_path / "ws")) as dispatcher:
        for cid in poisoned:
            denial = await world.wait_terminal(cid)
            assert denial.type == "command.denied" and denial.body["reason"] == "malformed"
        proposal = await world.propose("echo", {"text": "still served"})
        assert (await world.wait_terminal(proposal.id)).type == "command.succeeded"
        assert dispatcher.counts["bus_errors"] == 0
    for cid in poisoned:
        events = await world.command_events(cid)
        assert sum(is_terminal(e, cid) for e in events) == 1, [(e.type, e.body) for e in events]


async def test_only_the_runtimes_approval_requests_are_followed(world: World, dispatcher: Dispatcher) -> None:
    """Approval requests claiming to be the runtime's, signed by another key, for ``*`` or for an
    id their subject does not name, are not followed (the expiry check would read the whole log
    for ``*``, or judge a command for a forged one); the runtime's own is."""
    stranger = SigningKey.generate(world.runtime.principal)
    far = now_ms() + 3_600_000
    body = {"digest": bytes(32), "needs": 1, "principals": ["user:alice"], "expires_at": far}
    forged = [
        ("*", "sym.cmd.*.approval_requested", world.runtime),  # not a command id
        (new_event_id(), f"sym.cmd.{new_event_id()}.approval_requested", world.runtime),  # another subject
        (new_event_id(), None, stranger),  # the runtime's name, another key
    ]
    for cid, subject, key in forged:
        event = sign_event(make_event("command.approval_requested", key.principal, {"command_id": cid, **body}), key)
        await world.bus.publish_raw(subject or f"sym.cmd.{cid}.approval_requested", event.to_wire())
    risky = await world.propose("shell.run", {"argv": ["true"]})
    await eventually(lambda: _has(dispatcher._pending, risky.id))
    await asyncio.sleep(0.3)  # the forged ones came first: they would be there by now
    assert set(dispatcher._pending) == {risky.id}


async def _has(pending: dict[str, int], key: str) -> bool:
    return key in pending


async def test_bus_connects_to_a_list_of_servers(nats_url: str) -> None:
    from symbiote.bus.stream import Bus

    bus = await Bus.connect(f"nats://127.0.0.1:1,{nats_url}")  # the first is down: the pool moves on
    try:
        await bus.ensure_stream(replicas=1)
        assert await bus.last_seq() >= 0
        assert bus.nc.connected_url is not None and str(bus.nc.connected_url.port) == nats_url.rsplit(":", 1)[1]
    finally:
        await bus.close()


async def test_follow_resubscribes_after_a_server_restart(world: World, nats_server: NatsServer) -> None:
    seen: list[int] = []

    async def follow() -> None:
        async for msg in world.bus.follow("sym.in.>"):
            seen.append(msg.seq)

    task = asyncio.create_task(follow())
    try:
        first = await world.bus.publish(make_event("input.text", "user:alice", {"text": "before"}))
        await eventually(lambda: _is_in(first.seq, seen))
        await nats_server.restart()
        second = await world.bus.publish(make_event("input.text", "user:alice", {"text": "after"}))
        await eventually(lambda: _is_in(second.seq, seen), timeout=30)
        assert seen == [first.seq, second.seq], "nothing twice, nothing skipped"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _is_in(value: int, values: list[int]) -> bool:
    return value in values


async def test_output_too_large_for_the_log_is_cut_and_the_dispatcher_goes_on(world: World, tmp_path: Path) -> None:
    """Output far beyond what an event may hold (and binary output, which grows when made text)
    is kept as its beginning and end with the full size; the result is readable by everyone."""
    await define_command(
        world.bus,
        world.owner,
        CommandDefinition(name="loud", description="prints a lot", executor="shell", argv=["{argv*}"]),
    )
    async with Dispatcher(world.bus, world.runtime, Executors(tmp_path / "ws")) as dispatcher:
        counting = await world.propose("loud", {"argv": ["seq", "100000"]})  # 588,895 bytes of text
        noise = await world.propose("loud", {"argv": ["head", "-c", "700000", "/dev/urandom"]})
        for proposal in (counting, noise):
            outcome = await world.wait_terminal(proposal.id)  # decodes it: a reader accepts it
            assert outcome.type == "command.succeeded", outcome.body
            output = outcome.body["output"]
            assert output["truncated"] is True and len(outcome.to_wire()) < 200_000
        output = (await world.wait_terminal(counting.id)).body["output"]
        assert output["stdout_bytes"] == 588_895
        assert output["stdout"].startswith("1\n2\n3\n") and output["stdout"].endswith("99999\n100000\n")
        assert "bytes cut" in output["stdout"] and "stderr_bytes" not in output and output["stderr"] == ""
        after = await world.propose("echo", {"text": "still here"})
        assert (await world.wait_terminal(after.id)).type == "command.succeeded"
        assert dispatcher._service_task is not None and not dispatcher._service_task.done()


async def test_arguments_that_do_not_fill_the_template_fail_the_command_not_the_dispatcher(
    world: World, tmp_path: Path
) -> None:
    schema = {"type": "object", "properties": {"who": {"type": "string"}, "n": {"type": "integer"}}}
    for name, argv in (("greet", ["echo", "{who}"]), ("count", ["echo", "{n:s}"]), ("pick", ["echo", "{who[9]}"])):
        definition = CommandDefinition(name=name, description="d", executor="shell", argv=argv, args_schema=schema)
        await define_command(world.bus, world.owner, definition)

    async def broken(args: dict[str, object]) -> dict[str, object]:
        raise RuntimeError("the builtin broke")

    oops = CommandDefinition(name="oops", description="d", executor="builtin:oops")
    await define_command(world.bus, world.owner, oops)
    async with Dispatcher(world.bus, world.runtime, Executors(tmp_path / "ws", builtins={"oops": broken})) as d:
        cases = [("greet", {}), ("count", {"n": 5}), ("pick", {"who": "x"}), ("oops", {})]
        for command, args in cases:
            proposal = await world.propose(command, args)
            outcome = await world.wait_terminal(proposal.id)
            assert outcome.type == "command.failed", (command, outcome.body)
            error = outcome.body["output"]["error"]
            if command == "oops":
                assert outcome.body["exit_code"] == 1 and "the builtin broke" in error
            else:
                assert outcome.body["exit_code"] == 126 and "do not fill the command's template" in error
        proposal = await world.propose("greet", {"who": "world"})
        outcome = await world.wait_terminal(proposal.id)
        assert outcome.type == "command.succeeded" and outcome.body["output"]["stdout"] == "world\n"
        assert d._service_task is not None and not d._service_task.done()


async def test_an_event_no_reader_would_accept_is_not_published(world: World) -> None:
    from symbiote.bus.envelope import MAX_EVENT_BYTES
    from symbiote.errors import DecodeError

    before = await world.bus.last_seq()
    huge = sign_event(make_event("input.text", world.user.principal, {"text": "x" * MAX_EVENT_BYTES}), world.user)
    with pytest.raises(DecodeError, match="too large"):
        await world.bus.publish(huge)
    assert await world.bus.last_seq() == before


def test_fit_output_shares_the_room_and_keeps_both_ends() -> None:
    from symbiote.dispatcher.executors import fit_output

    small = {"stdout": "ok\n", "stderr": "", "timed_out": False}
    assert fit_output(small) is small
    wide = {"stdout": "é" * 100_000, "stderr": "short warning\n", "truncated": False}
    fitted = fit_output(wide, budget=10_000)
    assert len(canon(fitted, depth=3)) <= 10_000
    assert fitted["stderr"] == "short warning\n" and "stderr_bytes" not in fitted  # the short one is whole
    assert fitted["truncated"] is True and fitted["stdout_bytes"] == 200_000
    head, _, tail = fitted["stdout"].partition("\n[… ")
    assert head and set(head) == {"é"} and tail.endswith("é") and "bytes cut …]" in tail  # whole characters
    assert fit_output({"n": 2**70})["error"].startswith("the output cannot be kept in the log")
    assert fit_output({"rows": ["x" * 20_000]}, budget=10_000)["error"] == "the output is too large to keep in the log"


async def test_arguments_no_schema_can_check_are_invalid_not_a_crash(world: World, dispatcher: Dispatcher) -> None:
    schema = {"type": "object", "properties": {"x": {"type": "number", "multipleOf": 0.1}}}
    await define_command(
        world.bus, world.owner, CommandDefinition(name="measure", description="d", executor="noop", args_schema=schema)
    )
    for value in (float("inf"), float("nan")):
        proposal = await world.propose("measure", {"x": value})
        denied = await _denial(world, proposal.id)
        assert denied.body["reason"] == "invalid_args" and "cannot be checked" in denied.body["detail"]
    fine = await world.propose("measure", {"x": 0.5})
    assert (await world.wait_terminal(fine.id)).type == "command.succeeded"
    assert dispatcher._service_task is not None and not dispatcher._service_task.done()


def test_the_planner_refuses_numbers_json_cannot_hold() -> None:
    from symbiote.agents.planner import _parse

    assert _parse('{"command": "echo", "args": {"n": Infinity}, "confidence": 0.9}') is None
    assert _parse('{"command": "echo", "args": {"n": NaN}, "confidence": 0.9}') is None
    plan = _parse('{"command": "echo", "args": {"n": 1e308}, "confidence": 0.9}')
    assert plan is not None and plan.args == {"n": 1e308}


async def test_the_runtime_stops_when_its_dispatcher_fails(nats_url: str, tmp_path: Path) -> None:
    """A runtime that went on without its dispatcher would take requests nobody acts on: it stops,
    and the dispatcher's failure is what stopping it raises."""
    from symbiote.home import DataDir
    from symbiote.runtime import Runtime, RuntimeOptions

    options = RuntimeOptions(nats_url=nats_url, postgres=False, api=False)
    never = asyncio.Event()

    async def run_and_break() -> None:
        async with Runtime(DataDir(tmp_path / "home"), options) as runtime:
            assert runtime.dispatcher is not None
            serving = asyncio.create_task(runtime.serve_until(never))
            await asyncio.sleep(0.2)
            assert not serving.done()
            runtime.dispatcher._failure = RuntimeError("the dispatcher broke")  # as a sub-task's failure does
            runtime.dispatcher._stop.set()
            await asyncio.wait_for(serving, 10)

    with pytest.raises(RuntimeError, match="the dispatcher broke"):
        await run_and_break()


async def test_a_second_runtime_on_the_same_data_dir_is_refused(nats_url: str, tmp_path: Path) -> None:
    """Two runtimes on one data dir would run two servers on one store and take each other's
    runtime.json: the second is refused, naming the first, and the first runs on untouched."""
    from symbiote.errors import ConfigError
    from symbiote.home import DataDir
    from symbiote.runtime import Runtime, RuntimeOptions

    home = DataDir(tmp_path / "home")
    options = RuntimeOptions(nats_url=nats_url, postgres=False, api=False)
    async with Runtime(home, options):
        assert stat.S_IMODE(home.root.stat().st_mode) == 0o700  # made by up: the owner's alone
        written = home.runtime_file.read_text()
        home.root.chmod(0o711)  # as the embedded PostgreSQL's own user needs it, when root runs it
        with pytest.raises(ConfigError, match=rf"in use by symbiote up \(pid {os.getpid()}\)"):
            async with Runtime(home, options):
                pass
        assert home.runtime_file.read_text() == written
        assert stat.S_IMODE(home.root.stat().st_mode) == 0o711  # the refused one touched nothing
        with pytest.raises(ConfigError, match="in use by symbiote up"), home.lock("a command"):
            pass
    with home.lock("a command"):  # released with the runtime
        pass
    assert not home.runtime_file.exists()


def test_the_data_dir_is_made_private_and_an_existing_one_keeps_its_search_bits(tmp_path: Path) -> None:
    """Folders made here are 0700; an existing folder loses read and write for others but keeps
    the search bits a server run as another user needs (taking them would stop it mid-run)."""
    from symbiote.home import DataDir

    home = DataDir(tmp_path / "home")
    home.ensure()
    for path in (home.root, home.keys_dir, home.workspaces_dir, home.checkpoints_dir):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    home.root.chmod(0o755)
    home.keys_dir.chmod(0o777)
    home.ensure()
    assert stat.S_IMODE(home.root.stat().st_mode) == 0o711
    assert stat.S_IMODE(home.keys_dir.stat().st_mode) == 0o711


@pytest.mark.timeout(60)
async def test_the_runtime_stops_when_an_embedded_server_dies(tmp_path: Path) -> None:
    """A server killed under the runtime (PostgreSQL or nats-server) is not retried forever in
    silence: serving stops with ServerExitedError, naming the server and carrying its log."""
    import signal

    from symbiote.errors import ServerExitedError
    from symbiote.home import DataDir
    from symbiote.runtime import Runtime, RuntimeOptions

    async def run_and_kill() -> None:
        async with Runtime(DataDir(tmp_path / "home"), RuntimeOptions(postgres=False, api=False)) as runtime:
            (nats,) = runtime.servers
            serving = asyncio.create_task(runtime.serve_until(asyncio.Event()))
            await asyncio.sleep(0.2)
            assert not serving.done()
            assert nats.pid is not None
            os.kill(nats.pid, signal.SIGKILL)
            await asyncio.wait_for(serving, 10)

    with pytest.raises(ServerExitedError) as info:
        await run_and_kill()

    async with Runtime(DataDir(tmp_path / "home"), RuntimeOptions(postgres=False, api=False)) as runtime:
        (nats,) = runtime.servers
        assert nats.pid is not None
        os.kill(nats.pid, signal.SIGTERM)  # as a stop signal sent to the whole group reaches it too
        await asyncio.wait_for(nats.exited(), 10)
        stop = asyncio.Event()
        stop.set()
        await asyncio.wait_for(runtime.serve_until(stop), 10)  # asked to stop: no crash to report
    assert info.value.message == "nats-server stopped by itself (exit status -9)"
    assert "starting nats-server" in info.value.fields["log"]


@pytest.mark.timeout(90)
async def test_a_client_left_running_rejoins_up_when_it_comes_back(tmp_path: Path) -> None:
    """The embedded nats-server takes its last port again: a client left running while `up` was
    stopped (an extra dispatcher, `events --follow`) reconnects by itself."""
    from symbiote.home import DataDir
    from symbiote.runtime import Runtime, RuntimeOptions

    home = DataDir(tmp_path / "home")
    options = RuntimeOptions(postgres=False, api=False)
    async with Runtime(home, options) as first:
        assert first.nats_url is not None
        url = first.nats_url
        left = await Bus.connect(url, token=home.nats_token())
    try:
        async with Runtime(home, options) as second:
            assert second.nats_url == url
            await asyncio.wait_for(_until_connected(left), 20)
            assert await left.last_seq() > 0
    finally:
        await left.close()


async def _until_connected(bus: Bus) -> None:
    while not bus.connected:
        await asyncio.sleep(0.05)
