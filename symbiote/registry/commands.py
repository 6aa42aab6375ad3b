"""Reading one command's life, or every command awaiting approval, from the log."""

from __future__ import annotations

from symbiote.bus.envelope import Envelope, from_wire
from symbiote.bus.stream import Bus
from symbiote.errors import DecodeError
from symbiote.registry.follower import RegistryFollower
from symbiote.registry.policy import CommandLife, fold_command

__all__ = ["load_life", "pending_approvals"]


async def load_life(bus: Bus, follower: RegistryFollower, command_id: str) -> CommandLife:
    """Fold every event on ``sym.cmd.<command_id>.>`` with the registry as of each position."""
    msgs = await bus.history(f"sym.cmd.{command_id}.>", 1, limit=None)  # all: no event may be left out
    events: list[tuple[int, Envelope]] = []
    for msg in msgs:
        try:
            events.append((msg.seq, from_wire(msg.data)))
        except DecodeError:
            continue
    if msgs:
        await follower.ensure_through(msgs[-1].seq + 1)
    life = fold_command(command_id, events, follower.state)
    life.last_seq = max(life.last_seq, msgs[-1].seq if msgs else 0)
    return life


async def pending_approvals(bus: Bus, follower: RegistryFollower, *, now_ms: int | None = None) -> list[CommandLife]:
    """Commands with an approval request and no decision yet (not expired when ``now_ms`` is given)."""
    seen: list[str] = []
    async for msg in bus.read("sym.cmd.*.approval_requested"):
        command_id = msg.subject.split(".")[2]
        if command_id not in seen:
            seen.append(command_id)
    found = []
    for command_id in seen:
        life = await load_life(bus, follower, command_id)
        if not life.pending_approval or life.rejected_by:
            continue
        if now_ms is not None and life.approval_expires_at is not None and life.approval_expires_at <= now_ms:
            continue
        found.append(life)
    return found
