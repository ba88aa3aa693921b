"""Chat turns with function calling, as the model's chat template needs them.

A template that knows tools (it reads a `tools` variable, as Qwen's, Llama 3.1's or Hermes' do) gets
them and the turns in transformers' format. A template that does not (SmolLM2's) gets them taught in
its system turn: the functions as JSON, and how to call one, `<tool_call>{"name": ..., "arguments":
{...}}</tool_call>`, which is also how earlier calls are written back into assistant turns; tool
results stay turns of role "tool". The router parses calls in that one format.
"""

from __future__ import annotations

import json
from typing import Any

from llmserve.common.grammars import TOOL_CALL_CLOSE, TOOL_CALL_OPEN
from llmserve.v1 import common_pb2

OPEN, CLOSE = TOOL_CALL_OPEN, TOOL_CALL_CLOSE

_INSTRUCTIONS = (
    "You can call these functions. Each is described by a JSON object with its name, description and the JSON Schema of "
    "its arguments:\n{functions}\n\nTo call a function, answer with <tool_call>{{\"name\": <function name>, \"arguments\": "
    "<arguments as a JSON object>}}</tool_call> (one tag per call) and nothing else. A function's result comes back in a "
    "message of role \"tool\"; then answer the user."
)


def knows_tools(tokenizer: Any) -> bool:
    template = getattr(tokenizer, "chat_template", None) or ""
    return isinstance(template, str) and "tools" in template


def _function(tool: common_pb2.Tool) -> dict:
    parameters = json.loads(tool.parameters) if tool.parameters else {"type": "object", "properties": {}}
    return {"name": tool.name, "description": tool.description, "parameters": parameters}


def chat_turns(messages: list[common_pb2.ChatMessage], tools: list[common_pb2.Tool], native: bool) -> tuple[list[dict], list[dict] | None]:
    """(turns, tools) for apply_chat_template: transformers' format when the template knows tools
    (`native`), else plain turns with the tools taught in the system turn."""
    if native:
        turns = []
        for m in messages:
            turn: dict[str, Any] = {"role": m.role, "content": m.content}
            if m.tool_calls:
                turn["tool_calls"] = [
                    {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": json.loads(c.arguments or "{}")}}
                    for c in m.tool_calls
                ]
            if m.tool_call_id:
                turn["tool_call_id"] = m.tool_call_id
            turns.append(turn)
        return turns, [{"type": "function", "function": _function(t)} for t in tools] or None
    turns = [{"role": m.role, "content": _written(m)} for m in messages]
    if tools:
        lesson = _INSTRUCTIONS.format(functions="\n".join(json.dumps(_function(t), ensure_ascii=False) for t in tools))
        if turns and turns[0]["role"] == "system":
            turns[0] = {"role": "system", "content": f"{turns[0]['content']}\n\n{lesson}"}
        else:
            turns.insert(0, {"role": "system", "content": lesson})
    return turns, None


def _written(message: common_pb2.ChatMessage) -> str:
    """A turn's text, with its earlier calls written the way the model is taught to call."""
    calls = "".join(
        f"{OPEN}{json.dumps({'name': c.name, 'arguments': json.loads(c.arguments or '{}')}, ensure_ascii=False)}{CLOSE}"
        for c in message.tool_calls
    )
    return message.content + calls
