"""Peak RSS and speed of ordinary training runs under glibc's allocator policies.

The trainer asks glibc to keep freed memory for reuse on the CPU (`geosdm.steps.keep_freed_memory`: no mmap, no
trimming), because mapping and zeroing fresh pages for every step's large tensors cost a third of a step. This
runs the same short training run (geosdm.trainer.train, its own process each) with:

- `keep`: as the trainer does;
- `default`: glibc's defaults (keep_freed_memory replaced by a no-op);
- `keep_no_release`: `keep`, without the validation's hand-back of the freed heap pages (what the trainer did
  before: the heap only grows, so the peak is training's and validation's high-water marks added up).

    python bench/train_memory.py ../shared/data/world_a/combined.parquet --epochs 2 --tag world_a
    python bench/train_memory.py ../shared/data/world_a/combined.parquet --epochs 2 --tag world_a_main \
        --src ../main --policies keep default      # another checkout's code (no geosdm.validation there)

Writes bench/results/train_memory.json: per policy the process's peak RSS, CPU and wall seconds, the training
seconds and samples/s of each epoch and the validation seconds, with the 1-minute load average.
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
from data_prep import run  # noqa: E402  (the child runner with its RSS watchdog)

CHILD = r'''
import json, os, resource, sys, time
a = json.loads(sys.argv[1])
if a['src']:
    sys.path.insert(0, a['src'])
import torch
torch.set_num_threads(a['threads'])
import geosdm.trainer as T
if a['policy'] == 'default':
    T.keep_freed_memory = lambda: False
if a['policy'] == 'keep_no_release':
    try:
        import geosdm.validation as V
        V.release_freed_memory = lambda: False
    except ImportError:  # older code has no geosdm.validation: there is nothing to turn off
        pass
from geosdm.config import TrainConfig
cfg = TrainConfig(data_path=a['data'], checkpoint_dir=a['work'], num_epochs=a['epochs'], device='cpu',
                  data_cache_dir=a['cache'], model_scale=a['scale'], save_every=1000, patience=0)
c0 = time.process_time()
tr = T.train(cfg, progress=False)
h = tr.history
print(json.dumps({'policy': a['policy'], 'code': os.path.dirname(T.__file__),
                  'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  'cpu_s': time.process_time() - c0, 'train_seconds': h.get('train_seconds'),
                  'train_samples_per_s': h.get('train_samples_per_s'), 'val_seconds': h.get('val_seconds'),
                  'val_geoscore': h.get('val_geoscore')}))
'''


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('data')
    ap.add_argument('--epochs', type=int, default=2)
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--scale', type=float, default=0.75)
    ap.add_argument('--policies', nargs='+', default=['keep', 'default', 'keep_no_release'])
    ap.add_argument('--tag', default='current')
    ap.add_argument('--src', default='', help='a folder holding another geosdm package to measure (default: this one)')
    ap.add_argument('--cache', default=str(Path(tempfile.gettempdir()) / 'geosdm_bench_cache'))
    a = ap.parse_args()
    if a.src:  # another version's cache format may differ
        a.cache = f'{a.cache}_{Path(a.src).resolve().name}'
    res = {'data': a.data, 'epochs': a.epochs, 'threads': a.threads, 'scale': a.scale, 'src': a.src, 'runs': []}
    for pol in a.policies:
        with tempfile.TemporaryDirectory() as work:
            r = run(CHILD, json.dumps(dict(vars(a), work=work, policy=pol)))
        res['runs'].append(r)
        print(
            f'{pol:>16}: peak RSS {r["peak_rss_mb"]:.0f} MB, CPU {r["cpu_s"]:.0f} s, wall {r["wall_s"]:.0f} s '
            f'(load {r["load_avg_1min"]:.1f}); train s/epoch {r["train_seconds"]}, val s {r["val_seconds"]}',
            flush=True,
        )
    out = HERE / 'results' / 'train_memory.json'
    out.parent.mkdir(parents=True, exist_ok=True)
    allres = json.loads(out.read_text()) if out.exists() else {}
    allres[a.tag] = res
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix='.tmp')
    with os.fdopen(fd, 'w') as f:
        json.dump(allres, f, indent=1)
    os.replace(tmp, out)


if __name__ == '__main__':
    main()
