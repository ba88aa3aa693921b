"""The engine interface: what the worker asks of whatever runs the model.

submit() returns an async stream of outputs for one request; cancel() ends a request at the next
decode step; stats() reports load for heartbeats; max_kv_tokens bounds one request's length. Engines run torch on their own thread, so the
event loop (heartbeats, cancels, NATS) never waits on a forward pass.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from llmserve.model_worker.constraints import ConstrainedOutput
from llmserve.model_worker.sampling import SamplingConfig
from llmserve.v1 import common_pb2


@dataclass(frozen=True)
class EngineRequest:
    # Unique id of the request.
    request_id: str
    # Prompt token ids (the chat template already applied).
    prompt_ids: tuple[int, ...]
    # Sampling settings, defaults applied.
    sampling: SamplingConfig
    # Generate exactly max_tokens, ignoring end-of-sequence (benchmarks only).
    ignore_eos: bool = False
    # Tokens generated before a migration: the sequence continues after them (they count towards
    # max_tokens and completion tokens, and are prefilled with the prompt).
    resume_ids: tuple[int, ...] = ()
    # Characters of the resumed tokens' text the client already has.
    resume_text_chars: int = 0
    # Constrained decoding: the request's position in its grammar (past any resumed tokens), or None.
    constraint: ConstrainedOutput | None = None
    # The job's priority level (common.Priority): a batching engine may preempt a running sequence of a
    # lower level to start this one.
    priority: int = common_pb2.PRIORITY_NORMAL

    @property
    def context_ids(self) -> tuple[int, ...]:
        """What the engine prefills: the prompt, then any resumed tokens."""
        return self.prompt_ids + self.resume_ids


@dataclass
class EngineOutput:
    # Token ids generated since the previous output.
    token_ids: list[int] = field(default_factory=list)
    # Text those tokens add (stop sequences and incomplete characters held back).
    text: str = ""
    # FINISH_REASON_UNSPECIFIED until the last output.
    finish_reason: int = common_pb2.FINISH_REASON_UNSPECIFIED
    # Set on the last output.
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # Set when finish_reason is FINISH_REASON_ERROR.
    error: str = ""
    # With SamplingConfig.logprobs: one per token of token_ids.
    logprobs: list[common_pb2.TokenLogprob] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.finish_reason != common_pb2.FINISH_REASON_UNSPECIFIED


@dataclass(frozen=True)
class EngineStats:
    # Sequences the engine can run at once.
    slots_total: int
    # Sequences running or admitted.
    slots_busy: int
    # KV-cache positions reserved by admitted sequences, and the most it may reserve (both 0 for an
    # engine without a KV budget).
    kv_reserved: int = 0
    kv_capacity: int = 0

    @property
    def slots_free(self) -> int:
        return max(0, self.slots_total - self.slots_busy)

    @property
    def kv_usage(self) -> float:
        """Reserved KV positions as a share of capacity (0 without a KV budget)."""
        return self.kv_reserved / self.kv_capacity if self.kv_capacity else 0.0


class Engine(Protocol):
    # The most KV positions (prompt + generated tokens) one request may need: the worker refuses a
    # longer prompt and caps max_tokens to what is left.
    max_kv_tokens: int

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def submit(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        """Starts a request; the stream ends after the output whose finish_reason is set."""
        ...

    def cancel(self, request_id: str) -> bool:
        """Ends a request at its next decode step with FINISH_REASON_CANCELLED; False if unknown."""
        ...

    def stats(self) -> EngineStats: ...
