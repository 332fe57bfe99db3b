"""The Gradio app: Blocks build, event wiring and every handler, driven directly.

Handlers run on a real `Agent` over fake engines (`fakes.py`) for speed and
control, and once over the tiny checkpoints; `app.py`'s routing of REST and
UI paths runs through Starlette's test client.
"""

from __future__ import annotations

import re
import sys
import threading
import time
import types
import wave
from importlib.machinery import ModuleSpec
from pathlib import Path

import numpy as np
import pytest

from tests.fakes import FakeLLM, FakeTTS, MeasuringSTT, fake_models

gr = pytest.importorskip("gradio")

from voice_agent.core.cancel import CancelToken  # noqa: E402
from voice_agent.pipeline.agent import Agent  # noqa: E402
from voice_agent.ui import diagnostics as diag  # noqa: E402
from voice_agent.ui.blocks import build_ui  # noqa: E402
from voice_agent.ui.conversation import UISession, latency_line, wav_bytes  # noqa: E402
from voice_agent.ui.handlers import status_banner  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def make_app(models, snapshot=None):
    """(blocks, handlers, agent) over `models`."""
    agent = Agent(models)
    demo = build_ui(lambda: agent, models, snapshot=snapshot, pause_default=0.6, stream_audio=True)
    return demo, demo.voice_agent_handlers, agent


def controls(prompt="Be brief.", temperature=0.0, max_tokens=64, voice=""):
    return (prompt, temperature, max_tokens, voice)


def drain(gen):
    return list(gen)


def uploaded(path: Path) -> str:
    """`path` copied into Gradio's upload cache, as the page's upload does; the handlers
    accept files from there only (`voice_agent.ui.uploads`)."""
    import shutil
    import uuid

    from voice_agent.ui.uploads import upload_root

    folder = upload_root() / f"test-{uuid.uuid4().hex}"
    folder.mkdir(parents=True)
    return shutil.copy(path, folder / Path(path).name)


def speech_clip(seconds: float, rate: int = 16_000) -> np.ndarray:
    """A voiced, pitched signal the speech gates accept (harmonics of 140 Hz)."""
    t = np.arange(int(seconds * rate)) / rate
    tone = sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(1, 6))
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 3 * t)
    return (0.2 * tone * envelope).astype(np.float32)


def write_wav(path: Path, samples: np.ndarray, rate: int = 16_000) -> Path:
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return path


@pytest.fixture
def app():
    return make_app(fake_models())


def test_blocks_wire_every_control(app):
    demo, _, _ = app
    names = {fn.fn.__name__ for fn in demo.fns.values() if fn.fn is not None}
    for handler in (
        "on_load",
        "tick",
        "send_text",
        "send_audio",
        "stop",
        "clear",
        "after_turn",
        "ring",
        "allow_actions",
        "toggle_hands_free",
        "settings",
        "hands_free_turn",
        "refresh",
        "self_test",
        "transcribe",
        "speak",
        "chat",
    ):
        assert handler in names, handler
    kinds = {type(block).__name__ for block in demo.blocks.values()}
    assert {"Chatbot", "Audio", "Textbox", "DownloadButton", "BarPlot", "Dataframe"} <= kinds
    # Hands-free listens through the page's own microphone (ui.microphone), not a
    # streaming gr.Audio and its queue.
    assert not [b for b in demo.blocks.values() if isinstance(b, gr.Audio) and b.streaming]
    assert any("hands-free-mic" in str(getattr(b, "value", "")) for b in demo.blocks.values())
    # The voice plays through the page player (ui.playback), not Gradio's HLS stream; the
    # player keeps the whole reply to replay, and autoplays only what the page did not play.
    player = [b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "reply-audio"]
    assert player and not player[0].streaming and not player[0].autoplay


def test_on_load_gives_each_tab_its_own_session(app):
    _, handlers, agent = app
    first, second = handlers.on_load()[0], handlers.on_load()[0]
    assert isinstance(first, UISession) and first is not second
    assert first.session is not second.session
    assert first.session.id != second.session.id


def test_text_turn_streams_reply_audio_and_latency(app):
    _, handlers, agent = app
    ui = handlers.on_load()[0]
    steps, seen = [], []
    for step in handlers.send_text("  What's up?  ", ui, *controls()):
        steps.append(step)
        seen.append(step[0][-1]["content"])  # the chat list is updated in place
    assert steps[0][3] == "", "the text box is cleared at once"
    chat = steps[-1][0]
    assert chat[0] == {"role": "user", "content": "What's up?"}
    assert chat[1]["role"] == "assistant"
    reply_text = chat[1]["content"]
    assert "Hello there." in reply_text
    assert "first word" in reply_text and "heard in" not in reply_text
    # No page connected to this tab's audio stream: the whole reply, autoplayed, at the end.
    players = [s[1] for s in steps if isinstance(s[1], gr.Audio)]
    assert len(players) == 1 and players[0] is steps[-1][1]
    assert players[0].constructor_args["autoplay"] is True
    with wave.open(players[0].constructor_args["value"]) as w:
        assert w.getnframes() > 0
    # the reply text streamed in before the turn finished
    assert any(p.startswith("Hello") and len(p) < len(reply_text) for p in seen)
    assert ui.session.history[-1]["role"] == "assistant"
    assert agent.models.llm.calls[-1]["system_prompt"] == "Be brief."


def test_the_reply_text_goes_to_the_page_a_few_times_a_second_not_per_token():
    """Bug: every token re-sent and re-rendered the whole chat, Gradio and the browser working
    on the cores the LLM and the voice share (hands-free stalled 2-4 s on 2 cores). Guards:
    a fast reply reaches the page in a few updates (`TEXT_UPDATE_S`), each holding every word
    so far, and the last one holds the whole reply."""
    from voice_agent.ui.conversation import TEXT_UPDATE_S

    reply = " ".join(f"word{i}" for i in range(60)) + "."
    llm = FakeLLM(reply, step_s=0.01)
    _, handlers, _ = make_app(fake_models(llm=llm))
    ui = handlers.on_load()[0]
    t0 = time.perf_counter()
    shown = [
        step[0][-1]["content"]
        for step in handlers.send_text("Go on.", ui, *controls(max_tokens=256))
        if step[2] == "Answering…"
    ]
    elapsed = time.perf_counter() - t0
    assert 1 <= len(shown) <= elapsed / TEXT_UPDATE_S + 2, (len(shown), elapsed)
    assert len(shown) < 20, "not one update per token (60 tokens)"
    assert all(text.startswith("word0") for text in shown)
    assert "word59." in ui.chat[-1]["content"]


def test_settings_panel_reaches_the_engines():
    models = fake_models()
    _, handlers, _ = make_app(models)
    ui = handlers.on_load()[0]
    drain(handlers.send_text("hi", ui, *controls("Talk like a pirate.", 0.3, 32, "default")))
    call = models.llm.calls[-1]
    assert call["system_prompt"] == "Talk like a pirate."
    assert call["settings"].temperature == 0.3 and call["settings"].max_new_tokens == 32
    assert models.tts.voices_used[-1] == "default"


def test_empty_text_is_refused_without_a_turn(app):
    _, handlers, _ = app
    ui = handlers.on_load()[0]
    steps = drain(handlers.send_text("   ", ui, *controls()))
    assert len(steps) == 1 and ui.chat == [] and ui.session.history == []


def test_stop_with_nothing_running_says_so(app):
    _, handlers, _ = app
    ui = handlers.on_load()[0]
    assert handlers.stop(ui) == "Nothing is running."
    assert handlers.stop(None) == "Nothing is running."


def test_stop_cancels_the_running_turn_and_keeps_the_session():
    models = fake_models(llm=FakeLLM(wait_for_cancel=True))
    _, handlers, _ = make_app(models)
    ui = handlers.on_load()[0]
    result: list = []
    worker = threading.Thread(
        target=lambda: result.extend(handlers.send_text("Tell me a story", ui, *controls()))
    )
    worker.start()
    assert models.llm.started.wait(5)
    time.sleep(0.1)
    assert handlers.stop(ui) == "Stopping…"
    worker.join(10)
    assert not worker.is_alive()
    final = result[-1][0][-1]["content"]
    assert "stopped" in final
    assert ui.session.history[-1]["content"].endswith("…")
    models.llm.wait_for_cancel = False
    after = drain(handlers.send_text("And now?", ui, *controls()))
    assert "Hello there." in after[-1][0][-1]["content"]


def test_silence_recording_gets_a_message(app, assets_dir):
    _, handlers, _ = app
    ui = handlers.on_load()[0]
    steps = drain(handlers.send_audio(uploaded(assets_dir / "silence.wav"), ui, *controls()))
    reply = steps[-2][0][-1]["content"]
    assert "didn't hear any speech" in reply
    assert steps[-1][3] is None, "the microphone is cleared for the next recording"
    assert ui.session.history == []


def test_corrupt_upload_gets_a_message_and_the_session_goes_on(app, tmp_path):
    _, handlers, _ = app
    ui = handlers.on_load()[0]
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt garbage that is not audio" * 3)
    steps = drain(handlers.send_audio(uploaded(bad), ui, *controls()))
    reply = steps[-2][0][-1]["content"]
    assert "⚠" in reply and "Traceback" not in reply
    after = drain(handlers.send_text("Still there?", ui, *controls()))
    assert "Hello there." in after[-1][0][-1]["content"]


def test_ten_minute_recording_is_refused_with_the_limit(app, tmp_path):
    _, handlers, _ = app
    ui = handlers.on_load()[0]
    long_wav = write_wav(tmp_path / "long.wav", np.zeros(8_000 * 600, np.float32), rate=8_000)
    steps = drain(handlers.send_audio(uploaded(long_wav), ui, *controls()))
    reply = steps[-2][0][-1]["content"]
    assert "MAX_AUDIO_SECONDS" in reply or "limit" in reply
    assert ui.session.history == []


def test_spoken_turn_shows_transcript_and_heard_latency(app, assets_dir):
    _, handlers, _ = app
    ui = handlers.on_load()[0]
    clip = assets_dir / "hello.wav"
    steps = drain(handlers.send_audio(uploaded(clip), ui, *controls()))
    chat = steps[-2][0]
    assert chat[0]["content"].endswith("What is the weather like?")
    assert "heard in" in chat[1]["content"]


def test_missing_model_shows_banner_and_keeps_text_working(assets_dir):
    """A failed STT must not break the conversation: banner, message, text still answered."""
    models = fake_models(missing=("stt",))
    _, handlers, _ = make_app(models)
    html, degraded, loading = status_banner(models)
    assert degraded and not loading
    assert "Speech recognition is unavailable" in html and "Diagnostics" in html
    loaded = handlers.on_load()
    assert loaded[6].visible is True, "the Open Diagnostics button shows"
    ui = loaded[0]
    steps = drain(handlers.send_audio(uploaded(assets_dir / "hello.wav"), ui, *controls()))
    assert "Type your message instead" in steps[-2][0][-1]["content"]
    after = drain(handlers.send_text("typed", ui, *controls()))
    assert "Hello there." in after[-1][0][-1]["content"]


def test_loading_banner_shows_progress():
    class Loading:
        settings = None
        status = {"llm": "loading", "stt": "ready", "tts": "pending"}
        errors: dict = {}
        progress = {"llm": (0.4, "reading weights"), "stt": (1.0, "ready"), "tts": (0.0, "waiting")}

    html, degraded, loading = status_banner(Loading())
    assert loading and not degraded
    assert "Loading models" in html and "reading weights" in html and "width:40%" in html


def test_two_tabs_talking_at_once_share_nothing():
    models = fake_models(llm=FakeLLM(step_s=0.01))
    _, handlers, _ = make_app(models)
    tabs = [handlers.on_load()[0] for _ in range(2)]
    outputs: dict[int, list] = {}

    def talk(i: int) -> None:
        outputs[i] = drain(handlers.send_text(f"message from tab {i}", tabs[i], *controls()))

    threads = [threading.Thread(target=talk, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    for i, ui in enumerate(tabs):
        users = [m["content"] for m in ui.chat if m["role"] == "user"]
        assert users == [f"message from tab {i}"]
        assert [m["content"] for m in ui.session.history if m["role"] == "user"] == users
        assert "Hello there." in outputs[i][-1][0][-1]["content"]


def test_clear_and_transcript_download(app):
    _, handlers, _ = app
    ui = handlers.on_load()[0]
    assert handlers.transcript(ui).interactive is False
    drain(handlers.send_text("Remember this", ui, *controls()))
    update = handlers.transcript(ui)
    text = Path(update.value["path"]).read_text()
    assert "**You:** Remember this" in text and "**Assistant:** Hello there." in text
    assert "first word" in text
    fresh, chat, audio, status, download = handlers.clear(ui)
    assert chat == [] and audio is None and fresh.session.history == []
    assert fresh is not ui and download.interactive is False


def test_clear_during_a_reply_keeps_the_chat_cleared():
    """Regression: Clear pressed while a reply streamed showed an empty chat, but the stopped
    turn's last update then put the old conversation back on screen."""
    _, handlers, _ = make_app(fake_models(llm=FakeLLM(step_s=0.05)))
    ui = handlers.on_load()[0]
    shown: list[list[dict]] = []
    answering = threading.Event()

    def talk() -> None:
        for chat, *_ in handlers.send_text("Hi", ui, *controls()):
            if isinstance(chat, list):
                shown.append([dict(m) for m in chat])  # what Gradio sends at this step
                if any("Hello" in str(m["content"]) for m in chat if m["role"] == "assistant"):
                    answering.set()

    worker = threading.Thread(target=talk)
    worker.start()
    assert answering.wait(10)
    fresh, chat, *_ = handlers.clear(ui)
    worker.join(20)
    assert chat == [] and fresh.chat == []
    assert shown[-1] == [], shown[-1]


def hear(handlers, chunk, ui, pause, *panel):
    """One post of the page's microphone (`Handlers.hear`), with the settings the page's
    panel last sent when given; as (status, utterance, barge-in number), a dict where none.
    Without `panel` the tab holds no settings (`on_load` gives it the panel's first values),
    so the page's trigger runs the turn (`hands_free_turn`), as on ZeroGPU."""
    if not panel:
        ui.controls = None
    handlers.settings(ui, pause, *panel)
    reply = handlers.hear(ui, chunk)
    utterance = reply["utterance"] if reply["utterance"] is not None else {}
    return reply["status"], utterance, ui.interrupt_seq if reply["interrupted"] else {}


def test_hands_free_ends_the_turn_after_a_pause_and_answers(app, assets_dir):
    import soundfile as sf

    _, handlers, _ = app
    ui = handlers.on_load()[0]
    samples, rate = sf.read(assets_dir / "speech_pause_speech.wav", dtype="int16")
    triggers = []
    step = rate // 4  # 250 ms chunks, as the browser streams them
    tail = np.zeros(rate, dtype=np.int16)
    for start in range(0, len(samples) + len(tail), step):
        chunk = np.concatenate((samples, tail))[start : start + step]
        status, trigger, _ = hear(handlers, (rate, chunk), ui, 0.6)
        if not isinstance(trigger, dict):
            triggers.append(trigger)
    # speech, a 1.2 s pause, speech: the 0.6 s pause length splits it into two turns
    assert triggers == [1, 2]
    steps = drain(handlers.hands_free_turn(ui, *controls()))
    assert "Hello there." in steps[-1][0][-1]["content"]
    assert ui.utterances == [] and ui.session.history


def test_the_first_hands_free_turn_after_clear_is_answered(app, assets_dir):
    """Bug: Clear started the tab's utterance count again from 0, so the first utterance after
    it set the page's hidden trigger to a value it already had; Gradio fired no change and
    that turn was never answered (the voice bench's hands-free turns timed out)."""
    import soundfile as sf

    _, handlers, _ = app
    ui = handlers.on_load()[0]
    samples, rate = sf.read(assets_dir / "hello.wav", dtype="int16")
    audio = np.concatenate((samples, np.zeros(rate, dtype=np.int16)))
    step = rate // 4

    def speak(ui):
        fired = []
        for start in range(0, len(audio), step):
            _, trigger, _ = hear(handlers, (rate, audio[start : start + step]), ui, 0.6)
            if not isinstance(trigger, dict):
                fired.append(trigger)
        return fired

    shown = speak(ui)  # the trigger's value on the page now
    assert len(shown) == 1
    drain(handlers.hands_free_turn(ui, *controls()))
    ui = handlers.clear(ui)[0]
    after = speak(ui)
    assert len(after) == 1 and after[0] != shown[-1], "a value the trigger has fires nothing"
    steps = drain(handlers.hands_free_turn(ui, *controls()))
    assert steps and ui.session.history, "the turn after Clear was answered"


def test_speaking_over_the_reply_interrupts_it(app):
    _, handlers, _ = app
    ui = handlers.on_load()[0]
    from voice_agent.core.cancel import CancelToken

    running = CancelToken()
    ui.cancel = running  # a reply is being spoken
    voice = (np.clip(speech_clip(1.5, 48_000), -1, 1) * 32767).astype(np.int16)
    silence = np.zeros(48_000, np.int16)
    interrupts = []
    for start in range(0, len(silence) + len(voice), 12_000):
        chunk = np.concatenate((silence, voice))[start : start + 12_000]
        _, _, interrupt = hear(handlers, (48_000, chunk), ui, 0.6)
        if not isinstance(interrupt, dict):
            interrupts.append(interrupt)
    assert running.cancelled and running.reason == "barge-in"
    assert interrupts == [1]


def talk(
    handlers,
    ui,
    samples: np.ndarray,
    rate: int,
    pause: float = 0.6,
    tail_s: float = 1.0,
    panel: tuple | None = None,
):
    """Stream `samples` (int16) and `tail_s` of silence to `hear` in 250 ms chunks, as the
    browser does (with the settings `panel`'s values when given, as the page sends them);
    returns the turn triggers it gave."""
    audio = np.concatenate((samples, np.zeros(int(tail_s * rate), dtype=np.int16)))
    triggers = []
    step = rate // 4
    for start in range(0, len(audio), step):
        _, trigger, _ = hear(
            handlers, (rate, audio[start : start + step]), ui, pause, *(panel or ())
        )
        if not isinstance(trigger, dict):
            triggers.append(trigger)
    return triggers


def settled(early, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not early.done:
        assert time.monotonic() < deadline, "the early transcription never finished"
        time.sleep(0.01)
    return early


def last_user_words(ui: UISession) -> str:
    return [m["content"] for m in ui.chat if m["role"] == "user"][-1]


def test_hands_free_turn_uses_the_words_heard_at_the_pause(assets_dir):
    """The lever of issue #14: the words are transcribed during the pause that ends the
    turn, so the turn does not transcribe them again."""
    import soundfile as sf

    stt = MeasuringSTT()
    _, handlers, _ = make_app(fake_models(stt=stt))
    ui = handlers.on_load()[0]
    samples, rate = sf.read(assets_dir / "hello.wav", dtype="int16")
    assert talk(handlers, ui, samples, rate) == [1]
    early = settled(ui.early_queued)
    heard = sum(len(u) for u in ui.utterances)
    before = stt.calls
    # Heard at the pause: the turn's very audio (what followed the words kept at a breath).
    rest = heard - round(early.reused_s * 16_000)
    assert stt.heard[-1] == rest
    drain(handlers.hands_free_turn(ui, *controls()))
    assert stt.calls == before, "the turn transcribed its audio again"
    assert last_user_words(ui).endswith(f"heard {rest} samples")
    assert "heard in" in ui.chat[-1]["content"]
    assert ui.early_queued is None and early.discarded  # used once, then nothing may take it


def test_hands_free_words_after_a_short_pause_make_the_turn_hear_them_all(assets_dir):
    import soundfile as sf

    stt = MeasuringSTT()
    _, handlers, _ = make_app(fake_models(stt=stt))
    ui = handlers.on_load()[0]
    samples, rate = sf.read(assets_dir / "speech_pause_speech.wav", dtype="int16")
    # A 2 s pause setting keeps the 1.2 s gap inside one turn; short pauses come before it.
    assert talk(handlers, ui, samples, rate, pause=2.0, tail_s=2.5) == [1]
    heard = sum(len(u) for u in ui.utterances)
    assert min(stt.heard) < heard  # a guess was made on the words before the gap
    drain(handlers.hands_free_turn(ui, *controls()))
    # All of it, as stretches: the words before the gap were kept, the rest heard after.
    stretches = [int(n) for n in re.findall(r"heard (\d+) samples", last_user_words(ui))]
    assert sum(stretches) == heard and len(stretches) >= 2, stretches


def test_words_before_a_pause_the_user_spoke_on_after_are_read_by_the_llm(assets_dir):
    """The user paused and went on: the words before the pause are prefilled into the
    LLM's prompt cache while they talk (`Agent.read_ahead`), as the start of the message
    the turn then sends."""
    import soundfile as sf

    stt = MeasuringSTT()
    llm = FakeLLM("Sure.")
    llm.reuse_prompt_cache = True  # an engine that keeps its KV cache
    _, handlers, _ = make_app(fake_models(llm=llm, stt=stt))
    ui = handlers.on_load()[0]
    samples, rate = sf.read(assets_dir / "speech_pause_speech.wav", dtype="int16")
    panel = controls()
    assert talk(handlers, ui, samples, rate, pause=2.0, tail_s=2.5, panel=panel) == [1]

    def reads() -> list[dict]:
        return [c for c in llm.calls if c["settings"].max_new_tokens == 1]

    wait_for(reads)
    first = f"heard {stt.heard[0]} samples"  # the words before the 1.2 s gap
    read = reads()[0]
    assert read["messages"][-1] == {"role": "user", "content": first}
    assert read["system_prompt"] == "Be brief."  # the panel's, as the turn's
    drain(handlers.hands_free_turn(ui, *panel))
    turn = [c for c in llm.calls if c["settings"].max_new_tokens != 1][-1]
    said = turn["messages"][-1]["content"]
    assert said.startswith(first + " heard") and last_user_words(ui).endswith(said)

    # A page that sent no settings: the session may not be the turn's, so nothing is read.
    llm.calls.clear()
    ui = handlers.on_load()[0]
    assert talk(handlers, ui, samples, rate, pause=2.0, tail_s=2.5) == [1]
    drain(handlers.hands_free_turn(ui, *panel))
    assert llm.calls and reads() == []


def test_a_barged_in_hands_free_turn_leaves_no_early_words(assets_dir):
    """Speaking over a turn that still waits for its early words ends it at once; the guess
    is discarded, its engine work frees the gate, and no later turn is given it."""
    import soundfile as sf

    hold = threading.Event()
    stt = MeasuringSTT(hold=hold)
    models = fake_models(stt=stt)
    _, handlers, _ = make_app(models)
    ui = handlers.on_load()[0]
    samples, rate = sf.read(assets_dir / "hello.wav", dtype="int16")
    try:
        assert talk(handlers, ui, samples, rate) == [1]
        early = ui.early_queued
        assert early is not None and stt.started.wait(5)
        worker = threading.Thread(target=lambda: drain(handlers.hands_free_turn(ui, *controls())))
        worker.start()
        deadline = time.monotonic() + 5
        while not ui.busy:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        interrupts = []
        for start in range(0, rate * 3 // 4, rate // 4):  # the user starts talking again
            _, _, interrupt = hear(handlers, (rate, samples[start : start + rate // 4]), ui, 0.6)
            if not isinstance(interrupt, dict):
                interrupts.append(interrupt)
        assert interrupts == [1]
        worker.join(5)
        assert not worker.is_alive(), "the turn kept waiting for its early words"
        assert early.discarded and early not in (ui.early, ui.early_queued)
        assert "interrupted" in ui.chat[-1]["content"]
    finally:
        hold.set()
    settled(early)
    assert models.gates["stt"].admitted == 0


def test_hands_free_speech_queued_twice_is_heard_whole(assets_dir):
    """Two utterances that end before their turn starts are heard joined: no guess heard
    that audio, so the turn transcribes it all."""
    import soundfile as sf

    stt = MeasuringSTT()
    _, handlers, _ = make_app(fake_models(stt=stt))
    ui = handlers.on_load()[0]
    samples, rate = sf.read(assets_dir / "speech_pause_speech.wav", dtype="int16")
    assert talk(handlers, ui, samples, rate) == [1, 2]
    assert ui.early_queued is None
    heard = sum(len(u) for u in ui.utterances)
    drain(handlers.hands_free_turn(ui, *controls()))
    assert stt.heard.count(heard) == 1  # by the turn (guesses heard one utterance each)
    assert last_user_words(ui).endswith(f"heard {heard} samples")


def test_the_microphone_stopped_after_a_pause_still_uses_the_early_words(assets_dir):
    import soundfile as sf

    stt = MeasuringSTT()
    _, handlers, _ = make_app(fake_models(stt=stt))
    ui = handlers.on_load()[0]
    samples, rate = sf.read(assets_dir / "hello.wav", dtype="int16")
    assert talk(handlers, ui, samples, rate, tail_s=0.0) == []  # paused, turn not ended
    settled(ui.early)
    reply = handlers.hear(ui, (rate, np.zeros(0, np.int16)), end=True)  # the mic stopped
    assert reply["utterance"] == 1 and ui.early_queued is not None
    assert reply["status"] == "Microphone off."
    assert time.perf_counter() - ui.speech_ended_at < 5
    before = stt.calls
    drain(handlers.hands_free_turn(ui, *controls()))
    assert stt.calls == before
    assert last_user_words(ui).endswith(f"heard {stt.heard[-1]} samples")


def test_speaking_on_after_a_short_pause_discards_its_guess(assets_dir):
    """hello.wav has a 0.39 s breath after its first words: a guess starts there, and the
    words that follow make it useless (discarded at once, not at the end of the turn)."""
    import soundfile as sf

    _, handlers, _ = make_app(fake_models(stt=MeasuringSTT()))
    ui = handlers.on_load()[0]
    samples, rate = sf.read(assets_dir / "hello.wav", dtype="int16")
    talk(handlers, ui, samples[: rate * 5 // 4], rate, tail_s=0.0)  # up to the breath's end
    early = ui.early
    assert early is not None and early.discarded


def test_switching_hands_free_off_discards_the_early_words(assets_dir):
    import soundfile as sf

    _, handlers, _ = make_app(fake_models(stt=MeasuringSTT()))
    ui = handlers.on_load()[0]
    samples, rate = sf.read(assets_dir / "hello.wav", dtype="int16")
    assert talk(handlers, ui, samples, rate, tail_s=0.0) == []  # paused, turn not ended
    early = ui.early
    assert early is not None
    handlers.toggle_hands_free(False, ui)
    assert ui.early is None and early.discarded


def wait_for(check, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_hands_free_answers_with_the_turn_started_at_the_pause(assets_dir):
    """The lever of issue #14 for hands-free: at the short pause the whole turn starts
    (words, reply, voice); the end of the pause confirms it, and the page's turn reads it
    instead of starting again. It reaches the speaker only then."""
    import soundfile as sf

    stt = MeasuringSTT()
    llm = FakeLLM("It is sunny.")
    _, handlers, agent = make_app(fake_models(llm=llm, stt=stt))
    ui = handlers.on_load()[0]
    samples, rate = sf.read(assets_dir / "hello.wav", dtype="int16")
    assert talk(handlers, ui, samples, rate, tail_s=0.0, panel=controls()) == []  # paused
    ahead = ui.ahead
    assert ahead is not None and not ahead.confirmed.is_set()
    early = settled(ui.early)
    words = early.result(ahead.samples, CancelToken()).text  # the words at the pause

    def calls_for_these_words() -> int:
        # A guess at hello.wav's breath may have reached the LLM too before it was dropped.
        return sum(c["messages"][-1]["content"] == words for c in llm.calls)

    wait_for(calls_for_these_words)  # the reply started before the user's turn ended
    assert ui.chat == [] and not ui.played_live  # nothing shown or played yet
    heard_before = stt.calls
    silence = np.zeros(rate, dtype=np.int16)
    assert talk(handlers, ui, silence, rate, tail_s=0.0, panel=controls()) == [1]
    assert ahead.confirmed.is_set() and ui.ahead is None  # the turn took it at once
    drain(handlers.hands_free_turn(ui, *controls()))
    assert calls_for_these_words() == 1 and stt.calls == heard_before, "started again"
    assert llm.calls[-1]["system_prompt"] == "Be brief."  # the panel's settings
    assert last_user_words(ui).endswith(words)
    assert "It is sunny." in ui.chat[-1]["content"]
    assert [m["role"] for m in ui.session.history] == ["user", "assistant"]
    assert agent.recent_timings()["turns"][-1]["ahead"] is True
    assert ui.ahead_queued is None and ui.ahead is None


def test_a_hands_free_turn_starts_on_the_server_when_the_user_is_done(assets_dir):
    """The page's trigger comes back later (a round trip through Gradio's queue); the turn
    and its voice do not wait for it. The page's turn then shows what was done."""
    import soundfile as sf

    from tests.test_playback import Reader

    llm = FakeLLM("Right away.")
    demo, handlers, _ = make_app(fake_models(llm=llm, stt=MeasuringSTT()))
    ui = handlers.on_load()[0]
    page = Reader(ui.audio)  # the page listens to the tab's audio stream
    samples, rate = sf.read(assets_dir / "hello.wav", dtype="int16")
    assert talk(handlers, ui, samples, rate, panel=controls()) == [1]
    (feed,) = ui.feeds
    wait_for(lambda: feed.done)  # answered and spoken before the page asked
    assert [m["role"] for m in ui.session.history] == ["user", "assistant"]
    assert ui.played_live and "audio" in page.kinds()  # the voice went to the page
    steps = drain(handlers.hands_free_turn(ui, *controls()))
    assert "Right away." in steps[-1][0][-1]["content"] and steps[-1][2] == "Ready"
    said = [c["messages"][-1]["content"] for c in llm.calls]
    assert ui.feeds == [] and said.count(ui.session.history[0]["content"]) == 1
    demo.voice_agent_conversation.close(ui)
    assert page.done.wait(5)


def test_leaving_the_page_stops_a_turn_the_server_started(assets_dir):
    import soundfile as sf

    llm = FakeLLM("one two three four five six seven eight nine ten", step_s=0.05)
    _, handlers, _ = make_app(fake_models(llm=llm, stt=MeasuringSTT()))
    ui = handlers.on_load()[0]
    samples, rate = sf.read(assets_dir / "hello.wav", dtype="int16")
    assert talk(handlers, ui, samples, rate, panel=controls()) == [1]
    (feed,) = ui.feeds
    shown = handlers.hands_free_turn(ui, *controls())
    next(shown)
    shown.close()  # Gradio closes the handler: the page went away
    wait_for(lambda: feed.done)
    assert llm.cancelled and "…" in ui.session.history[-1]["content"]


class SlowTTS(FakeTTS):
    """Every phrase takes 1 s and cannot be interrupted (a CPU voice mid-phrase)."""

    def stream(self, text, voice=None, cancel=None, *, phrasing=None):
        for chunk in super().stream(text, voice, None, phrasing=phrasing):
            time.sleep(1.0)
            yield chunk


@pytest.mark.parametrize("leave", ["clear", "close"])
def test_a_turn_waiting_for_the_one_before_does_not_run_after_clear_or_close(leave, assets_dir):
    """Barge-in cancels turn 1, which winds down inside a phrase; the new words' turn waits
    for it. Clear (or closing the tab) then cancels that waiting turn too: no answer to a
    conversation the user cleared or left."""
    from types import SimpleNamespace

    from voice_agent.audio.io import load_audio
    from voice_agent.ui.conversation import TurnControls

    llm = FakeLLM("One. Two. Three.", step_s=0.01)
    demo, handlers, _ = make_app(fake_models(llm=llm, stt=MeasuringSTT(), tts=SlowTTS()))
    conversation = demo.voice_agent_conversation
    ui = handlers.on_load()[0]
    ui.controls = TurnControls("Be brief.", 0.0, 64, "")
    words = load_audio(assets_dir / "hello.wav")
    conversation.queue_utterance(ui, SimpleNamespace(audio=words, silence_s=0.6))
    wait_for(lambda: ui.busy and len(llm.calls) == 1)
    time.sleep(0.2)  # turn 1 is inside a 1 s phrase
    ui.cancel.cancel("barge-in")
    conversation.queue_utterance(ui, SimpleNamespace(audio=words[:-160], silence_s=0.6))
    first, second = ui.feeds
    if leave == "clear":
        conversation.clear(ui)
    else:
        conversation.close(ui)
    wait_for(lambda: first.done and second.done, timeout=15)
    assert len(llm.calls) == 1, "a turn started after the user cleared or left"


def test_changed_settings_keep_the_words_heard_at_the_pause(assets_dir):
    """The turn started ahead is dropped, not the words it heard: the fresh turn uses them."""
    import soundfile as sf

    stt = MeasuringSTT()
    llm = FakeLLM("Fine.")
    _, handlers, _ = make_app(fake_models(llm=llm, stt=stt))
    ui = handlers.on_load()[0]
    samples, rate = sf.read(assets_dir / "hello.wav", dtype="int16")
    talk(handlers, ui, samples, rate, tail_s=0.0, panel=controls())
    wait_for(lambda: llm.calls)
    settled(ui.early)  # the words of the whole utterance, heard at its pause
    before = stt.calls
    silence = np.zeros(rate, dtype=np.int16)
    changed = controls(prompt="Be formal.")
    assert talk(handlers, ui, silence, rate, tail_s=0.0, panel=changed) == [1]
    drain(handlers.hands_free_turn(ui, *changed))
    assert stt.calls == before, "the words were transcribed again"
    assert llm.calls[-1]["system_prompt"] == "Be formal."


def test_words_after_a_short_pause_drop_the_turn_started_there(assets_dir):
    """speech_pause_speech.wav: a turn starts in its 1.6 s gap; the words after it discard
    that turn (nothing of it is kept), and the turn that answers heard everything."""
    import soundfile as sf

    stt = MeasuringSTT()
    llm = FakeLLM("Noted.", step_s=0.01)
    _, handlers, agent = make_app(fake_models(llm=llm, stt=stt))
    ui = handlers.on_load()[0]
    samples, rate = sf.read(assets_dir / "speech_pause_speech.wav", dtype="int16")
    gap_end = int(rate * 4.0)  # inside the 3.1-4.7 s gap, after its short pause
    talk(handlers, ui, samples[:gap_end], rate, pause=2.0, tail_s=0.0, panel=controls())
    first = ui.ahead
    assert first is not None
    wait_for(lambda: llm.calls)
    assert talk(handlers, ui, samples[gap_end:], rate, pause=2.0, tail_s=2.5, panel=controls()) == [
        1
    ]
    assert first.discarded
    drain(handlers.hands_free_turn(ui, *controls()))
    wait_for(lambda: first.done)
    heard = len(first.samples)
    user_turns = [m for m in ui.session.history if m["role"] == "user"]
    assert len(user_turns) == 1 and ui.session.turns == 1
    assert user_turns[0]["content"] != f"heard {heard} samples"  # not the discarded guess
    assert last_user_words(ui).endswith(user_turns[0]["content"])
    assert agent.recent_timings()["count"] == 1


def test_changed_settings_make_the_turn_start_afresh(assets_dir):
    import soundfile as sf

    llm = FakeLLM("Fine.")
    _, handlers, _ = make_app(fake_models(llm=llm, stt=MeasuringSTT()))
    ui = handlers.on_load()[0]
    samples, rate = sf.read(assets_dir / "hello.wav", dtype="int16")
    assert talk(handlers, ui, samples, rate, tail_s=0.0, panel=controls()) == []  # paused
    ahead = ui.ahead
    wait_for(lambda: llm.calls)
    silence = np.zeros(rate, dtype=np.int16)  # the settings change before the turn ends
    assert talk(handlers, ui, silence, rate, tail_s=0.0, panel=controls(prompt="Be formal.")) == [1]
    drain(handlers.hands_free_turn(ui, *controls(prompt="Be formal.")))
    assert ahead.discarded
    assert [c["system_prompt"] for c in llm.calls][-1] == "Be formal."
    assert len([m for m in ui.session.history if m["role"] == "user"]) == 1


def test_a_typed_message_drops_the_turn_started_at_a_pause(assets_dir):
    import soundfile as sf

    llm = FakeLLM("Sure.")
    _, handlers, _ = make_app(fake_models(llm=llm, stt=MeasuringSTT()))
    ui = handlers.on_load()[0]
    samples, rate = sf.read(assets_dir / "hello.wav", dtype="int16")
    talk(handlers, ui, samples, rate, tail_s=0.0, panel=controls())  # paused, not ended
    ahead = ui.ahead
    assert ahead is not None
    drain(handlers.send_text("Never mind.", ui, *controls()))
    assert ahead.discarded and ui.ahead is None
    assert [m["content"] for m in ui.session.history if m["role"] == "user"] == ["Never mind."]


def test_hands_free_chunk_errors_do_not_end_the_stream(app):
    _, handlers, _ = app
    ui = handlers.on_load()[0]
    status, _, _ = hear(handlers, (0, np.zeros(10, np.int16)), ui, 0.6)
    assert "Could not read" in status
    status, _, _ = hear(handlers, (16_000, np.zeros(4_000, np.int16)), ui, 0.6)
    assert "Listening" in status


def test_diagnostics_render_the_snapshot_and_turns(app):
    _, handlers, agent = app
    ui = handlers.on_load()[0]
    drain(handlers.send_text("one", ui, *controls()))
    drain(handlers.send_text("two", ui, *controls()))
    overview, models_html, tools_html, summary, chart, table, env, raw = handlers.refresh()
    assert "RAM" in overview and "Offline" in overview
    assert "<code>calculate</code>" in tools_html and "built-in" in tools_html
    assert "Language model" in models_html and "<code>fake</code>" in models_html
    assert "bitsandbytes probe" in env and "LOCAL_MODELS_DIR" in env
    assert "2 recent turns" in summary and "median" in summary
    assert [row[0] for row in table] == ["1", "2", "median", "p90"]
    assert set(chart["stage"]) == {"hearing", "thinking", "voicing"}
    assert raw["models"]["llm"]["status"] == "ready"


def test_diagnostics_show_each_failed_attempt_with_its_reason():
    snap = {
        "ok": False,
        "models": {
            "llm": {
                "status": "failed",
                "configured": "org/model",
                "error": "every strategy failed",
                "report": {
                    "model_ref": "org/model",
                    "chosen": None,
                    "attempts": [
                        {
                            "strategy": "cuda-4bit",
                            "device": "cuda",
                            "dtype": "float16",
                            "quantization": "nf4",
                            "outcome": "skipped",
                            "reason": "needs 5.6 GiB, 3.1 GiB free",
                        },
                        {
                            "strategy": "cpu",
                            "device": "cpu",
                            "dtype": "float32",
                            "quantization": None,
                            "outcome": "failed",
                            "seconds": 1.5,
                            "error_type": "OSError",
                            "error": "<bad> file",
                            "reason": "a file the model needs is missing",
                        },
                    ],
                },
            }
        },
    }
    html = diag.render_models(snap)
    assert "needs 5.6 GiB, 3.1 GiB free" in html and "nf4" in html
    assert "OSError: &lt;bad&gt; file" in html, "outside text is escaped"
    assert "every strategy failed" in html


def test_self_test_reports_each_stage(app):
    _, handlers, _ = app
    steps = list(handlers.self_test())
    assert "Running" in steps[0][0]
    headline, rows = steps[-1]
    assert [r[0] for r in rows] == ["stt", "llm", "tts", "pipeline"]
    assert all(r[1] in ("✓ ok", "✗ failed") for r in rows)
    assert "stages" in headline


def test_snapshot_failure_is_shown_not_raised():
    def broken():
        raise RuntimeError("probe exploded")

    _, handlers, _ = make_app(fake_models(), snapshot=broken)
    overview = handlers.refresh()[0]
    assert "probe exploded" in overview


def test_helpers():
    class T:
        transcript_ready, first_token, first_audio = 0.41, 0.93, 1.27

    assert latency_line(T(), spoken=True) == "heard in 0.4 s · first word 0.9 s · speaking at 1.3 s"
    assert latency_line(T(), spoken=False) == "first word 0.9 s · speaking at 1.3 s"
    data = wav_bytes(24_000, np.zeros(240, np.float32))
    with wave.open(__import__("io").BytesIO(data)) as w:
        assert (w.getframerate(), w.getsampwidth(), w.getnframes()) == (24_000, 2, 240)


# --- app.py ----------------------------------------------------------------------------------


@pytest.fixture
def app_module(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))
    import app as app_module

    return app_module


def test_app_serves_rest_and_ui_on_one_port(app_module):
    from starlette.testclient import TestClient

    from voice_agent.core.config import get_settings

    models = fake_models()
    demo, _, _ = make_app(models)
    asgi = app_module.build_app(models, get_settings(), demo)
    with TestClient(asgi) as client:
        health = client.get("/health")
        assert health.headers["content-type"].startswith("application/json")
        assert "models" in health.json()
        assert client.get("/v1/models").status_code == 200
        page = client.get("/")
        assert page.status_code == 200 and "gradio" in page.text.lower()
        assert client.get("/config").status_code == 200


def test_host_defaults(app_module, monkeypatch):
    from voice_agent.core.config import load_settings

    settings = load_settings({})
    assert app_module.resolve_host(None, settings, {}) == "127.0.0.1"
    assert app_module.resolve_host(None, settings, {"SPACE_ID": "me/space"}) == "0.0.0.0"
    custom = load_settings({"GRADIO_SERVER_NAME": "10.0.0.5"})
    assert app_module.resolve_host(None, custom, {"GRADIO_SERVER_NAME": "10.0.0.5"}) == "10.0.0.5"
    assert app_module.resolve_host("::1", settings, {"SPACE_ID": "x"}) == "::1"
    args = app_module.parse_args(["--port", "7999", "--share"])
    assert args.port == 7999 and args.share and args.host is None
    assert app_module.parse_args([]).share is False


def test_zero_gpu_shim(monkeypatch):
    from voice_agent.core import spaces as spaces_compat

    def work(x):
        return x + 1

    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    assert spaces_compat.gpu(work) is work
    calls = []
    fake = types.ModuleType("spaces")
    fake.__spec__ = ModuleSpec("spaces", None)

    def GPU(duration):  # noqa: N802 - the real decorator's name
        def wrap(fn):
            calls.append(duration)
            return lambda *a: fn(*a) * 10

        return wrap

    fake.GPU = GPU
    monkeypatch.setitem(sys.modules, "spaces", fake)
    assert spaces_compat.gpu(work) is work, "without SPACES_ZERO_GPU nothing changes"
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    assert spaces_compat.on_zero_gpu()
    assert spaces_compat.gpu(duration=30)(work)(1) == 20 and calls == [30]


# --- tiny checkpoints --------------------------------------------------------------------------


def test_text_turn_on_tiny_checkpoints(tiny_env):
    """The whole UI path on the real engines (random weights: any reply text will do)."""
    from voice_agent.pipeline.models import LoadedModels

    models = LoadedModels(tiny_env, warmup=False).load_all()
    assert models.ready(), models.errors
    _, handlers, _ = make_app(models)
    ui = handlers.on_load()[0]
    steps = drain(handlers.send_text("Hello", ui, *controls(max_tokens=8)))
    final = steps[-1][0][-1]["content"]
    assert "first word" in final
    assert isinstance(steps[-1][1], gr.Audio), "the tiny VITS voice speaks"


def test_without_the_page_player_the_whole_reply_plays_at_the_end():
    """stream_audio=False: no audio channel; the turn still speaks, the whole reply at once."""
    agent = Agent(fake_models())
    demo = build_ui(lambda: agent, agent.models, pause_default=0.6, stream_audio=False)
    handlers = demo.voice_agent_handlers
    player = [b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "reply-audio"]
    assert player and not player[0].streaming and player[0].autoplay
    ui = handlers.on_load()[0]
    assert ui.audio is None
    steps = drain(handlers.send_text("hi", ui, *controls()))
    assert all(not isinstance(s[1], gr.Audio) for s in steps[:-1])
    with wave.open(steps[-1][1].constructor_args["value"]) as w:
        assert w.getnframes() > 0 and w.getframerate() == 16_000


def test_a_slow_page_gets_the_latest_update_of_a_turn_the_server_runs():
    """Updates that piled up while the page was busy reach it as one (each costs a chat
    render on the server and in the page); the last one, with the reply's file, always."""
    from voice_agent.core.cancel import CancelToken
    from voice_agent.ui.conversation import TurnFeed

    chat: list = []

    def turn():
        for k in range(10):
            chat.append(k)
            yield chat, None, f"step {k}"
        yield chat, "reply.wav", "Ready"

    feed = TurnFeed(CancelToken(), turn())
    wait_for(lambda: feed.done)
    assert list(feed.updates()) == [(chat, "reply.wav", "Ready")]
