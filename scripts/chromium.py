"""Headless Chromium as the book's PDF (scripts/print_book.py) and its browser tests drive it: where the browser and
its driver are, the flags it starts with, a tab over the Chrome DevTools Protocol, and a selenium driver. A module
beside the scripts, not in hdr_lib: it is tooling around the built book, not the book's computation. print_book.py
imports it from its own folder; the tests as scripts.chromium.

Nothing here skips or exits: a missing program raises `Missing`, one line saying what installs it
(scripts/install_browser.sh, Debian's chromium and chromium-driver); the caller decides what that means (the PDF
script stops with exit 2; a test skips, or fails where CI is set).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from hdr_lib import settings

# Headless and without a sandbox (Chromium's sandbox will not start as root or in most containers); nothing fetched
# behind the page's back (updates, sync, extensions, QUIC), so a page sees only what it loads itself.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-extensions")
START_TIMEOUT_S = 60  # for the browser to open its DevTools port
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")  # what an offline tab may load

# program: (the variable naming it, the names tried after it in order, the Debian package that installs it)
PROGRAMS = {
    "chromium": ("HDR_CHROMIUM", ("chromium", "chromium-browser", "google-chrome"), "chromium"),
    "chromedriver": ("HDR_CHROMEDRIVER", ("/usr/bin/chromedriver", "chromedriver"), "chromium-driver"),
}


class Missing(RuntimeError):
    """A program (or selenium) is not installed: the message says what to run."""


class NotStarted(RuntimeError):
    """Chromium was found but did not open its DevTools port: the message is the end of its stderr."""


def find(program: str = "chromium") -> str:
    """The path of `program` ("chromium" or "chromedriver"): $HDR_CHROMIUM / $HDR_CHROMEDRIVER, else the first of
    its usual names on PATH; Missing if none is found."""
    variable, names, package = PROGRAMS[program]
    for name in (settings.path(variable), *names):
        if name and shutil.which(name):
            return shutil.which(name)
    raise Missing(f"no {program} found: run scripts/install_browser.sh (Debian package '{package}')")


def _http(port: int, path: str, method: str = "GET") -> dict:
    """One request to the browser's DevTools HTTP endpoint (a tab opened or closed)."""
    from urllib.request import Request, urlopen

    with urlopen(Request(f"http://127.0.0.1:{port}{path}", method=method), timeout=30) as response:
        body = response.read()
    return json.loads(body) if body.startswith(b"{") else {}  # /json/close answers in plain text


class Tab:
    """A new page target over the Chrome DevTools Protocol: `call` a command, `evaluate` an expression, `pump`
    events; every event that arrives is kept in `events`. `offline()` lets the page load only local URLs."""

    def __init__(self, port: int, timeout_s: float):
        import websocket  # websocket-client (a jupyter_server dependency)

        self.port, self.timeout_s = port, timeout_s
        self.target = _http(port, "/json/new?about:blank", "PUT")
        try:
            self.ws = websocket.create_connection(self.target["webSocketDebuggerUrl"], timeout=timeout_s,
                                                  suppress_origin=True)
        except Exception:
            _http(port, f"/json/close/{self.target['id']}")
            raise
        self.next_id = 0
        self.events: list[dict] = []
        self._local: tuple[str, ...] | None = None  # set by offline()

    def call(self, method: str, **params) -> dict:
        self._send(method, **params)
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self._event(message)

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (None where it has none)."""
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True).get("result", {}).get("value")

    def offline(self, local: tuple[str, ...] = LOCAL_SCHEMES) -> None:
        """From now on every request goes through `pump`/`call`: one to a local URL goes on, any other fails and
        is kept in `events` as {"blocked": url}."""
        self._local = local
        self.call("Fetch.enable", patterns=[{"urlPattern": "*"}])

    def pump(self, seconds: float) -> None:
        """Handle events for `seconds` (requests to let through or block, errors to note)."""
        end = time.monotonic() + seconds
        self.ws.settimeout(0.1)
        try:
            while time.monotonic() < end:
                try:
                    self._event(json.loads(self.ws.recv()))
                except Exception as exc:  # websocket timeout: nothing arrived in 0.1 s
                    if type(exc).__name__ != "WebSocketTimeoutException":
                        raise
        finally:
            self.ws.settimeout(self.timeout_s)

    def _event(self, message: dict) -> None:
        if message.get("method") == "Fetch.requestPaused" and self._local is not None:
            params = message["params"]
            url = params["request"]["url"]
            if url.startswith(self._local):
                self._send("Fetch.continueRequest", requestId=params["requestId"])
            else:
                self.events.append({"blocked": url})
                self._send("Fetch.failRequest", requestId=params["requestId"], errorReason="BlockedByClient")
        elif "method" in message:
            self.events.append(message)

    def _send(self, method: str, **params) -> None:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))

    def close(self) -> None:
        """Close the connection and the tab."""
        self.ws.close()
        _http(self.port, f"/json/close/{self.target['id']}")


class Browser:
    """Headless Chromium with its DevTools port open, in a profile of its own that `close()` removes."""

    def __init__(self, binary: str | None = None, flags=FLAGS, start_timeout_s: float = START_TIMEOUT_S):
        binary = binary or find("chromium")
        self.profile = tempfile.mkdtemp(prefix="hdr-chromium-")
        self._stderr = tempfile.TemporaryFile()  # a file, not a pipe: nothing reads it until something goes wrong
        self.proc = subprocess.Popen([binary, *flags, "--remote-debugging-port=0", f"--user-data-dir={self.profile}",
                                      "about:blank"], stdout=subprocess.DEVNULL, stderr=self._stderr)
        port_file, deadline = Path(self.profile) / "DevToolsActivePort", time.monotonic() + start_timeout_s
        while not (port_file.is_file() and port_file.read_text().count("\n") >= 1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self._stderr.seek(0)
                said = self._stderr.read().decode(errors="replace")[-2000:]
                self.close()
                raise NotStarted(said)
            time.sleep(0.2)
        self.port = int(port_file.read_text().split()[0])

    @contextmanager
    def tab(self, timeout_s: float):
        """A new tab (Tab), closed on leaving; `timeout_s` bounds each wait for the browser's answer."""
        tab = Tab(self.port, timeout_s)
        try:
            yield tab
        finally:
            tab.close()

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._stderr.close()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def selenium_driver(flags):
    """A selenium Chrome driver of Debian's chromium through its chromedriver (Selenium Manager cannot download a
    driver here), started with `flags`; Missing if the browser, the driver or selenium is not installed."""
    chromium, chromedriver = find("chromium"), find("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        raise Missing("selenium is not installed: pip install -r requirements.txt") from None
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in flags:
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
