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
    # OpenAI's penalties over the generated tokens; 0 disables them.
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    # (token id, bias) pairs added to the logits.
    logit_bias: tuple[tuple[int, float], ...] = ()
    # End-of-sequence is masked until this many tokens were generated.
    min_tokens: int = 0
    # Report each generated token's log probability, and this many alternatives.
    logprobs: bool = False
    top_logprobs: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    @property
    def plain_greedy(self) -> bool:
        """Greedy with nothing that changes or reads the logits (min_tokens aside, which only matters
        while it is not reached): the batch's argmax is the token."""
        return (
            self.greedy
            and self.repetition_penalty == 1.0
            and not (self.presence_penalty or self.frequency_penalty or self.logit_bias or self.logprobs)
        )


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """The CTRL penalty (as in transformers): divide positive logits of seen tokens, multiply negative ones."""
    if penalty == 1.0 or seen.numel() == 0:
        return logits
    picked = logits.gather(-1, seen)
    picked = torch.where(picked > 0, picked / penalty, picked * penalty)
    return logits.scatter(-1, seen, picked)


def apply_openai_penalties(logits: torch.Tensor, generated: torch.Tensor, presence: float, frequency: float) -> torch.Tensor:
    """OpenAI's presence and frequency penalties over the generated tokens (as vLLM applies them)."""
    if not (presence or frequency) or generated.numel() == 0:
        return logits
    counts = torch.bincount(generated, minlength=logits.shape[-1])[: logits.shape[-1]].to(logits.dtype)
    return logits - frequency * counts - presence * (counts > 0).to(logits.dtype)


def apply_logit_bias(logits: torch.Tensor, bias: tuple[tuple[int, float], ...]) -> torch.Tensor:
    if not bias:
        return logits
    ids = torch.tensor([i for i, _ in bias], dtype=torch.long)
    values = torch.tensor([b for _, b in bias], dtype=logits.dtype)
    return logits.index_add(-1, ids, values)


def adjusted_logits(logits: torch.Tensor, config: SamplingConfig, seen: torch.Tensor, generated: torch.Tensor) -> torch.Tensor:
    """The logits with every penalty and bias applied: what logprobs are reported from and sampling
    starts from (temperature, top-k, top-p and masks come after)."""
    logits = apply_repetition_penalty(logits.float(), seen, config.repetition_penalty)
    logits = apply_openai_penalties(logits, generated, config.presence_penalty, config.frequency_penalty)
    return apply_logit_bias(logits, config.logit_bias)


def sample_next(
    logits: torch.Tensor,
    config: SamplingConfig,
    seen: torch.Tensor,
    generator: torch.Generator | None,
    generated: torch.Tensor | None = None,
    banned: tuple[int, ...] = (),
) -> int:
    """Next token id from a 1-D logits vector. `seen` holds prompt + generated ids (for the repetition
    penalty), `generated` the generated ids only (for the presence and frequency penalties); `banned`
    ids cannot be drawn (end-of-sequence before min_tokens)."""
    logits = adjusted_logits(logits, config, seen, generated if generated is not None else torch.empty(0, dtype=torch.long))
    return choose(logits, config, generator, banned)


def choose(logits: torch.Tensor, config: SamplingConfig, generator: torch.Generator | None, banned: tuple[int, ...] = ()) -> int:
    """The token drawn from adjusted logits: argmax when greedy, else temperature, top-k, top-p."""
    if banned:
        without = logits.index_fill(-1, torch.tensor(banned, dtype=torch.long), float("-inf"))
        # A constraint that allows only end-of-sequence wins over min_tokens.
        if torch.isfinite(without).any():
            logits = without
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


def token_logprobs(logits: torch.Tensor, token: int, top: int) -> tuple[float, list[tuple[int, float]]]:
    """The log probability of `token` under adjusted logits, and the `top` most likely (id, logprob)."""
    logprobs = torch.log_softmax(logits, dim=-1)
    alternatives: list[tuple[int, float]] = []
    if top > 0:
        values, ids = torch.topk(logprobs, min(top, logprobs.shape[-1]))
        alternatives = list(zip(ids.tolist(), values.tolist(), strict=True))
    return float(logprobs[token].item()), alternatives
