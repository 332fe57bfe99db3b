"""`speak TEXT -o OUT.wav`: speak text (markdown, numbers and all) into a WAV file."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from voice_agent.core.errors import InputError, VoiceAgentError
from voice_agent.tts.backends import NAMES


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m voice_agent speak",
        description="Speak TEXT into a WAV file with the configured TTS backend.",
    )
    parser.add_argument("text", help="what to say; '-' reads standard input")
    parser.add_argument("-o", "--output", required=True, type=Path, help="WAV file to write")
    parser.add_argument(
        "--backend",
        choices=("auto", *NAMES),
        help="override TTS_BACKEND",
    )
    parser.add_argument("--model", help="override TTS_MODEL_NAME")
    parser.add_argument("--voice", help="a voice from the backend's list (default: its default)")
    args = parser.parse_args(argv)
    text = sys.stdin.read() if args.text == "-" else args.text
    if not text.strip():
        # Before loading a model that would only refuse it.
        print("error: The text is empty; there is nothing to say.", file=sys.stderr)
        return 2

    from voice_agent.audio.io import encode_wav
    from voice_agent.tts.engine import LocalTTS

    try:
        t0 = time.perf_counter()
        engine = LocalTTS(backend=args.backend, model_name=args.model)
        loaded = time.perf_counter() - t0
        t1 = time.perf_counter()
        rate, audio = engine.synthesize(text, voice=args.voice)
        spoke = time.perf_counter() - t1
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_bytes(encode_wav(rate, audio))
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (VoiceAgentError, OSError) as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        for line in str(exc).splitlines()[1:]:
            print(line, file=sys.stderr)
        return 1
    seconds = len(audio) / rate
    print(
        f"wrote {args.output} ({seconds:.2f} s at {rate} Hz) with {engine.report.summary()}; "
        f"load {loaded:.1f} s, speech {spoke:.1f} s"
    )
    return 0
