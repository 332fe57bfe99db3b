"""A tool from a plain Python function: its type hints are the schema, its docstring the text.

    def convert(value: float, unit: Literal["km", "mi"] = "km") -> str:
        '''Convert a distance.

        Args:
            value: how far.
            unit: the unit to convert to.
        '''

becomes a tool named `convert` whose description is the docstring's first part and
whose parameters are `value` (number, required) and `unit` (one of km, mi, with
its default). A parameter annotated `ToolContext` is not shown to the model; it
receives the running call's context (session, cancel, time zone).

The model's arguments are checked against the hints before the function runs:
a missing or unknown argument, or one of the wrong type, is a `ToolError` the model
is told, not a crash. Numbers written as strings ("3") are accepted, as models do that.
"""

from __future__ import annotations

import enum
import inspect
import re
import types
import typing
from collections.abc import Callable
from typing import Any, Literal, Union, get_args, get_origin

from voice_agent.tools.base import Tool, ToolContext, ToolError

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SECTION = re.compile(
    r"^\s*(Args|Arguments|Parameters|Returns|Raises|Yields|Example|Examples):\s*$"
)


def json_schema(hint: Any) -> dict[str, Any]:
    """The JSON schema of a type hint (str, int, float, bool, Literal, Enum, list, dict, X | None)."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return json_schema(inner[0])
        return {"anyOf": [json_schema(a) for a in inner]}
    if origin is Literal:
        return {"enum": list(args)}
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return {"enum": [m.value for m in hint]}
    if hint is bool:
        return {"type": "boolean"}
    if hint is int:
        return {"type": "integer"}
    if hint is float:
        return {"type": "number"}
    if hint is str:
        return {"type": "string"}
    if origin in (list, tuple, typing.Sequence) or hint in (list, tuple):
        return {"type": "array", "items": json_schema(args[0])} if args else {"type": "array"}
    if origin is dict or hint is dict:
        return {"type": "object"}
    raise TypeError(
        f"a tool parameter cannot have the type {hint!r}; use str, int, float, bool, "
        "Literal[...], an Enum, list[...], dict or X | None"
    )


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """(description, {parameter: description}) from a Google-style docstring."""
    lines = inspect.cleandoc(doc or "").splitlines()
    description: list[str] = []
    params: dict[str, str] = {}
    section: str | None = None
    current: str | None = None
    for line in lines:
        header = _SECTION.match(line)
        if header:
            section, current = header.group(1), None
            continue
        if section is None:
            description.append(line)
        elif section in ("Args", "Arguments", "Parameters"):
            match = re.match(r"^\s{0,8}(\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$", line)
            if match and not line.startswith(" " * 9):
                current = match.group(1).lstrip("*")
                params[current] = match.group(2).strip()
            elif current and line.strip():
                params[current] = (params[current] + " " + line.strip()).strip()
    return " ".join(" ".join(description).split()), params


def tool_from_function(
    fn: Callable[..., Any],
    *,
    name: str | None = None,
    description: str | None = None,
    source: str = "user",
    acts: bool = False,
) -> Tool:
    """A `Tool` for `fn` (see the module docstring).

    Raises:
        TypeError: a parameter without a type hint or of a type a schema cannot say,
            or a name the model cannot call.
    """
    tool_name = name or fn.__name__
    if not _NAME.match(tool_name):
        raise TypeError(f"tool name {tool_name!r} must be 1 to 64 letters, digits, _ or -")
    hints = typing.get_type_hints(fn)
    text, param_docs = parse_docstring(fn.__doc__)
    properties: dict[str, Any] = {}
    required: list[str] = []
    context_param: str | None = None
    converters: dict[str, Any] = {}
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        hint = hints.get(param.name)
        if hint is None:
            raise TypeError(f"tool {tool_name}: parameter {param.name!r} needs a type hint")
        if hint is ToolContext:
            context_param = param.name
            continue
        schema = json_schema(hint)
        if param_docs.get(param.name):
            schema["description"] = param_docs[param.name]
        if param.default is inspect.Parameter.empty:
            required.append(param.name)
        elif param.default is not None and not isinstance(param.default, enum.Enum):
            schema["default"] = param.default
        properties[param.name] = schema
        converters[param.name] = hint
    parameters: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        parameters["required"] = required

    def run(arguments: dict[str, Any], context: ToolContext) -> Any:
        kwargs = check_arguments(tool_name, arguments, converters, required)
        if context_param is not None:
            kwargs[context_param] = context
        return fn(**kwargs)

    return Tool(
        name=tool_name,
        description=description or text or tool_name.replace("_", " "),
        parameters=parameters,
        run=run,
        source=source,
        acts=acts,
    )


def check_arguments(
    tool: str, arguments: dict[str, Any], hints: dict[str, Any], required: list[str]
) -> dict[str, Any]:
    """The model's arguments, checked against the hints and converted where that is safe.

    Raises:
        ToolError: an unknown or missing argument, or a value of the wrong type.
    """
    unknown = sorted(set(arguments) - set(hints))
    if unknown:
        accepted = ", ".join(hints) or "none"
        raise ToolError(f"{tool} has no argument {', '.join(unknown)}; its arguments: {accepted}.")
    missing = [name for name in required if name not in arguments]
    if missing:
        raise ToolError(f"{tool} needs the argument {', '.join(missing)}.")
    return {name: _convert(tool, name, value, hints[name]) for name, value in arguments.items()}


def _convert(tool: str, name: str, value: Any, hint: Any) -> Any:
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        problems = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(tool, name, value, option)
            except ToolError as exc:
                problems.append(str(exc))
        raise ToolError(problems[0] if problems else f"{tool}: {name} has the wrong type.")
    if origin is Literal:
        if value in args:
            return value
        raise ToolError(
            f"{tool}: {name} must be one of {', '.join(map(str, args))}, not {value!r}."
        )
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(value)
        except ValueError:
            options = ", ".join(str(m.value) for m in hint)
            raise ToolError(f"{tool}: {name} must be one of {options}, not {value!r}.") from None
    wrong = ToolError(f"{tool}: {name} must be {_kind(hint)}, not {value!r:.60}.")
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise wrong
    if hint in (int, float):
        if isinstance(value, bool):
            raise wrong
        if isinstance(value, str):
            try:
                value = float(value.strip().replace(",", ""))
            except ValueError:
                raise wrong from None
        if not isinstance(value, int | float):
            raise wrong
        if hint is int:
            if float(value) != int(value):
                raise wrong
            return int(value)
        return float(value)
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise wrong
    if origin in (list, tuple) or hint in (list, tuple):
        if not isinstance(value, list):
            raise wrong
        return [_convert(tool, name, v, args[0]) for v in value] if args else value
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise wrong
        return value
    return value


def _kind(hint: Any) -> str:
    return {bool: "true or false", int: "a whole number", float: "a number", str: "text"}.get(
        hint, "a list" if get_origin(hint) in (list, tuple) else "an object"
    )
