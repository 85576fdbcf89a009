"""The web page in a real headless Chromium, driven over the DevTools protocol (on a pipe: no extra package).

Upload a photo through the page's file input, read the rendered top-1 and bars, compare with the API;
open /docs and find every operation rendered (Swagger UI 4 could not read OpenAPI 3.1 and showed "Unable
to render this definition" instead).
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers import real_images, stop_process, tiny_checkpoint
from test_server import start_server

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium")
                 if p and Path(p).is_file()), None)
API_KEY = "browser-key"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")]


class DevTools:
    """Chrome DevTools protocol over --remote-debugging-pipe: NUL-terminated JSON on fds 3 (in) and 4 (out)."""

    def __init__(self, binary: str, profile: Path) -> None:
        to_chrome_r, self._out = os.pipe()
        self._in, from_chrome_w = os.pipe()

        def wire_fds() -> None:  # in the child, before exec: its fd 3 reads our commands, fd 4 writes answers
            a = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 100)
            b = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 100)
            os.dup2(a, 3)
            os.dup2(b, 4)

        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={profile}",
                 "--remote-debugging-pipe", "about:blank"]
        self.proc = subprocess.Popen([binary, *flags], close_fds=False, preexec_fn=wire_fds,  # noqa: PLW1509
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer = b""
        self._next_id = 0
        self.session: str | None = None

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            if time.monotonic() > deadline:
                raise TimeoutError("no answer from chromium")
            chunk = os.read(self._in, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, timeout: float = 30, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            message["sessionId"] = self.session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def open_page(self, url: str) -> None:
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Emulation.setDeviceMetricsOverride", width=820, height=640, deviceScaleFactor=1, mobile=False)
        self.call("Page.enable")
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete'")

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not self._holds(expression):
            if time.monotonic() > deadline:
                raise TimeoutError(f"page never reached: {expression}")
            time.sleep(0.1)

    def _holds(self, expression: str) -> bool:
        """The expression's truth; false while the page is between documents (an evaluation sent during a
        navigation is answered "Inspected target navigated or closed", a race seen once in CI)."""
        try:
            return bool(self.evaluate(f"Boolean({expression})"))
        except RuntimeError as exc:
            if "navigated or closed" in str(exc):
                return False
            raise

    def set_file(self, selector: str, path: Path) -> None:
        root = self.call("DOM.getDocument")["root"]["nodeId"]
        node = self.call("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        self.call("DOM.setFileInputFiles", nodeId=node, files=[str(path)])

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._in)
        os.close(self._out)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    checkpoint = tiny_checkpoint(tmp_path_factory.getbasetemp())
    log = tmp_path_factory.mktemp("browser-server") / "serve.log"
    proc, base = start_server(["--checkpoint", str(checkpoint), "--device", "cpu", "--api-key", API_KEY], log)
    yield base
    stop_process(proc)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[DevTools]:
    assert CHROMIUM is not None
    tools = DevTools(CHROMIUM, tmp_path / "profile")
    yield tools
    tools.close()


def test_page_upload_shows_the_api_top1(server: str, browser: DevTools, tmp_path: Path,
                                        tmp_path_factory: pytest.TempPathFactory) -> None:
    photo = real_images(tmp_path_factory.getbasetemp() / "photos")["png"]
    api = httpx.post(f"{server}/predict?top_k=5", files={"file": (photo.name, photo.read_bytes(), "image/png")},
                     headers={"X-API-Key": API_KEY}, timeout=60).json()

    browser.open_page(f"{server}/")
    browser.wait_for("document.getElementById('key-row').classList.contains('show')")  # 401 -> asks for the key
    browser.evaluate(f"document.getElementById('key').value = {json.dumps(API_KEY)}; "
                     "document.getElementById('key-save').click(); true")
    browser.wait_for("document.getElementById('model').textContent.includes('tiny')")
    browser.set_file("#file", photo)
    browser.wait_for("['done', 'error'].includes(document.body.dataset.state)")
    shown = browser.evaluate("""({
        state: document.body.dataset.state,
        status: document.getElementById('status').textContent,
        top1: document.getElementById('top1').textContent,
        rows: [...document.querySelectorAll('#results li')].map(li => ({
            label: li.querySelector('.label').textContent,
            pct: li.querySelector('.pct').textContent,
            width: li.querySelector('.fill').style.width})),
        previewLoaded: document.getElementById('preview').complete
                       && document.getElementById('preview').naturalWidth > 0,
    })""")
    shot = tmp_path / "page.png"
    browser.screenshot(shot)
    print(f"screenshot: {shot}")

    assert shown["state"] == "done", shown["status"]
    assert shown["top1"] == api["label"]
    assert [r["label"] for r in shown["rows"]] == [t["label"] for t in api["top_k"]]
    assert shown["rows"][0]["pct"] == f"{api['top_k'][0]['probability'] * 100:.1f}%"
    assert shown["previewLoaded"] and shot.stat().st_size > 5000


def test_page_shows_api_errors(server: str, browser: DevTools, tmp_path: Path) -> None:
    bad = tmp_path / "notes.png"
    bad.write_text("not an image at all")
    browser.open_page(f"{server}/")
    browser.evaluate(f"sessionStorage.setItem('imgclf-key', {json.dumps(API_KEY)}); location.reload(); true")
    browser.wait_for("document.readyState === 'complete' && document.getElementById('model').textContent.length > 3")
    browser.set_file("#file", bad)
    browser.wait_for("['done', 'error'].includes(document.body.dataset.state)")
    assert browser.evaluate("document.body.dataset.state") == "error"
    assert "415" in browser.evaluate("document.getElementById('status').textContent")


def test_docs_render_the_operations(server: str, browser: DevTools, tmp_path: Path) -> None:
    schema = httpx.get(f"{server}/openapi.json", timeout=30).json()
    assert schema["openapi"].startswith("3.1")
    browser.open_page(f"{server}/docs")
    browser.wait_for("document.querySelectorAll('.opblock').length >= 4 || "
                     "document.body.innerText.includes('Unable to render')")
    shown = browser.evaluate("""({
        text: document.body.innerText,
        operations: [...document.querySelectorAll('.opblock')].map(op =>
            op.querySelector('.opblock-summary-method').textContent + ' ' +
            op.querySelector('.opblock-summary-path').textContent.replace(/\u200b/g, '').trim()),
        version: window.versions && window.versions.swaggerUi && window.versions.swaggerUi.version,
    })""")
    browser.screenshot(tmp_path / "docs.png")
    assert "Unable to render this definition" not in shown["text"], shown["text"][:300]
    assert sorted(shown["operations"]) == sorted(f"{method.upper()} {path}" for path, ops in schema["paths"].items()
                                                 for method in ops)
    assert "POST /predict" in shown["operations"] and "Authorize" in shown["text"]  # the key scheme shows too

