"""Command definitions and approval policy (DESIGN §4), read from TOML or from registry events."""

from __future__ import annotations

import re
import string
import tomllib
from pathlib import Path
from typing import Any, Literal

import jsonschema
import referencing.exceptions
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from symbiote.errors import ConfigError
from symbiote.validation import validation_words

__all__ = [
    "SHELL_DEFAULT_ARGV",
    "ApprovalPolicy",
    "CommandDefinition",
    "SandboxSpec",
    "definition_problems",
    "duration_words",
    "load_definition",
    "validate_args",
    "validation_words",
]


class ApprovalPolicy(BaseModel):
    """Who must sign before a command runs: nobody, or ``quorum`` of the listed user principals."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    mode: Literal["none", "user"] = "none"
    quorum: int = Field(default=1, ge=1, le=2**31 - 1)  # an int4 column in the projections
    principals: list[str] = []  # empty: any registered user principal
    expires_in: int = Field(  # at most a century: an expiry in ms stays far inside 64 bits
        default=600, ge=1, le=100 * 365 * 86400, description="seconds an approval request stays open"
    )

    @field_validator("principals")
    @classmethod
    def _users_only(cls, value: list[str]) -> list[str]:
        for principal in value:
            if not principal.startswith("user:"):
                raise ValueError(f"approval principals must be user:NAME, not {principal!r}")
        return value

    def describe(self) -> str:
        if self.mode == "none":
            return "runs without approval"
        who = ", ".join(self.principals) if self.principals else "any registered user"
        count = "1 approval" if self.quorum == 1 else f"{self.quorum} approvals"
        return f"needs {count} from {who} within {duration_words(self.expires_in)}"


def duration_words(seconds: int) -> str:
    """``600`` → ``"10 minutes"``: the largest whole unit (days, hours, minutes), else seconds."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds} second{'s' if seconds != 1 else ''}"


class SandboxSpec(BaseModel):
    """Where and under which limits a command runs."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    network: list[str] | None = None
    gpu: bool = False
    cpu_seconds: int = Field(default=10, ge=1)
    memory_mb: int = Field(default=512, ge=16)
    timeout_s: float = Field(default=30.0, gt=0)
    max_output_bytes: int = Field(default=1_000_000, ge=1)
    snapshot: bool = False


class CommandDefinition(BaseModel):
    """A registered command: what it means, which args it takes, how and where it runs, who must approve."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = Field(pattern=r"^[a-z][a-z0-9_.-]{0,63}$")
    description: str
    examples: list[str] = []
    args_schema: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})
    executor: str = Field(description="builtin:<name>, shell, or noop")
    argv: list[str] = []  # shell: argv template; "{field}" is replaced by args[field]
    stdin: str | None = None  # shell: stdin template
    sandbox: SandboxSpec = SandboxSpec()
    idempotent: bool = False
    auto_confidence: float = Field(default=0.6, ge=0.0, le=1.0)
    approval: ApprovalPolicy = ApprovalPolicy()
    risk: str = "low"

    @field_validator("args_schema")
    @classmethod
    def _schema_valid(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            jsonschema.Draft202012Validator.check_schema(value)
        except jsonschema.SchemaError as exc:
            raise ValueError(f"args_schema is not a valid JSON Schema: {exc.message}") from exc
        return value

    def to_map(self) -> dict[str, Any]:
        """The definition as a plain map (for a ``command.defined`` event), without None values."""
        return self.model_dump(mode="python", exclude_none=True)


def validate_args(definition: CommandDefinition, args: dict[str, Any]) -> str | None:
    """None if ``args`` fit the definition's schema, else a short description of the first error."""
    validator = _validator(definition)
    try:
        error = jsonschema.exceptions.best_match(validator.iter_errors(args))
    except referencing.exceptions.Unresolvable as exc:  # schemas never fetch anything
        return f"(args): the command's schema refers to something it does not hold: {exc}"[:500]
    except (ArithmeticError, ValueError, TypeError, RecursionError) as exc:  # e.g. inf or NaN against multipleOf
        return f"(args): cannot be checked against the command's schema: {exc!r}"[:500]
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "(args)"
    return f"{where}: {error.message}"[:500]


_VALIDATORS: dict[int, tuple[CommandDefinition, jsonschema.Draft202012Validator]] = {}


def _validator(definition: CommandDefinition) -> jsonschema.Draft202012Validator:
    """The compiled schema validator of a definition, built once per definition object."""
    cached = _VALIDATORS.get(id(definition))
    if cached is not None and cached[0] is definition:
        return cached[1]
    # an empty registry: a reference outside the schema fails instead of being fetched
    validator = jsonschema.Draft202012Validator(definition.args_schema, registry=referencing.Registry())
    if len(_VALIDATORS) > 1000:
        _VALIDATORS.clear()
    _VALIDATORS[id(definition)] = (definition, validator)
    return validator


def load_definition(path: Path) -> CommandDefinition:
    """Read one command definition from a TOML file; one that could never run (see
    :func:`definition_problems`) is refused here, before anyone signs it."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        definition = CommandDefinition.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid command definition: {validation_words(exc)}", path=str(path)) from exc
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError("invalid command definition", path=str(path), error=str(exc)[:800]) from exc
    problems = definition_problems(definition)
    if problems:
        raise ConfigError(f"invalid command definition: {'; '.join(problems)}", path=str(path))
    return definition


SHELL_DEFAULT_ARGV = ["{argv*}"]  # what a shell command without an argv template runs


def definition_problems(definition: CommandDefinition) -> list[str]:
    """What would make every run of ``definition`` fail: an executor that is none of ``shell``,
    ``noop`` or ``builtin:<name>``; a shell command without ``argv`` whose schema has no ``argv``
    list to run instead; templates on a command that
    is not a shell command; a template field (``{name}``, ``{name*}``) its ``args_schema`` does
    not define (literal braces are written ``{{`` and ``}}``)."""
    problems: list[str] = []
    executor = definition.executor
    if executor not in ("shell", "noop") and not (executor.startswith("builtin:") and executor != "builtin:"):
        problems.append(f"executor: {executor!r} is none of shell, noop or builtin:<name>")
    stdin = [definition.stdin] if definition.stdin is not None else []
    templates = [*definition.argv, *stdin]
    if executor != "shell" and templates:
        problems.append(f"argv, stdin: only a shell command has them, not {executor}")
    properties = definition.args_schema.get("properties")
    known = set(properties) if isinstance(properties, dict) else set()
    if executor == "shell" and not definition.argv:  # then the program and its arguments are args.argv
        templates = [SHELL_DEFAULT_ARGV[0], *stdin]
        if "argv" not in known:
            problems.append(
                "argv: a shell command without one runs args.argv, which args_schema.properties does not define"
            )
            templates = stdin
    for template in templates:
        try:
            fields = _template_fields(template)
        except ValueError as exc:
            problems.append(f"{template!r} is not a valid template ({exc}): write a literal brace as {{{{ or }}}}")
            continue
        for name in fields:
            if name not in known:
                problems.append(
                    f"{template!r} uses {{{name}}}, which args_schema.properties does not define "
                    "(a literal brace is written {{ or }})"
                )
    return problems


def _template_fields(template: str) -> list[str]:
    """The argument names a template uses (``{name*}`` alone splices a list)."""
    if template.startswith("{") and template.endswith("*}"):
        return [template[1:-2]]
    found = []
    for _, name, _, _ in string.Formatter().parse(template):
        if name is not None:
            found.append(re.split(r"[.\[]", name, maxsplit=1)[0])
    return found
