"""What a sandboxed run may do: network, GPU and resource limits."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

from symbiote.errors import SandboxError

__all__ = ["SandboxProfile"]

_INT_FIELDS = ("cpu_seconds", "memory_mb", "max_output_bytes", "max_processes", "max_file_mb")
_BOOL_FIELDS = ("gpu", "snapshot")


@dataclass(frozen=True)
class SandboxProfile:
    """Limits and permissions of one sandboxed run.

    ``network`` is ``None`` for no network at all; a tuple is an allow-list of
    egress domains, which a backend that cannot enforce it must refuse
    (:class:`~symbiote.errors.SandboxUnavailable`) rather than run with an open
    network. ``snapshot`` asks the caller to take :meth:`Sandbox.snapshot`
    before the run so that :meth:`Sandbox.rollback` can undo it (``run``
    itself does not snapshot). Invalid values raise
    :class:`~symbiote.errors.SandboxError`.
    """

    network: tuple[str, ...] | None = None
    gpu: bool = False
    cpu_seconds: int = 10
    memory_mb: int = 512
    timeout_s: float = 30.0
    max_output_bytes: int = 1_000_000
    snapshot: bool = False
    max_processes: int = 64
    max_file_mb: int = 1024  # the largest file a run may write (RLIMIT_FSIZE)

    def __post_init__(self) -> None:
        """Validate every field; the dataclass is only built from sane values."""
        network = self.network
        if network is not None and not (
            isinstance(network, tuple) and all(isinstance(d, str) and d and d.strip() == d for d in network)
        ):
            raise SandboxError("network must be None or a tuple of domain names", network=network)
        for name in _BOOL_FIELDS:
            if not isinstance(getattr(self, name), bool):
                raise SandboxError(f"{name} must be a bool", **{name: getattr(self, name)})
        for name in _INT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise SandboxError(f"{name} must be a positive int", **{name: value})
        if isinstance(self.timeout_s, bool) or not isinstance(self.timeout_s, int | float) or not self.timeout_s > 0:
            raise SandboxError("timeout_s must be a positive number", timeout_s=self.timeout_s)
        if self.timeout_s == float("inf"):
            raise SandboxError("timeout_s must be finite", timeout_s=self.timeout_s)

    def describe(self) -> dict[str, object]:
        """Return a plain JSON-able description (network as a list or None, flags, limits)."""
        return {
            "network": None if self.network is None else list(self.network),
            "gpu": self.gpu,
            "cpu_seconds": self.cpu_seconds,
            "memory_mb": self.memory_mb,
            "timeout_s": float(self.timeout_s),
            "max_output_bytes": self.max_output_bytes,
            "snapshot": self.snapshot,
            "max_processes": self.max_processes,
            "max_file_mb": self.max_file_mb,
        }

    @classmethod
    def from_mapping(cls, data: Mapping[str, object]) -> SandboxProfile:
        """Build a profile from :meth:`describe` output; missing keys take defaults.

        Unknown keys and values of the wrong type raise
        :class:`~symbiote.errors.SandboxError`.
        """
        if not isinstance(data, Mapping):
            raise SandboxError("sandbox profile must be a mapping", got=type(data).__name__)
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in data if k not in known)
        if unknown:
            raise SandboxError("unknown sandbox profile keys", keys=unknown)
        kwargs: dict[str, object] = dict(data)
        if "network" in kwargs:
            network = kwargs["network"]
            if isinstance(network, list | tuple):
                kwargs["network"] = tuple(network)
            elif network is not None:
                raise SandboxError("network must be null or a list of domain names", network=network)
        if isinstance(kwargs.get("timeout_s"), int) and not isinstance(kwargs.get("timeout_s"), bool):
            kwargs["timeout_s"] = float(kwargs["timeout_s"])  # type: ignore[arg-type]
        return cls(**kwargs)  # type: ignore[arg-type]
