"""Output constraints as llguidance grammars: what the worker decodes under and the router checks.

JSON is generated compact (`{"a": 1, "b": [2, 3]}`, no free whitespace): a small model that may
choose whitespace can loop on newlines until max_tokens.
"""

from __future__ import annotations

import json

import llguidance

from llmserve.v1 import common_pb2

# Compact JSON, for every JSON a constraint asks for (function calls' arguments too).
JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
# How a model writes a function call (the Hermes format): the worker teaches it, the router's
# grammar for a required call produces it, and the router parses it.
TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"


def grammar_of(constraint: common_pb2.OutputConstraint) -> str | None:
    """The llguidance grammar (JSON text) of a constraint; None when it constrains nothing."""
    kind = constraint.WhichOneof("kind")
    if kind == "json_object":
        return llguidance.LLMatcher.grammar_from_json_schema(json.dumps({"type": "object"}), defaults=JSON_STYLE)
    if kind == "json_schema":
        return llguidance.LLMatcher.grammar_from_json_schema(constraint.json_schema, defaults=JSON_STYLE)
    if kind == "regex":
        return llguidance.LLMatcher.grammar_from_regex(constraint.regex)
    if kind == "lark":
        return llguidance.LLMatcher.grammar_from_lark(constraint.lark)
    return None


def grammar_error(constraint: common_pb2.OutputConstraint) -> str | None:
    """Why the constraint cannot be used (a schema or grammar error), or None. Needs no tokenizer, so
    the router checks requests with it before they are queued."""
    try:
        grammar = grammar_of(constraint)
    except Exception as exc:  # a schema that is not JSON, say
        return str(exc)
    if grammar is None:
        return None
    return llguidance.LLMatcher.validate_grammar(grammar) or None


