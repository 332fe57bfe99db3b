"""Gradio's queue in the app: it must not wake the event loop a thousand times a second."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx

from tests.test_microphone import serve

REPO = Path(__file__).resolve().parents[1]


def test_the_queue_looks_for_work_every_20_ms_and_events_still_run(monkeypatch) -> None:
    with serve(monkeypatch) as (live, demo, _):
        import app as app_module

        assert demo._queue.sleep_when_free == app_module.QUEUE_IDLE_POLL_S == 0.02
        assert demo._queue.progress_update_sleep_when_free == 0.1
        # A queued event (a typed turn, through the official client) still starts and answers.
        from gradio_client import Client

        client = Client(live.url, verbose=False)
        answer = client.predict("Hello?", "", 0.0, 16, "", api_name="/send_text")
        assert "Sunny all day." in str(answer)
        assert httpx.get(f"{live.url}/health", timeout=10).status_code == 200


def test_a_gradio_without_the_setting_is_left_as_it_is(monkeypatch, caplog) -> None:
    monkeypatch.syspath_prepend(str(REPO))
    import app as app_module

    class Blocks:
        _queue = object()  # a release that renamed it

    with caplog.at_level(logging.WARNING, logger="voice_agent.app"):
        app_module.quiet_queue(Blocks())
    assert (
        "no sleep_when_free" in caplog.text and "no progress_update_sleep_when_free" in caplog.text
    )
    app_module.quiet_queue(object())  # no queue at all: nothing to do, no error
