"""Benchmark validation against training, per sample, on a prepared world (the trainer's own code paths).

A child process prepares the data (cached), builds the trainer (--model_scale 0.75 by default), takes K training
steps (timed: the cost of a training pass per sample), then validates on the first --val_samples validation
samples (timed), and prints the metrics. --src runs another checkout's code (e.g. main's, for a before/after on
the same model: the same seed and steps give the same weights).

    python bench/validate.py /tmp/w/combined.parquet --val_samples 20000 --tag after
    python bench/validate.py /tmp/w/combined.parquet --val_samples 20000 --src /tmp/main_src --tag before

Writes bench/results/validate.json (one entry per --tag, merged): CPU and wall seconds per sample of both, their
ratio, peak RSS, the 1-minute load average, torch threads, and the metrics (to compare two versions).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from data_prep import run, save_tagged  # noqa: E402  (the child runner with its RSS watchdog)

CHILD = r'''
import json, os, resource, sys, time
args = json.loads(sys.argv[1])
if args['src']:
    sys.path.insert(0, args['src'])
import numpy as np, torch
torch.set_num_threads(args['threads'])
from geosdm.config import TrainConfig
from geosdm.trainer import Trainer, prepare
from geosdm.batches import DeviceSamples
cfg = TrainConfig(data_path=args['data'], checkpoint_dir=args['work'], model_scale=args['scale'], device='cpu',
                  data_cache_dir=args['cache'], seed=0)
prep = prepare(cfg, progress=False)
tr = Trainer(cfg, prep)
B = tr.batch_size
gen = torch.Generator(); gen.manual_seed(1)
order, size = tr._epoch_order(gen)
def steps(k, start):
    for i in range(start, start + k):
        b = tr._batch(order[i * B:(i + 1) * B], 0.0, gen, size)
        tr._step(tr._losses(b, gen, tr.label_weights, train=True)['loss'])
tr.model.train()
steps(args['warmup'], 0)
t0, c0 = time.perf_counter(), time.process_time()
steps(args['steps'], args['warmup'])
t_train, c_train = time.perf_counter() - t0, time.process_time() - c0
n = min(args['val_samples'] or len(prep.val), len(prep.val))
val = prep.val.subset(np.arange(n))
data = DeviceSamples(val, 'cpu')
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t0, c0 = time.perf_counter(), time.process_time()
m = tr.evaluate(data, val, '')
t_val, c_val = time.perf_counter() - t0, time.process_time() - c0
with torch.no_grad():
    idx = torch.arange(min(n, 2048))
    lat, lon, week, _ = data.inputs(idx)
    z = tr.model(lat, lon, week).species.dense()
    above = float((z > float(np.log(0.05 / 0.95))).float().mean())
ns = args['steps'] * B
print(json.dumps({
    'code': os.path.dirname(sys.modules['geosdm'].__file__), 'threads': torch.get_num_threads(),
    'n_species': prep.n_species, 'batch_size': B, 'train_samples': ns, 'val_samples': n,
    'train_cpu_us_per_sample': 1e6 * c_train / ns, 'train_wall_us_per_sample': 1e6 * t_train / ns,
    'val_cpu_us_per_sample': 1e6 * c_val / n, 'val_wall_us_per_sample': 1e6 * t_val / n,
    'ratio_cpu': (c_val / n) / (c_train / ns), 'ratio_wall': (t_val / n) / (t_train / ns),
    'val_positive_samples': int((val.n_pos() > 0).sum()), 'logits_above_5pct': above,
    'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 'rss_before_val_mb': rss0,
    'metrics': {k: v for k, v in m.items() if isinstance(v, (int, float))},
}))
'''


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('data')
    ap.add_argument('--val_samples', type=int, default=20000, help='0: the whole validation set')
    ap.add_argument('--steps', type=int, default=20, help='timed training steps (after --warmup)')
    ap.add_argument('--warmup', type=int, default=3)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--scale', type=float, default=0.75)
    ap.add_argument('--src', default='')
    ap.add_argument('--tag', default='current')
    ap.add_argument('--cache', default=str(Path(tempfile.gettempdir()) / 'geosdm_bench_cache'))
    ap.add_argument('--max_rss_gb', type=float, default=10.0)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as work:
        args = dict(vars(a), work=work)
        res = run(CHILD, json.dumps(args), max_rss_gb=a.max_rss_gb)
    res.update(data=a.data)
    print(
        f'{a.tag}: {res["n_species"]} species, {res["threads"]} threads (load {res["load_avg_1min"]:.1f}); '
        f'train {res["train_cpu_us_per_sample"]:.0f} us CPU / sample, validation {res["val_cpu_us_per_sample"]:.0f} '
        f'us CPU / sample ({res["val_samples"]} samples): ratio {res["ratio_cpu"]:.2f} CPU, {res["ratio_wall"]:.2f} '
        f'wall; peak RSS {res["peak_rss_mb"]:.0f} MB; logits above 5 %: {100 * res["logits_above_5pct"]:.2f} %'
    )
    print({k: round(v, 5) for k, v in res['metrics'].items() if k in ('map', 'species_map', 'f1_10', 'ece', 'loss')})
    save_tagged('validate', a.tag, res)


if __name__ == '__main__':
    main()
