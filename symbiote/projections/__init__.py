"""Projections: the stream folded into PostgreSQL tables, memory, replay, checkpoints, audit."""

from symbiote.projections.pgserver import PostgresServer, PostgresServerConfig

__all__ = ["PostgresServer", "PostgresServerConfig"]
