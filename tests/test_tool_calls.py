"""Tool calls in the LLM layer: real parsing, the streaming filter, real chat-template rendering
(the tiny tokenizer with Qwen2.5's tool template), and the engine with tools on the tiny model.

Random weights cannot choose tools, so decisions are scripted text run through the same
parser the engine uses; what the engine itself is checked for is what it does with the
tools: the prompt, the forced call of `tool_choice`, and that no call text leaks out.
"""

from __future__ import annotations

import json

import pytest

from voice_agent.llm.base import GenerationSettings, ReplyStream
from voice_agent.llm.errors import InvalidToolsError
from voice_agent.llm.prompt import normalize_messages, render
from voice_agent.llm.tool_calls import (
    TOOL_CALL_OPEN,
    ToolCallFilter,
    check_tools,
    parse_reply,
    supports_tools,
    with_tool_calls,
)
from voice_agent.testing import tiny_llm

CLOCK = {
    "type": "function",
    "function": {
        "name": "current_time",
        "description": "The current date and time.",
        "parameters": {"type": "object", "properties": {"time_zone": {"type": "string"}}},
    },
}
QWEN_CALL = (
    '<tool_call>\n{"name": "calculate", "arguments": {"expression": "24 * 37"}}\n</tool_call>'
)


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_llm.build_tokenizer()


# --- parsing ---------------------------------------------------------------------------------


def test_qwen_calls_are_parsed_with_the_text_before_them() -> None:
    """Guards the Qwen2.5 format: every <tool_call> block is a call, text before it is kept."""
    parsed = parse_reply(
        "Let me work that out.\n" + QWEN_CALL + "\n" + QWEN_CALL.replace("24 * 37", "1+1")
    )
    assert parsed.text == "Let me work that out.\n"
    assert [(c.name, c.arguments, c.error) for c in parsed.calls] == [
        ("calculate", {"expression": "24 * 37"}, None),
        ("calculate", {"expression": "1+1"}, None),
    ]
    assert len({c.id for c in parsed.calls}) == 2


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "current_time", "arguments": {}}',
        '```json\n{"name": "current_time", "arguments": {}}\n```',
        '{"name": "current_time", "parameters": {}}',
        '{"type": "function", "function": {"name": "current_time", "arguments": "{}"}}',
        '[{"name": "current_time", "arguments": {}}]',
    ],
)
def test_the_generic_json_form_is_a_call(text: str) -> None:
    """Guards the generic JSON form (bare, fenced, `parameters`, OpenAI-wrapped, a list)."""
    parsed = parse_reply(text)
    assert parsed.text == "" and [c.name for c in parsed.calls] == ["current_time"]
    assert parsed.calls[0].error is None and parsed.calls[0].arguments == {}


@pytest.mark.parametrize(
    ("text", "name", "problem"),
    [
        (
            '<tool_call>\n{"name": "calculate", "arguments": {"expression": </tool_call>',
            "calculate",
            "not valid JSON",
        ),
        (
            '<tool_call>\n{"name": "calculate", "arguments": "{broken"}\n</tool_call>',
            "calculate",
            "arguments",
        ),
        (
            '<tool_call>\n{"name": "calculate", "arguments": [1, 2]}\n</tool_call>',
            "calculate",
            "object",
        ),
        ('<tool_call>\n{"arguments": {}}\n</tool_call>', "", "name"),
        ('<tool_call>\n{"name": "calculate", "argu', "calculate", "cut off"),
        ('{"name": "calculate", "arguments": {"expression": "1+', "calculate", "not valid JSON"),
    ],
)
def test_a_malformed_call_is_a_call_with_its_error(text: str, name: str, problem: str) -> None:
    """Guards that a broken call becomes an error the model is told, never a crash or spoken JSON."""
    parsed = parse_reply(text)
    assert len(parsed.calls) == 1
    call = parsed.calls[0]
    assert call.name == name and call.error is not None and problem in call.error


def test_plain_replies_and_json_that_is_not_a_call_stay_text() -> None:
    assert parse_reply("It is sunny.").calls == []
    data = '{"city": "Paris", "temp": 21}'
    assert parse_reply(data).text == data and parse_reply(data).calls == []


# --- the streaming filter --------------------------------------------------------------------


def stream_through(pieces: list[str], prefix: str = "") -> tuple[list[str], object]:
    tool_filter = ToolCallFilter(prefix)
    shown = [out for piece in pieces if (out := tool_filter.feed(piece))]
    tail, parsed = tool_filter.finish()
    return shown + ([tail] if tail else []), parsed


def test_no_part_of_a_call_is_ever_shown_wherever_the_pieces_split() -> None:
    """Regression guard: a streamed `<tool_call>` split across pieces ("<to", "ol_call>") must
    not leak its first characters into the speech."""
    text = "Sure, one second. " + QWEN_CALL
    for size in range(1, 12):
        pieces = [text[i : i + size] for i in range(0, len(text), size)]
        shown, parsed = stream_through(pieces)
        assert "".join(shown) == "Sure, one second. ", size
        assert [c.name for c in parsed.calls] == ["calculate"]


def test_words_stream_out_as_they_come() -> None:
    tool_filter = ToolCallFilter()
    assert tool_filter.feed("It is") == "It is"
    assert tool_filter.feed(" sunny <") == " sunny "  # "<" may open a call: held back
    assert tool_filter.feed("b>ok") == "<b>ok"


def test_a_reply_opening_like_json_is_held_to_the_end() -> None:
    """Guards the generic form: nothing of `{"name": ...}` is shown, and non-call JSON comes
    out whole at the end."""
    shown, parsed = stream_through(['{"name": "current_time",', ' "arguments": {}}'])
    assert shown == [] and [c.name for c in parsed.calls] == ["current_time"]
    shown, parsed = stream_through(['{"a":', " 1}"])
    assert shown == ['{"a": 1}'] and parsed.calls == []


def test_with_tool_calls_sets_the_reply() -> None:
    stream = ReplyStream(pieces=iter(()))
    from voice_agent.llm.base import Reply

    def pieces():
        yield from [
            "Let me check. ",
            "<tool",
            "_call>\n",
            '{"name": "current_time", "arguments": {}}',
            "\n</tool_call>",
        ]
        stream.reply = Reply("raw", "stop", completion_tokens=5)

    stream.pieces = pieces()
    with_tool_calls(stream)
    assert "".join(stream) == "Let me check. "
    assert stream.reply is not None and stream.reply.finish_reason == "tool_calls"
    assert (
        stream.reply.text == "Let me check. " and stream.reply.tool_calls[0].name == "current_time"
    )


# --- tools checked, and rendered by the real template ------------------------------------------


@pytest.mark.parametrize(
    ("tools", "choice", "words"),
    [
        ([{"type": "function"}], "auto", "function"),
        ([{"type": "retrieval", "function": {"name": "x"}}], "auto", "function tools"),
        ([{"type": "function", "function": {"name": "has space"}}], "auto", "name"),
        ([CLOCK, CLOCK], "auto", "twice"),
        (
            [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}],
            "auto",
            "object",
        ),
        ([CLOCK], "weather", "tool_choice"),
        ([], "required", "needs `tools`"),
        ("not a list", "auto", "list"),
    ],
)
def test_bad_tools_are_input_errors(tools, choice: str, words: str) -> None:
    with pytest.raises(InvalidToolsError) as caught:
        check_tools(tools, choice)
    assert words in str(caught.value) and caught.value.status_code == 400


def test_the_template_renders_tools_calls_and_results(tokenizer) -> None:
    """Guards that tools reach the model through its own chat template (`tools=`), and that a
    call and its result in the history render as Qwen2.5 renders them."""
    assert supports_tools(tokenizer)
    messages = normalize_messages(
        [
            {"role": "user", "content": "What is 24 times 37?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "calculate", "arguments": '{"expression": "24*37"}'},
                    }
                ],
            },
            {"role": "tool", "content": '{"result": 888}', "tool_call_id": "c1"},
        ],
        "Be brief.",
        10_000,
    )
    text = tokenizer.decode(render(tokenizer, messages, check_tools([CLOCK])))
    assert "<tools>\n" + json.dumps(check_tools([CLOCK])[0]) in text
    assert (
        '<tool_call>\n{"name": "calculate", "arguments": {"expression": "24*37"}}\n</tool_call>'
        in text
    )
    assert '<tool_response>\n{"result": 888}\n</tool_response>' in text
    assert text.startswith("<|im_start|>system\nBe brief.\n\n# Tools")
    assert text.endswith("<|im_start|>assistant\n")
    plain = tokenizer.decode(render(tokenizer, messages[:2]))
    assert "# Tools" not in plain


def test_a_template_without_tools_gets_the_generic_form(tokenizer) -> None:
    """Guards the fallback: a checkpoint whose template knows no tools still gets them, in the
    system message, and its calls and results as plain turns."""
    plain = tiny_llm.build_tokenizer()
    plain.chat_template = tiny_llm.CHATML_TEMPLATE
    assert not supports_tools(plain)
    messages = normalize_messages(
        [
            {"role": "user", "content": "time?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"function": {"name": "current_time", "arguments": {}}}],
            },
            {"role": "tool", "content": "10:00", "name": "current_time"},
        ],
        None,
        10_000,
    )
    text = plain.decode(render(plain, messages, check_tools([CLOCK])))
    assert '"name": "current_time"' in text and "reply with only a JSON object" in text
    assert "Result of current_time: 10:00" in text and "tool_call" not in text


# --- the engine ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llm(tmp_path_factory: pytest.TempPathFactory):
    import torch

    from voice_agent.core.config import load_settings
    from voice_agent.llm.engine import OpenSourceLLM

    torch.set_num_threads(1)
    path = tiny_llm.build(tmp_path_factory.mktemp("tiny") / "llm", context=4096)
    settings = load_settings({"HF_HUB_OFFLINE": "1", "LLM_DEVICE": "cpu"})
    return OpenSourceLLM(str(path), settings, busy_timeout_s=10)


def greedy(n: int = 12) -> GenerationSettings:
    return GenerationSettings(temperature=0, max_new_tokens=n)


def test_the_engine_puts_the_tools_in_the_prompt(llm) -> None:
    assert llm.capabilities.tools and llm.tool_format == "template"
    without = llm.generate_reply("What time is it?", greedy())
    with_tools = llm.generate_reply("What time is it?", greedy(), tools=[CLOCK])
    none = llm.generate_reply("What time is it?", greedy(), tools=[CLOCK], tool_choice="none")
    assert with_tools.prompt_tokens > without.prompt_tokens + 50
    assert none.prompt_tokens == without.prompt_tokens
    assert TOOL_CALL_OPEN not in with_tools.text


def test_a_named_tool_choice_makes_the_model_call_it(llm) -> None:
    """Guards `tool_choice` = a name: the model's turn starts with that call, so whatever the
    (random) model writes next, the reply is a call of that tool, never text."""
    stream = llm.stream_reply(
        "What time is it?", greedy(8), tools=[CLOCK], tool_choice="current_time"
    )
    pieces = list(stream)
    reply = stream.reply
    assert pieces == [] and reply is not None and reply.text == ""
    assert reply.finish_reason == "tool_calls" and [c.name for c in reply.tool_calls] == [
        "current_time"
    ]
    # Random weights rarely finish the JSON: then it is a malformed call the model is told about.
    assert reply.tool_calls[0].error is None or "JSON" in reply.tool_calls[0].error


def test_required_tool_choice_calls_some_tool(llm) -> None:
    reply = llm.generate_reply("Hi", greedy(6), tools=[CLOCK], tool_choice="required")
    assert reply.finish_reason == "tool_calls" and len(reply.tool_calls) == 1
    assert reply.tool_calls[0].error is not None  # the random model never names a real tool


def test_the_engine_takes_a_history_with_calls_and_results(llm) -> None:
    history = [
        {"role": "user", "content": "What is 24 times 37?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "c1",
                    "function": {"name": "calculate", "arguments": {"expression": "24*37"}},
                }
            ],
        },
        {"role": "tool", "content": '{"result": 888}', "tool_call_id": "c1", "name": "calculate"},
    ]
    reply = llm.generate_reply(history, greedy(4), tools=[CLOCK])
    assert reply.completion_tokens == 4 and reply.finish_reason in ("stop", "length")
