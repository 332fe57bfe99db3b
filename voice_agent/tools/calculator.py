"""The `calculate` tool: arithmetic evaluated from its syntax tree, never with `eval`.

Only numbers, + - * / // % ** (also ^, × and ÷), parentheses, the constants pi
and e and a few functions (sqrt, sin, cos, tan, log, ln, log10, exp, abs, round,
floor, ceil) are accepted; anything else (names, attributes, calls of other
functions, strings) is refused with a message the model can act on. Work is
bounded: expressions of at most `MAX_CHARS` characters, exponents of at most
`MAX_EXPONENT` and results below `MAX_MAGNITUDE`, so no request can make the
process compute for long or run out of memory.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable
from typing import Any

from voice_agent.tools.base import ToolError

MAX_CHARS = 300
MAX_NODES = 200
MAX_EXPONENT = 1000
MAX_MAGNITUDE = 1e300
SIGNIFICANT_DIGITS = 12

_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "sqrt": math.sqrt,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
    "log": math.log,
    "ln": math.log,
    "log10": math.log10,
    "exp": math.exp,
    "abs": abs,
    "round": round,
    "floor": math.floor,
    "ceil": math.ceil,
}
_CONSTANTS = {"pi": math.pi, "e": math.e}
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")


def calculate(expression: str) -> dict[str, Any]:
    """Work out an arithmetic expression exactly, e.g. "24 * 37" or "sqrt(2) * (3 + 4) ^ 2".

    Args:
        expression: numbers with + - * / // % and ** or ^ (power), parentheses, pi, e and
            sqrt, sin, cos, tan, log, ln, log10, exp, abs, round, floor, ceil.
    """
    text = expression.strip()
    if not text:
        raise ToolError("calculate needs an expression, e.g. 24 * 37.")
    if len(text) > MAX_CHARS:
        raise ToolError(f"the expression is longer than {MAX_CHARS} characters.")
    source = _THOUSANDS.sub("", text).replace("^", "**").replace("×", "*").replace("÷", "/")
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError:
        raise ToolError(f"{text!r} is not an arithmetic expression.") from None
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise ToolError("the expression is too long to work out.")
    try:
        value = _evaluate(tree.body)
    except ZeroDivisionError:
        raise ToolError("the expression divides by zero.") from None
    except (OverflowError, ValueError) as exc:
        raise ToolError(f"the expression has no finite result ({exc}).") from None
    return {"expression": text, "result": _tidy(value)}


def _evaluate(node: ast.AST) -> Any:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise ToolError(f"only numbers can be calculated, not {node.value!r:.40}.")
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise ToolError(f"exponents above {MAX_EXPONENT} are not calculated.")
        return _bounded(_BINARY[type(node.op)](left, right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.Name) and node.id in _CONSTANTS:
        return _CONSTANTS[node.id]
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in _FUNCTIONS
        and not node.keywords
        and 1 <= len(node.args) <= 2
    ):
        return _bounded(_FUNCTIONS[node.func.id](*(_evaluate(a) for a in node.args)))
    allowed = ", ".join(_FUNCTIONS)
    raise ToolError(
        f"{ast.unparse(node)[:40]!r} is not arithmetic; use numbers, + - * / % ^, "
        f"parentheses, pi, e and {allowed}."
    )


def _bounded(value: Any) -> Any:
    if isinstance(value, complex):
        raise ValueError("the result is not a real number")
    if abs(value) > MAX_MAGNITUDE:
        raise OverflowError("the result is too large")
    return value


def _tidy(value: float | int) -> float | int:
    """Whole numbers as integers, others to `SIGNIFICANT_DIGITS` significant digits."""
    if isinstance(value, int):
        return value
    if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
        return int(value)
    return float(f"{value:.{SIGNIFICANT_DIGITS}g}")
