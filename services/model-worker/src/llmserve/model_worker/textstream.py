"""Text out of token ids: incremental detokenization and stop sequences.

Both work on whole decoded text so that a multi-byte character split over two tokens is never
emitted half-way, and a stop sequence that spans several tokens is still found.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class IncrementalDetokenizer:
    """Yields the text each new token adds, holding back an incomplete UTF-8 sequence.

    Decodes a short window (from the last emitted boundary) rather than the whole sequence, so
    the cost per token stays constant and tokenizers that add a leading space are handled.
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0

    def prime(self, ids: Sequence[int]) -> None:
        """Continues after ids already turned into text (a migrated request); a few tokens of context
        before the boundary let the next token's leading space come out right."""
        self._ids = list(ids)
        self._read_offset = len(self._ids)
        self._prefix_offset = max(0, self._read_offset - 6)

    def _decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def add(self, token_id: int) -> str:
        self._ids.append(token_id)
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self._ids[self._prefix_offset :])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            delta = new_text[len(prefix_text) :]
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)
            return delta
        return ""


class StopMatcher:
    """Holds back text that could still become a stop sequence; cuts the text at the first match."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [s for s in stops if s]
        self._text = ""
        self._emitted = 0
        self.matched = False

    def prime(self, text: str, emitted: int) -> None:
        """Continues a migrated request: `text` was generated, its first `emitted` characters were sent."""
        self._text = text
        self._emitted = min(emitted, len(text))

    def feed(self, delta: str) -> str:
        """Adds generated text; returns what can be sent now. After a match, returns the rest before it."""
        if self.matched:
            return ""
        self._text += delta
        if not self._stops:
            out, self._emitted = self._text[self._emitted :], len(self._text)
            return out
        first = -1
        for stop in self._stops:
            # A match must end inside the new text, so search from just before it.
            at = self._text.find(stop, max(0, self._emitted - len(stop) + 1))
            if at != -1 and (first == -1 or at < first):
                first = at
        if first != -1:
            self.matched = True
            out = self._text[self._emitted : max(first, self._emitted)]
            self._emitted = max(first, self._emitted)
            return out
        safe_end = len(self._text) - self._held_back()
        out = self._text[self._emitted : safe_end]
        self._emitted = max(self._emitted, safe_end)
        return out

    def _held_back(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of a stop sequence."""
        longest = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(self._text)), longest, -1):
                if self._text.endswith(stop[:n]):
                    longest = n
                    break
        return longest

    def flush(self) -> str:
        """At the end of generation the held-back text is plain text after all."""
        if self.matched:
            return ""
        out, self._emitted = self._text[self._emitted :], len(self._text)
        return out
