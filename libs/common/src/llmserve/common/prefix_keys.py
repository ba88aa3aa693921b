"""Prefix keys: what a job's prompt starts with, named without a tokenizer, for cache-aware dispatch.

A worker keeps the keys and values of prompt prefixes (model_worker/prefix_cache.py), named by their
tokens; the scheduler, which has no tokenizer, needs names it can compute from the job itself. A
job's prefix keys are a hash chain over what the prompt is rendered from:
  - chat messages: one key per message, each chained to the ones before it (and to the tools, which
    templates render ahead of the conversation), so the next turn of a conversation shares every
    key of the turn before and the turn's own new messages add keys after them;
  - a raw prompt: one key per whole `PROMPT_CHUNK_BYTES` bytes of its UTF-8 text.
A worker announces the keys of the prompts whose blocks it holds (in its heartbeats); the scheduler
sends a job to the worker that announces the longest run of the job's keys. Keys are hints: a worker
that evicted the blocks since still answers correctly, it computes the prompt.
"""

from __future__ import annotations

import hashlib

from llmserve.v1 import events_pb2

PROMPT_CHUNK_BYTES = 256


def _key(digest: bytes) -> int:
    return int.from_bytes(digest[:8], "little")


def job_prefix_keys(job: events_pb2.Job) -> list[int]:
    """The job's prefix keys, shortest prefix first (empty when its prompt is shorter than one key)."""
    if job.WhichOneof("input") == "messages":
        chain = hashlib.blake2b(b"chat", digest_size=16)
        for tool in job.tools:
            chain.update(tool.SerializeToString(deterministic=True))
        keys = []
        for message in job.messages.messages:
            chain.update(message.SerializeToString(deterministic=True))
            chain.update(b"\x00")
            keys.append(_key(chain.copy().digest()))
        return keys
    chain = hashlib.blake2b(b"prompt", digest_size=16)
    keys = []
    text = job.prompt.encode()
    for start in range(0, len(text) - PROMPT_CHUNK_BYTES + 1, PROMPT_CHUNK_BYTES):
        chain.update(text[start : start + PROMPT_CHUNK_BYTES])
        keys.append(_key(chain.copy().digest()))
    return keys
