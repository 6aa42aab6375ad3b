"""``symbiote init``: keys and the head of the log, idempotently.

Creates the owner key (registered by a self-signed event at the head of the log), an agent
key, a runtime key and a local user key, registers them owner-signed, and defines the
default commands. Running it again changes nothing: what is already there is kept.
"""

from __future__ import annotations

import getpass
import re
from dataclasses import dataclass, field

from symbiote.bus.envelope import make_event
from symbiote.bus.stream import Bus
from symbiote.errors import ConfigError
from symbiote.home import DataDir
from symbiote.registry.definition import ApprovalPolicy, CommandDefinition
from symbiote.registry.follower import RegistryFollower
from symbiote.registry.state import default_definitions
from symbiote.signers.keys import SigningKey, sign_event, valid_name

__all__ = ["InitReport", "define_command", "initialize", "register_key", "revoke_key", "set_policy"]


@dataclass
class InitReport:
    """What ``initialize`` did."""

    created_keys: list[str] = field(default_factory=list)
    registered: list[str] = field(default_factory=list)
    defined: list[str] = field(default_factory=list)


def _local_name() -> str:
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = "me"
    return re.sub(r"[^a-z0-9_-]", "", name.lower()) or "me"


async def initialize(bus: Bus, home: DataDir, *, name: str | None = None) -> InitReport:
    """Create missing keys, register them and the default commands; idempotent."""
    person = name or _local_name()
    if not valid_name(person):  # as `keys add` and `keys pair` take names
        raise ConfigError("a name is lower-case letters, digits, '_', '.' or '-' (at most 63)", name=person)
    home.ensure()
    report = InitReport()
    principals = {
        "owner": f"owner:{person}",
        "agent": "agent:main",
        "runtime": "runtime:main",
        "user": f"user:{person}",
    }
    keys: dict[str, SigningKey] = {}
    for role, principal in principals.items():
        if home.has_key(role):
            keys[role] = home.load_key(role)
        else:
            keys[role] = SigningKey.generate(principal)
            home.save_key(role, keys[role])
            report.created_keys.append(keys[role].principal)
    await bus.ensure_stream()
    follower = RegistryFollower(bus)
    state = await follower.refresh()
    owner = keys["owner"]
    if not state.keyring.has_owner:
        genesis = make_event(
            "key.registered", owner.principal, {"kid": owner.kid, "principal": owner.principal, "role": "owner"}
        )
        await bus.publish(sign_event(genesis, owner), expect_last_seq=0, expect_subject="sym.reg.key")
        report.registered.append(owner.principal)
        state = await follower.refresh()
    for role in ("agent", "runtime", "user"):
        key = keys[role]
        if state.keyring.entry(key.kid) is None:
            await register_key(bus, owner, key.kid, key.principal)
            report.registered.append(key.principal)
    state = await follower.refresh()
    current = {d.name: d for d in state.latest_commands()}
    for definition in default_definitions():
        if definition.name not in current:
            await define_command(bus, owner, definition)
            report.defined.append(definition.name)
    return report


async def register_key(bus: Bus, owner: SigningKey, kid: str, principal: str) -> int:
    """Publish an owner-signed ``key.registered``; returns its stream sequence."""
    role = principal.split(":", 1)[0]
    event = make_event("key.registered", owner.principal, {"kid": kid, "principal": principal, "role": role})
    return (await bus.publish(sign_event(event, owner))).seq


async def revoke_key(bus: Bus, owner: SigningKey, kid: str, principal: str) -> int:
    """Publish an owner-signed ``key.revoked``; returns its stream sequence."""
    role = principal.split(":", 1)[0]
    event = make_event("key.revoked", owner.principal, {"kid": kid, "principal": principal, "role": role})
    return (await bus.publish(sign_event(event, owner))).seq


async def define_command(bus: Bus, owner: SigningKey, definition: CommandDefinition) -> int:
    """Publish an owner-signed ``command.defined``; returns its stream sequence."""
    event = make_event("command.defined", owner.principal, {"definition": definition.to_map()})
    return (await bus.publish(sign_event(event, owner))).seq


async def set_policy(bus: Bus, owner: SigningKey, command: str, policy: ApprovalPolicy) -> int:
    """Publish an owner-signed ``policy.set`` for ``command``; returns its stream sequence."""
    event = make_event("policy.set", owner.principal, {"command": command, "approval": policy.model_dump()})
    return (await bus.publish(sign_event(event, owner))).seq
