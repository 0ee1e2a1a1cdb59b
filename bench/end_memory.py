"""Peak RSS and seconds of the passes after training at the real size: the calibration (geosdm.calibrate.calibrate,
which train() runs on the best and latest checkpoints, on the weekly validation samples with a record) and the
evaluation of a split (geosdm.evaluate.evaluate_split, the calibration app's), each in its own process under an RSS
watchdog (a run past --max_rss_gb is stopped and reported as such).

A checkpoint with the vocabulary of a prepared world (default: the 12,000 species of a production-size world, made
with bench/scale_world.py) is written once, with untrained weights (--ckpt: an existing one). `--rows N` keeps the
first N validation samples (0: all), so that code which holds samples × species arrays can be measured at a size
that fits; `--src` measures another checkout's code.

    python bench/end_memory.py /work/scale_world/combined.parquet --tag after
    python bench/end_memory.py /work/scale_world/combined.parquet --rows 50000 --src /tmp/before_src --tag before_50k

Writes bench/results/end_memory.json (one entry per --tag, merged): per pass the samples, peak RSS, the peak above
the RSS after loading the data, CPU and wall seconds, a few results to compare, and the 1-minute load average.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from data_prep import run, save_tagged  # noqa: E402  (the child runner with its RSS watchdog)
from predictor import MAKE  # noqa: E402  (writes a checkpoint of untrained weights for a world's vocabulary)

CHILD = r'''
import json, os, resource, sys, time
a = json.loads(sys.argv[1])
if a['src']:
    sys.path.insert(0, a['src'])
import numpy as np, torch
torch.set_num_threads(a['threads'])
from geosdm.config import TrainConfig
from geosdm.trainer import prepare
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
cfg = TrainConfig(data_path=a['data'], checkpoint_dir=a['work'], model_scale=a['scale'], device='cpu',
                  data_cache_dir=a['cache'])
prep = prepare(cfg, progress=False)
if a['rows']:
    prep.val = prep.val.subset(np.arange(min(a['rows'], len(prep.val))))
base = peak()
t0, c0 = time.perf_counter(), time.process_time()
if a['what'] == 'calibrate':
    from geosdm.calibrate import calibrate, validation_lists
    from geosdm.checkpoint import load_checkpoint
    from geosdm.model import create_model
    ck = load_checkpoint(a['ckpt'])
    model = create_model(**ck['model_config'])
    model.load_state_dict(ck['model_state_dict'])
    cal = calibrate(model, prep)
    out = {'samples': len(validation_lists(prep)), 'global_threshold': cal.global_threshold,
           'f1_threshold': cal.info['f1_threshold'], 'levels': cal.levels, 'offsets_sum': float(np.sum(cal.offsets))}
else:
    from geosdm.evaluate import evaluate_split
    from geosdm.predict import Predictor
    ev = evaluate_split(Predictor(a['ckpt'], device='cpu'), prep, 'val')
    out = {'samples': len(ev['samples']), 'map': float(np.nanmean(ev['ap'])), 'kept_probs': 'probs' in ev,
           'n_pred_sum': ev['n_pred'].sum(0).tolist(), 'tp_sum': ev['tp'].sum(0).tolist()}
out.update(what=a['what'], code=os.path.dirname(sys.modules['geosdm'].__file__), wall_s=time.perf_counter() - t0,
           cpu_s=time.process_time() - c0, rss_after_data_mb=base, peak_rss_mb=peak(), above_data_mb=peak() - base)
print(json.dumps(out))
'''


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('data', help='a combined parquet (its vocabulary sizes the model)')
    ap.add_argument('--what', nargs='+', default=['calibrate', 'evaluate'], choices=['calibrate', 'evaluate'])
    ap.add_argument('--rows', type=int, default=0, help='the first ROWS validation samples (0: all)')
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--scale', type=float, default=0.75)
    ap.add_argument('--src', default='', help='a folder holding another geosdm package to measure (default: this one)')
    ap.add_argument('--tag', default='current')
    ap.add_argument('--ckpt', default='', help='an existing checkpoint (default: made from DATA)')
    ap.add_argument('--cache', default=str(Path(tempfile.gettempdir()) / 'geosdm_bench_cache'))
    ap.add_argument('--max_rss_gb', type=float, default=10.0)
    a = ap.parse_args()
    res = {'data': a.data, 'rows': a.rows, 'threads': a.threads, 'src': a.src, 'runs': []}
    with tempfile.TemporaryDirectory() as d:
        ckpt = a.ckpt or run(MAKE, json.dumps(dict(vars(a), src='', ckpt_dir=d)))['path']
        for what in a.what:
            try:
                r = run(CHILD, json.dumps(dict(vars(a), ckpt=ckpt, what=what, work=d)), max_rss_gb=a.max_rss_gb)
                print(
                    f'{a.tag} {what}: {r["samples"]:,} samples, peak RSS {r["peak_rss_mb"]:,.0f} MB '
                    f'({r["above_data_mb"]:,.0f} above the data), CPU {r["cpu_s"]:.0f} s, wall {r["wall_s"]:.0f} s '
                    f'(load {r["load_avg_1min"]:.1f})',
                    flush=True,
                )
            except SystemExit as e:  # the watchdog (or a failure): reported, the other passes still run
                r = {'what': what, 'stopped': str(e)[:2000], 'load_avg_1min': os.getloadavg()[0]}
                print(f'{a.tag} {what}: {r["stopped"][:300]}', flush=True)
            res['runs'].append(r)
    save_tagged('end_memory', a.tag, res)


if __name__ == '__main__':
    main()
