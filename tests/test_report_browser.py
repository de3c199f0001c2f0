"""The HTML report in a real browser: headless Chromium renders it, every <img> loads
(naturalWidth > 0) and the console stays free of errors.

Chromium is driven through the DevTools protocol over a pipe (``--remote-debugging-pipe``: JSON
messages ended by NUL on file descriptors 3 and 4), so no websocket client is needed.  CI
installs Debian's ``chromium`` package (``.ci/run``); the tests skip, saying why, only where it
is not installed.  A negative control (a page with a broken image, a console.error and an
uncaught exception) proves the checks can fail.
"""

from __future__ import annotations

import base64
import io
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from conftest import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-extensions", "--mute-audio", "--hide-scrollbars"]
TIMEOUT_S = 60.0


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install -y chromium; .ci/run installs "
                    "it where apt-get can), so the report cannot be checked in a browser here")
    return path


class Browser:
    """A headless Chromium and one DevTools session on a page of its own.

    ``call(method, **params)`` sends a command and returns its result; every event that arrives
    meanwhile is kept in ``events`` (method, params).
    """

    def __init__(self, binary: str, profile: Path) -> None:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def fds() -> None:  # in the child: Chromium reads commands on fd 3 and writes on fd 4
            os.dup2(to_browser_r, 3)
            os.dup2(from_browser_w, 4)

        self.proc = subprocess.Popen(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe",
             "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            preexec_fn=fds, pass_fds=(3, 4))
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[tuple[str, dict]] = []
        self.session: str | None = None
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._from_browser], [], [], max(left, 0))
            if not ready:
                raise TimeoutError("no answer from Chromium")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.poll() is not None else ""
                raise RuntimeError(f"Chromium closed the DevTools pipe: {err[-2000:]}")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, **params) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if self.session is not None:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append((reply["method"], reply.get("params", {})))

    def wait_for(self, event: str) -> dict:
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            for name, params in self.events:
                if name == event:
                    return params
            reply = self._read(deadline)
            if "method" in reply:
                self.events.append((reply["method"], reply.get("params", {})))

    def close(self) -> None:
        try:
            self.session = None
            self.call("Browser.close")
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_browser, self._from_browser):
            os.close(fd)
        self.proc.stderr.close()


def errors(events: list[tuple[str, dict]]) -> list[str]:
    """Console errors, uncaught exceptions and error log entries (a resource that failed to
    load, a blocked request) among the DevTools events."""
    found = []
    for name, params in events:
        if name == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            found.append("console." + params["type"] + ": " + " ".join(
                str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
        elif name == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            found.append("uncaught: " + str(details.get("exception", {}).get("description")
                                            or details.get("text")))
        elif name == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            found.append("log: " + params["entry"].get("text", ""))
    return found


IMAGES_JS = ("JSON.stringify(Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete, "
             "width: i.naturalWidth, height: i.naturalHeight})))")


def render(page: Path, tmp_path: Path) -> dict:
    """Load ``page`` in headless Chromium: its images, errors, title, tables and a screenshot."""
    browser = Browser(chromium(), tmp_path / "profile")
    try:
        for domain in ("Page", "Runtime", "Log"):
            browser.call(f"{domain}.enable")
        browser.call("Page.navigate", url=page.resolve().as_uri())
        browser.wait_for("Page.loadEventFired")
        value = browser.call("Runtime.evaluate", expression=IMAGES_JS, returnByValue=True)
        images = json.loads(value["result"]["value"])
        facts = browser.call("Runtime.evaluate", returnByValue=True, expression=(
            "JSON.stringify({title: document.title, h1: document.querySelector('h1') && "
            "document.querySelector('h1').textContent, tables: document.querySelectorAll('table').length, "
            "height: document.body.scrollHeight})"))
        shot = browser.call("Page.captureScreenshot", format="png")
        return {"images": images, "errors": errors(browser.events),
                "screenshot": base64.b64decode(shot["data"]), **json.loads(facts["result"]["value"])}
    finally:
        browser.close()


# ------------------------------------------------------------------------------------------ tests

@pytest.fixture(scope="module")
def report_page(data_root, tmp_path_factory) -> Path:
    """The report of a tiny two-rule comparison with alignment records, and every analysis."""
    from falign.report import write_report
    from falign.training import parse_config
    from falign.training.compare import run_compare

    root = tmp_path_factory.mktemp("browser")
    base = parse_config(tiny_config(train={"alignment_every": 4, "alignment_batch": 64}))
    run_compare(base, ["bp", "fa"], root / "cmp", log=lambda s: None)
    return write_report([root / "cmp"], root / "report", title="Browser <check> & co",
                        analyses={"confusion": True, "cka": True, "gradcam": "layers.0"})


def test_the_report_renders_with_every_image_and_no_console_error(report_page, tmp_path):
    from PIL import Image

    html = report_page.read_text()
    seen = render(report_page, tmp_path)
    assert seen["errors"] == []
    assert seen["title"] == seen["h1"] == "Browser <check> & co"  # the escaped text, decoded
    assert seen["tables"] >= 3 and seen["height"] > 2000  # results, setup, environment
    assert len(seen["images"]) == html.count("<img ") >= 7 + 2 + 3 + 1  # training, confusion, CKA, Grad-CAM
    broken = [img for img in seen["images"] if not (img["complete"] and img["width"] > 0)]
    assert broken == []
    shot = Image.open(io.BytesIO(seen["screenshot"])).convert("L")
    low, high = shot.getextrema()
    assert shot.size[0] > 0 and high - low > 100  # text on a background, not a blank page


def test_the_checks_catch_a_broken_page(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><head><meta charset="utf-8"><title>t</title></head><body>'
                    '<h1>t</h1><img alt="broken" src="data:image/png;base64,iVBORw0KGgo=">'
                    '<img alt="missing" src="no-such-file.png">'
                    '<script>console.error("boom"); throw new Error("uncaught one");</script>'
                    "</body></html>")
    seen = render(page, tmp_path)
    assert [img["width"] for img in seen["images"]] == [0, 0]
    joined = "\n".join(seen["errors"])
    assert "console.error: boom" in joined and "uncaught one" in joined, joined
    assert "no-such-file.png" in joined or "ERR_FILE_NOT_FOUND" in joined, joined
