"""Settings: one typed, frozen object read from the environment in one place.

Every environment variable the project reads is declared in `VARIABLES` below
(name, default, meaning); README's table is generated from the same list
(`python -m voice_agent doctor --env-table`). A bad value raises
`SettingsError` naming the variable and the accepted values.
"""

from __future__ import annotations

import functools
import importlib.util
import ipaddress
import logging
import os
import re
import shlex
import warnings
from collections.abc import Mapping, MutableMapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from voice_agent.core.errors import VoiceAgentError

log = logging.getLogger(__name__)

Device = Literal["auto", "cpu", "cuda"]
TTSBackendName = Literal["auto", "dia2", "dia", "piper", "vits"]
VADBackendName = Literal["auto", "numpy"]
STTBackendName = Literal["auto", "transformers", "ctranslate2"]
LLMBackendName = Literal["transformers", "openai"]

# The clips shipped with the project (warm-up, self-test), found from the package, not the cwd.
ASSETS_DIR = Path(__file__).resolve().parents[2] / "assets"

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off", "")

# Defaults that depend on the machine are decided by the engines; these are the
# candidates. CUDA: the seed's choices. CPU: small models chosen from the
# benchmark (README, "Benchmarks").
DEFAULT_LLM_CUDA = "Qwen/Qwen2.5-7B-Instruct"
DEFAULT_LLM_CPU = "Qwen/Qwen2.5-1.5B-Instruct"
DEFAULT_STT_CUDA = "openai/whisper-large-v3-turbo"
# CPU only: Moonshine reads the clip as it is (Whisper pads every clip to 30 s), 2.5x
# faster on a 3.4 s turn, and its published average word error rate on the Open ASR
# leaderboard's English sets is 10.07 % against whisper-base.en's 10.32 % (Useful
# Sensors' README). Beside a GPU, Whisper stays on the CPU (WHISPER_DEVICE=cpu) next
# to Dia2, whose voice prefixes are aligned with Whisper's word timings (Moonshine has
# none), so whisper-base.en stays the default there.
DEFAULT_STT_CPU = "UsefulSensors/moonshine-base"
DEFAULT_STT_CPU_BESIDE_GPU = "openai/whisper-base.en"
DEFAULT_DIA2 = "nari-labs/Dia2-2B"
DEFAULT_DIA2_SMALL = "nari-labs/Dia2-1B"
DEFAULT_DIA = "nari-labs/Dia-1.6B-0626"
DEFAULT_VITS = "facebook/mms-tts-eng"
# One voice folder of the many-voice repo (a hub ref may name a folder inside a repo).
# Not lessac: its Blizzard-2013 corpus licence restricts commercial synthesis (docs/tts.md).
DEFAULT_PIPER = "rhasspy/piper-voices/en/en_US/ljspeech/medium"
DEFAULT_MIMI = "kyutai/mimi"
DEFAULT_TTS = {
    "dia2": DEFAULT_DIA2,
    "dia": DEFAULT_DIA,
    "piper": DEFAULT_PIPER,
    "vits": DEFAULT_VITS,
}
# The built-in tools (voice_agent.tools), in the order the model sees them.
BUILTIN_TOOLS = (
    "current_time",
    "calculate",
    "convert_units",
    "set_timer",
    "list_timers",
    "cancel_timer",
)


class SettingsError(VoiceAgentError, ValueError):
    """An environment variable has a value we cannot use."""


@dataclass(frozen=True)
class McpServerSetting:
    """One MCP_SERVERS entry: a streamable-HTTP `url`, or a stdio `command` (with its args)."""

    name: str
    url: str | None = None
    command: tuple[str, ...] = ()

    @property
    def target(self) -> str:
        return self.url or shlex.join(self.command)


@dataclass(frozen=True)
class Variable:
    """One environment variable: its name, default (as text) and meaning."""

    name: str
    default: str | None
    meaning: str


VARIABLES: tuple[Variable, ...] = (
    # Hugging Face and process environment (the seed's names).
    Variable(
        "HF_HOME",
        "~/.cache/huggingface",
        "Hugging Face cache root (models are downloaded under HF_HOME/hub).",
    ),
    Variable("HF_HUB_OFFLINE", "0", "1 = never touch the network; load only local files."),
    Variable("TRANSFORMERS_OFFLINE", "0", "Same as HF_HUB_OFFLINE (transformers' name)."),
    Variable(
        "HF_OFFLINE",
        "0",
        "Legacy offline switch from the seed; the project honours it (the hub library does not).",
    ),
    Variable(
        "HF_FORCE_OFFLINE",
        "0",
        "Legacy offline switch from the seed; the project honours it (the hub library does not).",
    ),
    Variable(
        "LOCAL_MODELS_DIR",
        "./models",
        "Folder searched first for models: `NAME` or `ORG/NAME` under it.",
    ),
    Variable(
        "OFFLOAD_FOLDER",
        "/tmp/transformers_offload",
        "Where accelerate offloads weights that fit neither GPU nor RAM.",
    ),
    Variable(
        "PYTORCH_ALLOC_CONF",
        "expandable_segments:True",
        "PyTorch CUDA allocator settings (set at start when unset, to reduce fragmentation).",
    ),
    Variable(
        "TOKENIZERS_PARALLELISM",
        "false",
        "Tokenizers' thread pool (off by default: we tokenize from worker threads).",
    ),
    # Models and devices.
    Variable(
        "MODEL_SERVER_MODEL_NAME",
        None,
        f"The instruct LLM (hub id or local dir). Unset: {DEFAULT_LLM_CUDA} with CUDA, {DEFAULT_LLM_CPU} on CPU.",
    ),
    Variable(
        "MODEL_SERVER_PREFER_4BIT",
        "1",
        "1 = start the CUDA loading chain at 4-bit NF4; 0 = no quantization (start at fp16/bf16).",
    ),
    Variable("LLM_DEVICE", "auto", "Force the LLM's device: auto | cpu | cuda."),
    Variable(
        "LLM_BACKEND",
        "transformers",
        "transformers = load the LLM in this process; openai = use the OpenAI-compatible server "
        "at LLM_BASE_URL (vLLM, SGLang, TGI, llama.cpp, Ollama, or our own `serve`).",
    ),
    Variable(
        "LLM_BASE_URL",
        "http://127.0.0.1:8000/v1",
        "LLM_BACKEND=openai: the server's OpenAI API root, ending in /v1.",
    ),
    Variable(
        "LLM_API_KEY",
        None,
        "LLM_BACKEND=openai: sent as `Authorization: Bearer KEY` (unset: no key).",
    ),
    Variable(
        "LLM_MODEL",
        None,
        "LLM_BACKEND=openai: the served model to use, checked against the server's /v1/models "
        "at load. Unset: the server's (first) LLM.",
    ),
    Variable(
        "LLM_TIMEOUT_S",
        "60",
        "LLM_BACKEND=openai: longest wait for the server to connect (at most 5 s of it) or to "
        "send the next piece of a reply (seconds).",
    ),
    Variable(
        "LLM_MAX_RETRIES",
        "2",
        "LLM_BACKEND=openai: retries, with backoff, of a request the server did not take "
        "(connection refused, 429, 502-504); never of a reply already streaming.",
    ),
    Variable(
        "LLM_CONCURRENCY",
        "16",
        "LLM_BACKEND=openai: replies this process streams from the server at once (the server "
        "batches them); more wait in the LLM queue.",
    ),
    Variable(
        "STT_MODEL_NAME",
        None,
        f"Speech recogniser, a Whisper or Moonshine checkpoint. Unset: {DEFAULT_STT_CUDA} on "
        f"CUDA (WHISPER_DEVICE=cuda/auto), {DEFAULT_STT_CPU_BESIDE_GPU} on the CPU of a CUDA "
        f"machine, {DEFAULT_STT_CPU} on a CPU-only one.",
    ),
    Variable(
        "WHISPER_DEVICE",
        "cpu",
        "The speech recogniser's device: cpu | cuda | auto (the seed kept Whisper on the CPU).",
    ),
    Variable("STT_LANGUAGE", "en", "Transcription language code, or `auto` to detect."),
    Variable(
        "STT_BACKEND",
        "auto",
        "auto | transformers | ctranslate2. auto = CTranslate2 int8 on the CPU when the ctranslate2 package is installed (the model is converted once, under HF_HOME/ctranslate2), transformers otherwise and on CUDA. A Moonshine checkpoint runs on transformers (int8 on the CPU) with auto or transformers; ctranslate2 refuses it.",
    ),
    Variable(
        "TTS_BACKEND",
        "auto",
        "auto | dia2 | dia | piper | vits. auto = Dia2 on CUDA when it fits, else Piper (ONNX) on CPU, VITS (mms) as the last fallback.",
    ),
    Variable(
        "TTS_MODEL_NAME",
        None,
        f"TTS checkpoint for the chosen backend. Unset: {DEFAULT_DIA2} (dia2), {DEFAULT_DIA} (dia), {DEFAULT_PIPER} (piper), {DEFAULT_VITS} (vits).",
    ),
    Variable("TTS_DEVICE", "auto", "TTS device: auto | cpu | cuda."),
    Variable(
        "TTS_VOICES_DIR",
        "./assets/voices",
        "Folder of Dia2 voice prefixes (`NAME.wav`, optional `NAME.txt`).",
    ),
    Variable(
        "MODEL_LOADING",
        "eager",
        "eager = load every model at launch; lazy = load each on first use.",
    ),
    # Limits.
    Variable("MAX_UPLOAD_MB", "25", "Largest audio upload accepted (MB)."),
    Variable("MAX_AUDIO_SECONDS", "300", "Longest audio accepted for transcription (seconds)."),
    Variable("MAX_TEXT_CHARS", "60000", "Longest text accepted for speech or chat (characters)."),
    Variable(
        "VAD_PAUSE_SECONDS", "0.6", "Hands-free mode: silence that ends the user's turn (seconds)."
    ),
    Variable(
        "VAD_EARLY_PAUSE_SECONDS",
        "0.2",
        "Record and hands-free: silence inside a turn after which the words so far are transcribed (only those since the last such pause: the words before it are kept), so the turn finds them ready when it ends (seconds; 0 = transcribe only when the turn ends).",
    ),
    Variable(
        "VAD_ANSWER_AHEAD",
        "1",
        "Record and hands-free: start answering at that short pause too; the answer plays only if the user says nothing more before the turn ends (Stop recording, or the hands-free pause; its tool calls wait until then), and is dropped otherwise.",
    ),
    Variable(
        "VAD_BACKEND",
        "auto",
        "Voice activity (speech gate, hands-free, barge-in): auto = Silero VAD when it loads, else the numpy detector; numpy = the numpy detector only.",
    ),
    # Servers.
    Variable("MODEL_SERVER_HOST", "127.0.0.1", "REST server bind address (`serve`)."),
    Variable("MODEL_SERVER_PORT", "8000", "REST server port (`serve`)."),
    Variable(
        "MODEL_SERVER_API_KEY",
        None,
        "When set, every door (page, Gradio API, REST) but /health needs it: `Authorization: Bearer KEY`, or KEY as the password at the page's login. A credential (this or GRADIO_AUTH) is required off loopback.",
    ),
    Variable(
        "GRADIO_AUTH",
        None,
        "Page logins as `user:password[,user:password...]`; the same credentials work as HTTP Basic auth on every door.",
    ),
    Variable(
        "MODEL_SERVER_QUEUE_SIZE",
        "4",
        "Requests allowed to wait per engine before the server answers 503 + Retry-After.",
    ),
    Variable("MODEL_SERVER_TIMEOUT_S", "120", "Per-request time limit on the REST API (seconds)."),
    Variable(
        "MODEL_SERVER_HEADER_TIMEOUT_S",
        "10",
        "Time a client has to send a request's headers (seconds); a connection still without "
        "complete headers then is closed (408).",
    ),
    Variable(
        "MODEL_SERVER_BODY_TIMEOUT_S",
        "60",
        "Time a client has to send a REST request's body once its headers are in (seconds); "
        "a slower or shorter body gets 408.",
    ),
    Variable(
        "MODEL_SERVER_URL",
        "http://127.0.0.1:8000",
        "Where `voice_agent.client.http` finds the REST server.",
    ),
    Variable(
        "MODEL_SERVER_REMOTE",
        "0",
        "1 = the app uses the models of a separate `serve` process at MODEL_SERVER_URL instead "
        "of loading its own (models stay loaded across app restarts).",
    ),
    Variable(
        "GRADIO_SERVER_NAME", "127.0.0.1", "UI bind address (0.0.0.0 inside a Hugging Face Space)."
    ),
    Variable("GRADIO_SERVER_PORT", "7860", "UI port."),
    Variable(
        "LOG_LEVEL", "INFO", "Logging level for the entry points: DEBUG | INFO | WARNING | ERROR."
    ),
    # Tools.
    Variable(
        "TOOLS",
        "all",
        "Built-in tools the model may call: `all`, `none`, or a comma list of "
        + ", ".join(BUILTIN_TOOLS)
        + ".",
    ),
    Variable(
        "TOOLS_MODULES",
        None,
        "Comma list of Python modules or `.py` files imported at start; every function in them "
        "decorated with `@voice_agent.tools.tool` becomes a tool.",
    ),
    Variable(
        "TOOLS_ALLOW_ACTIONS",
        "0",
        "1 = tools that act (timers, every MCP tool, `@tool(acts=True)`) may run by default; "
        "0 = only reading the clock and computing, unless the user allows more in Settings.",
    ),
    Variable(
        "TOOL_TIMEOUT_S", "30", "Longest a tool call may run (seconds); then the model is told."
    ),
    Variable(
        "TIME_ZONE",
        None,
        "The user's IANA time zone for the clock tool (e.g. Europe/Paris). Unset: the machine's.",
    ),
    Variable(
        "MCP_SERVERS",
        None,
        "MCP servers whose tools the model may call, `;`-separated, each `[name=]URL` "
        "(streamable HTTP) or `[name=]command args` (stdio).",
    ),
    Variable(
        "MCP_SERVER",
        "1",
        "1 = the app is an MCP server too (`/gradio_api/mcp/`: transcribe, speak, chat), behind "
        "the same credentials as every door; 0 = off.",
    ),
)

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_OFFLINE", "HF_FORCE_OFFLINE")
# Variables that apply_process_defaults() set only to mirror a legacy switch; the
# diagnostics name the variable the user set, not the mirror.
_MIRRORED: set[str] = set()


@dataclass(frozen=True)
class Settings:
    """Everything the project reads from the environment, parsed and checked."""

    hf_home: Path
    local_models_dir: Path
    offload_folder: Path
    offline: bool
    offline_source: str | None  # the variable that switched offline mode on
    llm_model_name: str | None  # None: the engine picks by hardware
    prefer_4bit: bool
    llm_device: Device
    llm_backend: LLMBackendName
    llm_base_url: str
    llm_api_key: str | None = field(repr=False)
    llm_model: str | None
    llm_timeout_s: float
    llm_max_retries: int
    llm_concurrency: int
    stt_model_name: str | None
    whisper_device: Device
    stt_language: str
    stt_backend: STTBackendName
    tts_backend: TTSBackendName
    tts_model_name: str | None
    tts_device: Device
    tts_voices_dir: Path
    model_loading: Literal["eager", "lazy"]
    max_upload_bytes: int
    max_audio_seconds: float
    max_text_chars: int
    vad_pause_seconds: float
    vad_early_pause_seconds: float
    vad_answer_ahead: bool
    vad_backend: VADBackendName
    server_host: str
    server_port: int
    api_key: str | None = field(repr=False)
    gradio_auth: tuple[tuple[str, str], ...] = field(repr=False)
    server_queue_size: int
    server_timeout_s: float
    server_header_timeout_s: float
    server_body_timeout_s: float
    server_url: str
    remote_models: bool
    gradio_host: str
    gradio_port: int
    log_level: str
    tools: tuple[str, ...] = BUILTIN_TOOLS
    tools_modules: tuple[str, ...] = ()
    tools_allow_actions: bool = False
    tool_timeout_s: float = 30.0
    time_zone: str | None = None
    mcp_servers: tuple[McpServerSetting, ...] = ()
    mcp_server: bool = True

    def public_dict(self) -> dict[str, object]:
        """Settings as JSON-able values with secrets masked (for doctor, /health)."""
        out: dict[str, object] = {}
        for key, value in asdict(self).items():
            if key in ("api_key", "llm_api_key"):
                value = "***" if value else None
            elif key == "gradio_auth":
                value = [f"{user}:***" for user, _ in self.gradio_auth] or None
            elif key == "mcp_servers":
                # A URL or command line may hold a token: only names and transports are shown.
                value = [f"{m.name} ({'http' if m.url else 'stdio'})" for m in self.mcp_servers]
            out[key] = str(value) if isinstance(value, Path) else value
        return out

    @property
    def server_is_loopback(self) -> bool:
        return is_loopback(self.server_host)


def is_loopback(host: str) -> bool:
    """True for localhost and the 127/8 and ::1 addresses."""
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_bool(name: str, raw: str) -> bool:
    word = raw.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise SettingsError(
        f"{name}={raw!r} is not a boolean; use one of 1/true/yes/on or 0/false/no/off."
    )


def _choice(name: str, raw: str, choices: tuple[str, ...]) -> str:
    value = raw.strip().lower()
    if value not in choices:
        raise SettingsError(f"{name}={raw!r} is not valid; accepted values: {', '.join(choices)}.")
    return value


def _number(name: str, raw: str, kind: type, low: float, high: float) -> float | int:
    try:
        value: float | int = kind(raw.strip())
    except ValueError:
        raise SettingsError(
            f"{name}={raw!r} is not a{'n integer' if kind is int else ' number'}; "
            f"accepted values: {low:g} to {high:g}."
        ) from None
    if not low <= value <= high:
        raise SettingsError(
            f"{name}={raw!r} is out of range; accepted values: {low:g} to {high:g}."
        )
    return value


def _logins(name: str, raw: str) -> tuple[tuple[str, str], ...]:
    """`user:password[,user:password...]` as pairs; a malformed entry names the variable."""
    pairs: list[tuple[str, str]] = []
    for entry in (part.strip() for part in raw.split(",")):
        if not entry:
            continue
        user, sep, password = entry.partition(":")
        if not sep or not user.strip() or not password:
            raise SettingsError(
                f"{name} has an entry that is not `user:password` (entry {len(pairs) + 1}); "
                "accepted values: user:password[,user:password...]."
            )
        pairs.append((user.strip(), password))
    return tuple(pairs)


def _tool_names(name: str, raw: str) -> tuple[str, ...]:
    words = [w.strip() for w in raw.split(",") if w.strip()]
    if [w.lower() for w in words] == ["all"]:
        return BUILTIN_TOOLS
    if [w.lower() for w in words] == ["none"]:
        return ()
    unknown = [w for w in words if w not in BUILTIN_TOOLS]
    if unknown:
        raise SettingsError(
            f"{name} names unknown tools ({', '.join(unknown)}); accepted values: all, none, "
            f"or a comma list of {', '.join(BUILTIN_TOOLS)}."
        )
    return tuple(t for t in BUILTIN_TOOLS if t in words)


_MCP_NAME = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


def _mcp_servers(name: str, raw: str) -> tuple[McpServerSetting, ...]:
    """`[name=]URL` or `[name=]command args`, `;`-separated (names default to mcp1, mcp2...)."""
    servers: list[McpServerSetting] = []
    for i, entry in enumerate((e.strip() for e in raw.split(";")), start=1):
        if not entry:
            continue
        label, sep, target = entry.partition("=")
        if not sep or not _MCP_NAME.match(label.strip()) or label.strip().startswith(("http", "/")):
            label, target = f"mcp{i}", entry
        label, target = label.strip(), target.strip()
        if any(s.name == label for s in servers):
            raise SettingsError(
                f"{name}: the name {label!r} is used twice; give each server its own."
            )
        if target.startswith(("http://", "https://")):
            servers.append(McpServerSetting(label, url=target))
            continue
        try:
            command = tuple(shlex.split(target))
        except ValueError as exc:
            raise SettingsError(f"{name}: entry {i} is not a valid command line ({exc}).") from None
        if not command:
            raise SettingsError(
                f"{name}: entry {i} is empty; accepted values: `[name=]http(s)://URL` or "
                "`[name=]command args`, separated by `;`."
            )
        servers.append(McpServerSetting(label, command=command))
    return tuple(servers)


def _time_zone(name: str, raw: str | None) -> str | None:
    if raw is None:
        return None
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(raw.strip())
    except (ZoneInfoNotFoundError, ValueError):
        raise SettingsError(
            f"{name}={raw!r} is not a time zone; accepted values: IANA names such as "
            "Europe/Paris, America/New_York or UTC."
        ) from None
    return raw.strip()


def _base_url(name: str, raw: str) -> str:
    """An http(s) URL without its trailing slash; anything else names the variable."""
    url = raw.strip().rstrip("/")
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("http", "https") or not rest:
        raise SettingsError(
            f"{name}={raw!r} is not an http(s) URL; accepted values: e.g. "
            "http://127.0.0.1:8000/v1 (vLLM, our `serve`) or http://127.0.0.1:11434/v1 (Ollama)."
        )
    return url


def offline_from(env: Mapping[str, str]) -> tuple[bool, str | None]:
    """Offline mode and the first variable that switched it on.

    huggingface_hub reads only HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE, and only
    when it is imported; we decide here, from the environment, so behaviour does
    not depend on import order, and pass `local_files_only=True` ourselves.
    """
    for name in sorted(OFFLINE_VARIABLES, key=lambda n: n in _MIRRORED):
        raw = env.get(name)
        if raw is not None and raw.strip().lower() in TRUE_WORDS:
            return True, name
    return False, None


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate every setting from `env` (default: `os.environ`)."""
    env = os.environ if env is None else env
    defaults = {v.name: v.default for v in VARIABLES}

    def get(name: str) -> str | None:
        raw = env.get(name)
        if raw is None or raw.strip() == "":
            return defaults[name]
        return raw

    def text(name: str) -> str:
        value = get(name)
        assert value is not None, name
        return value

    def optional(name: str) -> str | None:
        value = get(name)
        return value.strip() if value else None

    offline, source = offline_from(env)
    devices = ("auto", "cpu", "cuda")
    hf_home = Path(os.path.expanduser(text("HF_HOME")))
    return Settings(
        hf_home=hf_home,
        local_models_dir=Path(os.path.expanduser(text("LOCAL_MODELS_DIR"))),
        offload_folder=Path(os.path.expanduser(text("OFFLOAD_FOLDER"))),
        offline=offline,
        offline_source=source,
        llm_model_name=optional("MODEL_SERVER_MODEL_NAME"),
        prefer_4bit=parse_bool("MODEL_SERVER_PREFER_4BIT", text("MODEL_SERVER_PREFER_4BIT")),
        llm_device=_choice("LLM_DEVICE", text("LLM_DEVICE"), devices),  # type: ignore[arg-type]
        llm_backend=_choice("LLM_BACKEND", text("LLM_BACKEND"), ("transformers", "openai")),  # type: ignore[arg-type]
        llm_base_url=_base_url("LLM_BASE_URL", text("LLM_BASE_URL")),
        llm_api_key=optional("LLM_API_KEY"),
        llm_model=optional("LLM_MODEL"),
        llm_timeout_s=float(_number("LLM_TIMEOUT_S", text("LLM_TIMEOUT_S"), float, 0.1, 3_600)),
        llm_max_retries=int(_number("LLM_MAX_RETRIES", text("LLM_MAX_RETRIES"), int, 0, 10)),
        llm_concurrency=int(_number("LLM_CONCURRENCY", text("LLM_CONCURRENCY"), int, 1, 1_024)),
        stt_model_name=optional("STT_MODEL_NAME"),
        whisper_device=_choice("WHISPER_DEVICE", text("WHISPER_DEVICE"), devices),  # type: ignore[arg-type]
        stt_language=text("STT_LANGUAGE").strip().lower(),
        stt_backend=_choice(
            "STT_BACKEND", text("STT_BACKEND"), ("auto", "transformers", "ctranslate2")
        ),  # type: ignore[arg-type]
        tts_backend=_choice(
            "TTS_BACKEND", text("TTS_BACKEND"), ("auto", "dia2", "dia", "piper", "vits")
        ),  # type: ignore[arg-type]
        tts_model_name=optional("TTS_MODEL_NAME"),
        tts_device=_choice("TTS_DEVICE", text("TTS_DEVICE"), devices),  # type: ignore[arg-type]
        tts_voices_dir=Path(os.path.expanduser(text("TTS_VOICES_DIR"))),
        model_loading=_choice("MODEL_LOADING", text("MODEL_LOADING"), ("eager", "lazy")),  # type: ignore[arg-type]
        max_upload_bytes=int(
            _number("MAX_UPLOAD_MB", text("MAX_UPLOAD_MB"), float, 0.001, 10_000) * 1_000_000
        ),
        max_audio_seconds=float(
            _number("MAX_AUDIO_SECONDS", text("MAX_AUDIO_SECONDS"), float, 1, 86_400)
        ),
        max_text_chars=int(_number("MAX_TEXT_CHARS", text("MAX_TEXT_CHARS"), int, 1, 10_000_000)),
        vad_pause_seconds=float(
            _number("VAD_PAUSE_SECONDS", text("VAD_PAUSE_SECONDS"), float, 0.1, 10)
        ),
        vad_early_pause_seconds=float(
            _number("VAD_EARLY_PAUSE_SECONDS", text("VAD_EARLY_PAUSE_SECONDS"), float, 0, 10)
        ),
        vad_answer_ahead=parse_bool("VAD_ANSWER_AHEAD", text("VAD_ANSWER_AHEAD")),
        vad_backend=_choice("VAD_BACKEND", text("VAD_BACKEND"), ("auto", "numpy")),  # type: ignore[arg-type]
        server_host=text("MODEL_SERVER_HOST").strip(),
        server_port=int(_number("MODEL_SERVER_PORT", text("MODEL_SERVER_PORT"), int, 0, 65535)),
        api_key=optional("MODEL_SERVER_API_KEY"),
        gradio_auth=_logins("GRADIO_AUTH", optional("GRADIO_AUTH") or ""),
        server_queue_size=int(
            _number("MODEL_SERVER_QUEUE_SIZE", text("MODEL_SERVER_QUEUE_SIZE"), int, 0, 10_000)
        ),
        server_timeout_s=float(
            _number("MODEL_SERVER_TIMEOUT_S", text("MODEL_SERVER_TIMEOUT_S"), float, 0.1, 86_400)
        ),
        server_header_timeout_s=float(
            _number(
                "MODEL_SERVER_HEADER_TIMEOUT_S",
                text("MODEL_SERVER_HEADER_TIMEOUT_S"),
                float,
                0.1,
                3_600,
            )
        ),
        server_body_timeout_s=float(
            _number(
                "MODEL_SERVER_BODY_TIMEOUT_S",
                text("MODEL_SERVER_BODY_TIMEOUT_S"),
                float,
                0.1,
                86_400,
            )
        ),
        server_url=text("MODEL_SERVER_URL").strip().rstrip("/"),
        remote_models=parse_bool("MODEL_SERVER_REMOTE", text("MODEL_SERVER_REMOTE")),
        gradio_host=text("GRADIO_SERVER_NAME").strip(),
        gradio_port=int(_number("GRADIO_SERVER_PORT", text("GRADIO_SERVER_PORT"), int, 0, 65535)),
        log_level=_choice(
            "LOG_LEVEL", text("LOG_LEVEL"), ("debug", "info", "warning", "error")
        ).upper(),
        tools=_tool_names("TOOLS", text("TOOLS")),
        tools_modules=tuple(
            m.strip() for m in (optional("TOOLS_MODULES") or "").split(",") if m.strip()
        ),
        tools_allow_actions=parse_bool("TOOLS_ALLOW_ACTIONS", text("TOOLS_ALLOW_ACTIONS")),
        tool_timeout_s=float(_number("TOOL_TIMEOUT_S", text("TOOL_TIMEOUT_S"), float, 0.1, 3_600)),
        time_zone=_time_zone("TIME_ZONE", optional("TIME_ZONE")),
        mcp_servers=_mcp_servers("MCP_SERVERS", optional("MCP_SERVERS") or ""),
        mcp_server=parse_bool("MCP_SERVER", text("MCP_SERVER")),
    )


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once. Tests call `get_settings.cache_clear()`."""
    return load_settings()


def apply_process_defaults(env: MutableMapping[str, str] | None = None) -> None:
    """Set process-level variables the libraries read themselves, when unset.

    Called by the entry points before torch or tokenizers are imported, so the
    allocator and tokenizer thread pool pick the values up. Legacy offline
    switches are mirrored to HF_HUB_OFFLINE so huggingface_hub agrees with us.
    """
    environ = os.environ if env is None else env
    environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    environ.setdefault("PYTORCH_ALLOC_CONF", "expandable_segments:True")
    offline, _ = offline_from(environ)
    if offline:
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
            if name not in environ:
                environ[name] = "1"
                _MIRRORED.add(name)
    if environ.get("TRANSFORMERS_CACHE"):
        warn_transformers_cache(environ["TRANSFORMERS_CACHE"])


_warned_transformers_cache = False


def warn_transformers_cache(value: str) -> None:
    """Warn once that transformers 5 ignores TRANSFORMERS_CACHE."""
    global _warned_transformers_cache
    if _warned_transformers_cache:
        return
    _warned_transformers_cache = True
    message = (
        f"TRANSFORMERS_CACHE={value} is ignored by transformers 5; "
        "set HF_HOME (or HF_HUB_CACHE) to choose where models are stored."
    )
    log.warning(message)
    warnings.warn(message, FutureWarning, stacklevel=2)


def env_table_markdown() -> str:
    """README's environment table, from `VARIABLES`."""
    lines = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for v in VARIABLES:
        default = f"`{v.default}`" if v.default not in (None, "") else "unset"
        lines.append(f"| `{v.name}` | {default} | {v.meaning} |")
    return "\n".join(lines)


def names_moonshine(stt_model: str) -> bool:
    """Whether an STT model reference names a Moonshine checkpoint, judged by the name alone.

    For what is decided before a checkpoint is at hand (doctor, prefetch, the benchmark's
    shapes, the note on the CPU default); the STT engine reads the checkpoint's own
    `model_type` instead.
    """
    return "moonshine" in stt_model.lower()


def default_stt(on_cuda: bool, cuda_available: bool, backend: str = "auto") -> str:
    """The speech recogniser used when STT_MODEL_NAME is unset (see `DEFAULT_STT_CPU`).

    `STT_BACKEND=ctranslate2` asks for Whisper (CTranslate2 runs no Moonshine), so it
    keeps whisper-base.en on a CPU-only machine too.
    """
    if on_cuda:
        return DEFAULT_STT_CUDA
    if cuda_available or backend == "ctranslate2":
        return DEFAULT_STT_CPU_BESIDE_GPU
    return DEFAULT_STT_CPU


def configured_models(settings: Settings, cuda_available: bool) -> dict[str, str]:
    """The model each component will load, after machine-dependent defaults.

    Shown by `doctor` and used by `prefetch`; the engines apply the same rules
    (and record the reason in their load reports). With `LLM_BACKEND=openai` the LLM
    is a server's (`llm_backend` says so): its name is LLM_MODEL, or a description of
    the server's default, and nothing of it is on this machine.
    """
    llm_cuda = cuda_available and settings.llm_device != "cpu"
    llm = settings.llm_model_name or (DEFAULT_LLM_CUDA if llm_cuda else DEFAULT_LLM_CPU)
    if settings.llm_backend == "openai":
        llm = settings.llm_model or f"the LLM served at {settings.llm_base_url}"
    whisper_cuda = settings.whisper_device == "cuda" or (
        settings.whisper_device == "auto" and cuda_available
    )
    stt = settings.stt_model_name or default_stt(whisper_cuda, cuda_available, settings.stt_backend)
    stt_backend: str = settings.stt_backend
    if stt_backend == "auto" and names_moonshine(stt):
        stt_backend = "moonshine"
    elif stt_backend == "auto":
        ct2 = importlib.util.find_spec("ctranslate2") is not None
        stt_backend = "ctranslate2" if ct2 and not whisper_cuda else "transformers"
    backend = settings.tts_backend
    if backend == "auto":
        tts_cuda = settings.tts_device == "cuda" or (
            settings.tts_device == "auto" and cuda_available
        )
        backend = "dia2" if tts_cuda else "piper"
    default_tts = DEFAULT_TTS[backend]
    out = {
        "llm": llm,
        "llm_backend": settings.llm_backend,
        "stt": stt,
        "stt_backend": stt_backend,
        "tts": settings.tts_model_name or default_tts,
        "tts_backend": backend,
    }
    if backend == "dia2":
        out["mimi"] = DEFAULT_MIMI
    return out
