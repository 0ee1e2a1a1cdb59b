"""Serve each geosdm marimo app with `marimo run` on 127.0.0.1 and take headless-Chromium screenshots once it has
rendered.

Usage: python bench/app_screenshots.py [--checkpoint PATH] [--apps explorer calibration monitor]
                                      [--sizes 1280x800 1920x1080]

Without --checkpoint the apps use the demo model (trained into the user cache on first use); the monitor app
follows the demo model's run folder. Each app is shot at every window size, whole page (the part below the window
too): bench/results/app_screenshots/<app>_<width>x<height>.png; timings in bench/results/app_screenshots.json.
Skips cleanly (exit 0) when no Chromium is installed. Fully offline: the apps load nothing from the network.
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent
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
# text that appears only once the app's last cells have produced their output
READY = {'explorer': 'species with p', 'calibration': 'Per region at 5 / 10 / 25', 'monitor': 'GeoScore'}
# marimo renders outputs inside shadow roots: search them too
DEEP = (
    '(() => { const acc = {n: 0, text: ""}; const walk = (r) => {'
    ' acc.n += r.querySelectorAll("canvas, svg.marks").length;'
    ' acc.text += " " + (r.body ? r.body.innerText : r.textContent);'
    ' r.querySelectorAll("*").forEach(e => { if (e.shadowRoot) walk(e.shadowRoot); }); };'
    ' walk(document); return acc; })()'
)


def find_chromium() -> str | None:
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
        time.sleep(0.3)


class CDP:
    "A minimal Chrome DevTools Protocol client over the page's websocket."

    def __init__(self, ws_url: str):
        from websockets.sync.client import connect

        self.ws, self.n = connect(ws_url, max_size=None).__enter__(), 0

    def call(self, method: str, **params):
        self.n += 1
        self.ws.send(json.dumps({'id': self.n, 'method': method, 'params': params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get('id') == self.n:
                if 'error' in msg:
                    raise RuntimeError(f'{method}: {msg["error"]}')
                return msg['result']

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


def screenshot_app(
    name: str,
    checkpoint: str | None,
    out: Path,
    chromium: str,
    timeout: float = 240.0,
    width: int = 1280,
    height: int = 800,
) -> dict:
    from geosdm.cli import app_command

    port, dport = free_port(), free_port()
    log_path = out / f'{name}.server.log'
    t0 = time.time()
    server = browser = cdp = None
    profile = Path(tempfile.mkdtemp(prefix='geosdm-chromium-'))
    try:
        with open(log_path, 'w') as log:
            run_dir = Path(checkpoint).parent if name == 'monitor' else None
            cmd = app_command(
                name, None if name == 'monitor' else checkpoint, port=port, headless=True, run_dir=run_dir
            )
            cmd.insert(cmd.index('--headless') + 1, '--no-token')
            server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
            url = f'http://127.0.0.1:{port}/'
            wait_http(url, 60)
            t_server = time.time() - t0
            browser = subprocess.Popen(
                [
                    chromium,
                    *CHROMIUM_FLAGS,
                    f'--user-data-dir={profile}',
                    f'--remote-debugging-port={dport}',
                    f'--window-size={width},{height}',
                    'about:blank',
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            wait_http(f'http://127.0.0.1:{dport}/json/version', 30)
            pages = json.load(urllib.request.urlopen(f'http://127.0.0.1:{dport}/json/list'))
            page = next(p for p in pages if p.get('type') == 'page')
            cdp = CDP(page['webSocketDebuggerUrl'])
            cdp.call(
                'Emulation.setDeviceMetricsOverride', width=width, height=height, deviceScaleFactor=1, mobile=False
            )
            cdp.call('Page.enable')
            cdp.call('Page.navigate', url=url)
            ready, t1 = False, time.time()
            while time.time() - t1 < timeout:
                if server.poll() is not None:
                    raise RuntimeError(f'marimo exited ({server.returncode}); see {log_path}')
                st = cdp.eval(DEEP) or {'n': 0, 'text': ''}
                if st['n'] >= 2 and READY[name] in st['text']:
                    ready = True
                    break
                time.sleep(1.0)
            time.sleep(3.0)  # let vega finish drawing and the tables settle
            t_render = time.time() - t1
            st = cdp.eval(DEEP) or {'n': 0, 'text': ''}
            text = st['text']
            size = cdp.call('Page.getLayoutMetrics')['cssContentSize']
            shot = cdp.call(
                'Page.captureScreenshot',
                format='png',
                captureBeyondViewport=True,
                clip={'x': 0, 'y': 0, 'width': width, 'height': max(height, size['height']), 'scale': 1},
            )
            png = out / f'{name}_{width}x{height}.png'
            png.write_bytes(base64.b64decode(shot['data']))
        return {
            'app': name,
            'size': f'{width}x{height}',
            'page_height': round(size['height']),
            'ready': ready,
            'server_start_s': round(t_server, 2),
            'render_s': round(t_render, 2),
            'screenshot': str(png),
            'charts': st['n'],
            'errors_in_page': [ln for ln in text.splitlines() if 'Traceback' in ln or 'Error' in ln][:5],
        }
    finally:
        if cdp is not None:
            try:
                cdp.close()
            except Exception:
                pass
        stop(browser)
        stop(server)
        shutil.rmtree(profile, ignore_errors=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--checkpoint', default=None, help='checkpoint (default: the demo model)')
    p.add_argument('--apps', nargs='+', default=['explorer', 'calibration', 'monitor'], choices=list(READY))
    p.add_argument('--sizes', nargs='+', default=['1280x800', '1920x1080'], help='window sizes WIDTHxHEIGHT')
    p.add_argument('--out', default=str(ROOT / 'results' / 'app_screenshots'))
    p.add_argument('--timeout', type=float, default=240.0, help='seconds to wait for an app to render')
    a = p.parse_args(argv)
    chromium = find_chromium()
    if chromium is None:
        print('app_screenshots: no chromium found; skipping (apt-get install -y chromium)')
        return 0
    try:
        import websockets.sync.client  # noqa: F401
    except ImportError:
        print('app_screenshots: the websockets package is missing; skipping')
        return 0
    from geosdm.demo import resolve_checkpoint

    ck = str(resolve_checkpoint(a.checkpoint))  # trains the demo model first if needed, outside the timed part
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for name in a.apps:
        for size in a.sizes:
            w, h = (int(x) for x in size.lower().split('x'))
            r = screenshot_app(name, ck, out, chromium, timeout=a.timeout, width=w, height=h)
            print(
                f"{name} {size}: ready={r['ready']} server {r['server_start_s']}s, render {r['render_s']}s, "
                f"{r['charts']} charts, page {r['page_height']} px high -> {r['screenshot']}"
            )
            results.append(r)
    res = ROOT / 'results' / 'app_screenshots.json'
    res.parent.mkdir(parents=True, exist_ok=True)
    res.write_text(json.dumps({'checkpoint': ck, 'results': results}, indent=1) + '\n')
    return 0 if all(r['ready'] for r in results) else 1


if __name__ == '__main__':
    sys.exit(main())
