"""Perplexity of a decoder on a text: how a numeric mode's quality is measured against float32."""

from __future__ import annotations

import math

import torch

from llmserve.model_worker.llama_decoder import LlamaDecoder, Segment

# Tokens scored per forward pass; each window starts a fresh context at position 0.
WINDOW = 512


@torch.inference_mode()
def perplexity(decoder: LlamaDecoder, token_ids: list[int], window: int = WINDOW) -> float:
    """exp of the mean negative log-likelihood of every token after the first of each window."""
    cache = decoder.new_cache(rows=1)
    total, count = 0.0, 0
    for start in range(0, len(token_ids) - 1, window):
        chunk = token_ids[start : start + window]
        if len(chunk) < 2:
            break
        cache.ensure(1, len(chunk))
        logits = decoder.forward([Segment(0, 0, chunk)], cache, every_token=True).float()
        nll = torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(chunk[1:]), reduction="sum")
        total += float(nll)
        count += len(chunk) - 1
    return math.exp(total / count)
