"""Helpers for the web viewer's tests: a real ``medxai view`` server process and headless Chromium.

:func:`running_viewer` starts ``python -m MedXAILib view DIR --port P`` on a free 127.0.0.1 port (its output
goes to a file, never to a pipe that could fill and stall it), waits until ``/status`` answers, and stops it
(SIGTERM, then SIGKILL) whatever happens. :func:`chromium` is Debian's browser: the tests drive it through
Playwright's ``executable_path`` and never download one; without it they fail, as Testing/Lib/test_demo.py
does. View images are read from the page: each view's ``<img>`` sits beside a label ``data-view="Red"`` (or
Yellow, Green, 3D).

(A uniquely named module rather than ``conftest``: Testing/Lib's tests import from their own conftest.)
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 90.0  # a bound on a loaded 2-core machine; the start-up target (10 s) is asserted apart
CHANGE_TIMEOUT_S = 20.0


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.fail("no headless browser: install chromium (Debian: apt-get install -y chromium; .ci/run does it)")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Viewer:
    """A running ``medxai view`` server."""

    url: str
    process: subprocess.Popen
    started: float  # time.monotonic() just before the process was started
    log: Path

    def status(self) -> dict:
        with urllib.request.urlopen(self.url + "status", timeout=10) as reply:
            return json.loads(reply.read())

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far (Linux /proc)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def running_viewer(folder: Path, log: Path, *extra: str) -> Iterator[Viewer]:
    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "MedXAI"),
                                                        os.environ.get("PYTHONPATH", "")]))
    env.pop("DISPLAY", None)  # render off screen, as on a server
    with open(log, "w") as out:
        started = time.monotonic()
        process = subprocess.Popen([sys.executable, "-m", "MedXAILib", "view", str(folder), "--port", str(port),
                                    *extra], stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    viewer = Viewer(f"http://127.0.0.1:{port}/", process, started, log)
    try:
        deadline = started + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"medxai view exited with {process.returncode}:\n{viewer.output()[-3000:]}")
            try:
                viewer.status()
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.monotonic() > deadline:
                    pytest.fail(f"medxai view did not answer within {START_TIMEOUT_S} s:\n{viewer.output()[-3000:]}")
                time.sleep(0.1)
        yield viewer
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=20)


def http_get(url: str, path: str) -> tuple[int, dict, bytes]:
    """GET `path` sent exactly as written (no client-side normalisation of ``..`` or ``%2e``)."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        connection.putrequest("GET", path, skip_accept_encoding=True)
        connection.endheaders()
        reply = connection.getresponse()
        return reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read()
    finally:
        connection.close()


def view_image(page, tag: str) -> np.ndarray:
    """The view's current picture as an (H, W, 3) uint8 array, as the page shows it."""
    from PIL import Image

    png = view_locator(page, tag).screenshot(animations="disabled")
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def view_locator(page, tag: str):
    return page.locator(f'[data-view="{tag}"]').locator("xpath=..").locator("img").first


def wait_for_image(page, tag: str, timeout_s: float = START_TIMEOUT_S) -> None:
    """Wait until the view shows a picture with content (not blank)."""
    view_locator(page, tag).wait_for(state="visible", timeout=timeout_s * 1000)
    page.wait_for_function(
        """tag => { const l = document.querySelector(`[data-view="${tag}"]`);
                    const i = l && l.parentElement.querySelector('img');
                    return i && i.complete && i.naturalWidth > 0; }""", arg=tag, timeout=timeout_s * 1000)
    deadline = time.monotonic() + timeout_s
    while view_image(page, tag).std() < 5.0:
        assert time.monotonic() < deadline, f"the {tag} view stayed blank"
        time.sleep(0.2)


def difference(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return float("inf")
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def wait_for_change(page, tag: str, before: np.ndarray, what: str, minimum: float = 0.5) -> np.ndarray:
    """Poll the view until its picture differs from `before` (mean |difference| > `minimum`)."""
    deadline = time.monotonic() + CHANGE_TIMEOUT_S
    while True:
        now = view_image(page, tag)
        if difference(now, before) > minimum:
            time.sleep(0.3)  # let the stream settle on the final picture
            return view_image(page, tag)
        assert time.monotonic() < deadline, f"{what} did not change the {tag} view"
        time.sleep(0.2)


def wait_until(condition, what: str, timeout_s: float = CHANGE_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def ras_to_view_pixel(status: dict, tag: str, ras, image: np.ndarray) -> tuple[int, int, float]:
    """Where the RAS point is in the view's picture (column, row) and its distance (mm) from the slice."""
    view = status["views"][tag]
    xy = np.linalg.solve(np.array(view["xy_to_ras"]), np.array([*ras, 1.0]))
    width, height = view["dimensions"][:2]
    scale = image.shape[1] / width
    spacing = float(np.linalg.norm(np.array(view["xy_to_ras"])[:3, 2]))
    return int(round(xy[0] * scale)), int(round((height - xy[1]) * scale)), abs(float(xy[2])) * spacing


def slider_keys(page, input_id: str, *keys: str) -> None:
    """Move a Vuetify slider with the keyboard, as a user can (its thumb has role=slider)."""
    thumb = page.locator(f"#{input_id}").locator("xpath=ancestor::div[contains(@class,'v-slider')][1]").locator(
        "[role=slider]").first
    thumb.focus()
    for key in keys:
        thumb.press(key)


def choose(page, input_id: str, option: str) -> None:
    """Pick `option` from a Vuetify select."""
    page.locator(f"#{input_id}").locator("xpath=ancestor::div[contains(@class,'v-field')][1]").click()
    page.get_by_role("option", name=option, exact=True).click()


def save_screenshot(page, path: Path, readme: Optional[Path] = None) -> None:
    """The whole page to `path`; also to `readme` when MEDXAI_README_SCREENSHOT=1 (regenerates the README's)."""
    page.screenshot(path=str(path))
    if readme is not None and os.environ.get("MEDXAI_README_SCREENSHOT") == "1":
        readme.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, readme)
