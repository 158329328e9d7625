"""The listener page in headless Chromium: it loads, plays frames, and the level cap works.

Needs Debian's ``chromium`` and ``chromium-driver`` (the Makefile installs them) and
selenium; skips with a message saying what is missing otherwise.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from mimirate import write_wav

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
selenium = pytest.importorskip("selenium", reason="pip install selenium to run the page test")
if CHROMIUM is None or DRIVER is None:
    pytest.skip(
        "chromium and chromium-driver are not installed (apt-get install chromium "
        "chromium-driver); the page test needs them",
        allow_module_level=True,
    )


class ServerThread:
    """A real server on its own event loop in a thread (the browser drives it from outside)."""

    def __init__(self, config, codec) -> None:
        from mimirate.transport.server import MimirateServer

        self.server = MimirateServer(config, codec)
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.server.start())
        self.ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.server.stop())
        self.loop.close()

    def __enter__(self) -> ServerThread:
        self.thread.start()
        assert self.ready.wait(20)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(20)
        assert not self.thread.is_alive()

    def listener_caps(self) -> list[int]:
        fut = asyncio.run_coroutine_threadsafe(self._caps(), self.loop)
        return fut.result(5)

    async def _caps(self) -> list[int]:
        return [b.cap for r in self.server.rooms.values() for b in r.browsers]


@pytest.fixture
def server(tmp_path) -> Iterator[ServerThread]:
    import torch

    from mimirate import load_codec
    from mimirate.transport.server import ServerConfig

    torch.set_num_threads(1)
    codec = load_codec("tiny", random_init=True, seed=0)
    t = np.arange(48_000) / 24_000
    write_wav(tmp_path / "tone.wav", (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 24_000)
    cfg = ServerConfig(port=0, model="tiny", broadcast=str(tmp_path / "tone.wav"), adaptive=False)
    with ServerThread(cfg, codec) as s:
        yield s


@pytest.fixture
def browser() -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="mimirate-chromium-")
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--autoplay-policy=no-user-gesture-required",
        f"--user-data-dir={profile}",
    ):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(driver, script: str, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.1)
    state = driver.execute_script("return JSON.stringify(window.mimirate)")
    raise AssertionError(f"timed out waiting for {script!r}; page state: {state}")


def test_page_plays_and_level_cap_changes_what_the_server_sends(server, browser) -> None:
    port = server.server.http_port
    browser.get(f"http://127.0.0.1:{port}/?room=broadcast&autoplay=1&cap=8")
    assert "mimirate" in browser.title
    wait_for(browser, "return window.mimirate.frames >= 10")
    assert browser.execute_script("return window.mimirate.levels") == 8
    assert server.listener_caps() == [8]
    # The worklet plays what arrived.
    wait_for(browser, "return window.mimirate.played > 0.3")
    assert browser.execute_script("return window.mimirate.audio") == "running"
    # Move the slider to 3: the server now decodes and sends 3 levels.
    browser.execute_script(
        "const s = document.getElementById('cap'); s.value = 3;s.dispatchEvent(new Event('input'));"
    )
    wait_for(browser, "return window.mimirate.levels === 3")
    assert server.listener_caps() == [3]
    wait_for(browser, "const s = window.mimirate.stats; return s.length && s.at(-1).levels === 3")
    stats = browser.execute_script("return window.mimirate.stats")
    # Fewer levels, fewer bits on the wire (numbers from real packet sizes).
    eight = [s["wire_kbps"] for s in stats if s["levels"] == 8]
    three = [s["wire_kbps"] for s in stats if s["levels"] == 3]
    assert eight and three and max(three) < min(eight)
    assert browser.execute_script("return window.mimirate.errors") == []
