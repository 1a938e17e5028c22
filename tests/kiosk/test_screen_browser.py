"""GET /kiosk in a real browser (Debian's chromium driven by Playwright) on a real daemon with the kiosk inside.

A spoken turn (a `file:` recording paced like a live microphone), a typed turn and a "read the sign" turn (a
video file standing in for the camera) must each move the page through its states; a page opened mid-turn
catches up; the 800×480 layout is checked and a screenshot saved (CLAWD_KIOSK_SCREENSHOT=PATH keeps a copy, as
the README's deploy/kiosk/screenshot.png was made). The speaker is ALSA's `file` plugin (tests/asoundrc.template)
in a temporary HOME: no sound hardware exists here.
"""
from __future__ import annotations

import itertools
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge_runtime.kiosk.loop import TALK_WINDOW

from ..server.conftest import API_KEY, Daemon, start_daemon
from .test_turns import _sign_video

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
GRAMMAR = ["what is the capital of france", "thank you very much", "hello"]
LEAD_SILENCE = 10.0  # seconds before the question: the daemon is up and the page subscribed by then
TURN_TIMEOUT = 90_000  # ms
# Installed before the page's own script: records each state the page shows and each partial transcript,
# so a state that lasted a few milliseconds still counts as shown.
RECORDER = """
window.__states = []; window.__partials = [];
document.addEventListener("DOMContentLoaded", () => {
  const body = document.body, heard = document.getElementById("heard");
  const note = () => { const s = body.dataset.state;
    if (window.__states[window.__states.length - 1] !== s) window.__states.push(s); };
  note();
  new MutationObserver(note).observe(body, {attributes: true, attributeFilter: ["data-state"]});
  new MutationObserver(() => {
    if (heard.classList.contains("partial")) window.__partials.push(heard.textContent);
  }).observe(heard, {attributes: true, childList: true, subtree: true, characterData: true});
});
"""


@dataclass
class Viewing:
    daemon: Daemon
    browser: Any
    context: Any
    page: Any


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless chromium for the module (Playwright's sync API allows one driver per thread)."""
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "the kiosk screen tests need Debian's chromium (scripts/bootstrap.sh dev)"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def screen(browser: Any, smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Viewing]:
    from edge_runtime.voice.audio import SAMPLE_RATE
    from edge_runtime.voice.tts import EspeakTTS

    workdir = tmp_path_factory.mktemp("kiosk-screen")
    home = workdir / "home"
    home.mkdir()
    rc = (REPO / "tests" / "asoundrc.template").read_text(encoding="utf-8")
    (workdir / "mic.raw").write_bytes(b"")
    (home / ".asoundrc").write_text(rc.replace("IN_RAW", str(workdir / "mic.raw"))
                                    .replace("OUT_RAW", str(workdir / "speaker.raw")), encoding="utf-8")
    # README: espeak-ng en-us at 140 wpm is recognised exactly by pocketsphinx in grammar mode. The long
    # silent tail keeps the input (and so the kiosk) going for the typed and camera turns after it.
    question = EspeakTTS("en-us", rate=140).synthesize("What is the capital of France?").at_rate(SAMPLE_RATE)
    recording = workdir / "visitor.raw"
    silence = b"\0\0"
    recording.write_bytes(silence * int(LEAD_SILENCE * SAMPLE_RATE) + question.pcm + silence * 240 * SAMPLE_RATE)
    video = _sign_video(workdir / "sign.avi", "NO PARKING")
    extra: dict[str, Any] = {
        "modules": {"voice": {"input": f"file:{recording}", "language": "en", "stt": "pocketsphinx",
                              "grammar": GRAMMAR},
                    "ocr": {"camera": f"file:{video}"}},
        "kiosk": {"enabled": True, "max_tokens": 24, "realtime_input": True},
        "threads": 1,  # the recogniser has the other core (llama.cpp's spin barrier stalls when starved)
    }
    # The browser is already running (a fixture this one depends on): the page must be subscribed before the
    # recording's question begins.
    daemon = start_daemon(workdir, smollm2_path, api_key=API_KEY, extra=extra, env={"HOME": str(home)})
    context = browser.new_context(viewport={"width": 800, "height": 480}, base_url=daemon.url)
    try:
        context.add_init_script(RECORDER)
        page = context.new_page()
        page.goto(f"/kiosk?key={API_KEY}")  # sets the screen cookie and reloads as /kiosk
        yield Viewing(daemon, browser, context, page)
        # Stopped while the page still streams: an open event stream must not hold up the shutdown.
        began = time.monotonic()
        code = daemon.terminate()
        stopping = time.monotonic() - began
    finally:
        context.close()
        daemon.kill()
    assert code == 0, daemon.log()
    assert stopping < 5.0, f"{stopping:.1f} s: the drain bound (server.shutdown_timeout) was waited out"


def _states(page: Any) -> list[str]:
    return list(page.evaluate("window.__states"))


def _wait_states(page: Any, wanted: list[str], daemon: Daemon) -> list[str]:
    """Wait until the page has shown `wanted` in this order (other states may come between)."""
    deadline = time.monotonic() + TURN_TIMEOUT / 1000
    while True:
        seen = _states(page)
        position = 0
        for state in seen:
            if position < len(wanted) and state == wanted[position]:
                position += 1
        if position == len(wanted):
            return seen
        assert time.monotonic() < deadline, f"page showed {seen}, expected {wanted} in order\n{daemon.log()[-3000:]}"
        assert daemon.proc.poll() is None, daemon.log()
        page.wait_for_timeout(100)


def _text(page: Any, selector: str) -> str:
    return str(page.locator(selector).inner_text()).strip()


def test_a_spoken_turn_moves_the_page_through_every_state(screen: Viewing) -> None:
    page = screen.page
    assert page.url.endswith("/kiosk")  # the key left the address bar
    assert _states(page)[0] == "idle"
    _wait_states(page, ["listening"], screen.daemon)
    # A second viewer opened while the visitor is still speaking or the kiosk answering: it catches up.
    late = screen.context.new_page()
    late.goto("/kiosk")
    late.wait_for_function("window.__states.length > 0")
    _wait_states(page, ["listening", "thinking", "speaking", "idle"], screen.daemon)
    assert page.evaluate("window.__partials.length") >= 1  # the recogniser's hypothesis showed while speaking
    assert "what is the capital of france" in _text(page, "#heard").lower()
    answer = _text(page, "#answer")
    assert answer
    late.wait_for_function("document.body.dataset.state === 'idle'")
    assert _states(late)[1] in ("listening", "thinking", "speaking"), _states(late)  # it joined mid-turn
    assert _text(late, "#answer") == answer and _text(late, "#heard") == _text(page, "#heard")
    late.close()


def test_a_typed_turn_and_a_read_turn_update_the_page(screen: Viewing) -> None:
    page = screen.page
    page.evaluate("window.__states = [document.body.dataset.state]")
    page.fill("#question", "Name a colour.")
    page.click("#ask button")
    _wait_states(page, ["thinking", "speaking", "idle"], screen.daemon)
    assert _text(page, "#heard") == "You: Name a colour."
    typed_answer = _text(page, "#answer")
    assert typed_answer
    assert page.locator("#turns li").count() == 1  # the spoken turn moved to the earlier turns

    assert page.locator("#frame").is_hidden() and page.locator("#no-frame").is_visible()
    page.evaluate("window.__states = [document.body.dataset.state]")
    page.click("#read")
    _wait_states(page, ["thinking", "speaking", "idle"], screen.daemon)
    assert page.locator("#frame").is_visible(), (_text(page, "#answer"), screen.daemon.log()[-3000:])
    assert _text(page, "#frame-text") == "NO PARKING"
    image = page.locator("#frame image").bounding_box()
    boxes = page.locator("#frame rect")
    assert boxes.count() == 2  # one box per word
    for index in range(2):
        box = boxes.nth(index).bounding_box()
        assert box is not None and image is not None and box["width"] > 10 and box["height"] > 5
        # Each box lies on the picture, where the sign is (the middle of the frame).
        assert image["x"] <= box["x"] and box["x"] + box["width"] <= image["x"] + image["width"]
        assert image["y"] + image["height"] * 0.25 <= box["y"] <= image["y"] + image["height"] * 0.75
    assert "no parking" in _text(page, "#answer").lower()
    assert page.locator("#turns li").count() == 2


def test_layout_at_800x480_and_screenshot(screen: Viewing, tmp_path: Path) -> None:
    page = screen.page
    # Taken first: when a check below fails, the picture shows why.
    shot = tmp_path / "kiosk-800x480.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
    keep = os.environ.get("CLAWD_KIOSK_SCREENSHOT")
    if keep:
        shutil.copyfile(shot, keep)

    assert page.evaluate("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]") \
        == [800, 480]  # nothing overflows the screen
    placed: dict[str, dict[str, float]] = {}
    for selector in ("#state", "#heard", "#answer", "#frame", "#frame-text", "#turns", "#talk", "#read", "#stop",
                     "#question", "#ask button"):
        element = page.locator(selector)
        assert element.is_visible(), selector
        box = element.bounding_box()
        assert box is not None and box["width"] > 0 and box["height"] > 0, selector
        assert box["x"] >= 0 and box["y"] >= 0, (selector, box)
        assert box["x"] + box["width"] <= 800 and box["y"] + box["height"] <= 480, (selector, box)
        placed[selector] = box
    buttons = ["#talk", "#read", "#stop", "#ask button"]
    for selector in buttons:
        assert placed[selector]["height"] >= 60, selector  # a finger-sized target
        # The label fits its button (no clipped text).
        assert page.eval_on_selector(selector, "b => b.scrollWidth <= b.clientWidth"), selector
    for a, b in itertools.pairwise(buttons):
        assert placed[a]["x"] + placed[a]["width"] <= placed[b]["x"], (a, b)  # side by side, not overlapping
    assert placed["#answer"]["y"] + placed["#answer"]["height"] <= placed["#talk"]["y"]
    font = page.eval_on_selector("#answer", "a => parseFloat(getComputedStyle(a).fontSize)")
    assert font >= 24  # readable from a metre on a 7" screen

    page.emulate_media(color_scheme="dark")
    dark = page.evaluate("getComputedStyle(document.body).backgroundColor")
    page.emulate_media(color_scheme="light")
    light = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert (dark, light) == ("rgb(0, 0, 0)", "rgb(255, 255, 255)")  # prefers-color-scheme, both high contrast


def test_the_stop_and_talk_buttons(screen: Viewing) -> None:
    page = screen.page
    page.evaluate("window.__states = [document.body.dataset.state]")
    page.fill("#question", "Tell me a long story about a dragon.")
    page.click("#ask button")
    _wait_states(page, ["thinking"], screen.daemon)
    page.click("#stop")
    seen = _wait_states(page, ["thinking", "idle"], screen.daemon)
    assert "listening" not in seen  # stopped: idle, not waiting for the visitor to talk
    assert _text(page, "#answer").endswith("…(stopped)")

    page.evaluate("window.__states = [document.body.dataset.state]")
    page.click("#talk")  # push-to-talk: the kiosk shows it listens, and gives up when nobody speaks
    began = time.monotonic()
    _wait_states(page, ["idle", "listening", "idle"], screen.daemon)
    assert time.monotonic() - began >= TALK_WINDOW - 1


def test_the_screen_needs_the_key_or_its_cookie(screen: Viewing) -> None:
    url = screen.daemon.url
    with httpx.Client(base_url=url, timeout=10) as client:
        assert client.get("/kiosk").status_code == 401
        assert client.get("/kiosk/events").status_code == 401
        assert client.post("/kiosk/stop", json={}).status_code == 401
        assert client.get("/kiosk?key=wrong").status_code == 401
        keyed = client.get(f"/kiosk?key={API_KEY}")
        assert keyed.status_code == 303 and keyed.headers["location"] == "/kiosk"
        cookie = keyed.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and API_KEY not in cookie
        assert client.get("/kiosk").status_code == 200  # the cookie now opens the screen...
        assert client.get("/v1/models").status_code == 401  # ...and nothing else
        # Buttons take JSON only: a cross-site form post cannot press them.
        assert client.post("/kiosk/stop", data={"x": "1"}).status_code == 415
    with httpx.Client(base_url=url, timeout=10, headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        assert client.post("/kiosk/ask", json={"text": "  "}).status_code == 400
        with client.stream("GET", "/kiosk/events") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            lines = stream.iter_lines()
            assert next(lines) == "retry: 2000"
            assert next(lines) == ""
            assert next(lines).startswith("id: ") and next(lines) == "event: snapshot"


@pytest.fixture(scope="module")
def broken_kiosk(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A daemon whose kiosk has no microphone (it fails and retries) and whose screen is public on loopback."""
    workdir = tmp_path_factory.mktemp("kiosk-no-mic")
    extra: dict[str, Any] = {
        "modules": {"voice": {"input": "mic:no-such-microphone", "language": "en", "stt": "pocketsphinx"}},
        "kiosk": {"enabled": True, "screen_public": True},
    }
    running = start_daemon(workdir, smollm2_path, api_key=API_KEY, extra=extra)
    yield running
    assert running.terminate() == 0, running.log()


def test_a_missing_microphone_is_said_in_a_visitors_words(browser: Any, broken_kiosk: Daemon) -> None:
    page = browser.new_page(viewport={"width": 800, "height": 480}, base_url=broken_kiosk.url)
    try:
        page.goto("/kiosk")  # no key: kiosk.screen_public lets this machine's browsers in
        page.locator("#error").wait_for(state="visible", timeout=30_000)
        assert _text(page, "#error") == "The microphone is unplugged or not working."
        page.fill("#question", "Hello?")
        page.click("#ask button")  # the kiosk is not running: the visitor is told, in words
        page.wait_for_function("document.getElementById('error').textContent.includes('not ready yet')")
    finally:
        page.close()
    with httpx.Client(base_url=broken_kiosk.url, timeout=10) as client:
        assert client.get("/v1/models").status_code == 401  # screen_public opens the screen, nothing else
        failed = client.post("/kiosk/ask", json={"text": "Hello?"})
        assert failed.status_code == 503 and "not running" in failed.json()["error"]["message"]
        health = client.get("/health").json()
    assert health["kiosk"]["status"] == "failed"
