"""Tenants: the anonymous tenant and priority names.

Per-tenant overrides of the scheduler's limits are kept in Redis; the scheduler
(llmserve.scheduler.tenants) enforces them and the Registry service (llmserve.registry.records)
writes them, for `llmserve tenants`.
"""

from __future__ import annotations

from llmserve.v1 import common_pb2

# Requests that name no tenant share this one.
ANONYMOUS = "anonymous"


def priority_name(level: int) -> str:
    """PRIORITY_HIGH -> "high"."""
    return common_pb2.Priority.Name(level).removeprefix("PRIORITY_").lower()


def priority_level(name: str) -> int:
    """"high" -> PRIORITY_HIGH; a clear error for anything else."""
    try:
        level = common_pb2.Priority.Value(f"PRIORITY_{name.strip().upper()}")
    except ValueError:
        level = common_pb2.PRIORITY_UNSPECIFIED
    if level == common_pb2.PRIORITY_UNSPECIFIED:
        choices = ", ".join(priority_name(v) for v in common_pb2.Priority.values()[1:])
        raise ValueError(f"priority must be one of {choices}, got {name!r}")
    return level
