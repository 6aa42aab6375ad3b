"""The agent on a real nats-server with the real wordllama model."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import numpy as np
import pytest
import pytest_asyncio

from symbiote.agents import Agent, IntentMatcher
from symbiote.agents.extract import extract_args
from symbiote.bootstrap import define_command
from symbiote.bus.envelope import Envelope, from_wire, make_event
from symbiote.embeddings import MAX_TOKENS, load_embedder
from symbiote.projections import MEMORY_SEARCH_DEFINITION
from symbiote.registry import default_definitions
from symbiote.registry.definition import load_definition
from symbiote.signers.keys import SigningKey, sign_event
from tests.helpers import World, eventually

pytestmark = pytest.mark.timeout(60)


@pytest_asyncio.fixture
async def agent(world: World) -> AsyncIterator[Agent]:
    async with Agent(world.bus, world.agent) as a:
        yield a


async def say(world: World, text: str, key: SigningKey | None = None) -> Envelope:
    signer = key or world.user
    event = sign_event(make_event("input.text", signer.principal, {"text": text}), signer)
    await world.bus.publish(event)
    return event


async def answer(world: World, source: Envelope, timeout: float = 10.0) -> Envelope:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        async with contextlib.aclosing(world.bus.read("sym.cmd.>")) as messages:
            async for msg in messages:
                event = from_wire(msg.data)
                if event.cause == source.id and event.actor == "agent:main":
                    return event
        assert asyncio.get_running_loop().time() < deadline, "the agent did not answer"
        await asyncio.sleep(0.1)


def test_a_long_text_counts_its_first_tokens_only() -> None:
    """A text's vector is that of its first MAX_TOKENS tokens: one long input cannot make a batch
    padded to its length (gigabytes for a 32 KB text of emoji) nor differ by what follows."""
    embedder = load_embedder()
    head = "remember the garden " * MAX_TOKENS
    tail = "\U0001f389" * 8000
    short, long = embedder.embed(["buy milk", head]), embedder.embed(["buy milk", head + tail])
    assert np.array_equal(short, long)
    assert float(short[1] @ embedder.embed(["remember the garden"])[0]) > 0.9


def test_intent_ranking_and_extraction() -> None:
    definitions = {d.name: d for d in default_definitions()}
    matcher = IntentMatcher(load_embedder())
    matcher.index(list(definitions.values()))
    cases = {"echo hello world": "echo", "take a note: buy milk": "note.write", "run ls -la /tmp": "shell.run"}
    for text, expected in cases.items():
        ranked = matcher.rank(text)
        assert ranked[0].command == expected, (text, ranked)
        assert ranked[0].confidence > definitions[expected].auto_confidence
        assert ranked[0].confidence - ranked[1].confidence > 0.3
    assert extract_args(definitions["shell.run"], "run ls -la '/my dir'") == {"argv": ["ls", "-la", "/my dir"]}
    assert extract_args(definitions["echo"], "echo hello world") == {"text": "hello world"}
    note = extract_args(definitions["note.write"], "take a note: buy milk")
    assert note == {"name": "buy-milk.txt", "text": "buy milk\n"}
    assert extract_args(definitions["echo"], "echo") is None
    named = extract_args(definitions["note.write"], "take a note called groceries: milk and eggs")
    assert named == {"name": "groceries.txt", "text": "milk and eggs\n"}
    saying = extract_args(definitions["note.write"], "write a note called groceries saying buy milk")
    assert saying == {"name": "groceries.txt", "text": "buy milk\n"}


async def test_clear_request_becomes_signed_proposal(world: World, agent: Agent) -> None:
    source = await say(world, "echo good morning")
    proposal = await answer(world, source)
    assert proposal.type == "command.proposed"
    assert proposal.body["command"] == "echo" and proposal.body["args"] == {"text": "good morning"}
    assert proposal.body["confidence"] >= 0.6
    assert proposal.corr == source.id and proposal.cause == source.id
    assert proposal.sigs[0].kid == world.agent.kid
    assert world.home.load_key("agent").kid == proposal.sigs[0].kid


@pytest.mark.parametrize(
    ("text", "query"),
    [
        ("search my memory for invoices", "invoices"),
        ("what did I ask you about Rome?", "Rome?"),
        ("do you remember the dentist", "the dentist"),
    ],
)
async def test_memory_requests_become_memory_searches(world: World, agent: Agent, text: str, query: str) -> None:
    await define_command(world.bus, world.owner, load_definition(MEMORY_SEARCH_DEFINITION))
    proposal = await answer(world, await say(world, text))
    assert proposal.type == "command.proposed", proposal.body
    assert proposal.body["command"] == "memory.search" and proposal.body["args"] == {"query": query}


async def test_unsure_request_asks_and_unknown_request_suggests(world: World, agent: Agent) -> None:
    clarify = await answer(world, await say(world, "hello"))
    assert clarify.type == "command.clarify"
    assert "echo" in clarify.body["question"]
    assert clarify.body["candidates"][0]["command"] == "echo"
    suggested = await answer(world, await say(world, "book a flight to Rome"))
    assert suggested.type == "command.suggested"
    assert suggested.body["suggestion"]["examples"] == ["book a flight to Rome"]


async def test_unsigned_or_unknown_inputs_are_counted_not_answered(world: World, agent: Agent) -> None:
    await say(world, "echo from a stranger", key=SigningKey.generate("user:stranger"))
    await world.bus.publish(make_event("input.text", "user:alice", {"text": "echo unsigned"}))
    await world.bus.publish_raw("sym.in.text", b"\x00garbage")
    await eventually(lambda: _at_least(agent.counts["rejected_inputs"], 3))
    fine = await answer(world, await say(world, "echo still here"))
    assert fine.type == "command.proposed"
    proposals = [m async for m in world.bus.read("sym.cmd.*.proposed")]
    assert len(proposals) == 1


async def _at_least(value: int, floor: int) -> bool:
    return value >= floor


async def test_agent_learns_outcomes_and_reprocessing_does_not_duplicate(world: World, agent: Agent) -> None:
    from symbiote.dispatcher import Dispatcher, Executors

    source = await say(world, "echo outcome please")
    proposal = await answer(world, source)
    async with Dispatcher(world.bus, world.runtime, Executors(world.home.workspaces_dir)):
        await eventually(lambda: _is(agent.outcomes.get(proposal.id), "succeeded"))
    # the same input interpreted again yields the same proposal id: the stream de-duplicates it
    again = await agent.interpret(source, "echo outcome please", 1)
    assert again.id == proposal.id
    proposals = [m async for m in world.bus.read("sym.cmd.*.proposed")]
    assert len(proposals) == 1


async def _is(value: object, expected: object) -> bool:
    return value == expected


async def test_recalled_memory_is_shown_when_the_agent_asks(world: World) -> None:
    asked: list[str] = []

    async def recall(text: str) -> list[str]:
        asked.append(text)
        return ["yesterday: echo hello to the team"]

    async with Agent(world.bus, world.agent, recall=recall):
        clarify = await answer(world, await say(world, "hello"))
    assert asked == ["hello"]
    assert clarify.type == "command.clarify"
    assert clarify.body["related"] == ["yesterday: echo hello to the team"]


async def test_a_proposal_whose_id_was_taken_first_is_not_lost(world: World) -> None:
    """Anyone can compute the id the agent will give its proposal for a request, and publish
    something else under it first: JetStream would drop the proposal as a duplicate. The agent
    finds the id taken and tries again later, so the proposal lands once the server's duplicate
    window has passed (shortened here) instead of vanishing."""
    from symbiote.bus.ids import derived_event_id

    info = await world.bus.js.stream_info(world.bus.stream)
    info.config.duplicate_window = 1.0
    await world.bus.js.update_stream(info.config)
    source = sign_event(make_event("input.text", world.user.principal, {"text": "echo not lost"}), world.user)
    squatter = sign_event(make_event("input.text", world.user.principal, {"text": "anything"}), world.user)
    taken = derived_event_id(source.id, "proposal")
    await world.bus.publish_raw("sym.in.text", squatter.to_wire(), msg_id=taken)
    await world.bus.publish(source)
    async with Agent(world.bus, world.agent, id_taken_retry_s=0.5):
        proposal = await answer(world, source, timeout=30)
    assert proposal.type == "command.proposed" and proposal.id == taken
    assert proposal.body["args"] == {"text": "not lost"}
