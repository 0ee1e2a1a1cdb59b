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
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / '.ci'))
from chromium import browser, find_chromium, free_port, stop, wait_http  # noqa: E402  (.ci/chromium.py)

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

    port = free_port()
    log_path = out / f'{name}.server.log'
    t0 = time.time()
    server = None
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
            with browser(chromium, width, height) as cdp:
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
        stop(server)


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
