"""Errors raised by the Dia2 runtime.

Input problems subclass `voice_agent.core.errors.InputError` so the REST layer
answers 4xx; checkpoint problems subclass `ModelLoadError`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from voice_agent.core.errors import InputError, InputTooLargeError, ModelLoadError, VoiceAgentError

if TYPE_CHECKING:
    from voice_agent.tts.dia2.result import Dia2Result


class Dia2Error(VoiceAgentError):
    """Base class of every error raised on purpose by the Dia2 runtime."""


class EmptyScriptError(Dia2Error, InputError):
    """The script is empty or only whitespace."""

    code = "empty_script"


class NoSpeechError(Dia2Error, InputError):
    """The script has tags (speaker tags, breaks) but no word to speak."""

    code = "no_speech"


class UnknownTagError(Dia2Error, InputError):
    """The script has a tag other than `[S1]`, `[S2]` and `<break time="Xs"/>`."""

    code = "unknown_tag"

    def __init__(self, tag: str) -> None:
        super().__init__(
            f"Unknown tag {tag!r} in the script. Dia2 understands [S1], [S2] and "
            '<break time="0.5s"/> (seconds, e.g. 0.5s).'
        )
        self.tag = tag


class ContextOverflowError(Dia2Error, InputTooLargeError):
    """The script does not fit in the model's context (2 minutes for the real models).

    Attributes:
        words_spoken: words that were (or would be) spoken before the cap.
        words_total: words in the script.
        unspoken_text: the words that were not spoken, joined by spaces, so the
            caller can send them in the next chunk.
        result: the partial result when generation ran into the cap, else None
            (raised before generating when the script cannot possibly fit).
    """

    code = "context_overflow"

    def __init__(
        self,
        message: str,
        *,
        words_spoken: int,
        words_total: int,
        unspoken_text: str,
        result: Dia2Result | None = None,
    ) -> None:
        super().__init__(message)
        self.words_spoken = words_spoken
        self.words_total = words_total
        self.unspoken_text = unspoken_text
        self.result = result


class PrefixError(Dia2Error, InputError):
    """A voice prefix could not be used (unreadable audio, no words found, ...)."""

    code = "bad_voice_prefix"


class NotADia2CheckpointError(Dia2Error, ModelLoadError):
    """The directory is not a Dia2 checkpoint (no Dia2 config.json or no weights)."""


class CheckpointMismatchError(Dia2Error, ModelLoadError):
    """config.json and model.safetensors disagree; the message names the tensor."""

    def __init__(self, message: str, tensor: str | None = None) -> None:
        super().__init__(message)
        self.tensor = tensor
