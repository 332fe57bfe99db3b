"""Our own Dia2 runtime: official checkpoints, exact parity, streaming text in and audio out.

Public API: `Dia2Runtime.from_pretrained(...)`, `runtime.generate(script)`,
`runtime.stream(script_or_feed)`, `TextFeed`, `Dia2GenerationConfig`,
`Dia2Result`, `Dia2Prefix`, and the error classes. Importing this package
imports torch; `voice_agent.tts` imports it lazily.
"""

from voice_agent.tts.dia2.errors import (
    CheckpointMismatchError,
    ContextOverflowError,
    Dia2Error,
    EmptyScriptError,
    NoSpeechError,
    NotADia2CheckpointError,
    PrefixError,
    UnknownTagError,
)
from voice_agent.tts.dia2.generation_config import Dia2GenerationConfig, InvalidSettingsError
from voice_agent.tts.dia2.prefix import Dia2Prefix, WordTimer
from voice_agent.tts.dia2.result import Dia2Result
from voice_agent.tts.dia2.runtime import Dia2Runtime
from voice_agent.tts.dia2.sampling import SamplingConfig
from voice_agent.tts.dia2.streaming import Dia2Stream, TextFeed

__all__ = [
    "CheckpointMismatchError",
    "ContextOverflowError",
    "Dia2Error",
    "Dia2GenerationConfig",
    "Dia2Prefix",
    "Dia2Result",
    "Dia2Runtime",
    "Dia2Stream",
    "EmptyScriptError",
    "InvalidSettingsError",
    "NoSpeechError",
    "NotADia2CheckpointError",
    "PrefixError",
    "SamplingConfig",
    "TextFeed",
    "UnknownTagError",
    "WordTimer",
]
