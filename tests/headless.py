"""Headless Chromium for tests: render a page, take a PNG screenshot, read the DOM (DevTools protocol).

The browser is Chromium from npm's ``@sparticuz/chromium`` (a whole Chromium in the package, no
download at run time), which ``scripts/test.sh`` installs and unpacks, exporting its path as
``MINIVZ_CHROMIUM``. Its one-shot ``--screenshot`` flag hangs on these machines; the DevTools
protocol over a websocket does not.

    from headless import chromium, render
    shot = render(chromium(), "file:///tmp/report.html", "/tmp/report.png")   # {"png", "tables", "text"}
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
from pathlib import Path


def chromium() -> str | None:
    """The Chromium binary ``scripts/test.sh`` unpacked (``MINIVZ_CHROMIUM``), or None."""
    path = os.environ.get("MINIVZ_CHROMIUM", "")
    return path if path and os.access(path, os.X_OK) else None


def render(binary: str, url: str, png: str | Path, width: int = 1100, height: int = 900,
           timeout: float = 60.0) -> dict:
    """Load ``url``, wait for its load event, save a full-page PNG; returns the PNG path, the number
    of ``<table>`` elements and the page's text."""
    from websockets.sync.client import connect

    profile = tempfile.mkdtemp(prefix="minivz-chromium-")
    # The package's own fonts.conf looks only in Lambda's places (/var/task/fonts, /tmp/fonts, ...): where
    # none exists the page lays out with no font, no text is drawn and the page is one window tall. Our
    # own config lists the fonts it ships (unpacked/fonts/fonts) and the system's.
    dirs = [Path(binary).parent / "fonts" / "fonts", Path("/usr/share/fonts"), Path("/usr/local/share/fonts")]
    conf = Path(profile) / "fonts.conf"
    conf.write_text('<?xml version="1.0"?><!DOCTYPE fontconfig SYSTEM "fonts.dtd"><fontconfig>'
                    + "".join(f"<dir>{d}</dir>" for d in dirs if d.is_dir())
                    + f"<cachedir>{profile}/fonts-cache</cachedir></fontconfig>")
    env = dict(os.environ, HOME=profile, FONTCONFIG_FILE=str(conf))
    proc = subprocess.Popen(
        [binary, "--headless=shell", "--no-sandbox", "--no-zygote", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-background-networking", "--no-first-run", f"--user-data-dir={profile}",
         "--remote-debugging-port=0", f"--window-size={width},{height}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + timeout
        endpoint = None
        while endpoint is None:  # "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/..."
            line = proc.stderr.readline().decode(errors="replace")
            if not line or time.monotonic() > deadline:
                raise RuntimeError(f"chromium did not open its DevTools port (exit code {proc.poll()})")
            if "DevTools listening on" in line:
                endpoint = line.split()[-1]
        port = endpoint.split(":")[2].split("/")[0]
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=timeout))
        page = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        with connect(page, max_size=None, open_timeout=timeout) as ws:
            ids = iter(range(1, 1 << 30))

            def call(method: str, **params) -> dict:
                n = next(ids)
                ws.send(json.dumps({"id": n, "method": method, "params": params}))
                while True:
                    msg = json.loads(ws.recv(timeout=timeout))
                    if msg.get("id") == n:
                        if "error" in msg:
                            raise RuntimeError(f"{method}: {msg['error']}")
                        return msg["result"]

            call("Page.enable")
            call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
            call("Page.navigate", url=url)
            while json.loads(ws.recv(timeout=timeout)).get("method") != "Page.loadEventFired":
                pass
            shot = call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
            tables = call("Runtime.evaluate", expression="document.querySelectorAll('table').length")
            text = call("Runtime.evaluate", expression="document.body.innerText")
        Path(png).write_bytes(base64.b64decode(shot["data"]))
        return {"png": Path(png), "tables": int(tables["result"]["value"]), "text": text["result"]["value"]}
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(profile, ignore_errors=True)
