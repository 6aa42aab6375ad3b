"""Telling people that a command waits for them — never letting a channel approve anything.

A :class:`Notifier` is told about each new pending approval. The built-in channel is the
phone page itself: :class:`SseChannel` pushes announcements and list updates to every
connected page as server-sent events. :class:`TelegramNotifier` sends a Telegram message
that only links to the page; approving still takes the paired device's key, so the
message carries no button, code or token that could approve by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from symbiote.api.models import PendingApproval
from symbiote.errors import ConfigError

__all__ = ["WAKE", "Notifier", "SseChannel", "SseMessage", "TelegramNotifier", "format_telegram_message"]


@runtime_checkable
class Notifier(Protocol):
    """Something that tells a person a command waits for their approval."""

    async def announce(self, request: PendingApproval) -> None:
        """Announce one newly pending approval; failures are logged by the caller, never fatal."""
        ...


@dataclass(frozen=True)
class SseMessage:
    """One server-sent event: its ``event`` name and its ``data`` (one JSON text)."""

    event: str
    data: str

    def encode(self) -> bytes:
        """The event in ``text/event-stream`` framing."""
        lines = "".join(f"data: {line}\n" for line in self.data.splitlines() or [""])
        return f"event: {self.event}\n{lines}\n".encode()


WAKE = SseMessage("", "")
"""Not an event: a stream that gets it checks its session and sends a comment at most."""


class _Subscriber:
    __slots__ = ("queue",)

    def __init__(self, size: int) -> None:
        self.queue: asyncio.Queue[SseMessage | None] = asyncio.Queue(maxsize=size)


class SseChannel:
    """The built-in channel: fans announcements and snapshots out to every connected page.

    A page that falls behind loses older snapshots, never the newest one (each snapshot is the
    whole list, so the latest is all a page needs).
    """

    def __init__(self, queue_size: int = 64) -> None:
        self._subscribers: set[_Subscriber] = set()
        self._queue_size = queue_size
        self._closed = False

    @property
    def subscribers(self) -> int:
        """How many pages are connected."""
        return len(self._subscribers)

    async def announce(self, request: PendingApproval) -> None:
        """Send an ``announce`` event (the page may vibrate or show a notification)."""
        self.broadcast(SseMessage("announce", request.model_dump_json()))

    def broadcast(self, message: SseMessage) -> None:
        """Queue ``message`` for every subscriber."""
        for sub in list(self._subscribers):
            if sub.queue.full():
                _drain(sub.queue)
            sub.queue.put_nowait(message)

    def wake(self) -> None:
        """Have every stream check that its reader may still read (a key was revoked, a session
        ended); streams that may go on send nothing."""
        self.broadcast(WAKE)

    def close(self) -> None:
        """End every subscription (their streams finish); later subscriptions end at once."""
        self._closed = True
        for sub in list(self._subscribers):
            _drain(sub.queue)
            sub.queue.put_nowait(None)

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[SseMessage | None]]:
        """A queue of messages for one page; ``None`` in it means the channel closed."""
        sub = _Subscriber(self._queue_size)
        if self._closed:
            sub.queue.put_nowait(None)
        self._subscribers.add(sub)
        try:
            yield sub.queue
        finally:
            self._subscribers.discard(sub)


def _drain(queue: asyncio.Queue[SseMessage | None]) -> None:
    while not queue.empty():
        queue.get_nowait()


def format_telegram_message(request: PendingApproval, page_url: str) -> str:
    """Plain text (no markup, no buttons): what waits, how risky it is, and a link to the page.

    Arguments are deliberately left out: the message goes through a third party, and the
    page, not the message, is where a person reviews exactly what they sign.
    """
    link = f"{page_url.rstrip('/')}/#command={request.command_id}"
    who = ", ".join(request.principals) if request.principals else "any registered user"
    return (
        f"symbiote: a command is waiting for approval\n"
        f"Command: {request.command} ({request.risk_level} risk)\n"
        f"Needs {request.needs} signature(s) from {who}; signed so far: {len(request.signed_by)}\n"
        f"Review it on your paired device: {link}\n"
        f"(This message cannot approve anything by itself.)"
    )


class TelegramNotifier:
    """Sends :func:`format_telegram_message` to one chat with aiogram (``pip install symbiote[telegram]``).

    aiogram is imported when the first message is sent, so symbiote runs without it. The
    message has no inline keyboard and no callback data: nothing in Telegram can approve.
    """

    def __init__(self, token: str, chat_id: int | str, page_url: str) -> None:
        if not token or not page_url.startswith("https://"):
            raise ConfigError("Telegram needs a bot token and the page's https:// URL", page_url=page_url)
        self.token = token
        self.chat_id = chat_id
        self.page_url = page_url
        self._bot: Any = None

    def message(self, request: PendingApproval) -> dict[str, Any]:
        """The ``sendMessage`` parameters for ``request`` (no ``reply_markup``, no ``parse_mode``)."""
        return {
            "chat_id": self.chat_id,
            "text": format_telegram_message(request, self.page_url),
            "link_preview_options": {"is_disabled": True},
        }

    def _get_bot(self) -> Any:
        if self._bot is None:
            self._bot = _aiogram().Bot(self.token)
        return self._bot

    async def announce(self, request: PendingApproval) -> None:
        """Send the link message."""
        params = self.message(request)
        bot = self._get_bot()
        preview = importlib.import_module("aiogram.types").LinkPreviewOptions(is_disabled=True)
        await bot.send_message(chat_id=params["chat_id"], text=params["text"], link_preview_options=preview)

    async def close(self) -> None:
        """Close aiogram's HTTP session, if one was opened."""
        if self._bot is not None:
            await self._bot.session.close()
            self._bot = None


def _aiogram() -> Any:
    """The aiogram module, imported on first use (an optional dependency)."""
    try:
        return importlib.import_module("aiogram")
    except ImportError as exc:
        raise ConfigError("Telegram notifications need aiogram: pip install 'symbiote[telegram]'") from exc
