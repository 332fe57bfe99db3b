"""Tools the model may call in a turn: built-in ones, your own functions, MCP servers' tools.

Register a function in one line with the `tool` decorator (its type hints and
docstring are the tool's schema and description); see `toolbox` for the rest.
"""

from voice_agent.tools.base import Tool, ToolContext, ToolError, ToolRecord
from voice_agent.tools.toolbox import Toolbox, tool

__all__ = ["Tool", "ToolContext", "ToolError", "ToolRecord", "Toolbox", "tool"]
