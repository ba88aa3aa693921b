"""Helpers for engine tests."""

from __future__ import annotations


def chat_ids(loaded, question: str) -> tuple[int, ...]:
    tok = loaded.tokenizer
    text = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False)
    return tuple(tok(text, add_special_tokens=False)["input_ids"])
