"""Peak RSS and speed of ordinary training runs, stage by stage, under glibc's allocator policies.

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
    python bench/train_memory.py /work/scale_world/combined.parquet --epochs 1 --max_steps 300 \
        --policies keep --tag scale                # the real size: all cells and species, 300 steps

`--max_steps` caps the steps of each epoch (the trainer's `steps_per_epoch`; the data stay whole, so memory is the
real job's); `--sample_fraction` instead keeps a share of the cells. Each stage's end is marked with the peak RSS
so far (ru_maxrss) and the current RSS: prepare, trainer (model, optimiser, data on the device), each epoch's
training and validation, each checkpoint saved, calibration (`calibrate_run`, learned on the validation cells after
training). A run stopped by the RSS watchdog (--max_rss_gb) still reports the stages it finished. --cache: the
prepared-data cache (a fresh folder: a cold preparation, as the real job's first run).

Writes bench/results/train_memory.json (one entry per --tag, merged): per policy the process's peak RSS, CPU and
wall seconds, the stages, the training seconds and samples/s of each epoch and the validation seconds, with the
1-minute load average.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from data_prep import rss_mb, save_tagged  # noqa: E402

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
t_start, c_start = time.perf_counter(), time.process_time()


def mark(stage, t0, **kw):
    "One stage done: peak RSS so far, RSS now, seconds (appended to the marks file at once)."
    with open('/proc/self/status') as f:
        now = next(int(l.split()[1]) / 1024 for l in f if l.startswith('VmRSS:'))
    m = dict(stage=stage, peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
             rss_mb=round(now, 1), seconds=round(time.perf_counter() - t0, 2), **kw)
    with open(a['marks'], 'a') as f:
        f.write(json.dumps(m) + '\n')


def staged(name, fn):
    def wrapped(*args, **kw):
        t0 = time.perf_counter()
        r = fn(*args, **kw)
        mark(name, t0)
        return r
    return wrapped


T.prepare = staged('prepare', T.prepare)
if a['calibrate']:
    T.calibrate_run = staged('calibration', T.calibrate_run)
else:
    T.calibrate_run = lambda *args, **kw: []


class Capped(T.Trainer):
    def __init__(self, *args, **kw):
        t0 = time.perf_counter()
        super().__init__(*args, **kw)
        if a['max_steps']:
            self.steps_per_epoch = min(self.steps_per_epoch, a['max_steps'])
        mark('trainer', t0, batch_size=self.batch_size, steps_per_epoch=self.steps_per_epoch,
             n_train=len(self.prep.train), n_val=len(self.prep.val), n_species=self.prep.n_species)

    def train_epoch(self, progress=True):
        t0 = time.perf_counter()
        r = super().train_epoch(progress)
        mark(f'train epoch {self.epoch + 1}', t0)
        return r

    def validate(self):
        t0 = time.perf_counter()
        r = super().validate()
        mark(f'validation {self.epoch}', t0)
        return r

    def save(self, name):
        t0 = time.perf_counter()
        r = super().save(name)
        mark(f'save {name.removeprefix("checkpoint_").removesuffix(".pt")}', t0)
        return r


T.Trainer = Capped
from geosdm.config import TrainConfig
cfg = TrainConfig(data_path=a['data'], checkpoint_dir=a['work'], num_epochs=a['epochs'], device='cpu',
                  data_cache_dir=a['cache'], model_scale=a['scale'], save_every=1000, patience=0,
                  sample_fraction=a['sample_fraction'])
tr = T.train(cfg, progress=False)
h = tr.history
print(json.dumps({'policy': a['policy'], 'code': os.path.dirname(T.__file__),
                  'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  'cpu_s': time.process_time() - c_start, 'train_seconds': h.get('train_seconds'),
                  'train_samples_per_s': h.get('train_samples_per_s'), 'val_seconds': h.get('val_seconds'),
                  'val_geoscore': h.get('val_geoscore')}))
'''


def run_child(args: dict, max_rss_gb: float) -> dict:
    "Run one training in a child python under an RSS watchdog; its result, stages, wall seconds and load average."
    load = os.getloadavg()[0]
    t0, peak_seen, stopped = time.perf_counter(), 0.0, False
    with tempfile.TemporaryFile('w+') as out, tempfile.TemporaryFile('w+') as err:
        p = subprocess.Popen([sys.executable, '-c', CHILD, json.dumps(args)], stdout=out, stderr=err, cwd=HERE.parent)
        while p.poll() is None:
            r = rss_mb(p.pid)
            peak_seen = max(peak_seen, r)
            if r > max_rss_gb * 1024:
                p.kill()
                p.wait()
                stopped = True
                break
            time.sleep(0.2)
        out.seek(0)
        err.seek(0)
        lines = out.read().strip().splitlines()
        if p.returncode and not stopped:
            raise SystemExit(f'train_memory: child failed ({p.returncode}):\n{err.read()[-3000:]}')
    marks = Path(args['marks'])
    stages = [json.loads(x) for x in marks.read_text().splitlines()] if marks.exists() else []
    res = json.loads(lines[-1]) if lines and not stopped else {'policy': args['policy']}
    if stopped:
        res['stopped'] = f'RSS passed {max_rss_gb} GB after stage {stages[-1]["stage"] if stages else None!r}'
    res.update(stages=stages, watchdog_peak_rss_mb=round(peak_seen, 1))
    res.update(wall_s=round(time.perf_counter() - t0, 2), load_avg_1min=load, load_avg_end=os.getloadavg()[0])
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('data')
    ap.add_argument('--epochs', type=int, default=2)
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--scale', type=float, default=0.75)
    ap.add_argument('--max_steps', type=int, default=0, help='cap on the steps of each epoch (0: all)')
    ap.add_argument('--sample_fraction', type=float, default=1.0)
    ap.add_argument('--no_calibration', action='store_true', help="skip the calibration after training")
    ap.add_argument('--policies', nargs='+', default=['keep', 'default', 'keep_no_release'])
    ap.add_argument('--tag', default='current')
    ap.add_argument('--src', default='', help='a folder holding another geosdm package to measure (default: this one)')
    ap.add_argument('--cache', default=str(Path(tempfile.gettempdir()) / 'geosdm_bench_cache'))
    ap.add_argument('--max_rss_gb', type=float, default=12.0, help='the watchdog stops a run past this RSS')
    a = ap.parse_args()
    if a.src:  # another version's cache format may differ
        a.cache = f'{a.cache}_{Path(a.src).resolve().name}'
    res = {k: getattr(a, k) for k in ('data', 'epochs', 'threads', 'scale', 'max_steps', 'sample_fraction', 'src')}
    res.update(calibration=not a.no_calibration, runs=[])
    for pol in a.policies:
        with tempfile.TemporaryDirectory() as work:
            args = dict(vars(a), work=work, policy=pol, marks=f'{work}/marks.jsonl', calibrate=not a.no_calibration)
            r = run_child(args, a.max_rss_gb)
        res['runs'].append(r)
        for s in r['stages']:
            print(
                f'{pol:>16} {s["stage"]:>14}: peak RSS {s["peak_rss_mb"]:6.0f} MB, now {s["rss_mb"]:6.0f} MB, '
                f'{s["seconds"]:7.1f} s',
                flush=True,
            )
        if 'stopped' in r:
            print(f'{pol:>16}: {r["stopped"]} (load {r["load_avg_1min"]:.1f})', flush=True)
        else:
            print(
                f'{pol:>16}: peak RSS {r["peak_rss_mb"]:.0f} MB, CPU {r["cpu_s"]:.0f} s, wall {r["wall_s"]:.0f} s '
                f'(load {r["load_avg_1min"]:.1f}..{r["load_avg_end"]:.1f}); train s/epoch {r["train_seconds"]}, '
                f'val s {r["val_seconds"]}',
                flush=True,
            )
    save_tagged('train_memory', a.tag, res)


if __name__ == '__main__':
    main()
