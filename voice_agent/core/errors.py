"""Error types shared by every stage.

The REST layer maps them to HTTP status codes without knowing the stage:
`InputError` (and subclasses) -> its `status_code` (4xx), `BusyError` -> 503
with Retry-After, `ModelUnavailableError` -> 503. Messages are written for the
person who sent the input; they never contain a stack trace.
"""

from __future__ import annotations

from collections.abc import Callable


class VoiceAgentError(Exception):
    """Base class of every error this project raises on purpose."""


class InputError(VoiceAgentError, ValueError):
    """The caller sent something we cannot use (bad audio, empty text, ...)."""

    status_code: int = 400
    code: str = "invalid_input"


class InputTooLargeError(InputError):
    """Input over a configured limit (size, duration, length)."""

    status_code = 413
    code = "input_too_large"


class BusyError(VoiceAgentError):
    """An engine is serving someone else and the bounded wait ran out."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ModelUnavailableError(VoiceAgentError):
    """A model is loading or failed to load; the message says which and why."""


class ModelLoadError(VoiceAgentError):
    """Every loading strategy for a model failed; carries the attempts.

    Attributes:
        report: the `LoadReport` with every attempt.
        recheck: set when the failure may fix itself (a server not up yet): a quick
            check, loading nothing, that says whether loading again may now succeed.
    """

    def __init__(
        self,
        message: str,
        report: object | None = None,
        *,
        recheck: Callable[[], bool] | None = None,
    ) -> None:
        super().__init__(message)
        self.report = report
        self.recheck = recheck
