"""Benchmark geosdm.data.prepare_data: cold (no cache) and warm (from the cache), peak RSS and CPU seconds.

Each measurement runs in its own subprocess so that peak RSS (ru_maxrss) and CPU time are its own; a watchdog stops
a run whose RSS passes --max_rss_gb (the machine is shared: a run must never push it into swap or the OOM killer).

    python bench/data_prep.py                                    # world_a (../shared), 3 cold + 3 warm runs
    python bench/data_prep.py /tmp/w/combined.parquet --repeats 1 --tag after
    python bench/data_prep.py /tmp/w/combined.parquet --src /tmp/main_src --tag before   # another checkout's code

Figures per run: wall seconds, CPU seconds (user + system), peak RSS, peak RSS above the RSS after the imports, and
that excess per label (training + validation + hold-out labels); the 1-minute load average next to each.
Writes bench/results/data_prep.json (one entry per --tag, merged).
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
DEFAULT = HERE.parents[1] / 'shared' / 'data' / 'world_a' / 'combined.parquet'

CHILD = r'''
import json, os, resource, sys, time
if sys.argv[4]:
    sys.path.insert(0, sys.argv[4])
t0 = time.perf_counter()
import geosdm.data as D
t_import = time.perf_counter() - t0
rss_import = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
path, cache_dir, no_cache = sys.argv[1], sys.argv[2], sys.argv[3] == '1'
t0, c0 = time.perf_counter(), time.process_time()
p = D.prepare_data(path, cache_dir=cache_dir, no_cache=no_cache, progress=False)
t_prep, c_prep = time.perf_counter() - t0, time.process_time() - c0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
nnz = p.train.nnz + p.val.nnz + (p.holdout.nnz if p.holdout is not None else 0)
print(json.dumps({'code': os.path.dirname(D.__file__), 'import_s': round(t_import, 3),
                  'rss_after_import_mb': round(rss_import, 1), 'prepare_s': round(t_prep, 3),
                  'prepare_cpu_s': round(c_prep, 3), 'peak_rss_mb': round(peak, 1),
                  'bytes_per_label': round((peak - rss_import) * 2**20 / max(nnz, 1), 2),
                  'from_cache': p.stats['from_cache'], 'stage_seconds': p.stats.get('seconds'),
                  'cells': len(p.cells), 'samples_train': len(p.train), 'samples_val': len(p.val),
                  'n_species': p.n_species, 'nnz_train': p.train.nnz, 'nnz_val': p.val.nnz, 'labels': nnz,
                  'train_species_sum': int(p.train.species.sum(dtype='int64')),
                  'val_species_sum': int(p.val.species.sum(dtype='int64'))}))
'''


def rss_mb(pid: int) -> float:
    try:
        with open(f'/proc/{pid}/status') as f:
            for line in f:
                if line.startswith('VmRSS:'):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def save_tagged(name: str, tag: str, res: dict) -> Path:
    "Put `res` under `tag` in bench/results/<name>.json (other tags kept), written whole or not at all."
    out = HERE / 'results' / f'{name}.json'
    out.parent.mkdir(parents=True, exist_ok=True)
    allres = json.loads(out.read_text()) if out.exists() else {}
    allres[tag] = res
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix='.tmp')
    with os.fdopen(fd, 'w') as f:
        json.dump(allres, f, indent=1)
    os.replace(tmp, out)
    return out


def run(code: str, *args: str, max_rss_gb: float = 12.0) -> dict:
    "Run `code` in a child python; its last stdout line as JSON, plus wall/CPU seconds and the load average."
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    with tempfile.TemporaryFile('w+') as out, tempfile.TemporaryFile('w+') as err:
        p = subprocess.Popen([sys.executable, '-c', code, *args], stdout=out, stderr=err, cwd=HERE.parent)
        while p.poll() is None:
            if rss_mb(p.pid) > max_rss_gb * 1024:
                p.kill()
                p.wait()
                raise SystemExit(f'data_prep: stopped a run past {max_rss_gb} GB RSS')
            time.sleep(0.2)
        out.seek(0)
        err.seek(0)
        if p.returncode:
            raise SystemExit(f'data_prep: child failed ({p.returncode}):\n{err.read()[-3000:]}')
        res = json.loads(out.read().strip().splitlines()[-1])
    res.update(wall_s=round(time.perf_counter() - t0, 2), load_avg_1min=load)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('path', nargs='?', default=str(DEFAULT))
    ap.add_argument('--repeats', type=int, default=3)
    ap.add_argument('--src', default='', help='a folder holding another geosdm package to measure (default: this one)')
    ap.add_argument('--tag', default='current')
    ap.add_argument('--max_rss_gb', type=float, default=12.0)
    ap.add_argument('--no_warm', action='store_true')
    a = ap.parse_args()
    path = Path(a.path)
    if not path.exists():
        print(f'{path} not found; nothing to benchmark')
        return {}
    res = {'data': str(path), 'cpus': os.cpu_count()}
    kw = dict(max_rss_gb=a.max_rss_gb)
    with tempfile.TemporaryDirectory() as d:
        cold = [run(CHILD, str(path), d, '1', a.src, **kw) for _ in range(a.repeats)]
        if not a.no_warm:
            build = run(CHILD, str(path), d, '0', a.src, **kw)  # builds and writes the cache
            warm = [run(CHILD, str(path), d, '0', a.src, **kw) for _ in range(a.repeats)]
            res['cache_bytes'] = sum(f.stat().st_size for f in Path(d).glob('*.npz'))
            res.update(build_and_write=build, warm=min(warm, key=lambda r: r['prepare_s']))
            res['warm_all'] = [(w['prepare_s'], w['prepare_cpu_s'], w['load_avg_1min']) for w in warm]
    res['cold'] = c = min(cold, key=lambda r: r['prepare_cpu_s'])
    res['cold_all'] = [(r['prepare_s'], r['prepare_cpu_s'], r['peak_rss_mb'], r['load_avg_1min']) for r in cold]
    print(
        f'cold: prepare {c["prepare_s"]:.2f} s wall, {c["prepare_cpu_s"]:.2f} s CPU (load {c["load_avg_1min"]:.1f}), '
        f'peak RSS {c["peak_rss_mb"]:.0f} MB (after import {c["rss_after_import_mb"]:.0f} MB), '
        f'{c["bytes_per_label"]:.1f} bytes per label'
    )
    print(f'      stages: {c["stage_seconds"]}')
    if 'warm' in res:
        w = res['warm']
        print(
            f'warm: prepare {w["prepare_s"]:.3f} s, peak RSS {w["peak_rss_mb"]:.0f} MB; '
            f'cache {res["cache_bytes"] / 2**20:.1f} MiB'
        )
    print(
        f'cells {c["cells"]}, train {c["samples_train"]}, val {c["samples_val"]}, species {c["n_species"]}, '
        f'labels {c["labels"]}'
    )
    save_tagged('data_prep', a.tag, res)
    return res


if __name__ == '__main__':
    main()
