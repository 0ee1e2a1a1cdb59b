"""Serve each geosdm marimo app with `marimo run` on 127.0.0.1 and take headless-Chromium screenshots once it has
rendered; with --interact, zoom into its map, pan, and time each answer.

Usage: python bench/app_screenshots.py [--model demo|big|res4 | --checkpoint PATH] [--apps explorer calibration
                                      monitor] [--sizes 1280x800 1920x1080] [--interact [--target LNG LAT]] [--plots]

Models: the demo model (default; trained into the user cache on first use); `big`, a checkpoint of the size users
train (every H3 cell of resolution 4, 288,122, and 12,000 species; random weights; its data file holds only the
cells, so it serves the explorer and geosdm_plot, not the calibration app); `res4`, a small trained model on a
simulated world of resolution 4 (western North America, two hold-out regions: for the calibration app). Both are
built once into bench/results/. The monitor app follows the checkpoint's run folder.

Each app is shot at every window size, whole page: bench/results/app_screenshots[_<model>]/<app>_<W>x<H>.png, and
with --interact the window after zooming in (`..._zoom.png`) and closer (`..._close.png`). Timings go to
bench/results/app_screenshots[_<model>].json: `first_map_s` (navigation to the first map with cells, on the page's
clock) with the CPU seconds the app's processes and the page spent until then and the load average (work that a
loaded machine stretches), each zoom / pan answer (`answer_s`: from the view request, which the map sends 300 ms
after the last move, to the new cells drawn), the Python side of it (`seconds`), and JS round trips through the
page's main thread while waiting (`js_roundtrip_ms_*`).
--plots times geosdm_plot range / richness / weekly on the same checkpoint (world and a box).
Every URL the page asks for is logged; any that is not this machine's fails the run. Skips cleanly (exit 0)
when no Chromium is installed.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / '.ci'))
from chromium import CDP, browser, find_chromium, free_port, stop, wait_http  # noqa: E402  (.ci/chromium.py)

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


def big_checkpoint(folder: Path, n_species: int = 12_000, res: int = 4, scale: float = 0.75, seed: int = 0) -> Path:
    """A checkpoint of the size users train: every H3 cell of resolution `res` (288,122 at 4) and `n_species`
    outputs. Its weights are random, sharpened so that neighbouring cells differ (a map with detail at the model's
    resolution); what it measures is the rendering path, not a model. Built once into `folder`."""
    import dataclasses

    import h3
    import polars as pl
    import torch

    from geosdm.checkpoint import CHECKPOINT_FORMAT, save_checkpoint
    from geosdm.config import config_from
    from geosdm.model import create_model

    ck = folder / 'checkpoint_best.pt'
    if ck.is_file():
        return ck
    folder.mkdir(parents=True, exist_ok=True)
    cells = sorted(c for r in h3.get_res0_cells() for c in h3.cell_to_children(r, res))
    pl.DataFrame({'h3_index': cells}).write_parquet(folder / 'cells.parquet')  # the model's cells
    torch.manual_seed(seed)
    model = create_model(n_species, 7, scale, coord_harmonics=32)
    with torch.no_grad():
        model.encoder.inp.weight.mul_(4.0)
        model.species_head.out[-1].weight.mul_(30.0)
        model.species_head.out[-1].bias.zero_()
    codes = [f'sp{i:05d}' for i in range(n_species)]
    cfg = config_from(dict(data_path=str(folder / 'cells.parquet'), model_scale=scale, coord_harmonics=32))
    state = {
        'format': CHECKPOINT_FORMAT,
        'epoch': 0,
        'model_state_dict': model.state_dict(),
        'model_config': dict(model.config),
        'config': dataclasses.asdict(cfg),
        'species_vocab': {
            'codes': codes,
            'sci_names': [f'Avis synthetica {i}' for i in range(n_species)],
            'common_names': [f'Synthetic bird {i:05d}' for i in range(n_species)],
        },
        'env': {'names': [f'env_{i}' for i in range(7)], 'stats': {}},
        'history': [],
        'coverage': {'cells': cells},
    }
    return save_checkpoint(ck, state)


def res4_checkpoint(folder: Path) -> Path:
    "A small model trained (2 epochs) on a simulated world of H3 resolution 4 in western North America."
    from geosdm.simulate import simulate_world
    from geosdm.trainer import TrainConfig, train

    ck = folder / 'ck' / 'checkpoint_best.pt'
    if ck.is_file():
        return ck
    simulate_world(n_species=60, res=4, bbox=(-126.0, 31.0, -104.0, 50.0), seed=7).write(folder / 'world')
    cfg = TrainConfig(
        data_path=str(folder / 'world' / 'combined.parquet'),
        checkpoint_dir=str(folder / 'ck'),
        model_scale=0.5,
        num_epochs=2,
        min_obs_per_species=5,
        holdout_regions=['us_northwest', 'california'],
        device='cpu',
    )
    train(cfg, progress=False)
    return ck


def plot_timings(ck: str, out: Path, box=(5.0, 44.0, 16.0, 48.5)) -> list[dict]:
    "Time geosdm_plot range / richness / weekly on checkpoint `ck`: the world, and `box` (default: the Alps)."
    import io

    import h3

    from geosdm.cli import plot_main
    from geosdm.inputs import read_columns
    from geosdm.predict import Predictor

    sp = Predictor(ck, device='cpu').vocab[1]
    runs = {
        'range world, weeks 1 26': ['range', '--species', sp, '--weeks', '1', '26'],
        'range box, weeks 1 26': ['range', '--species', sp, '--weeks', '1', '26', '--box', *map(str, box)],
        'richness box, week 20': ['richness', '--week', '20', '--box', *map(str, box)],
        'weekly box, weeks 1 13 26 39': [
            'weekly',
            '--species',
            sp,
            '--weeks',
            '1',
            '13',
            '26',
            '39',
            '--box',
            *map(str, box),
        ],
    }
    rows = []
    for name, argv in runs.items():
        t0 = time.time()
        with contextlib.redirect_stdout(io.StringIO()) as so:
            rc = plot_main([*argv, '--checkpoint', ck, '--outdir', str(out / 'plots'), '--formats', 'png'])
        files = so.getvalue().split()
        values = read_columns(next(f for f in files if f.endswith('.parquet'))) if rc == 0 else None
        cells = values['h3_index'].to_list() if values is not None else []
        rows.append(
            {
                'run': name,
                'rc': rc,
                'seconds': round(time.time() - t0, 2),
                'cells': len(cells),
                'res': h3.get_resolution(cells[0]) if cells else None,
                'files': len(files),
            }
        )
        print(f'  geosdm_plot {name}: {rows[-1]}')
    return rows


MAP = 'globalThis.__geosdm_map || null'  # what a geosdm map shows now (set by geosdm.zoom.DeckMap)
MAP_VIEW = (
    '(() => { const d = globalThis.__geosdm_deck; if (!d) return null; const v = d.getViewports()[0];'
    ' const r = (d.canvas || d.getCanvas()).getBoundingClientRect();'
    ' return {zoom: v.zoom, longitude: v.longitude, latitude: v.latitude, left: r.left, top: r.top,'
    ' width: r.width, height: r.height, asked: globalThis.__geosdm_asked || 0}; })()'
)


def shoot(cdp: CDP, png: Path, width: int, height: int, whole_page: bool = True) -> float:
    "Screenshot (the whole page, or the window); returns the page height."
    size = cdp.call('Page.getLayoutMetrics')['cssContentSize']
    h = max(height, size['height']) if whole_page else height
    shot = cdp.call(
        'Page.captureScreenshot',
        format='png',
        captureBeyondViewport=whole_page,
        clip={'x': 0, 'y': 0, 'width': width, 'height': h, 'scale': 1},
    )
    png.write_bytes(base64.b64decode(shot['data']))
    return size['height']


def project(cdp: CDP, lng: float, lat: float) -> tuple[float, float]:
    "Window coordinates of (lng, lat) on the map."
    x, y = cdp.eval(f'globalThis.__geosdm_deck.getViewports()[0].project([{lng}, {lat}])')
    v = cdp.eval(MAP_VIEW)
    return v['left'] + x, v['top'] + y


def wait_answer(cdp: CDP, asked: int, timeout: float = 180.0) -> dict:
    """Wait until the map shows the answer to view request `asked`. Meanwhile, time JS round trips
    (`performance.now()` through the page's main thread) every 50 ms: the tab must answer while Python computes."""
    t0, trips = time.time(), []
    while time.time() - t0 < timeout:
        a = time.perf_counter()
        cdp.eval('performance.now()')
        trips.append(1000 * (time.perf_counter() - a))
        st = cdp.eval(MAP)
        if st and st.get('seq', 0) >= asked:
            return {
                'answer_s': round(time.time() - t0, 2),
                'js_roundtrip_ms_max': round(max(trips), 1),
                'js_roundtrip_ms_median': round(sorted(trips)[len(trips) // 2], 1),
                **{k: st[k] for k in ('res', 'cells', 'rule', 'seconds')},
            }
        time.sleep(0.05)
    raise TimeoutError(f'the map did not answer view request {asked} within {timeout:.0f}s')


def zoom_to(cdp: CDP, lng: float, lat: float, zoom: float) -> int:
    "Wheel-zoom the map at (lng, lat) until its zoom reaches `zoom`; returns the view request it sends."
    for _ in range(60):
        v = cdp.eval(MAP_VIEW)
        if v['zoom'] >= zoom:
            break
        x, y = project(cdp, lng, lat)
        cdp.call('Input.dispatchMouseEvent', type='mouseWheel', x=x, y=y, deltaX=0, deltaY=-120)
        time.sleep(0.06)
    return wait_request(cdp, v['asked'])


def wait_request(cdp: CDP, before: int, timeout: float = 5.0) -> int:
    "The number of the view request the map sends after `before` (it waits 300 ms for the view to settle)."
    t0 = time.time()
    while time.time() - t0 < timeout:
        asked = cdp.eval(MAP_VIEW)['asked']
        if asked > before:
            return asked
        time.sleep(0.05)
    raise TimeoutError('the map sent no view request')


def drag(cdp: CDP, dx: float, dy: float) -> int:
    "Pan the map by dragging its centre by (dx, dy) pixels; returns the view request it sends."
    v = cdp.eval(MAP_VIEW)
    x, y = v['left'] + v['width'] / 2, v['top'] + v['height'] / 2
    cdp.call('Input.dispatchMouseEvent', type='mousePressed', x=x, y=y, button='left', clickCount=1)
    for i in range(1, 11):
        cdp.call('Input.dispatchMouseEvent', type='mouseMoved', x=x + dx * i / 10, y=y + dy * i / 10, button='left')
        time.sleep(0.02)
    cdp.call('Input.dispatchMouseEvent', type='mouseReleased', x=x + dx, y=y + dy, button='left', clickCount=1)
    return wait_request(cdp, v['asked'])


def explore_map(cdp: CDP, out: Path, stem: str, width: int, height: int, target=None) -> dict:
    """Zoom into `target` (lng, lat; default: the centre of the first view) until the map draws the model's own
    cells, pan, and zoom closer; time each answer and shoot the window after each."""
    v = cdp.eval(MAP_VIEW)
    lng, lat = target or (v['longitude'], v['latitude'])
    steps = {}
    zoom, asked = v['zoom'], 0
    for k in range(8):  # zoom in, one level at a time, until the cells are the model's own
        zoom += 1.0
        asked = zoom_to(cdp, lng, lat, zoom)
        steps[f'zoom_{k + 1}'] = r = {'zoom': round(cdp.eval(MAP_VIEW)['zoom'], 2), **wait_answer(cdp, asked)}
        if r['rule'] == 'cells':
            break
    shoot(cdp, out / f'{stem}_zoom.png', width, height, whole_page=False)
    steps['pan'] = wait_answer(cdp, drag(cdp, -width / 5, 0))
    steps['close'] = {'zoom': zoom + 2, **wait_answer(cdp, zoom_to(cdp, lng, lat, zoom + 2))}
    shoot(cdp, out / f'{stem}_close.png', width, height, whole_page=False)
    return steps


def start_app(name: str, checkpoint: str | None, log) -> tuple[subprocess.Popen, str]:
    from geosdm.cli import app_command

    port = free_port()
    run_dir = Path(checkpoint).parent if name == 'monitor' else None
    cmd = app_command(name, None if name == 'monitor' else checkpoint, port=port, headless=True, run_dir=run_dir)
    cmd.insert(cmd.index('--headless') + 1, '--no-token')
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), f'http://127.0.0.1:{port}/'


def open_page(cdp: CDP) -> None:
    "Turn on what the measurements read: page events, network requests, performance counters."
    for domain in ('Page', 'Network', 'Performance'):
        cdp.call(f'{domain}.enable')


def cpu_seconds(pid: int) -> float | None:
    "CPU seconds (user + system) used so far by process `pid` and its children (None without psutil)."
    try:
        import psutil
    except ImportError:
        return None
    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def page_task_seconds(cdp: CDP) -> float:
    "Seconds the page's threads have been busy with tasks (Chrome's TaskDuration)."
    return next(m['value'] for m in cdp.call('Performance.getMetrics')['metrics'] if m['name'] == 'TaskDuration')


def wait_ready(cdp: CDP, name: str, server: subprocess.Popen, timeout: float) -> tuple[bool, dict]:
    """Wait for the app's last output; returns (ready, the first map: seconds from navigation, and the CPU seconds
    the app's processes and the page's main thread spent until then: work that a loaded machine stretches)."""
    t1, first, cpu0 = time.time(), {}, cpu_seconds(server.pid)
    while time.time() - t1 < timeout:
        if server.poll() is not None:
            raise RuntimeError(f'marimo exited ({server.returncode})')
        st = cdp.eval(DEEP) or {'n': 0, 'text': ''}
        m = cdp.eval(MAP)
        if not first and m and m.get('cells'):
            cpu = cpu_seconds(server.pid)
            first = {
                'seconds': round(m['first_at'] / 1000, 2),  # the page's own clock: from navigation to the first cells
                'app_cpu_s': None if cpu is None else round(cpu - cpu0, 2),
                'page_task_s': round(page_task_seconds(cdp), 2),
                'load_average': round(os.getloadavg()[0], 2),
            }
        if st['n'] >= 2 and READY[name] in st['text'] and (name == 'monitor' or first):
            return True, first
        time.sleep(0.3)
    return False, first


def offline_requests(cdp: CDP) -> list[str]:
    "The URLs the page asked for that are not this machine's (an offline app asks for none)."
    local = ('http://127.0.0.1', 'ws://127.0.0.1', 'http://localhost', 'data:', 'blob:', 'about:')
    urls = [e['params']['request']['url'] for e in cdp.events if e.get('method') == 'Network.requestWillBeSent']
    return [u for u in urls if not u.startswith(local)]


def screenshot_app(
    name: str,
    checkpoint: str | None,
    out: Path,
    chromium: str,
    timeout: float = 240.0,
    width: int = 1280,
    height: int = 800,
    interact: bool = False,
    target=None,
) -> dict:
    log_path = out / f'{name}.server.log'
    t0 = time.time()
    server = None
    try:
        with open(log_path, 'w') as log, contextlib.ExitStack() as stack:
            server, url = start_app(name, checkpoint, log)
            wait_http(url, 60)
            t_server = time.time() - t0
            cdp = stack.enter_context(browser(chromium, width, height))
            open_page(cdp)
            t1 = time.time()
            cdp.call('Page.navigate', url=url)
            ready, first_map = wait_ready(cdp, name, server, timeout)
            t_ready = time.time() - t1
            time.sleep(3.0)  # let vega finish drawing and the tables settle
            st = cdp.eval(DEEP) or {'n': 0, 'text': ''}
            png = out / f'{name}_{width}x{height}.png'
            page_height = shoot(cdp, png, width, height)
            first = cdp.eval(MAP)
            steps = explore_map(cdp, out, png.stem, width, height, target) if interact and first else None
            offline = offline_requests(cdp)
        return {
            'app': name,
            'size': f'{width}x{height}',
            'page_height': round(page_height),
            'ready': ready,
            'server_start_s': round(t_server, 2),
            'ready_s': round(t_ready, 2),
            'first_map_s': first_map.get('seconds'),
            'first_map_work': first_map,
            'first_map': {k: first[k] for k in ('res', 'cells', 'rule', 'seconds')} if first else None,
            'map_steps': steps,
            'screenshot': str(png),
            'charts': st['n'],
            'network_requests_off_this_machine': offline,
            'errors_in_page': [ln for ln in st['text'].splitlines() if 'Traceback' in ln or 'Error' in ln][:5],
        }
    finally:
        stop(server)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--checkpoint', default=None, help='checkpoint (default: the --model)')
    p.add_argument('--model', default='demo', choices=['demo', 'big', 'res4'], help='see above')
    p.add_argument('--apps', nargs='+', default=['explorer', 'calibration', 'monitor'], choices=list(READY))
    p.add_argument('--sizes', nargs='+', default=['1280x800', '1920x1080'], help='window sizes WIDTHxHEIGHT')
    p.add_argument(
        '--out', default=None, help='folder of the screenshots (default: bench/results/app_screenshots[_<model>])'
    )
    p.add_argument('--timeout', type=float, default=240.0, help='seconds to wait for an app to render')
    p.add_argument('--interact', action='store_true', help='zoom into the maps, pan, and time each answer')
    p.add_argument('--target', nargs=2, type=float, default=None, help='LNG LAT to zoom into (default: the centre)')
    p.add_argument('--plots', action='store_true', help='also time geosdm_plot range / richness / weekly')
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
    from geosdm.zoommap import coastline

    # built outside the timed part: the demo model (trained on first use), the bench models, the coastline cache
    models = {
        'big': lambda: big_checkpoint(ROOT / 'results' / 'big_model'),
        'res4': lambda: res4_checkpoint(ROOT / 'results' / 'res4_model'),
    }
    ck = str(resolve_checkpoint(a.checkpoint) if a.checkpoint or a.model == 'demo' else models[a.model]())
    coastline()
    tag = '' if a.checkpoint or a.model == 'demo' else f'_{a.model}'
    out = Path(a.out or ROOT / 'results' / f'app_screenshots{tag}')
    out.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    print(f'checkpoint {ck}; load average {load:.1f} on {os.cpu_count()} cores')
    results = []
    for name in a.apps:
        for size in a.sizes:
            w, h = (int(x) for x in size.lower().split('x'))
            r = screenshot_app(name, ck, out, chromium, a.timeout, w, h, a.interact, a.target)
            r['load_average_before'] = round(load, 2)
            load = os.getloadavg()[0]
            print(
                f"{name} {size}: ready={r['ready']} in {r['ready_s']}s (map first drawn after {r['first_map_s']}s: "
                f"{r['first_map']}; work {r['first_map_work']}), server start {r['server_start_s']}s, "
                f"{r['charts']} charts, page {r['page_height']} px high -> {r['screenshot']}"
            )
            for k, v in (r['map_steps'] or {}).items():
                print(f'  {k}: {v}')
            if r['network_requests_off_this_machine']:
                print(f"  NETWORK: {r['network_requests_off_this_machine'][:5]}")
            results.append(r)
    plots = plot_timings(ck, out) if a.plots else None
    res = ROOT / 'results' / f'app_screenshots{tag}.json'
    res.parent.mkdir(parents=True, exist_ok=True)
    res.write_text(json.dumps({'checkpoint': ck, 'results': results, 'plots': plots}, indent=1) + '\n')
    ok = all(r['ready'] and not r['network_requests_off_this_machine'] for r in results)
    return 0 if ok and all(r['rc'] == 0 for r in plots or []) else 1


if __name__ == '__main__':
    sys.exit(main())
