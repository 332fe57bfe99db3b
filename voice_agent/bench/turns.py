"""Benchmark section `turns`: turn detection on the labelled clip set, both detectors.

Every clip of `testing.clips.clip_set()` is streamed through a `TurnDetector`
in 0.1 s chunks, once with Silero VAD and once with the numpy fallback, in the
same process; the speech gate judges every clip whole. Counted:

- `false_trigger_rate`: turns that overlap no labelled utterance, per clip.
- `missed_speech_rate`: labelled utterances that no turn overlaps, per utterance.
- `split_turns`: utterances (short pauses inside) that came out as more than one turn.
- `endpoint_delay_p50_s` / `_p90_s`: end of the utterance (from the label) to the
  frame of audio at which the turn was decided; `pause_s` is the configured pause.
- `self_interruptions`: barge-ins in the echo clips (the assistant's own voice).
- `barge_ins_detected`: of the user talking over that echo.
- `gate_false_accepts` / `gate_misses`: whole clips the speech gate let through
  without speech (would reach Whisper) or turned away with speech.
- `ms_per_frame`: voice-activity cost per 32 ms frame.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from voice_agent.audio.gate import is_speech
from voice_agent.audio.vad import SAMPLE_RATE, TurnDetector, VADConfig, VADEvent
from voice_agent.audio.voice_activity import FRAME_S, VoiceActivityModel
from voice_agent.bench.common import percentile
from voice_agent.testing.clips import Clip, clip_set

CHUNK_S = 0.1
PLAYBACK_TAIL_S = 1.5  # as the Conversation tab: speaking until this long after the reply
OVERLAP_SLACK_S = 0.2


@dataclass
class ClipResult:
    """What a detector did with one clip."""

    clip: Clip
    turns: list[VADEvent] = field(default_factory=list)  # end_of_turn events
    barge_ins: list[VADEvent] = field(default_factory=list)
    starts: list[VADEvent] = field(default_factory=list)
    gate_passed: bool = False  # the speech gate's verdict on the whole clip

    def overlapping(self, start: float, end: float) -> list[VADEvent]:
        return [
            t
            for t in self.turns
            if t.speech_start_s < end + OVERLAP_SLACK_S and t.speech_end_s > start - OVERLAP_SLACK_S
        ]

    @property
    def false_triggers(self) -> int:
        return sum(
            1
            for t in self.turns
            if not any(
                t.speech_start_s < e + OVERLAP_SLACK_S and t.speech_end_s > s - OVERLAP_SLACK_S
                for s, e in self.clip.speech
            )
        )


def run_clip(clip: Clip, model: VoiceActivityModel, pause_s: float) -> ClipResult:
    """Stream `clip` through a fresh detector in CHUNK_S chunks (echo clips: the reply
    is handed to the echo guard as played from 0 s, and the assistant counts as speaking
    until PLAYBACK_TAIL_S after it or until the user barges in)."""
    detector = TurnDetector(VADConfig(pause_s=pause_s), model=model)
    speaking_until = 0.0
    if clip.played is not None:
        detector.echo.play(clip.played, SAMPLE_RATE, at_frame=0)
        speaking_until = len(clip.played) / SAMPLE_RATE + PLAYBACK_TAIL_S
    result = ClipResult(clip)
    step = int(CHUNK_S * SAMPLE_RATE)
    for at in range(0, len(clip.audio), step):
        detector.assistant_speaking = detector.stream_s < speaking_until
        for event in detector.feed(clip.audio[at : at + step], SAMPLE_RATE):
            if event.kind == "barge_in":
                result.barge_ins.append(event)
                speaking_until = 0.0  # the reply is cut off
            elif event.kind == "speech_start":
                result.starts.append(event)
            else:
                result.turns.append(event)
    result.turns.extend(e for e in detector.flush() if e.kind == "end_of_turn")
    return result


def score(results: list[ClipResult], pause_s: float) -> dict[str, Any]:
    """The section's numbers for one detector's results."""
    utterances = [(r, s, e) for r in results for s, e in r.clip.speech]
    missed = split = 0
    delays: list[float] = []
    for r, s, e in utterances:
        turns = r.overlapping(s, e)
        if not turns:
            missed += 1
            continue
        if len(turns) > 1:
            split += 1
        if r.clip.kind != "echo_barge_in":
            delays.append(turns[-1].at_s - e)
    echo = [r for r in results if r.clip.kind == "echo"]
    barge = [r for r in results if r.clip.kind == "echo_barge_in"]
    gate_clips = [r for r in results if r.clip.played is None]
    return {
        "clips": len(results),
        "utterances": len(utterances),
        "false_triggers": sum(r.false_triggers for r in results),
        "false_trigger_rate": round(sum(r.false_triggers for r in results) / len(results), 4),
        "missed_speech_rate": round(missed / max(1, len(utterances)), 4),
        "split_turns": split,
        "pause_s": pause_s,
        "endpoint_delay_p50_s": round(percentile(delays, 50), 3),
        "endpoint_delay_p90_s": round(percentile(delays, 90), 3),
        "self_interruptions": sum(len(r.barge_ins) for r in echo),
        "echo_clips": len(echo),
        "barge_ins_detected": f"{sum(1 for r in barge if r.barge_ins)}/{len(barge)}",
        "barge_in_after_user_s": [
            round(r.barge_ins[0].at_s - r.clip.speech[0][0], 2) for r in barge if r.barge_ins
        ],
        "gate_false_accepts": sum(1 for r in gate_clips if not r.clip.has_speech and r.gate_passed),
        "gate_misses": sum(1 for r in gate_clips if r.clip.has_speech and not r.gate_passed),
        "failures": [
            r.clip.name
            for r in results
            if r.false_triggers
            or (r.clip.kind == "echo" and r.barge_ins)
            or (r.clip.kind == "echo_barge_in" and not r.barge_ins)
            or any(not r.overlapping(s, e) for s, e in r.clip.speech)
            or (r.clip.played is None and r.gate_passed != r.clip.has_speech)
        ],
    }


def evaluate(model: VoiceActivityModel, pause_s: float = 0.6) -> dict[str, Any]:
    """Run every clip through `model` (turn detector and speech gate) and score it."""
    clips = clip_set()
    t0 = time.perf_counter()
    results = [run_clip(clip, model, pause_s) for clip in clips]
    seconds = time.perf_counter() - t0
    for r in results:
        r.gate_passed = r.clip.played is None and is_speech(r.clip.audio, SAMPLE_RATE, model=model)
    frames = sum(len(c.audio) for c in clips) / SAMPLE_RATE / FRAME_S
    out = score(results, pause_s)
    out["ms_per_frame"] = round(1000 * seconds / frames, 3)
    return out


def run(quick: bool = False) -> dict[str, Any]:
    from voice_agent.audio import voice_activity
    from voice_agent.audio.numpy_vad import NumpyVAD

    silero = voice_activity.load_model("auto")
    report = voice_activity.load_report()
    rows = []
    result: dict[str, Any] = {}
    for label, model in (("silero", silero), ("numpy", NumpyVAD())):
        numbers = evaluate(model)
        result[label] = numbers
        rows.append(
            {"detector": model.name, **{k: v for k, v in numbers.items() if k != "failures"}}
        )
    result["rows"] = rows
    result["silero_loaded"] = report.summary() if report is not None else None
    result["clip_seconds"] = round(sum(c.seconds for c in clip_set()), 1)
    return result
