"""The text normaliser on real-world LLM replies: markdown, code, URLs, emoji, numbers, money, times."""

from __future__ import annotations

import pytest

from voice_agent.tts.text.speakable import cardinal, make_speakable, ordinal, year

# (what an LLM wrote, what the voice should read)
CASES = [
    (
        "Sure! Here's a quick summary:\n\n- **Python** is great for scripting.\n- *Rust* is fast.\n- Go is simple.",
        "Sure! Here's a quick summary: Python is great for scripting. Rust is fast. Go is simple.",
    ),
    (
        "## Installation\n\n1. Run `pip install numpy`.\n2. Import it with `import numpy as np`.",
        "Installation. Run pip install numpy. Import it with import numpy as np.",
    ),
    (
        "Here's an example:\n\n```python\ndef add(a, b):\n    return a + b\n```\n\nThis function adds two numbers.",
        "Here's an example: This function adds two numbers.",
    ),
    (
        "You can find more at https://docs.python.org/3/tutorial/index.html.",
        "You can find more at docs dot python dot org.",
    ),
    (
        "Check out [the documentation](https://example.com/docs) for details.",
        "Check out the documentation for details.",
    ),
    ("Great question! 😊 Let me explain.", "Great question! Let me explain."),
    ("🎉🎉🎉", ""),
    ("The total comes to $3.50.", "The total comes to three dollars and fifty cents."),
    (
        "That will cost about $1,250.99 per month.",
        "That will cost about one thousand two hundred fifty dollars and ninety-nine cents per month.",
    ),
    ("The market cap is $2.5 billion.", "The market cap is two point five billion dollars."),
    ("Prices start at €20 or £15.", "Prices start at twenty euros or fifteen pounds."),
    (
        "Revenue grew 12.5% year over year.",
        "Revenue grew twelve point five percent year over year.",
    ),
    ("The meeting is at 3:45 pm tomorrow.", "The meeting is at three forty-five p m tomorrow."),
    ("Let's meet at 10:30 a.m. on Monday.", "Let's meet at ten thirty a m on Monday."),
    (
        "The store opens at 9am and closes at 17:00.",
        "The store opens at nine a m and closes at seventeen hundred.",
    ),
    ("It was signed on March 15, 2024.", "It was signed on March fifteenth, twenty twenty-four."),
    ("The deadline is 2024-12-31.", "The deadline is December thirty-first, twenty twenty-four."),
    (
        "She was born in 1987 and moved in the 1990s.",
        "She was born in nineteen eighty-seven and moved in the nineteen nineties.",
    ),
    ("He finished 1st out of 25 runners.", "He finished first out of twenty-five runners."),
    ("This is the 3rd time I've asked.", "This is the third time I've asked."),
    (
        "The temperature dropped to -5°C last night.",
        "The temperature dropped to minus five degrees Celsius last night.",
    ),
    ("Pi is approximately 3.14159.", "Pi is approximately three point one four one five nine."),
    (
        "Dr. Smith and Mr. Jones arrived at 5 p.m. Then they left.",
        "Doctor Smith and Mister Jones arrived at five p m. Then they left.",
    ),
    ("Use a list, e.g. [1, 2, 3], etc.", "Use a list, for example, one, two, three, et cetera."),
    ("It's Python vs. JavaScript.", "It's Python versus JavaScript."),
    (
        "The run is 5 km and the bag weighs 2.5 kg.",
        "The run is five kilometers and the bag weighs two point five kilograms.",
    ),
    (
        "Our server has 64 GB of RAM and a 2 TB disk.",
        "Our server has sixty-four gigabytes of RAM and a two terabytes disk.",
    ),
    (
        "| Feature | Status |\n|---------|--------|\n| Login | Done |\n| Search | In progress |",
        "Feature, Status. Login, Done. Search, In progress.",
    ),
    ("> Note: this API is deprecated.", "Note: this A P I is deprecated."),
    (
        "Call us at (555) 123-4567.",
        "Call us at five five five, one two three, four five six seven.",
    ),
    ("Send an email to support@example.com.", "Send an email to support at example dot com."),
    ("About 3/4 of users prefer dark mode.", "About three quarters of users prefer dark mode."),
    ("I'm available 24/7.", "I'm available twenty-four seven."),
    ("Version 2.3.1 fixes the bug.", "Version two point three point one fixes the bug."),
    ("Approximately 1,000,000 people attended.", "Approximately one million people attended."),
    ("The score was 3-2.", "The score was three to two."),
    ("The NASA mission used a new GPU cluster.", "The NASA mission used a new G P U cluster."),
    ("OK, I'll do that ASAP.", "okay, I'll do that A S A P."),
    (
        "Step 1: Open the app. Step 2: Tap **Settings**.",
        "Step one: Open the app. Step two: Tap Settings.",
    ),
    ("The result is ~42.", "The result is about forty-two."),
    ("Q&A session at 4 PM.", "Q and A session at four p m."),
    ("***\n\nThat's all for today!", "That's all for today!"),
    ("Use `snake_case_names` in Python.", "Use snake case names in Python."),
    (
        "<b>Warning:</b> do not share your password &amp; PIN.",
        "Warning: do not share your password and PIN.",
    ),
    ("Hello\x00 there\x07, friend\u200b!", "Hello there, friend!"),
    (
        "It grew from 10 to 20 items (a 100% increase).",
        "It grew from ten to twenty items, a one hundred percent increase.",
    ),
    ("The file is called config.json.", "The file is called config dot json."),
    (
        "Shares fell -3.2% to $45.",
        "Shares fell minus three point two percent to forty-five dollars.",
    ),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_llm_reply_table(text: str, expected: str) -> None:
    assert make_speakable(text) == expected


def test_table_is_large_enough() -> None:
    assert len(CASES) >= 40


@pytest.mark.parametrize(
    ("n", "words"),
    [
        (0, "zero"),
        (7, "seven"),
        (13, "thirteen"),
        (21, "twenty-one"),
        (100, "one hundred"),
        (105, "one hundred five"),
        (999, "nine hundred ninety-nine"),
        (1000, "one thousand"),
        (1_000_001, "one million one"),
        (
            123_456_789,
            "one hundred twenty-three million four hundred fifty-six thousand seven hundred eighty-nine",
        ),
        (-42, "minus forty-two"),
    ],
)
def test_cardinal(n: int, words: str) -> None:
    assert cardinal(n) == words


@pytest.mark.parametrize(
    ("n", "words"),
    [
        (1, "first"),
        (2, "second"),
        (3, "third"),
        (5, "fifth"),
        (8, "eighth"),
        (9, "ninth"),
        (12, "twelfth"),
        (20, "twentieth"),
        (21, "twenty-first"),
        (100, "one hundredth"),
        (103, "one hundred third"),
    ],
)
def test_ordinal(n: int, words: str) -> None:
    assert ordinal(n) == words


@pytest.mark.parametrize(
    ("n", "words"),
    [
        (1984, "nineteen eighty-four"),
        (2000, "two thousand"),
        (2005, "two thousand five"),
        (2024, "twenty twenty-four"),
        (1900, "nineteen hundred"),
        (1905, "nineteen oh five"),
    ],
)
def test_year(n: int, words: str) -> None:
    assert year(n) == words


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$1", "one dollar"),
        ("$0.01", "one cent"),
        ("$0.99", "ninety-nine cents"),
        ("$5k", "five thousand dollars"),
        ("£1.50", "one pound and fifty pence"),
        ("20 USD", "twenty dollars"),
        ("-$5", "minus five dollars"),
        ("12:05", "twelve oh five"),
        ("3:00 PM", "three p m"),
        ("1 km", "one kilometer"),
        ("the 80s", "the eighties"),
        ("00123", "zero zero one two three"),
        (
            "12345678901234567890",
            "one two three four five six seven eight nine zero one two three four five six seven eight nine zero",
        ),
    ],
)
def test_small_cases(text: str, expected: str) -> None:
    assert make_speakable(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "   ", "\n\t", "😀🎉🚀", "```\nprint(1)\n```", "---", "**  **", "| | |", "\x00\x01\x02"],
)
def test_nothing_speakable_becomes_empty(text: str) -> None:
    assert make_speakable(text) == ""


def test_unclosed_code_fence_is_dropped() -> None:
    """A reply cut off inside a code block must not read the code aloud."""
    assert make_speakable("Try this:\n```bash\nrm -rf build\nmake") == "Try this"


def test_control_characters_and_whitespace() -> None:
    out = make_speakable("a\x1b[31m red\x1b[0m   word\r\nnext\u200d line")
    assert all(ch.isprintable() for ch in out)
    assert "  " not in out


def test_pure_and_idempotent_enough() -> None:
    text = "It costs $3.50 at 3:45 pm, i.e. soon."
    once = make_speakable(text)
    assert make_speakable(text) == once
    assert make_speakable(once) == once


@pytest.mark.parametrize(
    "text", ["Pi is " + "3" * 5000, "the " + "7" * 5000 + "th", "1" * 5000 + "/3", "$" + "9" * 5000]
)
def test_numerals_over_python_int_limit_do_not_crash(text: str) -> None:
    """Regression: a numeral of more than 4300 digits made int() raise ValueError (Python's
    integer string conversion limit), so make_speakable, and with it TTS, crashed on it."""
    out = make_speakable(text)
    assert out.count("three") + out.count("seven") + out.count("one") + out.count("nine") > 4000
    assert not any(ch.isdigit() for ch in out)


@pytest.mark.timeout(60)
def test_adversarial_long_text_stays_linear() -> None:
    """Regression: 60 000 characters of `a.a.a…` took about two minutes (backtracking URL and
    dotted-number patterns over the whole text); bounded pieces keep it to seconds."""
    for text in ("a." * 30_000, "1." * 30_000, "[a" * 30_000):
        assert make_speakable(text)


def test_long_text_is_cut_at_whitespace() -> None:
    from voice_agent.tts.text.speakable import PIECE_CHARS, _pieces

    text = "word " * 1000
    pieces = _pieces(text, PIECE_CHARS)
    assert "".join(pieces) == text
    assert all(len(p) <= PIECE_CHARS for p in pieces)
    assert all(p.startswith(" ") or p is pieces[0] for p in pieces)  # cuts fall on spaces
    spoken = make_speakable("It costs $3.50. " * 200)
    assert spoken.count("three dollars and fifty cents") == 200
