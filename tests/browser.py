"""A real headless Chromium (Debian's ``chromium``) driven over the DevTools protocol.

``open_page(path)`` loads a local file and returns what a person would see and what the browser
complained about: console errors, uncaught exceptions, and any request that left ``file:`` (a
self-contained page makes none). ``.ci/run`` installs Chromium; tests skip without it.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from typing import List, Optional

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
    "--remote-allow-origins=*",
]


def chromium_path() -> Optional[str]:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageResult:
    console_errors: List[str] = field(default_factory=list)
    exceptions: List[str] = field(default_factory=list)
    requests: List[str] = field(default_factory=list)
    values: dict = field(default_factory=dict)
    screenshot: Optional[str] = None


class _Cdp:
    def __init__(self, ws_url: str) -> None:
        import websocket

        self.ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self.next_id = 0
        self.events: List[dict] = []

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        my_id = self.next_id
        self.ws.send(json.dumps({"id": my_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_for(self, method: str, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        for ev in self.events:
            if ev.get("method") == method:
                return ev
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv())
            self.events.append(msg)
            if msg.get("method") == method:
                return msg
        raise TimeoutError(f"no {method} within {timeout} s")


def open_page(path: str, expressions: dict, screenshot: Optional[str] = None, width: int = 1400) -> PageResult:
    """Load ``path`` in headless Chromium, evaluate ``expressions`` (name -> JS) and take a
    full-page screenshot into ``screenshot``."""
    exe = chromium_path()
    if exe is None:
        raise RuntimeError("chromium is not installed")
    profile = tempfile.mkdtemp(prefix="smallpond-chromium-")
    proc = subprocess.Popen(
        [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file = os.path.join(profile, "DevToolsActivePort")
        deadline = time.monotonic() + 60
        while not (os.path.exists(port_file) and open(port_file).read().strip()):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("chromium did not start its DevTools endpoint")
            time.sleep(0.1)
        port = int(open(port_file).read().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as r:
            targets = json.load(r)
        page = next(t for t in targets if t.get("type") == "page")
        cdp = _Cdp(page["webSocketDebuggerUrl"])
        for domain in ("Page", "Runtime", "Log", "Network"):
            cdp.call(f"{domain}.enable")
        cdp.call("Emulation.setDeviceMetricsOverride", width=width, height=900, deviceScaleFactor=1, mobile=False)
        cdp.call("Page.navigate", url="file://" + os.path.abspath(path))
        cdp.wait_for("Page.loadEventFired")
        time.sleep(0.3)  # let late console messages arrive
        result = PageResult()
        for name, js in expressions.items():
            got = cdp.call("Runtime.evaluate", expression=js, returnByValue=True)
            result.values[name] = got.get("result", {}).get("value")
        if screenshot:
            height = cdp.call("Runtime.evaluate", expression="document.documentElement.scrollHeight", returnByValue=True)
            h = int(height["result"]["value"])
            cdp.call("Emulation.setDeviceMetricsOverride", width=width, height=min(h, 6000), deviceScaleFactor=1, mobile=False)
            shot = cdp.call("Page.captureScreenshot", format="png")
            os.makedirs(os.path.dirname(os.path.abspath(screenshot)), exist_ok=True)
            with open(screenshot, "wb") as f:
                f.write(base64.b64decode(shot["data"]))
            result.screenshot = screenshot
        for ev in cdp.events:
            method, params = ev.get("method"), ev.get("params", {})
            if method == "Runtime.exceptionThrown":
                result.exceptions.append(json.dumps(params.get("exceptionDetails", {}))[:500])
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                result.console_errors.append(json.dumps(params.get("args", []))[:500])
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                result.console_errors.append(params["entry"].get("text", ""))
            elif method == "Network.requestWillBeSent":
                result.requests.append(params.get("request", {}).get("url", ""))
        cdp.ws.close()
        return result
    finally:
        proc.kill()
        proc.wait(timeout=30)
        shutil.rmtree(profile, ignore_errors=True)
