"""Executors: how a command's definition turns into something that runs.

``builtin:<name>`` runs small pure functions in process (``echo``); ``shell`` renders the
definition's argv/stdin templates from the args and runs them in the sandbox; ``noop``
does nothing (benchmarks). A command is never run outside the sandbox unless its executor
is an in-process builtin that touches nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from symbiote.bus.canonical import canon
from symbiote.errors import DecodeError, SandboxError, SandboxUnavailable
from symbiote.registry.definition import SHELL_DEFAULT_ARGV, CommandDefinition, SandboxSpec
from symbiote.sandbox import BubblewrapSandbox, Sandbox, SandboxProfile, Workspaces

__all__ = ["BUILTINS", "OUTPUT_BUDGET", "Builtin", "Executors", "Outcome", "fit_output", "render_template"]

OUTPUT_BUDGET = 128 * 1024
"""Bytes (canonical msgpack) a result's ``output`` may take in the log; events are at most 256 KiB."""
log = structlog.get_logger("symbiote.dispatcher")
_CUT_MARK = "\n[… {cut} bytes cut …]\n"


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
            out.append(_fill(part, args))
    return out


def _fill(template: str, args: Mapping[str, Any]) -> str:
    """``template`` with its ``{field}`` replaced by the string or number in ``args``."""
    try:
        return template.format_map({k: v for k, v in args.items() if isinstance(v, (str, int, float))})
    except (KeyError, IndexError, AttributeError, ValueError, TypeError) as exc:
        raise SandboxError(
            "the arguments do not fill the command's template", template=template, error=repr(exc)
        ) from exc


def fit_output(output: dict[str, Any], budget: int = OUTPUT_BUDGET) -> dict[str, Any]:
    """``output`` made to fit ``budget`` bytes in the log.

    Its strings share the room: a short one is kept whole, the long ones get equal parts and
    keep their beginning and end around a note of how much was cut; ``truncated`` is then set
    and ``<key>_bytes`` gives each cut string's full length in bytes. An output that cannot be
    made to fit this way, or cannot be encoded at all, is replaced by an error saying so.
    """
    try:
        size = _packed_size(output)
    except DecodeError as exc:
        return {"error": f"the output cannot be kept in the log: {exc.message}"}
    if size <= budget:
        return output
    texts = {k: v.encode() for k, v in output.items() if isinstance(v, str)}
    fitted = {**output, **dict.fromkeys(texts, ""), **{f"{k}_bytes": len(v) for k, v in texts.items()}}
    fitted["truncated"] = True
    room = budget - _packed_size(fitted) - 64 * len(texts)  # 64: a cut note and a long string's header
    for key, share in _shares(texts, room).items():
        raw = texts[key]
        if share >= len(raw):
            fitted[key] = raw.decode()
            del fitted[f"{key}_bytes"]
            continue
        keep = max(0, share - len(_CUT_MARK))
        head = raw[: keep // 2].decode(errors="ignore")
        tail = raw[len(raw) - (keep - keep // 2) :].decode(errors="ignore") if keep else ""
        fitted[key] = head + _CUT_MARK.format(cut=len(raw) - len(head.encode()) - len(tail.encode())) + tail
    if room < 0 or _packed_size(fitted) > budget:
        return {"error": "the output is too large to keep in the log", "output_bytes": size, "truncated": True}
    return fitted


def _shares(texts: dict[str, bytes], room: int) -> dict[str, int]:
    """Bytes each text may keep of ``room``: the shortest first, each at most an equal part of what is left."""
    shares: dict[str, int] = {}
    left = max(0, room)
    for index, key in enumerate(sorted(texts, key=lambda k: len(texts[k]))):
        shares[key] = min(len(texts[key]), left // (len(texts) - index))
        left -= shares[key]
    return shares


def _packed_size(output: dict[str, Any]) -> int:
    return len(canon(output, depth=3))  # an event's output sits at depth 3: envelope, body, output


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
                limit_s = definition.sandbox.timeout_s
                try:
                    output = await asyncio.wait_for(builtin(args), limit_s)
                except TimeoutError:
                    late = {"error": f"{executor} took longer than {limit_s:g} s", "timed_out": True}
                    return Outcome(124, late, _ms(started))
                except Exception as exc:  # a failing builtin fails its command, not the dispatcher
                    log.exception("executor.builtin_failed", command_id=command_id, executor=executor)
                    return Outcome(1, {"error": f"{executor} failed: {exc}"}, _ms(started))
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
        argv = render_template(definition.argv or SHELL_DEFAULT_ARGV, args)
        stdin = _fill(definition.stdin, args).encode() if definition.stdin is not None else None
        profile = profile_of(definition.sandbox)
        workspace = self.workspaces.for_command(command_id)
        snapshot = self.sandbox.snapshot(workspace) if profile.snapshot else None
        if snapshot is not None and not any(snapshot.iterdir()):
            snapshot.rmdir()  # the workspace held nothing yet (a command's first run): nothing to keep
            snapshot = None
        result = await self.sandbox.run(argv, workspace=workspace, profile=profile, stdin=stdin)
        output = dict(result.output_map())
        output["workspace"] = str(workspace)
        if snapshot is not None:
            output["snapshot"] = str(snapshot)
        return Outcome(result.exit_code, output, _ms(started))


def _ms(since: float) -> int:
    return int((time.perf_counter() - since) * 1000)
