"""Speed of geosdm_filter: detections per second on BirdNET Analyzer CSVs, end to end (read, judge, write).

Writes `--files` result files of `--rows` detections each (species drawn from the model's vocabulary, a few
unknown names and always-plausible labels, `--places` recorder places, weeks from their rows), then times
`geosdm.filter.filter_files` on the folder: the model runs once per distinct (place, week). Uses the world_a model of
`bench/train.py` when it is there (5,656 species), else trains the demo-world model. Writes bench/results/filter.json.

    OMP_NUM_THREADS=1 python bench/filter.py [--checkpoint P] [--files 100] [--rows 2000] [--places 20]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / 'bench' / 'results'


def write_files(folder: Path, pred, n_files: int, n_rows: int, n_places: int, seed: int = 0) -> int:
    "BirdNET CSVs with lat, lon and week columns; returns the number of detections written."
    rng = np.random.default_rng(seed)
    lat = rng.uniform(-40, 60, n_places)
    lon = rng.uniform(-120, 140, n_places)
    sci = np.array(list(pred.sci_names) + ['Homo sapiens', 'Nonesuch bird'], dtype=object)
    com = np.array(list(pred.common_names) + ['Human vocal', 'Nonesuch'], dtype=object)
    for f in range(n_files):
        k = f % n_places
        week = 1 + (f * 7) % 48
        sp = rng.integers(0, len(sci), n_rows)
        conf = rng.uniform(0.1, 1.0, n_rows)
        start = np.arange(n_rows) * 3.0
        lines = ['Start (s),End (s),Scientific name,Common name,Confidence,File,lat,lon,week']
        lines += [
            f'{s:.1f},{s + 3:.1f},{sci[j]},"{com[j]}",{c:.4f},rec{f}.wav,{lat[k]:.4f},{lon[k]:.4f},{week}'
            for s, j, c in zip(start, sp, conf)
        ]
        (folder / f'rec{f:04d}.BirdNET.results.csv').write_text('\n'.join(lines) + '\n')
    return n_files * n_rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--checkpoint', default=str(OUT / 'ck_scale0.5' / 'checkpoint_best.pt'))
    ap.add_argument('--files', type=int, default=100)
    ap.add_argument('--rows', type=int, default=2000)
    ap.add_argument('--places', type=int, default=20)
    ap.add_argument('--out', default=str(OUT / 'filter.json'))
    a = ap.parse_args()
    from geosdm.core import write_json
    from geosdm.filter import filter_files, filter_names
    from geosdm.predict import Predictor

    ck = Path(a.checkpoint)
    if not ck.is_file():
        from geosdm.demo import demo_checkpoint

        ck = demo_checkpoint()
    pred = Predictor(ck, device='cpu')
    tmp = Path(tempfile.mkdtemp())
    try:
        (tmp / 'in').mkdir()
        n = write_files(tmp / 'in', pred, a.files, a.rows, a.places)
        (tmp / 'always.csv').write_text('Homo sapiens_Human vocal\n')
        names = filter_names(pred, always=tmp / 'always.csv')
        pred.predict([0.0], [0.0], [1])  # warm up
        t0 = time.perf_counter()
        run = filter_files(pred, [tmp / 'in'], names, output=tmp / 'out')
        sec = time.perf_counter() - t0
        t1 = time.perf_counter()
        pred.predict(np.zeros(run.pairs), np.zeros(run.pairs), np.ones(run.pairs))
        model_sec = time.perf_counter() - t1
    finally:
        shutil.rmtree(tmp)
    res = {
        'checkpoint': str(ck),
        'n_species': pred.n_species,
        'files': a.files,
        'detections': n,
        'distinct_place_weeks': run.pairs,
        'seconds': round(sec, 3),
        'detections_per_s': round(n / sec),
        'model_seconds_for_the_place_weeks': round(model_sec, 3),
        'kept': run.kept,
        'not_in_the_model': sum(run.unmatched.values()),
        'omp_num_threads': os.environ.get('OMP_NUM_THREADS'),
        'load_avg': os.getloadavg(),
    }
    write_json(a.out, res)
    print(json.dumps(res, indent=1))


if __name__ == '__main__':
    main()
