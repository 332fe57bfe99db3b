"""The `convert_units` tool: length, mass, volume, speed, time, area, energy, data, temperature.

Each unit is its factor to the SI unit of its quantity; temperatures convert
through kelvin. Names are forgiving (plurals, "kilometres"/"kilometers", "km/h",
"degrees Fahrenheit"). Money is refused with a reason: exchange rates change
daily and this tool works offline (an MCP server can supply them).
"""

from __future__ import annotations

import math
import re
from typing import Any

from voice_agent.tools.base import ToolError

# quantity -> {canonical name: factor to the quantity's SI unit}
UNITS: dict[str, dict[str, float]] = {
    "length": {
        "metre": 1.0, "kilometre": 1000.0, "centimetre": 0.01, "millimetre": 0.001,
        "micrometre": 1e-6, "mile": 1609.344, "yard": 0.9144, "foot": 0.3048, "inch": 0.0254,
        "nautical mile": 1852.0, "light year": 9.4607304725808e15,
    },
    "mass": {
        "kilogram": 1.0, "gram": 0.001, "milligram": 1e-6, "tonne": 1000.0,
        "pound": 0.45359237, "ounce": 0.028349523125, "stone": 6.35029318,
    },
    "volume": {
        "litre": 1.0, "millilitre": 0.001, "cubic metre": 1000.0, "gallon": 3.785411784,
        "imperial gallon": 4.54609, "quart": 0.946352946, "pint": 0.473176473,
        "imperial pint": 0.56826125, "cup": 0.2365882365, "fluid ounce": 0.0295735295625,
        "tablespoon": 0.01478676478125, "teaspoon": 0.00492892159375,
    },
    "speed": {
        "metre per second": 1.0, "kilometre per hour": 1 / 3.6, "mile per hour": 0.44704,
        "knot": 1852 / 3600, "foot per second": 0.3048,
    },
    "time": {
        "second": 1.0, "millisecond": 0.001, "minute": 60.0, "hour": 3600.0, "day": 86400.0,
        "week": 604800.0, "year": 31557600.0,
    },
    "area": {
        "square metre": 1.0, "square kilometre": 1e6, "square foot": 0.09290304,
        "square mile": 2589988.110336, "acre": 4046.8564224, "hectare": 10000.0,
    },
    "energy": {
        "joule": 1.0, "kilojoule": 1000.0, "calorie": 4.184, "kilocalorie": 4184.0,
        "kilowatt hour": 3.6e6,
    },
    "data": {
        "byte": 1.0, "kilobyte": 1e3, "megabyte": 1e6, "gigabyte": 1e9, "terabyte": 1e12,
        "kibibyte": 1024.0, "mebibyte": 1024.0**2, "gibibyte": 1024.0**3, "bit": 0.125,
    },
    "temperature": {"kelvin": 1.0, "celsius": 1.0, "fahrenheit": 1.0},
}  # fmt: skip

ALIASES = {
    "m": "metre", "meter": "metre", "km": "kilometre", "kilometer": "kilometre",
    "cm": "centimetre", "centimeter": "centimetre", "mm": "millimetre", "millimeter": "millimetre",
    "mi": "mile", "yd": "yard", "ft": "foot", "feet": "foot", "in": "inch", "inches": "inch",
    "nmi": "nautical mile", "kg": "kilogram", "kilo": "kilogram", "g": "gram", "mg": "milligram",
    "t": "tonne", "ton": "tonne", "metric ton": "tonne", "lb": "pound", "lbs": "pound",
    "oz": "ounce", "st": "stone", "l": "litre", "liter": "litre", "ml": "millilitre",
    "milliliter": "millilitre", "m3": "cubic metre", "gal": "gallon", "us gallon": "gallon",
    "qt": "quart", "pt": "pint", "fl oz": "fluid ounce", "tbsp": "tablespoon", "tsp": "teaspoon",
    "m/s": "metre per second", "km/h": "kilometre per hour", "kph": "kilometre per hour",
    "kmh": "kilometre per hour", "mph": "mile per hour", "kn": "knot", "kt": "knot",
    "ft/s": "foot per second", "s": "second", "sec": "second", "ms": "millisecond",
    "min": "minute", "h": "hour", "hr": "hour", "d": "day", "wk": "week", "yr": "year",
    "m2": "square metre", "sq m": "square metre", "km2": "square kilometre",
    "sq km": "square kilometre", "sq ft": "square foot", "ft2": "square foot",
    "sq mi": "square mile", "ha": "hectare", "j": "joule", "kj": "kilojoule", "cal": "calorie",
    "kcal": "kilocalorie", "kwh": "kilowatt hour", "b": "byte", "kb": "kilobyte",
    "mb": "megabyte", "gb": "gigabyte", "tb": "terabyte", "kib": "kibibyte", "mib": "mebibyte",
    "gib": "gibibyte", "k": "kelvin", "c": "celsius", "centigrade": "celsius", "f": "fahrenheit",
    "°c": "celsius", "°f": "fahrenheit",
}  # fmt: skip

CURRENCIES = {
    "usd", "eur", "gbp", "jpy", "chf", "cny", "cad", "aud", "inr", "dollar", "euro", "yen",
    "yuan", "franc", "rupee", "sterling", "pound sterling", "british pound", "$", "€", "£", "¥",
}  # fmt: skip

_QUANTITY = {unit: quantity for quantity, units in UNITS.items() for unit in units}


def unit_name(raw: str) -> str:
    """The canonical name of a unit as a person or a model writes it.

    Raises:
        ToolError: money, or a unit this tool does not know.
    """
    text = re.sub(r"\s+", " ", raw.strip().lower().replace("degrees ", "").replace("degree ", ""))
    text = text.replace("metres", "metre").replace("meters", "meter")
    candidates = [text, text.rstrip("s"), text.removesuffix("es")]
    if "per" in text:  # "miles per hour" -> "mile per hour"
        head, _, tail = text.partition(" per ")
        candidates.append(f"{head.rstrip('s')} per {tail}")
    for candidate in candidates:
        if candidate in CURRENCIES:
            raise ToolError(
                "currency conversion needs today's exchange rates, which this offline tool "
                "does not have; say so, or use a currency tool from an MCP server if one is listed."
            )
        name = ALIASES.get(candidate, candidate)
        if name in _QUANTITY:
            return name
    known = ", ".join(sorted(_QUANTITY))
    raise ToolError(f"unknown unit {raw!r:.40}; known units: {known}.")


def convert_units(value: float, from_unit: str, to_unit: str) -> dict[str, Any]:
    """Convert a measurement between units: length, mass, volume, speed, time, area, energy,
    data size or temperature (not money: there are no exchange rates offline).

    Args:
        value: the amount to convert, e.g. 100.
        from_unit: its unit, e.g. "miles", "kg", "degrees Fahrenheit", "cups".
        to_unit: the unit wanted, e.g. "km", "pounds", "celsius", "ml".
    """
    source, target = unit_name(from_unit), unit_name(to_unit)
    if _QUANTITY[source] != _QUANTITY[target]:
        raise ToolError(
            f"cannot convert {_QUANTITY[source]} ({source}) to {_QUANTITY[target]} ({target})."
        )
    if _QUANTITY[source] == "temperature":
        result = _from_kelvin(_to_kelvin(value, source), target)
    else:
        result = value * UNITS[_QUANTITY[source]][source] / UNITS[_QUANTITY[target]][target]
    if not math.isfinite(result):
        raise ToolError(f"{value!r} {from_unit} has no finite value in {to_unit}.")
    rounded = float(f"{result:.6g}")
    return {
        "value": value,
        "from": source,
        "to": target,
        "result": int(rounded) if rounded == int(rounded) and abs(rounded) < 1e15 else rounded,
    }


def _to_kelvin(value: float, unit: str) -> float:
    if unit == "celsius":
        return value + 273.15
    if unit == "fahrenheit":
        return (value - 32) * 5 / 9 + 273.15
    return value


def _from_kelvin(value: float, unit: str) -> float:
    if unit == "celsius":
        return value - 273.15
    if unit == "fahrenheit":
        return (value - 273.15) * 9 / 5 + 32
    return value
