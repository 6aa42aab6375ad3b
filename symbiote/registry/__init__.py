"""Command definitions and approval policy, folded from ``sym.reg.*`` by log position."""

from symbiote.registry.definition import ApprovalPolicy, CommandDefinition, SandboxSpec, load_definition, validate_args
from symbiote.registry.state import REGISTRY_TYPES, RegistryState, default_definitions

__all__ = [
    "REGISTRY_TYPES",
    "ApprovalPolicy",
    "CommandDefinition",
    "RegistryState",
    "SandboxSpec",
    "default_definitions",
    "load_definition",
    "validate_args",
]
