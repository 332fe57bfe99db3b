"""The LLM's bad-input errors: one class per mistake, all `InputError`s (HTTP 4xx)."""

from __future__ import annotations

from voice_agent.core.errors import InputError, InputTooLargeError, VoiceAgentError


class EmptyConversationError(InputError):
    """The message list is empty (or holds only system messages)."""

    code = "empty_messages"


class EmptyMessageError(InputError):
    """The user's message is empty or only whitespace."""

    code = "empty_message"


class InvalidMessageError(InputError):
    """A message is not a {"role": ..., "content": ...} mapping."""

    code = "invalid_message"


class UnknownRoleError(InvalidMessageError):
    """A message's role is not system, user or assistant."""

    code = "unknown_role"


class InvalidContentError(InvalidMessageError):
    """A message's content is not a string."""

    code = "invalid_content"


class MessageTooLongError(InputTooLargeError):
    """One message is longer than MAX_TEXT_CHARS."""

    code = "message_too_long"


class PromptTooLongError(InputTooLargeError):
    """The prompt plus max_new_tokens exceeds the context even with all old turns dropped."""

    code = "context_length_exceeded"


class InvalidGenerationSettingsError(InputError):
    """A sampling setting is out of range (top_p, stop strings, seed)."""

    code = "invalid_generation_settings"


class MaxNewTokensError(InvalidGenerationSettingsError):
    """max_new_tokens is not a positive integer below the model's context length."""

    code = "invalid_max_new_tokens"


class TemperatureError(InvalidGenerationSettingsError):
    """temperature is negative, not finite or above the accepted range."""

    code = "invalid_temperature"


class GenerationError(VoiceAgentError):
    """The model raised while generating (not the caller's fault); the cause is chained."""


class InvalidToolsError(InputError):
    """`tools` or `tool_choice` is not something the model can be given."""

    code = "invalid_tools"
