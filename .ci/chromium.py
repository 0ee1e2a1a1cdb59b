"""Headless Chromium over the DevTools protocol, for the docs test and the app screenshots (not part of geosdm).

`browser()` starts Chromium with the flags that work on a closed network and a fresh profile, and gives a `CDP`
client on its first tab; `CDP` keeps the events it reads (console messages, network requests) in `.events`.
Import it from a test or a bench script with `sys.path.insert(0, str(REPO / '.ci'))`.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

CHROMIUM_FLAGS = [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
]


def find_chromium() -> str | None:
    "The path of an installed Chromium or Chrome, or None."
    for name in ('chromium', 'chromium-browser', 'google-chrome', 'google-chrome-stable'):
        p = shutil.which(name)
        if p:
            return p
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float) -> None:
    "Wait until `url` answers 200."
    t0 = time.time()
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.time() - t0 > timeout:
            raise TimeoutError(f'{url} did not answer within {timeout:.0f}s')
        time.sleep(0.2)


class CDP:
    "A minimal Chrome DevTools Protocol client over the page's websocket; events read on the way land in `.events`."

    def __init__(self, ws_url: str):
        from websockets.sync.client import connect

        self.ws, self.n, self.events = connect(ws_url, max_size=None).__enter__(), 0, []

    def _read(self, timeout: float | None = None) -> dict:
        msg = json.loads(self.ws.recv(timeout))
        if 'method' in msg:
            self.events.append(msg)
        return msg

    def call(self, method: str, **params):
        self.n += 1
        self.ws.send(json.dumps({'id': self.n, 'method': method, 'params': params}))
        while True:
            msg = self._read()
            if msg.get('id') == self.n:
                if 'error' in msg:
                    raise RuntimeError(f'{method}: {msg["error"]}')
                return msg['result']

    def wait_event(self, method: str, timeout: float = 30.0) -> dict:
        "The first event named `method` in `.events`, reading more until it arrives (clear `.events` to wait anew)."
        for msg in self.events:
            if msg.get('method') == method:
                return msg
        t_end = time.time() + timeout
        while True:
            left = t_end - time.time()
            if left <= 0:
                raise TimeoutError(f'no {method} within {timeout:.0f}s')
            try:
                msg = self._read(left)
            except TimeoutError:
                continue
            if msg.get('method') == method:
                return msg

    def eval(self, expr: str):
        return self.call('Runtime.evaluate', expression=expr, returnByValue=True)['result'].get('value')

    def close(self):
        self.ws.close()


def stop(proc: subprocess.Popen | None) -> None:
    "Stop a process we started, by its PID (terminate, then kill)."
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@contextlib.contextmanager
def browser(chromium: str, width: int = 1280, height: int = 800, timeout: float = 30.0):
    "Headless Chromium with a fresh profile; yields a `CDP` client on its blank tab, and stops it all on exit."
    port = free_port()
    profile = Path(tempfile.mkdtemp(prefix='geosdm-chromium-'))
    proc = cdp = None
    try:
        proc = subprocess.Popen(
            [
                chromium,
                *CHROMIUM_FLAGS,
                f'--user-data-dir={profile}',
                f'--remote-debugging-port={port}',
                f'--window-size={width},{height}',
                'about:blank',
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_http(f'http://127.0.0.1:{port}/json/version', timeout)
        pages = json.load(urllib.request.urlopen(f'http://127.0.0.1:{port}/json/list'))
        page = next(p for p in pages if p.get('type') == 'page')
        cdp = CDP(page['webSocketDebuggerUrl'])
        cdp.call('Emulation.setDeviceMetricsOverride', width=width, height=height, deviceScaleFactor=1, mobile=False)
        yield cdp
    finally:
        if cdp is not None:
            with contextlib.suppress(Exception):
                cdp.close()
        stop(proc)
        shutil.rmtree(profile, ignore_errors=True)
