"""Keeps a :class:`RegistryState` folded from the stream up to the position being judged."""

from __future__ import annotations

import structlog

from symbiote.bus.envelope import from_wire
from symbiote.bus.stream import Bus
from symbiote.errors import DecodeError
from symbiote.registry.state import REGISTRY_TYPES, RegistryState

__all__ = ["RegistryFollower"]

log = structlog.get_logger("symbiote.registry")


class RegistryFollower:
    """Folds ``sym.reg.>`` on demand: ``ensure_through(seq)`` guarantees every registry
    event before ``seq`` has been applied (the caller has already seen the event at ``seq``,
    so a lookup that finds nothing more proves the registry complete up to it)."""

    def __init__(self, bus: Bus, state: RegistryState | None = None) -> None:
        self.bus = bus
        self.state = state or RegistryState()
        self._cursor = 1  # next stream sequence to look at for registry events
        self._complete_through = 0

    async def ensure_through(self, seq: int) -> RegistryState:
        """Apply every registry event with a sequence below ``seq``; return the state."""
        if self._complete_through >= seq:
            return self.state
        while True:
            msg = await self.bus.next_after("sym.reg.>", self._cursor)
            if msg is None:
                break
            self._cursor = msg.seq + 1
            try:
                event = from_wire(msg.data)
            except DecodeError as exc:
                self.state.rejected += 1
                log.info("registry.rejected", seq=msg.seq, error=str(exc))
                continue
            if event.type not in REGISTRY_TYPES:
                self.state.rejected += 1
                log.info("registry.rejected", seq=msg.seq, event_id=event.id, type=event.type)
                continue
            verdict = self.state.apply(event, msg.seq)
            if not verdict.ok:
                # info: every fold from the start meets it again; the audit and `events` name it
                log.info(
                    "registry.refused", seq=msg.seq, event_id=event.id, reason=verdict.reason, detail=verdict.detail
                )
            if msg.seq >= seq:
                break
        self._complete_through = max(self._complete_through, seq, self._cursor - 1)
        return self.state

    async def refresh(self) -> RegistryState:
        """Apply everything the stream holds now."""
        return await self.ensure_through(await self.bus.last_seq() + 1)
