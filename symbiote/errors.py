"""The one exception root of symbiote.

Every error raised by symbiote derives from :class:`SymbioteError` and carries
structured fields (``err.fields``) so that logs and API answers can report them
without parsing messages. Driver exceptions (nats, asyncpg, OS) are translated
into these at the boundary of the module that calls the driver.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AudioError",
    "BusError",
    "ConfigError",
    "ConflictError",
    "DecodeError",
    "IdTakenError",
    "KeyFileError",
    "SandboxError",
    "SandboxUnavailable",
    "ServerError",
    "ServerExitedError",
    "ServerStartError",
    "SignatureError",
    "StoreError",
    "SymbioteError",
]


class SymbioteError(Exception):
    """Root of every symbiote error; ``fields`` holds machine-readable context."""

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.fields: dict[str, Any] = fields

    def __str__(self) -> str:
        if not self.fields:
            return self.message
        extra = ", ".join(f"{k}={v!r}" for k, v in self.fields.items())
        return f"{self.message} ({extra})"


class ConfigError(SymbioteError):
    """Bad configuration or data directory state."""


class DecodeError(SymbioteError):
    """Bytes that are not a valid, canonical symbiote envelope."""


class SignatureError(SymbioteError):
    """A signature that does not verify, or a key that cannot sign."""


class KeyFileError(SymbioteError):
    """A key file that cannot be read, written or decrypted."""


class BusError(SymbioteError):
    """A NATS / JetStream operation failed."""


class ConflictError(BusError):
    """An optimistic-concurrency publish lost (someone else wrote first)."""


class IdTakenError(BusError):
    """JetStream dropped a publish as a duplicate, yet the message holding its id is another one."""


class ServerError(SymbioteError):
    """An embedded server (nats-server, PostgreSQL) failed; ``fields['log']`` holds the end of its log."""


class ServerStartError(ServerError):
    """An embedded server failed to start."""


class ServerExitedError(ServerError):
    """An embedded server stopped by itself while the runtime was using it."""


class StoreError(SymbioteError):
    """A PostgreSQL operation failed."""


class SandboxError(SymbioteError):
    """A sandboxed run could not be performed."""


class SandboxUnavailable(SandboxError):
    """The sandbox backend is missing something it needs; nothing is run unsandboxed."""


class AudioError(SymbioteError):
    """A recording that cannot be transcribed; ``reason`` says why (``undecodable_audio``,
    ``no_audio_stream``, ``too_long``, ``bad_samples``, ``no_speech``)."""

    def __init__(self, message: str, reason: str, **fields: Any) -> None:
        super().__init__(message, reason=reason, **fields)
        self.reason = reason
