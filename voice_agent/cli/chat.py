"""`chat [--audio FILE ...] [--speak-to DIR]`: a conversation in the terminal through the engine.

Recordings given with `--audio` are spoken turns (in order); then every line
typed (or piped) is a typed turn, until `/quit` or end of input. The reply
streams onto the screen as it is generated; with `--speak-to`, each reply's
audio is written to `DIR/reply-NNN.wav`. Ctrl-C during a reply stops it (the
partial reply stays in the conversation, marked interrupted); Ctrl-C at the
prompt quits.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TextIO

QUIT = ("/quit", "/exit")


def _progress(out: TextIO):
    def show(component: str, fraction: float, message: str) -> None:
        print(f"  [{component} {fraction:4.0%}] {message}", file=out, flush=True)

    return show


def run_one(agent, session, out: TextIO, *, text=None, audio=None, speak_to=None, index=0) -> bool:
    """One turn, printed as it streams; returns False when it ended in an error."""
    import numpy as np

    chunks: list[np.ndarray] = []
    rate = 0
    ok = True
    started_reply = False
    events = agent.run_turn(session, text=text, audio=audio)
    try:
        for event in events:
            if event.kind == "transcript" and audio is not None:
                print(f"you (heard): {event.text}", file=out, flush=True)
            elif event.kind == "text":
                if not started_reply:
                    print("assistant: ", end="", file=out, flush=True)
                    started_reply = True
                print(event.text, end="", file=out, flush=True)
            elif event.kind == "audio" and event.audio is not None:
                rate = event.audio.sample_rate
                chunks.append(np.asarray(event.audio.samples, dtype=np.float32))
            elif event.kind == "tool" and event.tool is not None and event.tool.status != "running":
                record = event.tool
                outcome = record.result if record.ok else f"{record.status}: {record.error}"
                print(f"  [tool {record.name}: {outcome}]", file=out, flush=True)
            elif event.kind == "notice":
                print(f"{chr(10) if started_reply else ''}({event.text})", file=out, flush=True)
            elif event.kind == "error":
                print(
                    f"{chr(10) if started_reply else ''}error: {event.text}", file=out, flush=True
                )
                ok = False
            elif event.kind == "done":
                if started_reply:
                    print(" …" if event.interrupted else "", file=out, flush=True)
                if event.timings is not None and event.text:
                    print(f"  ({event.timings.summary()})", file=out, flush=True)
    except KeyboardInterrupt:
        agent.cancel(session, "stopped")
        events.close()
        print(" … (stopped)", file=out, flush=True)
    if speak_to is not None and chunks:
        from voice_agent.audio.io import encode_wav

        speak_to.mkdir(parents=True, exist_ok=True)
        path = speak_to / f"reply-{index:03d}.wav"
        path.write_bytes(encode_wav(rate, np.concatenate(chunks)))
        print(f"  (speech written to {path})", file=out, flush=True)
    return ok


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m voice_agent chat",
        description="Talk to the assistant in the terminal. Type /quit to end.",
    )
    parser.add_argument("--audio", nargs="+", type=Path, default=[], metavar="FILE",
                        help="recordings to send as spoken turns, in order")  # fmt: skip
    parser.add_argument("--speak-to", type=Path, metavar="DIR",
                        help="write each reply's speech to DIR/reply-NNN.wav")  # fmt: skip
    parser.add_argument("--system", help="system prompt for this conversation")
    parser.add_argument("--max-tokens", type=int, help="longest reply, in tokens")
    parser.add_argument("--temperature", type=float, help="sampling temperature (0 = greedy)")
    parser.add_argument("--voice", help="TTS voice id")
    parser.add_argument("--verbose", action="store_true", help="keep INFO logs during the chat")
    args = parser.parse_args(argv)
    out = sys.stdout
    missing = [str(p) for p in args.audio if not p.is_file()]
    if missing:
        print(f"error: no such audio file: {', '.join(missing)}", file=sys.stderr)
        return 2

    from voice_agent.pipeline.agent import Agent
    from voice_agent.pipeline.models import get_models

    print("loading models …", file=sys.stderr, flush=True)
    # Eager whatever MODEL_LOADING says: the chat needs every model before its first turn,
    # and with lazy loading nothing would start the load that `wait()` waits for.
    models = get_models(progress=_progress(sys.stderr), eager=True)
    models.wait()
    for component, reason in models.errors.items():
        print(f"warning: {component} unavailable: {reason}", file=sys.stderr)
    if models.status["llm"] != "ready":
        print("error: the language model did not load, so there is nothing to talk to.",
              file=sys.stderr)  # fmt: skip
        return 1
    if not args.verbose:
        logging.getLogger().setLevel(logging.WARNING)

    agent = Agent(models)
    overrides: dict = {}
    if args.system:
        overrides["system_prompt"] = args.system
    if args.voice:
        overrides["voice"] = args.voice
    if args.max_tokens is not None:
        overrides["max_new_tokens"] = args.max_tokens
    if args.temperature is not None:
        overrides["temperature"] = args.temperature
    session = agent.new_session(**overrides)

    turn = 0
    failures = 0
    for path in args.audio:
        turn += 1
        print(f"you (audio): {path}", file=out, flush=True)
        failures += not run_one(agent, session, out, audio=str(path), speak_to=args.speak_to,
                                index=turn)  # fmt: skip
    interactive = sys.stdin.isatty()
    if interactive:
        print("Type a message (/quit to end).", file=out, flush=True)
    while True:
        try:
            if interactive:
                line = input("you: ")
            else:
                line = sys.stdin.readline()
                if not line:
                    break
                line = line.rstrip("\n")
                print(f"you: {line}", file=out, flush=True)
        except (EOFError, KeyboardInterrupt):
            print(file=out)
            break
        if line.strip().lower() in QUIT:
            break
        if not line.strip():
            continue
        turn += 1
        failures += not run_one(agent, session, out, text=line, speak_to=args.speak_to, index=turn)
    return 1 if failures and not interactive else 0
