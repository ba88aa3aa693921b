"""Function calling's pieces: the call parser over streamed text, the grammar of a required call, and
how turns with tools are written for a template that does not know tools."""

import json

import pytest

from llmserve.common.grammars import grammar_error
from llmserve.model_worker.tool_prompts import chat_turns
from llmserve.router.tools import ToolCallParser, tool_constraint
from llmserve.v1 import common_pb2

pytestmark = pytest.mark.unit

CALL = '<tool_call>{"name": "f", "arguments": {"a": 1}}</tool_call>'


@pytest.mark.parametrize("cut", [1, 3, 7, 11, 30, len(CALL) - 3])
def test_a_call_split_anywhere_is_found_once_and_never_shown(cut):
    parser = ToolCallParser()
    text = "Sure. " + CALL + " Done"
    shown = [parser.feed(text[:cut])[0], parser.feed(text[cut:])[0], parser.finish()]
    assert "".join(shown) == "Sure.  Done"
    (call,) = parser.calls
    assert call.name == "f" and json.loads(call.arguments) == {"a": 1} and call.id.startswith("call_")


def test_text_that_only_looks_like_a_tag_is_shown_and_a_bad_call_stays_text():
    parser = ToolCallParser()
    assert parser.feed("a < b and <tool")[0] == "a < b and "
    assert parser.feed("box>")[0] == "<toolbox>"
    assert parser.feed("<tool_call>not json</tool_call>")[0] == "<tool_call>not json</tool_call>"
    assert parser.feed("<tool_call>{\"name\": \"f\"")[0] == "" and parser.finish() == '<tool_call>{"name": "f"'
    assert parser.calls == []


def test_a_required_call_is_a_grammar_of_the_functions_arguments():
    tools = [common_pb2.Tool(name="f", parameters=json.dumps({"type": "object", "properties": {"a": {"type": "integer"}}})),
             common_pb2.Tool(name="g")]
    required = tool_constraint(tools, common_pb2.ToolChoice(mode=common_pb2.TOOL_CHOICE_MODE_REQUIRED))
    assert required.lark.startswith("start: call+") and grammar_error(required) is None
    single = tool_constraint(tools, common_pb2.ToolChoice(mode=common_pb2.TOOL_CHOICE_MODE_REQUIRED, parallel=False))
    assert single.lark.startswith("start: call\n")
    named = tool_constraint(tools, common_pb2.ToolChoice(mode=common_pb2.TOOL_CHOICE_MODE_FUNCTION, function="g"))
    assert '"const": "g"' in named.lark and '"const": "f"' not in named.lark
    assert tool_constraint(tools, common_pb2.ToolChoice(mode=common_pb2.TOOL_CHOICE_MODE_AUTO)) is None


def test_a_template_without_tools_is_taught_them_in_the_system_turn():
    tools = [common_pb2.Tool(name="f", description="Does f.")]
    messages = [
        common_pb2.ChatMessage(role="user", content="hi"),
        common_pb2.ChatMessage(role="assistant", tool_calls=[common_pb2.ToolCall(id="call_1", name="f", arguments='{"a": 1}')]),
        common_pb2.ChatMessage(role="tool", tool_call_id="call_1", content="42"),
    ]
    turns, native = chat_turns(messages, tools, native=False)
    assert native is None
    assert turns[0]["role"] == "system" and '"name": "f"' in turns[0]["content"] and "<tool_call>" in turns[0]["content"]
    assert turns[2] == {"role": "assistant", "content": '<tool_call>{"name": "f", "arguments": {"a": 1}}</tool_call>'}
    assert turns[3] == {"role": "tool", "content": "42"}
    native_turns, native_tools = chat_turns(messages, tools, native=True)
    assert native_tools[0]["function"]["name"] == "f" and native_turns[1]["tool_calls"][0]["function"]["arguments"] == {"a": 1}
