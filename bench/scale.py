"""The real job at its real size: every stage of geosdm on the production-size world of `bench/scale_world.py`
(287,525 H3 res-4 cells, 12,000 species, about 70 M labels and 75 M records), each stage in a fresh process whose
wall time and peak RSS (`os.wait4`, that process alone) are measured, set beside the targets for a 2-core, 24 GB
machine.

    python bench/scale.py                          # makes the world first if bench/results/scale_world/ lacks it
    python bench/scale.py --world /tmp/w --train_steps 0   # a whole epoch (12.7 M samples: hours on 2 cores)
    python bench/scale.py --stages prepare train   # some stages again, merged into scale.json (--fresh: anew)
    python bench/scale.py --print                  # the table of bench/results/scale.json

Stages: ingest_parquet and ingest_dwca (`geosdm_ingest` with the world's grid and taxonomy; the output is
compared with the world's combined parquet), prepare_cold and prepare_warm (`geosdm.trainer.prepare` as
`geosdm_train` calls it: cache built, then read), train (`--model_scale 0.75`: `--train_steps N` steps after 3
warm-up steps, extrapolated to an epoch and labelled so; 0 = a whole epoch), validate (in the train stage's
process, which then writes the checkpoints and history the later stages use: `--val_samples` random
validation rows, 50,000 by default, the time scaled to the whole set and labelled so; 0 = the whole set; the ratio
to the training time of as many samples, by wall and by CPU seconds), checkpoint size, export (`geosdm_export`: size
and check of each format), predictor (`Predictor` predictions/s on the CPU, batches of 10,000 and of 1), plots
(`geosdm_plot` training, range, richness, phenology, env), apps (first render of each app,
`bench/app_screenshots.py`; skipped without Chromium). A stage that fails is recorded with its one-line error and
the next one runs. A stage whose process grows past `--max_rss_gb` is stopped and recorded as failed.

Writes bench/results/scale.json and prints a table. The machine's load average is recorded with every stage: on a
shared machine the wall times are longer than the CPU seconds suggest.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / 'results'
TRAIN_ARGS = ['--model_scale', '0.75', '--device', 'cpu', '--num_epochs', '1', '--patience', '0', '--overwrite']
TARGETS = {  # figure: (comparison, value, unit)
    'ingest_parquet.records_per_s': ('>=', 1e6, 'records/s'),
    'ingest_parquet.peak_rss_mb': ('<=', 4096, 'MB'),
    'ingest_dwca.records_per_s': ('>=', 5e5, 'records/s'),
    'prepare_cold.seconds': ('<=', 20, 's'),
    'prepare_cold.peak_rss_mb': ('<=', 3072, 'MB'),
    'train.peak_rss_mb': ('<=', 4096, 'MB'),
    'validate.ratio_to_training': ('<=', 0.10, ''),
    'export.onnx_fp16_mb': ('<=', 8, 'MB'),
    'export.onnx_fp16_check': ('==', True, ''),
    'export.int8_mb': ('<=', 4.5, 'MB'),
    'predictor.predictions_per_s': ('>=', 2e4, '/s'),
}

# ---------------------------------------------------------------- child programs (run with python -c)

PREPARE = r'''
import json, resource, sys, time
from geosdm.config import TrainConfig, build_parser
from geosdm.trainer import prepare
cpu = lambda: (lambda r: r.ru_utime + r.ru_stime)(resource.getrusage(resource.RUSAGE_SELF))
cfg = TrainConfig(**vars(build_parser().parse_args(sys.argv[1:])))
t0, c0 = time.perf_counter(), cpu()
p = prepare(cfg, progress=False)
print('RESULT ' + json.dumps({'prepare_s': round(time.perf_counter() - t0, 2), 'prepare_cpu_s': round(cpu() - c0, 2),
      'from_cache': p.stats['from_cache'],
      'stage_seconds': p.stats.get('seconds'), 'cells': len(p.cells), 'samples_train': len(p.train),
      'samples_val': len(p.val), 'samples_holdout': len(p.holdout) if p.holdout is not None else 0,
      'n_species': p.n_species, 'labels_train': p.train.nnz}))
'''

TRAIN = r'''
import json, resource, sys, time
import torch
cpu = lambda: (lambda r: r.ru_utime + r.ru_stime)(resource.getrusage(resource.RUSAGE_SELF))
from geosdm.config import TrainConfig, build_parser
from geosdm.core import write_json
from geosdm.trainer import Trainer, prepare
steps, val_max, warm = int(sys.argv[1]), int(sys.argv[2]), 3
cfg = TrainConfig(**vars(build_parser().parse_args(sys.argv[3:])))
t0 = time.perf_counter()
prep = prepare(cfg, progress=False)
tr = Trainer(cfg, prep)
setup_s, full = time.perf_counter() - t0, tr.steps_per_epoch
res = {'setup_s': round(setup_s, 2), 'batch_size': tr.batch_size, 'steps_per_epoch': full,
       'threads': torch.get_num_threads(), 'samples_train': len(prep.train), 'n_species': prep.n_species,
       'parameters': sum(p.numel() for p in tr.model.parameters())}
if 0 < steps < full:
    tr.steps_per_epoch = warm
    tr.train_epoch(progress=False)
    tr.steps_per_epoch = steps
c0 = cpu()
row = tr.train_epoch(progress=False)
c_train = cpu() - c0
tr.steps_per_epoch = full
res.update(steps_timed=steps if 0 < steps < full else full, warmup_steps=warm if 0 < steps < full else 0,
           seconds_timed=round(row['train_seconds'], 2), samples_per_s=round(row['train_samples_per_s'], 1),
           extrapolated=0 < steps < full, epoch_s=round(full * tr.batch_size / row['train_samples_per_s'], 1),
           cpu_s_timed=round(c_train, 1),
           samples_per_cpu_s=round(row['train_samples_per_s'] * row['train_seconds'] / c_train, 1))
print('TRAIN ' + json.dumps(res), flush=True)
tr.epoch = 1
from geosdm.batches import DeviceSamples
import numpy as np
n_all = len(prep.val) + (len(prep.holdout) if prep.holdout is not None else 0)
if 0 < val_max < len(prep.val):  # a random subset of the validation rows; the time is scaled to the whole set
    keep = np.sort(np.random.default_rng(0).choice(len(prep.val), val_max, replace=False))
    prep.val = prep.val.subset(keep)
    tr.val_data = DeviceSamples(prep.val, tr.device)
tv, c0 = time.perf_counter(), cpu()
row.update(tr.validate())
val_s, val_cpu = time.perf_counter() - tv, cpu() - c0
n_val = len(prep.val) + (len(prep.holdout) if prep.holdout is not None else 0)
row.update(val_seconds=val_s, epoch=1, epoch_seconds=row['train_seconds'] + val_s)
tr.best_geoscore, tr.best_epoch = row['val_geoscore'], 1
row['best_geoscore'] = tr.best_geoscore
tr._record(row)
tr.ckpt_dir.mkdir(parents=True, exist_ok=True)
ck = tr.save('checkpoint_best.pt')
tr.save('checkpoint_latest.pt')
write_json(tr.ckpt_dir / 'training_history.json', tr.history)
res['validate'] = {'seconds': round(val_s, 2), 'samples': n_val, 'samples_whole_set': n_all,
                   'extrapolated': n_val < n_all, 'seconds_whole_set': round(val_s * n_all / n_val, 1),
                   'training_s_same_samples': round(n_val / row['train_samples_per_s'], 2),
                   'ratio_to_training': round(val_s / (n_val / row['train_samples_per_s']), 3),
                   'cpu_s': round(val_cpu, 1),
                   'ratio_to_training_cpu': round(val_cpu / (n_val / res['samples_per_cpu_s']), 3),
                   'geoscore': row['val_geoscore']}
res['checkpoint_mb'] = round(ck.stat().st_size / 1e6, 2)
print('RESULT ' + json.dumps(res))
'''

PREDICT = r'''
import json, sys, time
import numpy as np
import torch
from geosdm.predict import Predictor
pr = Predictor(sys.argv[1], device='cpu')
rng = np.random.default_rng(0)
out = {'threads': torch.get_num_threads(), 'n_species': len(pr.vocab)}
for n, reps in ((10_000, 3), (1, 200)):
    lat, lon, wk = rng.uniform(-60, 75, n), rng.uniform(-180, 180, n), rng.integers(1, 49, n)
    pr.predict(lat, lon, wk)
    best = float('inf')
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(reps):
            pr.predict(lat, lon, wk)
        best = min(best, time.perf_counter() - t)
    out[f'batch_{n}'] = round(n * reps / best, 1)
print('RESULT ' + json.dumps(out))
'''

SAME = r'''
import json, sys
import polars as pl
from geosdm.core import WEEK_COLS
a = pl.read_parquet(sys.argv[1], columns=['h3_index'] + WEEK_COLS).sort('h3_index')
b = pl.scan_parquet(sys.argv[2]).select('h3_index', *[pl.col(c).list.sort() for c in WEEK_COLS]).collect()
print('RESULT ' + json.dumps(a.equals(b.sort('h3_index'))))
'''

# ---------------------------------------------------------------- running one process


def _rss_mb(pid: int) -> float:
    try:
        with open(f'/proc/{pid}/status') as f:
            return next(int(ln.split()[1]) for ln in f if ln.startswith('VmRSS:')) / 1024
    except (OSError, StopIteration):
        return 0.0


def run(cmd: list[str], log: Path, max_rss_mb: float, timeout: float, env: dict | None = None) -> dict:
    """Run `cmd` with its output in `log`; wall seconds, CPU seconds, peak RSS of that process, exit status, the
    output's RESULT line (JSON) and, on failure, the last line of its errors."""
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    with open(log, 'w') as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        why = []

        def guard():
            while p.returncode is None and not why:
                if _rss_mb(p.pid) > max_rss_mb:
                    why.append(f'stopped: RSS above {max_rss_mb:,.0f} MB')
                elif time.perf_counter() - t0 > timeout:
                    why.append(f'stopped: running longer than {timeout:,.0f} s')
                else:
                    time.sleep(0.5)
                    continue
                os.killpg(p.pid, signal.SIGKILL)

        threading.Thread(target=guard, daemon=True).start()
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
    text = log.read_text(errors='replace')
    res = {
        'wall_s': round(time.perf_counter() - t0, 2),
        'cpu_s': round(ru.ru_utime + ru.ru_stime, 2),
        'peak_rss_mb': round(ru.ru_maxrss / 1024, 1),
        'exit': p.returncode,
        'load_avg_1min': round(load, 2),
    }
    lines = [ln for ln in text.splitlines() if ln.startswith('RESULT ')]
    if lines:
        res['result'] = json.loads(lines[-1][7:])
    if p.returncode or why:
        errs = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith(' ')]
        res['error'] = why[0] if why else (errs[-1] if errs else f'exit status {p.returncode}')
    return res


def tool(name: str) -> str:
    "A console script of this environment (beside the python running this)."
    p = Path(sys.executable).with_name(name)
    return str(p) if p.exists() else name


# ---------------------------------------------------------------- the stages


class Bench:
    "The stages, sharing the world's paths, the work folder and the results."

    def __init__(self, a):
        self.a, self.world, self.work = a, Path(a.world), Path(a.work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.combined, self.tax = self.world / 'combined.parquet', self.world / 'combined_taxonomy.csv'
        self.ck = self.work / 'run'
        self.cache = self.work / 'cache'
        self.max_rss = a.max_rss_gb * 1024
        self.results: dict = {}

    def child(self, name: str, cmd: list[str], timeout: float | None = None, env: dict | None = None) -> dict:
        r = run(cmd, self.work / f'{name}.log', self.max_rss, timeout or self.a.timeout, env)
        print(
            f'  {name}: {r["wall_s"]:.1f} s, peak RSS {r["peak_rss_mb"]:,.0f} MB'
            + (f'  FAILED: {r["error"]}' if 'error' in r else ''),
            flush=True,
        )
        return r

    def py(self, name: str, code: str, *args, **kw) -> dict:
        return self.child(name, [sys.executable, '-c', code, *map(str, args)], **kw)

    def train_args(self) -> list[str]:
        return [
            '--data_path',
            str(self.combined),
            '--taxonomy',
            str(self.tax),
            '--checkpoint_dir',
            str(self.ck),
            '--data_cache_dir',
            str(self.cache),
            *TRAIN_ARGS,
            *self.a.train_args,
        ]

    def ingest(self, kind: str) -> dict:
        src = self.world / ('records.parquet' if kind == 'parquet' else 'records_dwca.zip')
        out = self.work / f'ingested_{kind}.parquet'
        r = self.child(
            f'ingest_{kind}',
            [
                tool('geosdm_ingest'),
                str(src),
                '-o',
                str(out),
                '--grid',
                str(self.combined),
                '--taxonomy',
                str(self.tax),
                '--work_dir',
                str(self.work),
            ],
        )
        rep = out.with_name(f'{out.stem}_report.json')
        if 'error' not in r and rep.exists():
            rep = json.loads(rep.read_text())
            r.update(
                records=rep['rows_read'],
                records_kept=rep['rows_kept'],
                report_seconds=rep['seconds'],
                records_per_s=round(rep['rows_read'] / r['wall_s']),
                records_per_cpu_s=round(rep['rows_read'] / max(r['cpu_s'], 1e-9)),
                source_mb=round(src.stat().st_size / 1e6),
            )
            if not self.a.no_check:
                same = self.py(f'ingest_{kind}_check', SAME, self.combined, out)
                r['same_as_world'] = same.get('result', same.get('error'))
        return r

    def prepare(self) -> None:
        shutil.rmtree(self.cache, ignore_errors=True)
        for name in ('prepare_cold', 'prepare_warm'):
            r = self.py(name, PREPARE, *self.train_args())
            if 'result' in r:
                r['seconds'], r['prepare_cpu_s'] = r['result']['prepare_s'], r['result'].get('prepare_cpu_s')
                r['cache_mb'] = round(sum(f.stat().st_size for f in self.cache.glob('*')) / 1e6, 1)
            self.results[name] = r

    def train(self) -> None:
        shutil.rmtree(self.ck, ignore_errors=True)
        r = self.py('train', TRAIN, self.a.train_steps, self.a.val_samples, *self.train_args())
        res = r.pop('result', None)
        log = (self.work / 'train.log').read_text(errors='replace').splitlines()
        first = next((json.loads(ln[6:]) for ln in log if ln.startswith('TRAIN ')), None)
        if first:
            r.update({k: v for k, v in first.items()})
        self.results['train'] = r
        if res:
            v = res.pop('validate')
            r.update({k: val for k, val in res.items() if k not in r})
            self.results['validate'] = v
            self.results['checkpoint'] = {'mb': res['checkpoint_mb'], 'path': str(self.ck / 'checkpoint_best.pt')}
        elif first:
            self.results['validate'] = {'error': r.get('error', 'no result')}

    def export(self) -> dict:
        out = self.work / 'exports'
        shutil.rmtree(out, ignore_errors=True)
        help_ = subprocess.run([tool('geosdm_export'), '--help'], capture_output=True, text=True).stdout
        offered = re.search(r'--formats \{([^}]*)\}', help_)
        formats = [f for f in (offered[1].split(',') if offered else ['onnx', 'onnx_fp16']) if f != 'tflite']
        r = self.child(
            'export',
            [
                tool('geosdm_export'),
                '--checkpoint',
                str(self.ck / 'checkpoint_best.pt'),
                '--outdir',
                str(out),
                '--formats',
                *formats,
            ],
        )
        r['formats_offered'] = formats
        for ln in (self.work / 'export.log').read_text(errors='replace').splitlines():
            m = re.match(r'^(\S+)\s+\S+\s+([\d.]+) MB', ln)
            if not m or m[1] not in formats:
                continue
            key = 'int8' if 'int8' in m[1] else m[1]
            old = re.search(r'max \|Δp\| (\S+) \(tolerance (\S+)\)', ln)  # each file checked on its own
            r[f'{key}_mb'], r[f'{key}_line'] = float(m[2]), ln.strip()
            r[f'{key}_check'] = float(old[1]) <= float(old[2]) if old else r['exit'] == 0  # else: all or none
        return r

    def plots(self) -> dict:
        ck, out, res = str(self.ck / 'checkpoint_best.pt'), self.work / 'figures', {}
        top = self._common_species()
        jobs = {
            'training': ['training', str(self.ck), '--outdir', str(out)],
            'range': ['range', '--checkpoint', ck, '--species', top, '--outdir', str(out)],
            'richness': ['richness', '--checkpoint', ck, '--outdir', str(out)],
            'phenology': ['phenology', '--checkpoint', ck, '--lat', '42.5', '--lon', '-76.5', '--outdir', str(out)],
            'env': ['env', '--data_path', str(self.combined), '--outdir', str(out)],
        }
        for name, args in jobs.items():
            r = self.child(f'plot_{name}', [tool('geosdm_plot'), *args])
            res[name] = {k: r[k] for k in ('wall_s', 'cpu_s', 'peak_rss_mb', 'error') if k in r}
        return res

    def _common_species(self) -> str:
        lab = self.ck / 'labels.txt'
        return lab.read_text().split('\n', 1)[0].split('\t')[0].split(',')[0] if lab.exists() else 'sp00000'

    def apps(self) -> dict:
        if not any(shutil.which(n) for n in ('chromium', 'chromium-browser', 'google-chrome', 'google-chrome-stable')):
            return {'skipped': 'no Chromium'}
        out = self.work / 'app_screenshots'
        r = self.child(
            'apps',
            [
                sys.executable,
                str(HERE / 'app_screenshots.py'),
                '--checkpoint',
                str(self.ck / 'checkpoint_best.pt'),
                '--sizes',
                '1280x800',
                '--out',
                str(out),
            ],
            timeout=1200,
        )
        r.update(app_summary(out))
        if 'error' in r and 'apps' in r:
            r['error'] = '; '.join(f'{k}: {v["error"]}' for k, v in r['apps'].items() if 'error' in v) or r['error']
        return r


def app_summary(folder: Path) -> dict:
    "Per app: server start and first render (s), and why an app did not render (the last error of its server)."
    js = RESULTS / 'app_screenshots.json'  # where bench/app_screenshots.py writes its timings
    if not js.exists():
        return {}
    out = {}
    for a in json.loads(js.read_text())['results']:
        out[a['app']] = {'server_start_s': a['server_start_s'], 'first_render_s': a['render_s'], 'ready': a['ready']}
        log = folder / f'{a["app"]}.server.log'
        if not a['ready']:
            text = log.read_text(errors='replace') if log.exists() else ''
            errs = re.findall(r'^[\w.]*(?:Error|Exception): .*$', text, re.M)  # the last line of a traceback
            out[a['app']]['error'] = f'not rendered in {a["render_s"]:.0f} s' + (
                f' ({errs[-1].strip()[:200]})' if errs else ''
            )
    return {'apps': out}


# ---------------------------------------------------------------- figures beside their targets

STAGES = ('ingest_parquet', 'ingest_dwca', 'prepare', 'train', 'export', 'predictor', 'plots', 'apps')


def _get(results: dict, dotted: str):
    stage, key = dotted.split('.', 1)
    return (results.get(stage) or {}).get(key)


def verdicts(results: dict) -> list[dict]:
    "Each target with the measured figure and whether it is met (None: not measured)."
    ops = {'>=': lambda a, b: a >= b, '<=': lambda a, b: a <= b, '==': lambda a, b: a == b}
    rows = []
    for k, (op, target, unit) in TARGETS.items():
        v = _get(results, k)
        met = None if v is None else bool(ops[op](v, target))
        rows.append(
            {
                'figure': k,
                'value': v,
                'target': f'{op} {target:g}' if not isinstance(target, bool) else f'{op} {target}',
                'unit': unit,
                'met': met,
            }
        )
    return rows


def _fmt(v) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float) and abs(v) < 10:
        return f'{v:.3g}'
    return f'{v:,.0f}' if isinstance(v, (int, float)) else str(v)


def table(results: dict) -> str:
    "The printed summary: every stage's main figures, then the targets."
    lines = [f'{"stage":<16} {"wall s":>8} {"CPU s":>7} {"peak RSS MB":>12}  figures']
    for name, r in results.items():
        if not isinstance(r, dict) or name in ('machine', 'targets', 'world'):
            continue
        figs = {k: v for k, v in r.items() if k in FIGS and v is not None}
        extra = '  '.join(f'{k} {_fmt(v)}' for k, v in figs.items())
        err = f'  FAILED: {r["error"]}' if 'error' in r else ''
        wall, cpu = _fmt(r.get('wall_s', r.get('seconds'))), _fmt(r.get('cpu_s'))
        lines.append(f'{name:<16} {wall:>8} {cpu:>7} {_fmt(r.get("peak_rss_mb")):>12}  {extra}{err}')
    lines.append('')
    lines.append(f'{"target":<32} {"measured":>14} {"target":>12}  met')
    for v in verdicts(results):
        met = '-' if v['met'] is None else 'yes' if v['met'] else 'NO'
        lines.append(f'{v["figure"]:<32} {_fmt(v["value"]):>14} {v["target"]:>12}  {met}')
    return '\n'.join(lines)


FIGS = (
    'records',
    'records_per_s',
    'records_per_cpu_s',
    'prepare_cpu_s',
    'samples_per_cpu_s',
    'ratio_to_training_cpu',
    'same_as_world',
    'seconds',
    'cache_mb',
    'samples_per_s',
    'epoch_s',
    'extrapolated',
    'seconds_whole_set',
    'steps_timed',
    'ratio_to_training',
    'training_s_same_samples',
    'samples',
    'mb',
    'onnx_mb',
    'onnx_fp16_mb',
    'onnx_fp16_check',
    'int8_mb',
    'int8_check',
    'predictions_per_s',
    'batch_1',
    'labels',
    'total_s',
    'skipped',
)


# ---------------------------------------------------------------- main


def make_world_if_needed(b: Bench) -> dict:
    if (b.world / 'world.json').exists() and (b.world / 'records_dwca.zip').exists():
        return json.loads((b.world / 'world.json').read_text())
    print(f'making the world in {b.world} (bench/scale_world.py)', flush=True)
    r = b.child(
        'make_world',
        [sys.executable, str(HERE / 'scale_world.py'), '--out', str(b.world), *b.a.world_args],
        timeout=3600,
    )
    if 'error' in r:
        raise SystemExit(f'scale_world.py failed: {r["error"]}')
    return json.loads((b.world / 'world.json').read_text()) | {'made_here': r}


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.split('\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument('--world', default=str(RESULTS / 'scale_world'), help='world folder (made when missing)')
    ap.add_argument('--work', default=str(RESULTS / 'scale_work'), help='outputs of the stages')
    ap.add_argument('--stages', nargs='+', default=list(STAGES), choices=STAGES)
    ap.add_argument(
        '--train_steps', type=int, default=60, help='steps timed and extrapolated to an epoch; 0: a whole epoch'
    )
    ap.add_argument(
        '--val_samples', type=int, default=50_000, help='validate this many random rows, time scaled to all; 0: all'
    )
    ap.add_argument('--train_args', nargs=argparse.REMAINDER, default=[], help='more geosdm_train flags (last)')
    ap.add_argument('--world_args', nargs='+', default=[], help='flags for scale_world.py when it makes the world')
    ap.add_argument('--max_rss_gb', type=float, default=12.0, help='stop a stage whose process grows past this')
    ap.add_argument('--timeout', type=float, default=3600.0, help='stop a stage running longer (s)')
    ap.add_argument('--no_check', action='store_true', help='skip comparing the ingested files with the world')
    ap.add_argument('--out', default=str(RESULTS / 'scale.json'))
    ap.add_argument('--fresh', action='store_true', help='forget the stages of an earlier run in --out')
    ap.add_argument('--print', action='store_true', help='only print the table of --out')
    a = ap.parse_args(argv)
    if a.print:
        print(table(json.loads(Path(a.out).read_text())))
        return
    b = Bench(a)
    if Path(a.out).exists() and not a.fresh:  # keep the stages not run now
        b.results.update({k: v for k, v in json.loads(Path(a.out).read_text()).items() if k != 'targets'})
        for k in ('ingest_parquet', 'ingest_dwca'):  # figures derived later than the run that measured them
            r = b.results.get(k) or {}
            if 'records' in r and 'records_per_cpu_s' not in r:
                r['records_per_cpu_s'] = round(r['records'] / r['cpu_s'])
    t0 = time.perf_counter()
    world = make_world_if_needed(b)
    res = b.results
    res['machine'] = {
        'cpus': os.cpu_count(),
        'load_avg_start': [round(x, 2) for x in os.getloadavg()],
        'mem_total_gb': round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30, 1),
    }
    res['world'] = {
        k: world.get(k)
        for k in ('cells', 'species', 'labels', 'records', 'cell_weeks_with_records', 'seconds', 'peak_rss_mb')
    }
    for st in a.stages:
        print(f'{st}:', flush=True)
        try:
            if st.startswith('ingest_'):
                res[st] = b.ingest(st.split('_', 1)[1])
            elif st == 'prepare':
                b.prepare()
            elif st == 'train':
                b.train()
            elif st == 'export':
                res['export'] = b.export()
            elif st == 'predictor':
                r = b.py('predictor', PREDICT, b.ck / 'checkpoint_best.pt')
                r.update(
                    {'predictions_per_s': r['result']['batch_10000'], 'batch_1': r['result']['batch_1']}
                    if 'result' in r
                    else {}
                )
                res['predictor'] = r
            elif st == 'plots':
                p = b.plots()
                res['plots'] = {'total_s': round(sum(v.get('wall_s', 0) for v in p.values()), 1), 'figures': p} | (
                    {'error': '; '.join(f'{k}: {v["error"]}' for k, v in p.items() if 'error' in v)}
                    if any('error' in v for v in p.values())
                    else {}
                )
            elif st == 'apps':
                res['apps'] = b.apps()
        except Exception as e:  # a bug here must not lose the stages already measured
            res[st] = {'error': f'{type(e).__name__}: {e}'}
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(res | {'targets': verdicts(res)}, indent=1) + '\n')
    res['machine']['load_avg_end'] = [round(x, 2) for x in os.getloadavg()]
    res['machine']['bench_s'] = round(time.perf_counter() - t0)
    res['targets'] = verdicts(res)
    Path(a.out).write_text(json.dumps(res, indent=1) + '\n')
    print(table(res))
    print(f'wrote {a.out}')


if __name__ == '__main__':
    main()
