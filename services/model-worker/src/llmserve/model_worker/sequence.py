"""The per-request state an engine keeps between decode steps, independent of how steps are batched."""

from __future__ import annotations

import os
from typing import Any

import torch

from llmserve.model_worker.engine import EngineOutput, EngineRequest
from llmserve.model_worker.sampling import adjusted_logits, choose, token_logprobs
from llmserve.model_worker.textstream import IncrementalDetokenizer, StopMatcher
from llmserve.v1 import common_pb2


class Sequence:
    """One request inside an engine: its generator, generated ids, text state and finish rule."""

    def __init__(self, request: EngineRequest, tokenizer: Any, eos_ids: frozenset[int]) -> None:
        self.request = request
        self.eos_ids = eos_ids
        seed = request.sampling.seed
        # Every request has its own generator, so concurrent requests never disturb each other's draws.
        self.generator = torch.Generator().manual_seed(seed if seed is not None else int.from_bytes(os.urandom(8), "little") >> 1)
        self.generated: list[int] = list(request.resume_ids)
        self._tokenizer = tokenizer
        # The logprob of the token sample() chose, until append() reports it.
        self._logprob: common_pb2.TokenLogprob | None = None
        self._detok = IncrementalDetokenizer(tokenizer)
        self._stops = StopMatcher(request.sampling.stop)
        if request.resume_ids:
            self._detok.prime(request.resume_ids)
            text = tokenizer.decode(request.resume_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
            self._stops.prime(text, request.resume_text_chars)
        self.cancelled = False
        self.finished = False
        # Times a batching engine preempted this sequence (bounded), and the order in which it was first
        # admitted (a preemption takes the youngest of the lowest level).
        self.preemptions = 0
        self.admitted = 0

    @property
    def request_id(self) -> str:
        return self.request.request_id

    def _seen(self) -> torch.Tensor:
        if self.request.sampling.repetition_penalty == 1.0:
            return torch.empty(0, dtype=torch.long)
        return torch.tensor([*self.request.prompt_ids, *self.generated], dtype=torch.long)  # generated includes resumed

    @property
    def fast_greedy(self) -> bool:
        """True when this step's token is the row's argmax: an engine may take it from one batched
        argmax without handing the row's logits to sample()."""
        return self.request.sampling.plain_greedy and self.request.constraint is None and not self._banned()

    def _banned(self) -> tuple[int, ...]:
        """End-of-sequence ids while min_tokens is not reached."""
        if self.request.ignore_eos or len(self.generated) >= self.request.sampling.min_tokens:
            return ()
        return tuple(sorted(self.eos_ids))

    def sample(self, logits: torch.Tensor) -> int:
        """Next token from this request's row of logits (1-D, on any device)."""
        sampling = self.request.sampling
        penalized = sampling.presence_penalty or sampling.frequency_penalty
        generated = torch.tensor(self.generated if penalized else [], dtype=torch.long)
        adjusted = adjusted_logits(logits.float().cpu(), sampling, self._seen(), generated)
        constraint = self.request.constraint
        allowed = constraint.mask(adjusted) if constraint is not None else adjusted
        token = choose(allowed, sampling, self.generator, self._banned())
        if sampling.logprobs:
            logprob, top = token_logprobs(adjusted, token, sampling.top_logprobs)
            self._logprob = common_pb2.TokenLogprob(
                token_id=token, token=self._text_of(token), logprob=logprob,
                top_logprobs=[common_pb2.TopLogprob(token_id=i, token=self._text_of(i), logprob=lp) for i, lp in top],
            )
        return token

    def _text_of(self, token_id: int) -> str:
        return self._tokenizer.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def append(self, token_id: int) -> EngineOutput:
        """Records a sampled token and returns what the client gets for it."""
        self.generated.append(token_id)
        if self.request.constraint is not None and token_id not in self.eos_ids:
            self.request.constraint.take(token_id)
        finish = common_pb2.FINISH_REASON_UNSPECIFIED
        text = ""
        if token_id in self.eos_ids and not self.request.ignore_eos:
            finish = common_pb2.FINISH_REASON_STOP
            text = self._stops.flush()
        else:
            text = self._stops.feed(self._detok.add(token_id))
            if self._stops.matched:
                finish = common_pb2.FINISH_REASON_STOP
            elif len(self.generated) >= self.request.sampling.max_tokens:
                finish = common_pb2.FINISH_REASON_LENGTH
                text += self._stops.flush()
        out = self._output([token_id], text, finish)
        if self._logprob is not None and self._logprob.token_id == token_id:
            out.logprobs.append(self._logprob)
        self._logprob = None
        return out

    def cancel_output(self) -> EngineOutput:
        return self._output([], "", common_pb2.FINISH_REASON_CANCELLED)

    def error_output(self, error: str) -> EngineOutput:
        out = self._output([], "", common_pb2.FINISH_REASON_ERROR)
        out.error = error
        return out

    def _output(self, token_ids: list[int], text: str, finish: int) -> EngineOutput:
        out = EngineOutput(token_ids=token_ids, text=text, finish_reason=finish)
        if finish != common_pb2.FINISH_REASON_UNSPECIFIED:
            self.finished = True
            out.prompt_tokens = len(self.request.prompt_ids)
            out.completion_tokens = len(self.generated)
        return out
