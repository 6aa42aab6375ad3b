"""The agent: turns signed inputs into signed command proposals, or asks, or says nothing fits.

It consumes ``sym.in.*`` and the outcomes of commands, verifies who sent each input, matches
the request against the registry with a confidence per candidate, extracts arguments and
publishes a signed ``command.proposed``. Below a command's ``auto_confidence``, or when the
two best candidates are too close, it publishes ``command.clarify``; when nothing fits it
publishes ``command.suggested`` (a proposal that a new command be defined). Confidence only
decides whether the agent understood; the dispatcher alone decides what may run.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import structlog

from symbiote.agents.extract import extract_args, starts_with_trigger
from symbiote.agents.intent import Candidate, IntentMatcher
from symbiote.bus.envelope import Envelope, from_wire, make_event
from symbiote.bus.ids import derived_event_id, now_ms
from symbiote.bus.stream import Bus, Delivery, PullConsumer
from symbiote.embeddings import load_embedder
from symbiote.errors import BusError, DecodeError, IdTakenError, SymbioteError
from symbiote.lifecycle import Service
from symbiote.registry.definition import CommandDefinition
from symbiote.registry.follower import RegistryFollower
from symbiote.signers.keys import SigningKey, sign_event

__all__ = ["AGENT_SUBJECTS", "Agent", "Plan", "Planner"]

AGENT_SUBJECTS = (
    "sym.in.>",
    "sym.cmd.*.succeeded",
    "sym.cmd.*.failed",
    "sym.cmd.*.denied",
    "sym.cmd.*.approval_requested",
)
INPUT_ROLES = frozenset({"user", "owner", "runtime"})
log = structlog.get_logger("symbiote.agent")


class Plan(Protocol):
    """What a planner decided: a command with args and confidence, or None (nothing fits)."""

    @property
    def command(self) -> str | None: ...

    @property
    def args(self) -> dict[str, Any]: ...

    @property
    def confidence(self) -> float: ...


class Planner(Protocol):
    """An optional LLM planner (see :mod:`symbiote.agents.planner`)."""

    async def plan(self, text: str, commands: list[CommandDefinition], context: list[str]) -> Plan | None: ...


Recall = Callable[[str], Awaitable[list[str]]]


def _boost_triggers(ranked: list[Candidate], text: str) -> list[Candidate]:
    """A request that opens with a command's trigger verb ("run …") counts as half a match already:
    its confidence becomes ``0.5 + 0.5 * similarity``. Embeddings alone miss that the verb, not
    the unknown words after it, carries the intent."""
    boosted = [
        Candidate(c.command, 0.5 + 0.5 * c.confidence) if starts_with_trigger(c.command, text) else c for c in ranked
    ]
    return sorted(boosted, key=lambda c: c.confidence, reverse=True)


class Agent(Service):
    """Long-running component: ``run()`` until ``shutdown()``, or ``async with``."""

    def __init__(
        self,
        bus: Bus,
        key: SigningKey,
        *,
        matcher: IntentMatcher | None = None,
        planner: Planner | None = None,
        recall: Recall | None = None,
        durable: str = "agent",
        margin: float = 0.03,
        floor: float = 0.3,
        proposal_ttl_s: int = 300,
        clock: Callable[[], int] = now_ms,
        id_taken_retry_s: float = 30.0,
    ) -> None:
        if key.role != "agent":
            raise SymbioteError("the agent signs with an agent key", principal=key.principal)
        self.bus = bus
        self.key = key
        self.matcher = matcher or IntentMatcher(load_embedder())
        self.planner = planner
        self.recall = recall
        self.registry = RegistryFollower(bus)
        self.margin = margin
        self.floor = floor
        self.proposal_ttl_s = proposal_ttl_s
        self.clock = clock
        self.id_taken_retry_s = id_taken_retry_s
        self.counts: Counter[str] = Counter()
        self.outcomes: OrderedDict[str, str] = OrderedDict()  # command id -> last phase seen
        self._consumer = PullConsumer(bus, durable, AGENT_SUBJECTS, self._handle_batch, batch=64)

    async def run(self) -> None:
        """Consume until :meth:`shutdown`."""
        await self._consumer.run()

    def shutdown(self) -> None:
        """Stop consuming; idempotent."""
        self._consumer.shutdown()

    async def prepare(self) -> None:
        await self._consumer.ensure()

    async def _handle_batch(self, batch: Sequence[Delivery]) -> None:
        if not batch:
            return
        await self.registry.ensure_through(max(d.seq for d in batch))
        for delivery in batch:
            try:
                if delivery.subject.startswith("sym.in."):
                    await self._on_input(delivery)
                else:
                    self._on_outcome(delivery)
            except IdTakenError as exc:
                # something else holds the id of what it made of the request: the server takes the
                # same id again once its duplicate window has passed (minutes): not every second
                log.warning("agent.id_taken", seq=delivery.seq, error=str(exc), retry_in_s=self.id_taken_retry_s)
                await delivery.nak(delay=self.id_taken_retry_s)
                continue
            except BusError as exc:
                log.warning("agent.retry_later", seq=delivery.seq, error=str(exc))
                await delivery.nak(delay=1.0)
                continue
            except DecodeError as exc:  # e.g. a planner's arguments that cannot be signed canonically
                self.counts["unsignable"] += 1
                log.warning("agent.cannot_sign", seq=delivery.seq, error=str(exc))
            await delivery.ack()

    def _on_outcome(self, delivery: Delivery) -> None:
        try:
            event = from_wire(delivery.data)
        except DecodeError:
            return
        command_id = str(event.body.get("command_id", ""))
        phase = event.type.rsplit(".", 1)[1]
        if event.type == "command.denied" and event.cause != command_id:
            return  # a note about an approval, not the end of the command
        self.outcomes[command_id] = phase
        self.outcomes.move_to_end(command_id)
        while len(self.outcomes) > 10_000:
            self.outcomes.popitem(last=False)
        self.counts[f"outcome.{phase}"] += 1
        log.info("agent.outcome", command_id=command_id, event_id=event.id, phase=phase)

    async def _on_input(self, delivery: Delivery) -> None:
        try:
            event = from_wire(delivery.data)
        except DecodeError as exc:
            self.counts["rejected_inputs"] += 1
            log.warning("agent.input_rejected", seq=delivery.seq, event_id=exc.fields.get("event_id"), error=str(exc))
            return
        verdict = self.registry.state.keyring.verify(event, delivery.seq)
        if not verdict.ok or event.actor_role not in INPUT_ROLES:
            self.counts["rejected_inputs"] += 1
            log.warning(
                "agent.input_rejected",
                seq=delivery.seq,
                event_id=event.id,
                reason=verdict.reason or "role",
                detail=verdict.detail or event.actor,
            )
            return
        text = str(event.body.get("text", "")).strip()
        if not text:
            self.counts["empty_inputs"] += 1
            return
        await self.interpret(event, text, delivery.seq)

    async def interpret(self, source: Envelope, text: str, seq: int) -> Envelope:
        """Decide what ``text`` asks for and publish the proposal, question or suggestion."""
        definitions = self.registry.state.latest_commands()
        context = await self.recall(text) if self.recall is not None else []
        if context:
            log.info("agent.recalled", event_id=source.id, related=len(context))
        if self.planner is not None:
            plan = await self.planner.plan(text, definitions, context)
            if plan is not None and plan.command is not None:
                chosen = next((d for d in definitions if d.name == plan.command), None)
                if chosen is not None and plan.confidence >= chosen.auto_confidence:
                    return await self._propose(source, chosen, plan.args, plan.confidence, [])
        self.matcher.index(definitions)
        ranked = _boost_triggers(self.matcher.rank(text), text)
        by_name = {d.name: d for d in definitions}
        if not ranked or ranked[0].confidence < self.floor:
            return await self._suggest(source, text, ranked, context)
        best = ranked[0]
        definition = by_name[best.command]
        close = len(ranked) > 1 and best.confidence - ranked[1].confidence < self.margin
        if best.confidence < definition.auto_confidence or close:
            options = ranked[:2] if close else ranked[:1]
            names = " or ".join(f"{c.command} ({c.confidence:.2f})" for c in options)
            question = f"I am not sure what you mean by {text!r}. Did you mean {names}?"
            return await self._clarify(source, question, ranked, context)
        args = extract_args(definition, text)
        if args is None:
            return await self._clarify(
                source,
                f"I think you want {definition.name}, but I could not tell its arguments from {text!r}.",
                ranked,
                context,
            )
        return await self._propose(source, definition, args, best.confidence, ranked)

    async def _propose(
        self,
        source: Envelope,
        definition: CommandDefinition,
        args: dict[str, Any],
        confidence: float,
        ranked: list[Candidate],
    ) -> Envelope:
        event = make_event(
            "command.proposed",
            self.key.principal,
            {
                "command": definition.name,
                "args": args,
                "confidence": round(float(confidence), 4),
                "expires_at": self.clock() + self.proposal_ttl_s * 1000,
            },
            corr=source.corr or source.id,
            cause=source.id,
            event_id=derived_event_id(source.id, "proposal"),
        )
        return await self._publish(event, "proposed", command=definition.name, confidence=confidence)

    async def _clarify(self, source: Envelope, question: str, ranked: list[Candidate], related: list[str]) -> Envelope:
        event_id = derived_event_id(source.id, "clarify")
        event = make_event(
            "command.clarify",
            self.key.principal,
            {
                "command_id": event_id,
                "question": question,
                "candidates": [c.as_map() for c in ranked[:3]],
                "related": related[:3],
            },
            corr=source.corr or source.id,
            cause=source.id,
            event_id=event_id,
        )
        return await self._publish(event, "clarify")

    async def _suggest(self, source: Envelope, text: str, ranked: list[Candidate], related: list[str]) -> Envelope:
        event_id = derived_event_id(source.id, "suggest")
        words = [w for w in "".join(c if c.isalnum() else " " for c in text.lower()).split() if len(w) > 2][:3]
        suggestion = {
            "name": ".".join(words) or "new.command",
            "description": text,
            "examples": [text],
            "closest": [c.as_map() for c in ranked[:3]],
            "how": "write a TOML definition and register it with `symbiote commands add FILE`",
        }
        event = make_event(
            "command.suggested",
            self.key.principal,
            {"command_id": event_id, "request": text, "suggestion": suggestion, "related": related[:3]},
            corr=source.corr or source.id,
            cause=source.id,
            event_id=event_id,
        )
        return await self._publish(event, "suggested")

    async def _publish(self, event: Envelope, what: str, **fields: Any) -> Envelope:
        signed = sign_event(event, self.key)
        await self.bus.publish(signed)
        self.counts[what] += 1
        log.info(f"agent.{what}", event_id=signed.id, corr=signed.corr, **fields)
        return signed
