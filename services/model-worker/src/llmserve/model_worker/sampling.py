"""Turning one row of logits into the next token, with each request's own settings."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class SamplingConfig:
    """Sampling settings of one request, defaults applied (see llmserve.v1.SamplingParams)."""

    # 0 means greedy.
    temperature: float = 0.0
    # 1.0 disables nucleus sampling.
    top_p: float = 1.0
    # 0 disables top-k.
    top_k: int = 0
    # None: nondeterministic; otherwise the request's own generator is seeded with it.
    seed: int | None = None
    # 1.0 disables it.
    repetition_penalty: float = 1.0
    # Most tokens to generate.
    max_tokens: int = 256
    # Generation stops before the first occurrence of any of these.
    stop: tuple[str, ...] = field(default_factory=tuple)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """The CTRL penalty (as in transformers): divide positive logits of seen tokens, multiply negative ones."""
    if penalty == 1.0 or seen.numel() == 0:
        return logits
    picked = logits.gather(-1, seen)
    picked = torch.where(picked > 0, picked / penalty, picked * penalty)
    return logits.scatter(-1, seen, picked)


def sample_next(
    logits: torch.Tensor,
    config: SamplingConfig,
    seen: torch.Tensor,
    generator: torch.Generator | None,
) -> int:
    """Next token id from a 1-D logits vector. `seen` holds prompt + generated ids (for the penalty)."""
    logits = apply_repetition_penalty(logits.float(), seen, config.repetition_penalty)
    if config.greedy:
        return int(torch.argmax(logits).item())
    logits = logits / config.temperature
    if config.top_k > 0:
        k = min(config.top_k, logits.shape[-1])
        kth = torch.topk(logits, k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if 0.0 < config.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        # Drop a token when the mass before it already reaches top_p; the first token always stays.
        drop = (cumulative - torch.softmax(sorted_logits, dim=-1)) >= config.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.empty_like(logits).scatter(-1, order, sorted_logits)
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator).item())
