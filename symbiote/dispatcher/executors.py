"""Executors: how a command's definition turns into something that runs.

``builtin:<name>`` runs small pure functions in process (``echo``); ``shell`` renders the
definition's argv/stdin templates from the args and runs them in the sandbox; ``noop``
does nothing (benchmarks). A command is never run outside the sandbox unless its executor
is an in-process builtin that touches nothing.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from symbiote.errors import SandboxError, SandboxUnavailable
from symbiote.registry.definition import CommandDefinition, SandboxSpec
from symbiote.sandbox import BubblewrapSandbox, Sandbox, SandboxProfile, Workspaces

__all__ = ["BUILTINS", "Builtin", "Executors", "Outcome", "render_template"]


@dataclass(frozen=True)
class Outcome:
    """What an execution produced, ready for ``command.succeeded`` / ``command.failed``."""

    exit_code: int
    output: dict[str, Any]
    duration_ms: int

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


Builtin = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


async def _echo(args: dict[str, Any]) -> dict[str, Any]:
    return {"text": str(args.get("text", ""))}


BUILTINS: dict[str, Builtin] = {"echo": _echo}


def render_template(template: list[str], args: Mapping[str, Any]) -> list[str]:
    """Expand ``{field}`` (one string) and ``{field*}`` (a list spliced in) from ``args``."""
    out: list[str] = []
    for part in template:
        if part.startswith("{") and part.endswith("*}"):
            value = args.get(part[1:-2])
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise SandboxError("template list argument missing", field=part[1:-2])
            out.extend(value)
        else:
            out.append(part.format_map({k: v for k, v in args.items() if isinstance(v, (str, int, float))}))
    return out


def profile_of(spec: SandboxSpec) -> SandboxProfile:
    """The sandbox profile a definition asks for."""
    return SandboxProfile(
        network=tuple(spec.network) if spec.network is not None else None,
        gpu=spec.gpu,
        cpu_seconds=spec.cpu_seconds,
        memory_mb=spec.memory_mb,
        timeout_s=spec.timeout_s,
        max_output_bytes=spec.max_output_bytes,
        snapshot=spec.snapshot,
    )


class Executors:
    """Runs commands: in-process builtins, or sandboxed programs in a per-command workspace."""

    def __init__(
        self,
        workspace_root: Path,
        sandbox: Sandbox | None = None,
        builtins: Mapping[str, Builtin] | None = None,
    ) -> None:
        self.sandbox = sandbox or BubblewrapSandbox()
        self.workspaces = Workspaces(workspace_root)
        self.builtins: dict[str, Builtin] = {**BUILTINS, **(builtins or {})}

    def sandbox_info(self, definition: CommandDefinition) -> dict[str, Any]:
        """The ``sandbox`` field of ``command.started``: backend and profile."""
        if definition.executor.startswith("builtin:") or definition.executor == "noop":
            return {"backend": "inprocess", "profile": {}}
        return {"backend": self.sandbox.backend, "profile": dict(profile_of(definition.sandbox).describe())}

    async def run(self, command_id: str, definition: CommandDefinition, args: dict[str, Any]) -> Outcome:
        """Execute; every failure becomes an :class:`Outcome` with a non-zero exit code."""
        started = time.perf_counter()
        executor = definition.executor
        try:
            if executor == "noop":
                return Outcome(0, {}, 0)
            if executor.startswith("builtin:"):
                builtin = self.builtins.get(executor.split(":", 1)[1])
                if builtin is None:
                    return Outcome(127, {"error": f"no builtin {executor}"}, 0)
                output = await builtin(args)
                return Outcome(0, output, _ms(started))
            if executor == "shell":
                return await self._shell(command_id, definition, args, started)
            return Outcome(127, {"error": f"unknown executor {executor!r}"}, 0)
        except SandboxUnavailable as exc:
            return Outcome(126, {"error": f"sandbox unavailable: {exc}"}, _ms(started))
        except SandboxError as exc:
            return Outcome(126, {"error": str(exc)}, _ms(started))

    async def _shell(
        self, command_id: str, definition: CommandDefinition, args: dict[str, Any], started: float
    ) -> Outcome:
        argv = render_template(definition.argv or ["{argv*}"], args)
        stdin = definition.stdin.format_map(args).encode() if definition.stdin is not None else None
        profile = profile_of(definition.sandbox)
        workspace = self.workspaces.for_command(command_id)
        snapshot = self.sandbox.snapshot(workspace) if profile.snapshot else None
        result = await self.sandbox.run(argv, workspace=workspace, profile=profile, stdin=stdin)
        output = dict(result.output_map())
        output["workspace"] = str(workspace)
        if snapshot is not None:
            output["snapshot"] = str(snapshot)
        return Outcome(result.exit_code, output, _ms(started))


def _ms(since: float) -> int:
    return int((time.perf_counter() - since) * 1000)
