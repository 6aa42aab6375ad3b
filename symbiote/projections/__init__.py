"""Projections: the stream folded into PostgreSQL tables, memory search, replay, signed checkpoints, audit.

The runtime starts :class:`Projections` (migrations, the live projector, the checkpointer)
and wires :func:`memory_search_builtin` and :meth:`MemoryStore.recall`; the CLI uses
:func:`replay`, :func:`audit` and :func:`why`.
"""

from symbiote.projections.audit import (
    AuditReport,
    CommandStory,
    Finding,
    Refusal,
    Step,
    audit,
    human_time,
    judge_execution,
    why,
    write_html,
)
from symbiote.projections.checkpoints import CHECKPOINT_SUBJECT, Checkpointer, CheckpointRecord, compute_root
from symbiote.projections.db import apply_migrations, load_migrations
from symbiote.projections.memory import MEMORY_SEARCH_DEFINITION, MemoryHit, MemoryStore, memory_search_builtin
from symbiote.projections.pgserver import PostgresServer, PostgresServerConfig
from symbiote.projections.projector import Projector, ProjectorStats
from symbiote.projections.replay import ReplayReport, TableDigest, drop_replay, replay, table_digests
from symbiote.projections.service import Projections
from symbiote.projections.verify import entry_hash

__all__ = [
    "CHECKPOINT_SUBJECT",
    "MEMORY_SEARCH_DEFINITION",
    "AuditReport",
    "CheckpointRecord",
    "Checkpointer",
    "CommandStory",
    "Finding",
    "MemoryHit",
    "MemoryStore",
    "PostgresServer",
    "PostgresServerConfig",
    "Projections",
    "Projector",
    "ProjectorStats",
    "Refusal",
    "ReplayReport",
    "Step",
    "TableDigest",
    "apply_migrations",
    "audit",
    "compute_root",
    "drop_replay",
    "entry_hash",
    "human_time",
    "judge_execution",
    "load_migrations",
    "memory_search_builtin",
    "replay",
    "table_digests",
    "why",
    "write_html",
]
