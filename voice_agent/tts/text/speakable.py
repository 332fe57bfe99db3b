"""Turn an LLM reply into plain English a TTS voice can read aloud.

`make_speakable(text)` is pure: no I/O, no model, same output for the same
input. It drops code blocks and markup (markdown, HTML, tables), keeps link
text, reads URLs as their domain ("example dot com"), drops emoji, expands
numbers, money, percentages, times, dates, ordinals, units and common
abbreviations to words, strips control characters and collapses whitespace.
Text with nothing speakable left (only emoji, only code) becomes "".

The number words are our own (no dependency): US English, no "and" inside
hundreds ("one hundred five"), hyphenated tens ("forty-two").
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Callable

# --- number words ------------------------------------------------------------------------------

ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
).split()
TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
SCALES = ((10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand"))
# Above this, digits are read one by one: nobody says "four quadrillion ...".
LARGEST_CARDINAL = 10**15 - 1
IRREGULAR_ORDINALS = {
    "one": "first",
    "two": "second",
    "three": "third",
    "five": "fifth",
    "eight": "eighth",
    "nine": "ninth",
    "twelve": "twelfth",
}


def _below_thousand(n: int) -> str:
    words: list[str] = []
    hundreds, rest = divmod(n, 100)
    if hundreds:
        words.append(f"{ONES[hundreds]} hundred")
    if rest >= 20:
        tens, units = divmod(rest, 10)
        words.append(TENS[tens] + (f"-{ONES[units]}" if units else ""))
    elif rest or not hundreds:
        words.append(ONES[rest])
    return " ".join(words)


def cardinal(n: int) -> str:
    """`42` -> "forty-two"; negatives get "minus"; huge numbers are read digit by digit."""
    if n < 0:
        return "minus " + cardinal(-n)
    if n > LARGEST_CARDINAL:
        return digits(str(n))
    if n < 1000:
        return _below_thousand(n)
    words: list[str] = []
    for scale, name in SCALES:
        count, n = divmod(n, scale)
        if count:
            words.append(f"{_below_thousand(count)} {name}")
    if n:
        words.append(_below_thousand(n))
    return " ".join(words)


def ordinal(n: int) -> str:
    """`21` -> "twenty-first"."""
    head, sep, last = cardinal(n).rpartition(" ")
    stem, hyphen, unit = last.rpartition("-")
    if unit in IRREGULAR_ORDINALS:
        unit = IRREGULAR_ORDINALS[unit]
    elif unit.endswith("y"):
        unit = unit[:-1] + "ieth"
    else:
        unit += "th"
    return head + sep + stem + hyphen + unit


def digits(text: str) -> str:
    """Each digit on its own: "007" -> "zero zero seven"."""
    return " ".join(ONES[int(ch)] for ch in text if ch.isdigit())


def number(text: str) -> str:
    """A numeral as words: "1,234" -> cardinal, "3.14" -> "three point one four", "007" -> digits."""
    sign = ""
    if text[:1] in "-−":
        sign, text = "minus ", text[1:]
    whole, _, fraction = text.replace(",", "").partition(".")
    # Beyond LARGEST_CARDINAL digits are read one by one anyway; int() of a numeral over
    # 4300 digits would raise ValueError, so long ones never go through it.
    if (len(whole) > 1 and whole.startswith("0")) or len(whole) > len(str(LARGEST_CARDINAL)):
        head = digits(whole)
    else:
        head = cardinal(int(whole)) if whole else "zero"
    return sign + head + (f" point {digits(fraction)}" if fraction else "")


def year(n: int) -> str:
    """1984 -> "nineteen eighty-four", 2005 -> "two thousand five", 1900 -> "nineteen hundred"."""
    if not 1000 <= n <= 9999 or 2000 <= n <= 2009:
        return cardinal(n)
    high, low = divmod(n, 100)
    if low == 0:
        return f"{cardinal(high)} hundred"
    if low < 10:
        return f"{cardinal(high)} oh {ONES[low]}"
    return f"{cardinal(high)} {cardinal(low)}"


def _plural(words: str) -> str:
    return words[:-1] + "ies" if words.endswith("y") else words + "s"


# --- tables ------------------------------------------------------------------------------------

MONTHS = (
    "January February March April May June July August September October November December"
).split()
MONTH_BY_ABBREV = {m[:3].lower(): m for m in MONTHS} | {"sept": "September"}
CURRENCIES = {  # symbol -> (unit singular, plural, cent singular, plural)
    "$": ("dollar", "dollars", "cent", "cents"),
    "€": ("euro", "euros", "cent", "cents"),
    "£": ("pound", "pounds", "penny", "pence"),
    "¥": ("yen", "yen", "", ""),
    "₹": ("rupee", "rupees", "paisa", "paise"),
}
CURRENCY_CODES = {"USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥", "INR": "₹"}
SCALE_WORDS = {
    "k": "thousand",
    "thousand": "thousand",
    "m": "million",
    "million": "million",
    "b": "billion",
    "bn": "billion",
    "billion": "billion",
    "trillion": "trillion",
}
UNITS = {  # unit -> (singular, plural); matched only right after a number
    "km/h": ("kilometer per hour", "kilometers per hour"),
    "mph": ("mile per hour", "miles per hour"),
    "km": ("kilometer", "kilometers"),
    "cm": ("centimeter", "centimeters"),
    "mm": ("millimeter", "millimeters"),
    "m": ("meter", "meters"),
    "mi": ("mile", "miles"),
    "ft": ("foot", "feet"),
    "kg": ("kilogram", "kilograms"),
    "mg": ("milligram", "milligrams"),
    "g": ("gram", "grams"),
    "lb": ("pound", "pounds"),
    "lbs": ("pound", "pounds"),
    "oz": ("ounce", "ounces"),
    "ml": ("milliliter", "milliliters"),
    "l": ("liter", "liters"),
    "tb": ("terabyte", "terabytes"),
    "gb": ("gigabyte", "gigabytes"),
    "mb": ("megabyte", "megabytes"),
    "kb": ("kilobyte", "kilobytes"),
    "ghz": ("gigahertz", "gigahertz"),
    "mhz": ("megahertz", "megahertz"),
    "hz": ("hertz", "hertz"),
    "kw": ("kilowatt", "kilowatts"),
    "kwh": ("kilowatt hour", "kilowatt hours"),
    "w": ("watt", "watts"),
    "v": ("volt", "volts"),
    "ms": ("millisecond", "milliseconds"),
    "s": ("second", "seconds"),
    "sec": ("second", "seconds"),
    "min": ("minute", "minutes"),
    "mins": ("minute", "minutes"),
    "h": ("hour", "hours"),
    "hr": ("hour", "hours"),
    "hrs": ("hour", "hours"),
    "°c": ("degree Celsius", "degrees Celsius"),
    "°f": ("degree Fahrenheit", "degrees Fahrenheit"),
    "°": ("degree", "degrees"),
}
# Units that read as ordinary words ("5 in a row", "2 m" is rare): only glued to the number.
GLUED_ONLY_UNITS = {"m", "s", "h", "g", "l", "w", "v", "min"}
ABBREVIATIONS = (  # (pattern, replacement); applied in order, case-sensitive
    (r"\be\.g\.,?", "for example,"),
    (r"\bi\.e\.,?", "that is,"),
    (r"\betc\.(?=\s+[A-Z]|\s*$)", "et cetera."),
    (r"\betc\.", "et cetera"),
    (r"\bvs\.?(?=\s)", "versus"),
    (r"\b(?i:approx)\.", "approximately"),
    (r"\bDr\.(?=\s+[A-Z])", "Doctor"),
    (r"\bDr\.", "Drive"),
    (r"\bMr\.", "Mister"),
    (r"\bMrs\.", "Missus"),
    (r"\bMs\.", "Miz"),
    (r"\bProf\.", "Professor"),
    (r"\bSt\.(?=\s+[A-Z])", "Saint"),
    (r"\bSt\.", "Street"),
    (r"\bJr\.", "Junior"),
    (r"\bSr\.", "Senior"),
    (r"\bInc\.", "Incorporated"),
    (r"\bLtd\.", "Limited"),
    (r"\b[Nn]o\.(?=\s*\d)", "number"),
    (r"\bFig\.", "figure"),
    (r"\bw/o\b", "without"),
    (r"\bw/(?=\s)", "with"),
    (r"\bU\.S\.A?\.?(?=\s|$)", "U S"),
    (r"\bU\.K\.", "U K"),
    (r"\b([ap])\.m\.(?=\s+[A-Z]|\s*$)", r"\1 m."),
    (r"\b([ap])\.m\.", r"\1 m"),
)
# All-caps words read as words, not letter by letter.
CAPS_WORDS = {
    "NASA", "NATO", "UNESCO", "SCUBA", "LASER", "RAM", "ROM", "JSON", "GIF", "PIN", "SIM", "AIDS",
    "NOTE", "TIP", "TIPS", "STOP", "YES", "NO", "NOT", "AND", "OR", "THE", "ALL", "NEW", "FREE",
    "NOW", "HELP", "DONE", "WARN", "TODO", "FYI", "IMO", "LOL", "COVID", "WHO", "SQL", "ASAP",
}  # fmt: skip
SPOKEN_CAPS = {
    "OK": "okay",
    "FYI": "F Y I",
    "IMO": "in my opinion",
    "ASAP": "A S A P",
    "WHO": "W H O",
}
EMOJI = re.compile(
    "[\U0001f000-\U0001faff\u2600-\u27bf\u2b00-\u2bff\u2300-\u23ff\u25a0-\u25ff\ufe0e\ufe0f"
    "\u200d\u20e3\U000e0020-\U000e007f\u2122\u00a9\u00ae]"
)
TRANSLATE = str.maketrans(
    {
        "‘": "'",
        "’": "'",
        "‚": "'",
        "“": '"',
        "”": '"',
        "„": '"',
        "…": "...",
        "\u00a0": " ",
        "\u2009": " ",
        "\u202f": " ",
        "−": "-",
        "‐": "-",
        "‑": "-",
        "–": "-",
        "•": "\n- ",
        "→": " to ",
        "←": " from ",
        "≈": " approximately ",
        "≤": " less than or equal to ",
        "≥": " greater than or equal to ",
        "×": " times ",
    }
)


# --- the passes --------------------------------------------------------------------------------


def _clean_characters(text: str) -> str:
    """Unicode NFC, typographic quotes/dashes to ASCII, control and format characters out."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = text.replace("—", ", ").translate(TRANSLATE)
    return "".join(
        ch if ch in "\n\t" or unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co") else " "
        for ch in text
    ).replace("\t", " ")


def _drop_code(text: str) -> str:
    """Fenced code blocks go, including one left open at the end (a truncated reply)."""
    text = re.sub(r"(```|~~~).*?\1", "\n", text, flags=re.S)
    text = re.sub(r"(```|~~~).*\Z", "\n", text, flags=re.S)

    def inline(match: re.Match[str]) -> str:
        inner = re.sub(r"[_()\[\]{}<>=;\"]", " ", match.group(1))
        return re.sub(r"(?<=\w)\.(?=[A-Za-z])", " dot ", inner)

    return re.sub(r"`([^`\n]+)`", inline, text).replace("`", " ")


def _links(text: str) -> str:
    text = re.sub(r"!\[[^\]]*\]\([^)]*\)", " ", text)  # images: alt text is rarely speech
    text = re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"^\s*\[[^\]]+\]:\s*\S+.*$", "", text, flags=re.M)  # reference definitions
    text = re.sub(r"\[([^\]]+)\]\[[^\]]*\]", r"\1", text)
    return re.sub(r"<((?:https?://|mailto:)[^>\s]+)>", r"\1", text)


def _html(text: str) -> str:
    text = re.sub(r"<br\s*/?>|</p>|</li>|</h\d>", "\n", text, flags=re.I)
    text = re.sub(r"</?[A-Za-z][A-Za-z0-9-]*(\s[^<>]*)?/?>", " ", text)
    return html.unescape(text)


def _ensure_stop(line: str) -> str:
    line = line.rstrip()
    return line if not line or line[-1] in ".!?:;," else line + "."


def _structure(text: str) -> str:
    """Markdown line structure: headings, rules, quotes, lists and tables become sentences."""
    out: list[str] = []
    for raw in text.split("\n"):
        line = raw.strip()
        if re.fullmatch(r"([-*_])(\s*\1){2,}", line) or re.fullmatch(
            r"\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?", line
        ):
            continue  # horizontal rule or table separator
        line = re.sub(r"^(>\s*)+", "", line)
        heading = re.match(r"#{1,6}\s+(.*?)\s*#*$", line)
        if heading:
            out.append(_ensure_stop(heading.group(1)))
            continue
        item = re.match(r"(?:[-*+]|\d{1,3}[.)])\s+(.*)", line)
        if item:
            out.append(_ensure_stop(item.group(1)))
            continue
        if line.count("|") >= 2:
            cells = [c.strip() for c in line.strip("|").split("|")]
            out.append(_ensure_stop(", ".join(c for c in cells if c)))
            continue
        out.append(line)
    # A blank line ends a paragraph: make sure it ends a sentence too (not the last one,
    # which may be a phrase of a streamed reply that goes on).
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", "\n".join(out))]
    paragraphs = [p for p in paragraphs if p]
    return " ".join([_ensure_stop(p) for p in paragraphs[:-1]] + paragraphs[-1:])


def _speak_domain(domain: str) -> str:
    return " dot ".join(part for part in domain.lower().split(".") if part)


def _urls(text: str) -> str:
    """URLs become their domain ("example dot com"); emails "name at example dot com"."""

    def url(match: re.Match[str]) -> str:
        address = re.sub(r"^(https?://|ftp://)?(www\.)?", "", match.group(0), flags=re.I)
        return _speak_domain(re.split(r"[/?#:]", address, maxsplit=1)[0])

    text = re.sub(r"\b(?:https?://|ftp://|www\.)[^\s<>()\"']+?(?=[.,;:!?)\]]*(?:\s|$))", url, text)
    text = re.sub(
        r"\b([\w.+-]+)@([\w-]+(?:\.[\w-]+)+)\b",
        lambda m: f"{m.group(1).replace('.', ' dot ')} at {_speak_domain(m.group(2))}",
        text,
    )
    tlds = "com|org|net|io|dev|ai|edu|gov|co|uk|de|fr|app|info|me|us"
    text = re.sub(
        rf"\b([a-z0-9-]+(?:\.[a-z0-9-]+)*\.(?:{tlds}))\b(?!\.\w)",
        lambda m: _speak_domain(m.group(1)),
        text,
        flags=re.I,
    )
    files = "json|py|txt|md|csv|yaml|yml|js|ts|html|css|wav|mp3|pdf|png|jpg|toml|sh|exe|zip"
    return re.sub(rf"\b([\w-]+)\.({files})\b", r"\1 dot \2", text, flags=re.I)


def _emphasis(text: str) -> str:
    text = re.sub(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1", r"\2", text)
    text = re.sub(r"(?<![\w*])\*(?=\S)(.+?)(?<=\S)\*(?![\w*])", r"\1", text)
    text = re.sub(r"(?<!\w)_(?=\S)(.+?)(?<=\S)_(?!\w)", r"\1", text)
    text = re.sub(r"~~(.+?)~~", r"\1", text)
    # Leftovers (unpaired markers, snake_case, table bars) are not speech.
    text = re.sub(r"[*|^\\{}\[\]]", " ", text)
    return re.sub(r"(?<=\w)_(?=\w)|(?<!\w)_+|_+(?!\w)", " ", text)


def _abbreviations(text: str) -> str:
    for pattern, replacement in ABBREVIATIONS:
        text = re.sub(pattern, replacement, text)
    return text


NUM = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?"
MONTH_NAMES = "|".join(MONTHS) + r"|(?:Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sept|Sep|Oct|Nov|Dec)\.?"


def _money(match: re.Match[str]) -> str:
    sign, symbol, amount, scale = match.group("sign"), match.group("sym"), match.group("num"), ""
    symbol = symbol or match.group("sym2") or CURRENCY_CODES.get(match.group("code") or "", "$")
    scale = (match.group("scale") or "").strip().lower()
    one, many, cent, cents = CURRENCIES[symbol]
    minus = "minus " if sign else ""
    if scale:
        return f"{minus}{number(amount)} {SCALE_WORDS[scale]} {many}"
    whole, _, fraction = amount.replace(",", "").partition(".")
    units = int(whole or 0)
    if len(fraction) != 2 or not cent:
        value = number(amount)
        return f"{minus}{value} {one if value == 'one' else many}"
    pennies = int(fraction)
    words = []
    if units or not pennies:
        words.append(f"{cardinal(units)} {one if units == 1 else many}")
    if pennies:
        words.append(f"{cardinal(pennies)} {cent if pennies == 1 else cents}")
    return minus + " and ".join(words)


def _clock(hour: int, minute: int, meridiem: str | None) -> str:
    if meridiem:
        spoken = cardinal(hour)
        if minute:
            spoken += f" oh {ONES[minute]}" if minute < 10 else f" {cardinal(minute)}"
        return f"{spoken} {meridiem[0].lower()} m"
    if minute == 0:
        return f"{cardinal(hour)} o'clock" if 1 <= hour <= 12 else f"{cardinal(hour)} hundred"
    if minute < 10:
        return f"{cardinal(hour)} oh {ONES[minute]}"
    return f"{cardinal(hour)} {cardinal(minute)}"


def _date(month: int, day: int, year_: int | None) -> str:
    if not (1 <= month <= 12 and 1 <= day <= 31):
        raise ValueError("not a date")
    spoken = f"{MONTHS[month - 1]} {ordinal(day)}"
    return spoken + (f", {year(year_)}" if year_ is not None else "")


def _month_number(name: str) -> int:
    name = name.rstrip(".").lower()
    full = MONTH_BY_ABBREV.get(name[:4] if name.startswith("sept") else name[:3])
    return MONTHS.index(full) + 1 if full else 0


def _unit(match: re.Match[str]) -> str:
    amount, unit = match.group(1), match.group(2).lower()
    if unit in GLUED_ONLY_UNITS and match.group(0)[len(amount) :].startswith(" "):
        return match.group(0)
    one, many = UNITS[unit]
    spoken = number(amount)
    return f"{spoken} {one if spoken == 'one' else many}"


def _fraction(match: re.Match[str]) -> str:
    top, bottom = int(match.group(1)), int(match.group(2))
    if (top, bottom) == (24, 7):
        return "twenty-four seven"
    if bottom == 2:
        return f"{cardinal(top)} {'half' if top == 1 else 'halves'}"
    if bottom == 4:
        return f"{cardinal(top)} {'quarter' if top == 1 else 'quarters'}"
    if 3 <= bottom <= 10 and top < bottom:
        name = ordinal(bottom)
        return f"{cardinal(top)} {name if top == 1 else name + 's'}"
    return f"{cardinal(top)} out of {cardinal(bottom)}"


def _safe(fn: Callable[[re.Match[str]], str]) -> Callable[[re.Match[str]], str]:
    """Leave the text as it was when a match turns out not to be what it looked like."""

    def wrapped(match: re.Match[str]) -> str:
        try:
            return fn(match)
        except (ValueError, IndexError, KeyError):
            return match.group(0)

    return wrapped


def _numbers(text: str) -> str:
    sub = re.sub
    # Money: $3.50, -$5, €20, $2.5 million, $5k, 5 USD, 20€.
    scale = r"(?P<scale>\s?(?:k|K|thousand|million|billion|trillion|[MB]|bn)\b)?"
    text = sub(
        rf"(?P<sign>-)?(?P<sym>[$€£¥₹])\s?(?P<num>{NUM}){scale}(?P<sym2>)(?P<code>)",
        _safe(_money),
        text,
    )
    text = sub(
        rf"(?P<sign>)(?P<sym>)(?<!\d)(?P<num>{NUM}){scale}\s?(?:(?P<sym2>[€£¥₹])|(?P<code>USD|EUR|GBP|JPY|INR)\b)",
        _safe(_money),
        text,
    )
    text = sub(rf"(?<!\d)(-?(?:{NUM}))\s?%", lambda m: number(m.group(1)) + " percent", text)
    # Times: 3:45 pm, 10:30 a m (abbreviations already turned a.m. into "a m"), 14:30, 3pm.
    text = sub(
        r"\b(\d{1,2}):([0-5]\d)(?::\d\d)?\s*([AaPp])\.?\s?[Mm]\b",
        _safe(lambda m: _clock(int(m.group(1)), int(m.group(2)), m.group(3))),
        text,
    )
    text = sub(
        r"\b(\d{1,2})\s?([AaPp])\.?\s?[Mm]\b",
        _safe(lambda m: _clock(int(m.group(1)), 0, m.group(2))),
        text,
    )
    text = sub(
        r"\b([01]?\d|2[0-3]):([0-5]\d)\b(?!:)",
        lambda m: _clock(int(m.group(1)), int(m.group(2)), None),
        text,
    )
    # Dates: 2024-03-15, 03/15/2024, March 15(th)(, 2024), 15 March 2024.
    text = sub(
        r"\b(\d{4})-(\d{2})-(\d{2})\b",
        _safe(lambda m: _date(int(m.group(2)), int(m.group(3)), int(m.group(1)))),
        text,
    )
    text = sub(
        r"\b(\d{1,2})/(\d{1,2})/(\d{4})\b",
        _safe(lambda m: _date(int(m.group(1)), int(m.group(2)), int(m.group(3)))),
        text,
    )
    text = sub(
        rf"\b({MONTH_NAMES})\s+(\d{{1,2}})(?:st|nd|rd|th)?\b(?:,?\s+(\d{{4}})\b)?",
        _safe(
            lambda m: _date(
                _month_number(m.group(1)), int(m.group(2)), int(m.group(3)) if m.group(3) else None
            )
        ),
        text,
    )
    text = sub(
        rf"\b(\d{{1,2}})(?:st|nd|rd|th)?\s+({MONTH_NAMES})(?:,?\s+(\d{{4}})\b)?",
        _safe(
            lambda m: (
                f"the {ordinal(int(m.group(1)))} of {MONTHS[_month_number(m.group(2)) - 1]}"
                + (f", {year(int(m.group(3)))}" if m.group(3) else "")
            )
        ),
        text,
    )
    # Years and decades: the 1990s, the '90s, in 1984, 1990-2000.
    text = sub(r"\b(1[1-9]\d0|20\d0)'?s\b", lambda m: _plural(year(int(m.group(1)))), text)
    text = sub(r"(?<!\w)'?([2-9]0)'?s\b", lambda m: _plural(cardinal(int(m.group(1)))), text)
    text = sub(
        r"\b(in|since|by|from|until|till|of|year|around|circa|before|after|during|early|late|mid|"
        r"In|Since|By|From|Until|Of|Around|Before|After|During)\s+(1[1-9]\d\d|20\d\d)\b(?![.,]\d)",
        lambda m: f"{m.group(1)} {year(int(m.group(2)))}",
        text,
    )
    text = sub(
        r"\b(1[1-9]\d\d|20\d\d)\s?-\s?(1[1-9]\d\d|20\d\d)\b",
        lambda m: f"{year(int(m.group(1)))} to {year(int(m.group(2)))}",
        text,
    )
    # Phone numbers digit by digit, before ranges take "555-1234".
    text = sub(
        r"(?<!\w)(\+?\d{1,2}[\s.-])?\(?\d{3}\)?[\s.-]\d{3}[\s.-]\d{4}\b",
        lambda m: ", ".join(digits(g) for g in re.findall(r"\d+", m.group(0))),
        text,
    )
    text = sub(r"\b(\d+)(st|nd|rd|th)\b", _safe(lambda m: ordinal(int(m.group(1)))), text)
    text = sub(r"(?<![\w#])#(\d+)\b", r"number \1", text)
    text = sub(r"\b(\d+)\s?[x×]\s?(\d+)\b", r"\1 by \2", text)
    text = sub(r"\b(\d+(?:\.\d+)?)x\b", lambda m: number(m.group(1)) + " times", text)
    text = sub(
        rf"(?<![\w.])({NUM})\s?-\s?({NUM})\b", lambda m: f"{m.group(1)} to {m.group(2)}", text
    )
    text = sub(rf"(?<![\w.])-(?={NUM})", "minus ", text)
    units = "|".join(re.escape(u) for u in sorted(UNITS, key=len, reverse=True))
    # (?<!\d): start only where a numeral starts; trying every digit of a long run is O(n²).
    text = sub(rf"(?<!\d)({NUM})\s?({units})(?![A-Za-z0-9])", _unit, text, flags=re.I)
    text = sub(r"\b(\d+)/(\d+)\b", _safe(_fraction), text)
    text = sub(r"\b\d+(?:\.\d+){2,}\b", lambda m: " point ".join(
        number(p) for p in m.group(0).split(".")
    ), text)  # fmt: skip
    return sub(rf"(?<![\d.])(?:{NUM})(?![\d])", lambda m: number(m.group(0)), text)


def _symbols(text: str) -> str:
    text = re.sub(r"\bC\+\+", "C plus plus", text)
    text = re.sub(r"(?<=\w)\s*&\s*(?=\w)|\s&\s", " and ", text)
    text = re.sub(r"\s\+\s|(?<=\d)\+(?=\d)", " plus ", text)
    text = re.sub(r"\s=\s", " equals ", text)
    text = re.sub(r"\s<\s", " less than ", text)
    text = re.sub(r"\s>\s", " greater than ", text)
    text = re.sub(r"~\s?(?=\w)", "about ", text)
    text = re.sub(r"(?<=\w)@(?=\w)|\s@\s", " at ", text)
    text = re.sub(r"\s*[()]\s*", ", ", text)
    text = re.sub(r"(?<=\w)/(?=\w)", " ", text)
    text = re.sub(r"[#@<>=+/$€£¥₹%&~]", " ", text)
    return EMOJI.sub(" ", text)


def _acronyms(text: str) -> str:
    def spell(match: re.Match[str]) -> str:
        word, plural = match.group(1), match.group(2)
        if word in SPOKEN_CAPS:
            return SPOKEN_CAPS[word] + plural
        if word in CAPS_WORDS:
            return word + plural
        return " ".join(word) + plural

    return re.sub(r"\b([A-Z]{2,4})(s?)\b", spell, text)


def _tidy(text: str) -> str:
    text = " ".join(text.split())
    text = re.sub(r"\s+([,.!?;:])", r"\1", text)
    text = re.sub(r"([,;:])[\s,;:]*(?=[,;:])", "", text)
    text = re.sub(r"[,;:]+\s*([.!?])", r"\1", text)
    text = re.sub(r"([.!?])\s*[,;:]+", r"\1", text)
    text = re.sub(r"\.{4,}", "...", text)
    text = re.sub(r"([!?])[!?]+", r"\1", text)
    text = re.sub(r"(?<!\.)\.\s*\.(?!\.)", ".", text)
    text = re.sub(r"([,;:.!?])(?=[A-Za-z])", r"\1 ", text)
    text = re.sub(r"^[\s,.;:!?'\"-]+", "", text)
    text = re.sub(r"\s*[,;:-]+\s*$", "", text)
    return text.strip()


def make_speakable(text: str) -> str:
    """Text a TTS voice can read: no markup or code, numbers and symbols as English words.

    Pure and deterministic. Returns "" when nothing speakable is left (e.g. only
    emoji or only a code block).

    Examples:
        >>> make_speakable("**Sure!** It costs $3.50 at 3:45 pm.")
        'Sure! It costs three dollars and fifty cents at three forty-five p m.'
    """
    if not text:
        return ""
    text = _drop_code(_clean_characters(text))  # fences can span any length: whole text
    if len(text) > PIECE_CHARS:
        # Some patterns below backtrack on adversarial runs (`a.a.a...`, `[a[a...`); bounded
        # pieces keep the cost linear in the text's length (60 000 chars of it took minutes).
        pieces = (_speakable_piece(piece) for piece in _pieces(text, PIECE_CHARS))
        text = " ".join(piece for piece in pieces if piece)
    else:
        text = _speakable_piece(text)
    return text if any(ch.isalnum() for ch in text) else ""


PIECE_CHARS = 1000


def _pieces(text: str, size: int) -> list[str]:
    """`text` cut into pieces of at most `size` characters, at whitespace where there is any."""
    out: list[str] = []
    while len(text) > size:
        cut = max(text.rfind("\n", 0, size), text.rfind(" ", 0, size))
        cut = cut if cut > size // 2 else size
        out.append(text[:cut])
        text = text[cut:]
    out.append(text)
    return out


def _speakable_piece(text: str) -> str:
    """Every step after code removal, on one bounded piece of text."""
    text = _links(text)
    text = _html(text)
    text = _clean_characters(text)  # html.unescape can bring back &nbsp; and friends
    text = _structure(text)
    text = _urls(text)
    text = _emphasis(text)
    text = _abbreviations(text)
    text = _numbers(text)
    text = _symbols(text)
    text = _acronyms(text)
    return _tidy(text)
