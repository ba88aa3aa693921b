"""Function calling: checking tools, constraining a required call, and finding calls in the output.

A model calls a function by writing `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (the
Hermes format many chat templates use; for a template without tools the worker teaches it in the
system turn, see model_worker/tool_prompts.py). With tool choice "required" or a named function the
output is constrained to such calls (a Lark grammar whose calls are JSON Schemas of the functions'
arguments), so it always is one; with "auto" the model writes what it likes and calls are found in
its text. Calls are parsed by the router, which streams text outside calls as it comes and each call
whole once its closing tag arrived.
"""

from __future__ import annotations

import json
import re
import uuid

from llmserve.common.errors import ServiceError
from llmserve.common.grammars import JSON_STYLE, TOOL_CALL_CLOSE, TOOL_CALL_OPEN, grammar_error
from llmserve.v1 import common_pb2

OPEN, CLOSE = TOOL_CALL_OPEN, TOOL_CALL_CLOSE
TOOL_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_TOOLS = 128


def check_tools(tools: list[common_pb2.Tool], choice: common_pb2.ToolChoice) -> None:
    """Refuses malformed tools or a choice that names nothing callable, naming the field."""
    if len(tools) > MAX_TOOLS:
        raise ServiceError.invalid(f"at most {MAX_TOOLS} tools, got {len(tools)}", param="tools")
    names = set()
    for i, tool in enumerate(tools):
        if not TOOL_NAME_RE.match(tool.name):
            raise ServiceError.invalid(f"tools[{i}].function.name must be 1-64 letters, digits, '_' or '-'", param="tools")
        if tool.name in names:
            raise ServiceError.invalid(f"tools[{i}].function.name {tool.name!r} is used twice", param="tools")
        names.add(tool.name)
        schema = _parameters(tool, i)
        why = grammar_error(common_pb2.OutputConstraint(json_schema=json.dumps(schema)))
        if why:
            raise ServiceError.invalid(f"tools[{i}].function.parameters is not a usable JSON Schema: {why}", param="tools")
    mode = choice.mode
    if mode in (common_pb2.TOOL_CHOICE_MODE_REQUIRED, common_pb2.TOOL_CHOICE_MODE_FUNCTION) and not tools:
        raise ServiceError.invalid("tool_choice asks for a call but no tools are given", param="tool_choice")
    if mode == common_pb2.TOOL_CHOICE_MODE_FUNCTION and choice.function not in names:
        raise ServiceError.invalid(f"tool_choice names {choice.function!r}, which is not among the tools", param="tool_choice")


def _parameters(tool: common_pb2.Tool, index: int = 0) -> dict:
    if not tool.parameters:
        return {"type": "object", "properties": {}}
    try:
        schema = json.loads(tool.parameters)
    except ValueError:
        raise ServiceError.invalid(f"tools[{index}].function.parameters is not JSON", param="tools") from None
    if not isinstance(schema, dict):
        raise ServiceError.invalid(f"tools[{index}].function.parameters must be a JSON Schema object", param="tools")
    return schema


def tool_constraint(tools: list[common_pb2.Tool], choice: common_pb2.ToolChoice) -> common_pb2.OutputConstraint | None:
    """The grammar a required or named call is decoded under; None when the model may answer freely."""
    if choice.mode == common_pb2.TOOL_CHOICE_MODE_FUNCTION:
        callable_ = [t for t in tools if t.name == choice.function]
    elif choice.mode == common_pb2.TOOL_CHOICE_MODE_REQUIRED:
        callable_ = list(tools)
    else:
        return None
    calls = [
        {"type": "object", "properties": {"name": {"const": t.name}, "arguments": _parameters(t)}, "required": ["name", "arguments"],
         "additionalProperties": False}
        for t in callable_
    ]
    schema = calls[0] if len(calls) == 1 else {"anyOf": calls}
    schema["x-guidance"] = JSON_STYLE
    parallel = choice.parallel if choice.HasField("parallel") else True
    repeat = "+" if parallel and choice.mode == common_pb2.TOOL_CHOICE_MODE_REQUIRED else ""
    lark = f'start: call{repeat}\ncall: "{OPEN}" %json {json.dumps(schema)} "{CLOSE}"\n'
    return common_pb2.OutputConstraint(lark=lark)


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


class ToolCallParser:
    """Splits generated text into what the model said and the calls it made, as the text streams in.

    Text that might be the start of a call's opening tag is held back until it is clear; a call is
    returned once its closing tag arrived. A call whose JSON is not a name and arguments object stays
    text (with "auto", the model may write anything)."""

    def __init__(self) -> None:
        self._buffer = ""
        self._in_call = False
        self.calls: list[common_pb2.ToolCall] = []

    def feed(self, text: str) -> tuple[str, list[common_pb2.ToolCall]]:
        """(text to show now, calls completed by this piece)."""
        self._buffer += text
        shown: list[str] = []
        done: list[common_pb2.ToolCall] = []
        while True:
            if self._in_call:
                end = self._buffer.find(CLOSE)
                if end < 0:
                    break
                body, self._buffer = self._buffer[:end], self._buffer[end + len(CLOSE):]
                self._in_call = False
                call = _parse_call(body)
                if call is None:
                    shown.append(OPEN + body + CLOSE)
                else:
                    done.append(call)
                continue
            start = self._buffer.find(OPEN)
            if start >= 0:
                shown.append(self._buffer[:start])
                self._buffer = self._buffer[start + len(OPEN):]
                self._in_call = True
                continue
            keep = _partial_tag_length(self._buffer)
            shown.append(self._buffer[: len(self._buffer) - keep])
            self._buffer = self._buffer[len(self._buffer) - keep:]
            break
        self.calls.extend(done)
        return "".join(shown), done

    @classmethod
    def split(cls, text: str) -> tuple[str, list[common_pb2.ToolCall]]:
        """A whole answer's text outside calls, and its calls."""
        parser = cls()
        said = parser.feed(text)[0] + parser.finish()
        return said, parser.calls

    def finish(self) -> str:
        """The text still held back (an unfinished call is shown as text)."""
        rest = (OPEN if self._in_call else "") + self._buffer
        self._buffer, self._in_call = "", False
        return rest


def _partial_tag_length(text: str) -> int:
    """Length of the longest end of `text` that is a beginning of the opening tag."""
    for n in range(min(len(OPEN) - 1, len(text)), 0, -1):
        if OPEN.startswith(text[-n:]):
            return n
    return 0


def _parse_call(body: str) -> common_pb2.ToolCall | None:
    try:
        value = json.loads(body)
    except ValueError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):  # some models write the arguments as a JSON string already
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not isinstance(arguments, dict):
        return None
    return common_pb2.ToolCall(id=new_call_id(), name=value["name"], arguments=json.dumps(arguments, ensure_ascii=False))
