"""`python -m voice_agent transcribe FILE [--language L] [--json]`: print what FILE says."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from voice_agent.core.errors import InputError, VoiceAgentError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m voice_agent transcribe",
        description="Transcribe an audio file (WAV, FLAC, OGG, MP3, WebM/Opus, M4A) with Whisper.",
    )
    parser.add_argument("file", help="audio file to transcribe")
    parser.add_argument(
        "--language", default=None, help="language code or name, or 'auto' (default STT_LANGUAGE)"
    )
    parser.add_argument("--model", default=None, help="Whisper model (default STT_MODEL_NAME)")
    parser.add_argument("--words", action="store_true", help="include word timings (with --json)")
    parser.add_argument("--json", action="store_true", help="print the full result as JSON")
    return parser


def main(argv: list[str]) -> int:
    """Exit codes: 0 transcribed, 2 bad input (corrupt file, bad language), 1 other failure."""
    args = build_parser().parse_args(argv)
    from voice_agent.audio.io import load_audio
    from voice_agent.core.config import SettingsError, get_settings

    try:
        settings = get_settings()
        # Check the file before loading a model: a corrupt file fails in milliseconds.
        load_audio(args.file, max_seconds=settings.max_audio_seconds)
        from voice_agent.stt.whisper import WhisperSTT, normalize_language

        normalize_language(args.language)

        engine = WhisperSTT(args.model, settings)
        run = engine.transcribe_words if args.words else engine.transcribe
        result = run(args.file, language=args.language)
    except (InputError, SettingsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except VoiceAgentError as exc:
        # Loading errors list one attempt per line; keep them, on one line.
        print(f"error: {' '.join(line.strip() for line in str(exc).splitlines())}", file=sys.stderr)
        return 1
    if args.json:
        out = asdict(result)
        out["model"] = engine.model_id
        print(json.dumps(out, ensure_ascii=False))
    else:
        print(result.text)
    return 0
