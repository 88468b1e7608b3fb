"""The report in a real browser: headless Chromium (Debian's `chromium`) driven over the DevTools
protocol on a pipe (`--remote-debugging-pipe`), so every request the page makes is seen.

The page is loaded twice: as written (screenshot, DOM, every section present, no request) and
with its Content-Security-Policy removed, so that a reference to anything outside the file would
really be requested rather than blocked by CSP. Control pages with external references prove that
the detector sees requests.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import re
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from rundir_fixtures import make_compare

from reprokit.report import write_report

CHROMIUM = Path("/usr/bin/chromium")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="needs Debian's chromium at /usr/bin/chromium (apt-get install -y chromium)",
    ),
]

COMPARE_SECTIONS = [
    "verdict",
    "configuration",
    "pd-table",
    "accuracy",
    "pd-vs-auc",
    "paired-tests",
    "pd-distribution",
    "pd-by-bucket",
    "calibration",
    "training-loss",
    "replicas",
]


class Browser:
    """A minimal DevTools-protocol client over --remote-debugging-pipe (fd 3 in, fd 4 out)."""

    def __init__(self, profile: Path, log: Path) -> None:
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        def _wire() -> None:  # runs in the child before exec: put the pipe ends on fds 3 and 4
            a = fcntl.fcntl(to_child_r, fcntl.F_DUPFD, 10)
            b = fcntl.fcntl(from_child_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self._log = open(log, "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [
                str(CHROMIUM),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-default-apps",
                "--disable-extensions",
                "--no-first-run",
                "--no-default-browser-check",
                "--hide-scrollbars",
                # Nothing may reach a network even if something slipped through.
                "--host-resolver-rules=MAP * ~NOTFOUND",
                f"--user-data-dir={profile}",
                "--remote-debugging-pipe",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            preexec_fn=_wire,  # noqa: PLW1509 - single-threaded test process
            pass_fds=(3, 4),
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self._buf = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        self.session: str | None = None

    # -- protocol
    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("chromium did not answer in time")
            ready, _, _ = select.select([self._from_child], [], [], left)
            if ready:
                chunk = os.read(self._from_child, 1 << 20)
                if not chunk:
                    raise RuntimeError("chromium closed the DevTools pipe")
                self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, params: dict | None = None, timeout: float = 30, **kw) -> dict:
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        session = kw.get("session", self.session)
        if session:
            msg["sessionId"] = session
        os.write(self._to_child, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        for event in self.events:
            if event.get("method") == method:
                return event
        while True:
            event = self._read_message(deadline)
            self.events.append(event)
            if event.get("method") == method:
                return event

    # -- high level
    def open_page(self) -> None:
        target = self.call("Target.createTarget", {"url": "about:blank"}, session=None)
        attached = self.call(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}, session=None
        )
        self.session = attached["sessionId"]
        for domain in ("Page", "Network", "Log", "Runtime"):
            self.call(f"{domain}.enable")

    def load(self, url: str) -> list[str]:
        """Navigate, wait for the load event and a quiet moment; return the URLs requested."""
        self.events.clear()
        self.call("Page.navigate", {"url": url})
        self.wait_for("Page.loadEventFired")
        time.sleep(0.5)  # let late requests (fonts, lazy images) show up
        self.call("Runtime.evaluate", {"expression": "1"})  # drains pending events
        return [
            e["params"]["request"]["url"]
            for e in self.events
            if e.get("method") == "Network.requestWillBeSent"
        ]

    def console_errors(self) -> list[str]:
        return [
            e["params"]["entry"]["text"]
            for e in self.events
            if e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error"
        ]

    def dom(self) -> str:
        result = self.call(
            "Runtime.evaluate",
            {"expression": "document.documentElement.outerHTML", "returnByValue": True},
        )
        return result["result"]["value"]

    def screenshot(self, path: Path, width: int = 1280) -> None:
        height = self.call(
            "Runtime.evaluate",
            {"expression": "document.documentElement.scrollHeight", "returnByValue": True},
        )["result"]["value"]
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": int(height), "deviceScaleFactor": 1, "mobile": False},
        )
        shot = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        path.write_bytes(base64.b64decode(shot["data"]))

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, TimeoutError, OSError):
            self.call("Browser.close", session=None, timeout=10)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_child)
        os.close(self._from_child)
        self._log.close()


@pytest.fixture
def browser(tmp_path: Path):
    b = Browser(tmp_path / "profile", tmp_path / "chromium.log")
    try:
        b.open_page()
        yield b
    finally:
        b.close()


def _others(urls: list[str], page: str) -> list[str]:
    return [u for u in urls if u != page]


def test_detector_sees_requests_of_a_page_that_makes_them(browser: Browser, tmp_path: Path):
    page = tmp_path / "leaky.html"
    page.write_text(
        "<!DOCTYPE html><html><head>"
        '<link rel="stylesheet" href="https://cdn.example.invalid/style.css">'
        "</head><body>"
        '<img src="http://192.0.2.1/pixel.png">'
        '<svg><image href="https://img.example.invalid/a.png" width="10" height="10"/></svg>'
        "</body></html>"
    )
    urls = _others(browser.load(page.as_uri()), page.as_uri())
    assert any("cdn.example.invalid" in u for u in urls), urls
    assert any("192.0.2.1" in u for u in urls), urls


def test_detector_sees_csp_blocked_requests(browser: Browser, tmp_path: Path):
    """With our CSP a stray reference is blocked; the blocked attempt is still detected."""
    from reprokit.report import CSP

    page = tmp_path / "blocked.html"
    page.write_text(
        f'<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '</head><body><img src="http://192.0.2.1/pixel.png"></body></html>'
    )
    urls = _others(browser.load(page.as_uri()), page.as_uri())
    errors = browser.console_errors()
    assert any("192.0.2.1" in u for u in urls), urls
    assert any("Content Security Policy" in e for e in errors), errors


def _real_compare(path: Path) -> Path:
    """A compare-activations run directory written by reprokit itself (small)."""
    from typer.testing import CliRunner

    from reprokit.cli import app

    args = ["compare-activations", "--arms", "relu", "--arms", "smelu:beta=1", "--replicas", "3"]
    args += ["--synth-rows", "2000", "--epochs", "1", "--out", str(path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return path


@pytest.mark.parametrize("source", ["fixture", "real"])
def test_compare_report_renders_offline_with_every_section(
    browser: Browser, tmp_path: Path, source: str
):
    if source == "real":
        run = _real_compare(tmp_path / "cmp")
    else:
        run = make_compare(tmp_path / "cmp", replicas=4, examples=600)
    html_path, _, _ = write_report(run)
    page = html_path.as_uri()

    urls = browser.load(page)
    assert _others(urls, page) == []
    assert not [e for e in browser.console_errors() if "Content Security Policy" in e]

    dom = browser.dom()
    ids = re.findall(r'<section id="([^"]+)"', dom)
    # A real run's summary has an `embedding` block, so its report has the Embedding table too.
    if source == "real":
        at = COMPARE_SECTIONS.index("training-loss") + 1
        assert ids == [*COMPARE_SECTIONS[:at], "embedding", *COMPARE_SECTIONS[at:]]
    else:
        assert ids == COMPARE_SECTIONS
    assert dom.count("<svg") >= 5  # PD vs AUC, distribution, buckets, calibration, loss
    if source == "fixture":
        assert "Best on the Pareto front: smelu:beta=1" in dom

    shot = Path(os.environ.get("REPROKIT_SCREENSHOT_DIR", tmp_path)) / f"compare-{source}.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    browser.screenshot(shot)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width == 1280 and height > 3000  # the whole page, every section

    # Without the CSP nothing is blocked, so any external reference would show up as a request.
    open_copy = tmp_path / "no-csp.html"
    html = html_path.read_text(encoding="utf-8")
    stripped = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", html)
    assert stripped != html
    open_copy.write_text(stripped, encoding="utf-8")
    assert _others(browser.load(open_copy.as_uri()), open_copy.as_uri()) == []


def test_chromium_cli_screenshot_and_dump_dom(tmp_path: Path):
    """The plain command-line path (`--screenshot`, `--dump-dom`) works on the report too."""
    run = make_compare(tmp_path / "cmp", replicas=3, examples=300)
    html_path, _, _ = write_report(run)
    base = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = subprocess.run(
        [*base, "--dump-dom", html_path.as_uri()], capture_output=True, timeout=120, check=True
    ).stdout.decode()
    assert re.findall(r'<section id="([^"]+)"', dom) == COMPARE_SECTIONS
    shot = tmp_path / "cli.png"
    subprocess.run(
        [*base, "--window-size=1280,2000", f"--screenshot={shot}", html_path.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert shot.read_bytes()[:4] == b"\x89PNG"
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)
