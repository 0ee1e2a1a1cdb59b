"""Wall-clock figures that the tests used to assert, and that a busy shared machine broke: how fast each console
script answers a mistake, how long a world of world_a's size takes to simulate, and how many free cores
`CpuShare` sees beside one busy process. (Preparing world_a cold and from its cache: bench/data_prep.py.)

Usage: python bench/wall_clock.py [--repeats 3]
Prints the figures and writes bench/results/wall_clock.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
MISTAKES = {  # a mistake each script answers in one line, before loading torch or the data
    'geosdm_train': ['--lr', '-1'],
    'geosdm_predict': ['--lat', '95', '--lon', '0'],
    'geosdm_export': ['--common_species', '-1'],
    'geosdm_plot': ['richness', '--threshold', '2'],
    'geosdm_ingest': ['nope.zip', '--resolution', '3'],
    'geosdm_app': ['nope'],
}


def answer_seconds(prog: str, args: list[str], repeats: int) -> dict:
    "Seconds from start to exit of `prog args` (a mistake): median and max over `repeats` runs."
    secs = []
    with tempfile.TemporaryDirectory() as d:
        for _ in range(repeats):
            t0 = time.perf_counter()
            r = subprocess.run([str(BIN / prog), *args], capture_output=True, text=True, cwd=d)
            secs.append(time.perf_counter() - t0)
            assert r.returncode == 2, (prog, r.stderr)
    return {'median_s': round(statistics.median(secs), 3), 'max_s': round(max(secs), 3)}


def simulate_seconds(repeats: int) -> dict:
    "Seconds to simulate 300 species on every resolution-2 land cell (world_a's size)."
    from geosdm.simulate import simulate_world

    secs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        w = simulate_world(n_species=300, res=2, seed=11)
        secs.append(time.perf_counter() - t0)
    return {'cells': w.n_cells, 'species': w.n_species, 'median_s': round(statistics.median(secs), 2)}


def free_cores_beside_a_busy_process() -> dict:
    "What `CpuShare.free_cores` reports before and while one other process keeps a core busy."
    from geosdm.core import CpuShare

    s = CpuShare()
    before = s.free_cores(1.0)
    hog = subprocess.Popen([sys.executable, '-c', 'while True: pass'])
    try:
        time.sleep(0.5)
        s.free_cores(0.01)
        during = s.free_cores(1.0)
    finally:
        hog.kill()
        hog.wait()
    return {'cores': s.cores, 'free_before': before, 'free_beside_one_busy': during, 'load': os.getloadavg()[0]}


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--repeats', type=int, default=3)
    a = p.parse_args()
    res = {
        'machine': {'cpus': os.cpu_count(), 'python': platform.python_version(), 'load_1min': os.getloadavg()[0]},
        'answer_a_mistake': {prog: answer_seconds(prog, args, a.repeats) for prog, args in MISTAKES.items()},
        'simulate_world_a_size': simulate_seconds(a.repeats),
        'cpu_share': free_cores_beside_a_busy_process(),
    }
    print(json.dumps(res, indent=1))
    out = HERE / 'results' / 'wall_clock.json'
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + '\n')


if __name__ == '__main__':
    main()
