"""The tools themselves and running a call: built-ins, `@tool` functions, refusals, time-outs,
cancel, and the settings that choose them."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo

import pytest

from voice_agent.core.cancel import CancelToken
from voice_agent.core.config import BUILTIN_TOOLS, SettingsError, load_settings
from voice_agent.llm.base import ToolCall
from voice_agent.tools import Toolbox, ToolContext, ToolError, tool
from voice_agent.tools.calculator import calculate
from voice_agent.tools.clock import current_time
from voice_agent.tools.schema import tool_from_function
from voice_agent.tools.timer_board import TimerBoard
from voice_agent.tools.toolbox import REGISTERED, builtin_tools
from voice_agent.tools.units import convert_units


def call(name: str, **arguments) -> ToolCall:
    return ToolCall(f"call_{name}", name, arguments)


# --- built-in tools -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "result"),
    [
        ("24 * 37", 888),
        ("24 times 37".replace("times", "*"), 888),
        ("2^10", 1024),
        ("(3 + 4) × 2 ÷ 7", 2),
        ("1,000 * 3", 3000),
        ("sqrt(2)", 1.41421356237),
        ("10 / 4", 2.5),
        ("-(2 ** 3) % 5", 2),
    ],
)
def test_calculator_works_out_arithmetic(expression: str, result) -> None:
    assert calculate(expression)["result"] == result


@pytest.mark.parametrize(
    ("expression", "words"),
    [
        ("__import__('os').system('true')", "not arithmetic"),
        ("().__class__.__bases__", "not arithmetic"),
        ("open('/etc/passwd')", "not arithmetic"),
        ("x + 1", "not arithmetic"),
        ("'a' * 3", "only numbers"),
        ("9 ** 9 ** 9", "exponents above"),
        ("10 ** 400", "no finite result"),
        ("1 / 0", "divides by zero"),
        ("1 +", "not an arithmetic expression"),
        ("1+" * 200 + "1", "longer than"),
    ],
)
def test_calculator_refuses_anything_but_bounded_arithmetic(expression: str, words: str) -> None:
    """Guards "no eval": names, attributes, calls, strings and runaway powers are refused
    (quickly) with a reason the model can act on."""
    t0 = time.perf_counter()
    with pytest.raises(ToolError) as caught:
        calculate(expression)
    assert words in str(caught.value)
    assert time.perf_counter() - t0 < 1.0


@pytest.mark.parametrize(
    ("value", "source", "target", "result"),
    [
        (100, "miles", "km", 160.934),
        (10, "kilometers", "miles", 6.21371),
        (212, "degrees Fahrenheit", "celsius", 100),
        (0, "C", "K", 273.15),
        (2, "cups", "ml", 473.176),
        (1, "lb", "grams", 453.592),
        (60, "mph", "km/h", 96.5606),
        (90, "minutes", "hours", 1.5),
        (1, "GiB", "MB", 1073.74),
    ],
)
def test_unit_conversion(value: float, source: str, target: str, result: float) -> None:
    assert convert_units(value, source, target)["result"] == pytest.approx(result, rel=1e-5)


@pytest.mark.parametrize(
    ("source", "target", "words"),
    [
        ("dollars", "euros", "exchange rates"),
        ("USD", "EUR", "exchange rates"),
        ("km", "kg", "cannot convert length"),
        ("parsecs", "km", "unknown unit"),
    ],
)
def test_unit_conversion_refusals(source: str, target: str, words: str) -> None:
    with pytest.raises(ToolError) as caught:
        convert_units(100, source, target)
    assert words in str(caught.value)


def test_clock_uses_the_user_time_zone_and_answers_for_others() -> None:
    here = current_time(ToolContext(time_zone=ZoneInfo("Asia/Tokyo")))
    assert here["time_zone"] == "Asia/Tokyo" and here["utc_offset"] == "+09:00"
    assert current_time(ToolContext(), "UTC")["utc_offset"] == "+00:00"
    assert current_time(ToolContext(), "New York")["time_zone"] == "America/New_York"
    assert current_time(ToolContext(), "Tokyo")["time_zone"] == "Asia/Tokyo"
    with pytest.raises(ToolError, match="IANA"):
        current_time(ToolContext(), "Atlantis/Nowhere")


def test_timers_ring_once_in_their_own_conversation() -> None:
    board = TimerBoard()
    timer = board.set("a", 600, "")
    board.set("b", 1)
    assert timer.announcement() == "Your 10 minute timer is done."
    assert board.take_rung("a") == []
    assert [t.id for t in board.take_rung("a", now=timer.due + 0.1)] == [timer.id]
    assert board.take_rung("a", now=timer.due + 5) == []
    assert len(board.pending("b")) == 1
    with pytest.raises(ValueError, match="1 second"):
        board.set("a", 0.2)


def test_builtins_match_the_settings_names() -> None:
    tools = builtin_tools()
    assert tuple(t.name for t in tools) == BUILTIN_TOOLS
    acting = {t.name for t in tools if t.acts}
    assert acting == {"set_timer", "cancel_timer"}  # reading the clock or computing does not act
    assert all(t.description and t.parameters["type"] == "object" for t in tools)


# --- your own tools ----------------------------------------------------------------------------


def test_a_typed_documented_function_is_a_tool() -> None:
    def book_table(
        restaurant: str,
        people: int,
        when: Literal["lunch", "dinner"] = "dinner",
        note: str | None = None,
    ) -> str:
        """Book a table at a restaurant.

        Args:
            restaurant: where to book.
            people: how many are coming.
            when: lunch or dinner.
        """
        return f"{restaurant}, {people}, {when}, {note}"

    made = tool_from_function(book_table, acts=True)
    assert made.description == "Book a table at a restaurant."
    assert made.parameters == {
        "type": "object",
        "properties": {
            "restaurant": {"type": "string", "description": "where to book."},
            "people": {"type": "integer", "description": "how many are coming."},
            "when": {
                "enum": ["lunch", "dinner"],
                "description": "lunch or dinner.",
                "default": "dinner",
            },
            "note": {"type": "string"},
        },
        "required": ["restaurant", "people"],
    }
    assert (
        made.run({"restaurant": "Chez Ada", "people": "2"}, ToolContext())
        == "Chez Ada, 2, dinner, None"
    )
    for bad, words in (
        ({"restaurant": "x"}, "needs the argument people"),
        ({"restaurant": "x", "people": 2, "pets": 1}, "no argument pets"),
        ({"restaurant": "x", "people": 2.5}, "whole number"),
        ({"restaurant": "x", "people": 2, "when": "brunch"}, "lunch, dinner"),
    ):
        with pytest.raises(ToolError, match=words):
            made.run(bad, ToolContext())


def test_the_tool_decorator_registers_in_one_line(tmp_path: Path) -> None:
    """Guards the documented way to add a tool: a module listed in TOOLS_MODULES whose
    `@tool` functions join the built-in ones."""
    module = tmp_path / "my_tools.py"
    module.write_text(
        "from voice_agent.tools import tool\n\n"
        "@tool\n"
        "def shout(text: str) -> str:\n"
        '    """Say it loudly.\n\n    Args:\n        text: what to say.\n    """\n'
        "    return text.upper()\n"
    )
    settings = load_settings({"TOOLS_MODULES": str(module), "TOOLS": "calculate"})
    try:
        box = Toolbox.from_settings(settings)
        names = [t.name for t in box.tools()]
        assert names[0] == "calculate" and "shout" in names
        assert box.get("shout").source.startswith("user (")
        assert box.run(call("shout", text="hi"), ToolContext()).result == "HI"
    finally:
        REGISTERED.pop("shout", None)


def test_a_broken_tools_module_is_reported_not_fatal(tmp_path: Path) -> None:
    module = tmp_path / "broken.py"
    module.write_text("raise RuntimeError('oops')\n")
    box = Toolbox.from_settings(load_settings({"TOOLS_MODULES": str(module)}))
    assert any("broken.py" in note and "oops" in note for note in box.describe()["notes"])
    assert [t.name for t in box.tools()] == list(BUILTIN_TOOLS)


def test_decorated_function_stays_callable() -> None:
    @tool(name="double_it")
    def double(n: int) -> int:
        """Twice n."""
        return 2 * n

    try:
        assert double(4) == 8 and REGISTERED["double_it"].run({"n": 3}, ToolContext()) == 6
    finally:
        REGISTERED.pop("double_it", None)


# --- running a call ----------------------------------------------------------------------------


def box_with(*functions, acts: bool = False, timeout_s: float = 5.0) -> Toolbox:
    return Toolbox([tool_from_function(f, acts=acts) for f in functions], timeout_s=timeout_s)


def test_every_failure_is_a_record_the_model_is_told() -> None:
    """Guards "never a crashed turn": malformed calls, unknown tools, exceptions and a tool's
    own refusal each end as a failed record with a reason, not an exception."""

    def explode() -> str:
        """Always fails."""
        raise KeyError("boom")

    box = Toolbox([*builtin_tools(), tool_from_function(explode)])
    context = ToolContext()
    malformed = box.run(ToolCall("c1", "calculate", error="the call is not valid JSON"), context)
    unknown = box.run(call("weather", city="Paris"), context)
    crashed = box.run(call("explode"), context)
    refused_by_tool = box.run(call("calculate", expression="1/0"), context)
    for record, words in (
        (malformed, "could not be read"),
        (unknown, "no tool 'weather'; the tools are: current_time, calculate"),
        (crashed, "explode failed: KeyError"),
        (refused_by_tool, "divides by zero"),
    ):
        assert record.status == "failed" and words in record.error, record
        assert words in record.result and record.message()["role"] == "tool"


def test_tools_that_act_need_the_users_consent() -> None:
    """Guards the security rule: a tool with side effects runs only when the settings allow it."""
    ran = []

    def send_email(to: str) -> str:
        """Send an email."""
        ran.append(to)
        return "sent"

    box = box_with(send_email, acts=True)
    refused = box.run(call("send_email", to="x@example.com"), ToolContext(allow_actions=False))
    assert refused.status == "refused" and "Settings" in refused.result and ran == []
    allowed = box.run(call("send_email", to="x@example.com"), ToolContext(allow_actions=True))
    assert allowed.status == "done" and ran == ["x@example.com"]


def test_a_slow_tool_times_out() -> None:
    def sleepy() -> str:
        """Sleeps."""
        time.sleep(3)
        return "late"

    box = box_with(sleepy, timeout_s=0.3)
    t0 = time.perf_counter()
    record = box.run(call("sleepy"), ToolContext())
    assert time.perf_counter() - t0 < 1.5
    assert record.status == "failed" and "did not finish in 0.3 s" in record.error


def test_cancel_stops_a_running_tool() -> None:
    """Guards barge-in / Stop during a tool: the wait ends at once and a cooperative tool sees
    its own cancel token set."""
    saw_cancel = threading.Event()

    def long_job(context: ToolContext) -> str:
        """Runs until stopped."""
        if context.cancel.wait(10):
            saw_cancel.set()
        return "finished"

    box = box_with(long_job)
    turn = CancelToken()
    threading.Timer(0.2, turn.cancel).start()
    t0 = time.perf_counter()
    record = box.run(call("long_job"), ToolContext(cancel=turn))
    assert time.perf_counter() - t0 < 1.0
    assert record.status == "cancelled" and "stopped" in record.error
    assert saw_cancel.wait(2)


# --- settings ---------------------------------------------------------------------------------


def test_tool_settings_are_checked() -> None:
    settings = load_settings(
        {
            "TOOLS": "calculate, current_time",
            "TIME_ZONE": "Europe/Paris",
            "MCP_SERVERS": "files=python -m files_server --root '/tmp/a b'; http://127.0.0.1:9/mcp",
            "TOOLS_ALLOW_ACTIONS": "1",
        }
    )
    assert settings.tools == ("current_time", "calculate")  # the built-in order
    assert settings.time_zone == "Europe/Paris" and settings.tools_allow_actions
    files, web = settings.mcp_servers
    assert files.command == ("python", "-m", "files_server", "--root", "/tmp/a b")
    assert web.name == "mcp2" and web.url == "http://127.0.0.1:9/mcp"
    assert settings.public_dict()["mcp_servers"] == ["files (stdio)", "mcp2 (http)"]
    assert load_settings({"TOOLS": "none"}).tools == ()
    for env, words in (
        ({"TOOLS": "calculate,weather"}, "TOOLS names unknown tools (weather)"),
        ({"TIME_ZONE": "Mars/Olympus"}, "TIME_ZONE"),
        ({"MCP_SERVERS": "a=x; a=y"}, "used twice"),
        ({"TOOL_TIMEOUT_S": "0"}, "TOOL_TIMEOUT_S"),
    ):
        with pytest.raises(SettingsError, match=words.replace("(", r"\(").replace(")", r"\)")):
            load_settings(env)
