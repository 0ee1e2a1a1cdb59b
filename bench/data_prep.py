"""Benchmark geosdm.data.prepare_data on world_a: cold (no cache) and warm (from the cache).

Each measurement runs in its own subprocess so that peak RSS (ru_maxrss) is per run.
Usage: python bench/data_prep.py [path/to/combined.parquet]
Writes bench/results/data_prep.json.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT = HERE.parents[1] / 'shared' / 'data' / 'world_a' / 'combined.parquet'

CHILD = r'''
import json, resource, sys, time
t0 = time.perf_counter()
import geosdm.data as D
t_import = time.perf_counter() - t0
rss_import = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
path, cache_dir, no_cache = sys.argv[1], sys.argv[2], sys.argv[3] == '1'
t0 = time.perf_counter()
p = D.prepare_data(path, cache_dir=cache_dir, no_cache=no_cache, progress=False)
t_prep = time.perf_counter() - t0
print(json.dumps({'import_s': round(t_import, 3), 'rss_after_import_mb': round(rss_import, 1),
                  'prepare_s': round(t_prep, 3),
                  'peak_rss_mb': round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                  'from_cache': p.stats['from_cache'], 'stage_seconds': p.stats.get('seconds'),
                  'cells': len(p.cells), 'samples_train': len(p.train), 'samples_val': len(p.val),
                  'n_species': p.n_species, 'nnz_train': p.train.nnz, 'nnz_val': p.val.nnz}))
'''

BASELINE = r'''
import json, resource, time
t0 = time.perf_counter()
import numpy, polars, h3, scipy.spatial, tqdm.auto   # what geosdm.data loads (no torch)
print(json.dumps({'import_s': round(time.perf_counter() - t0, 3),
                  'peak_rss_mb': round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
'''


def run(code: str, *args: str) -> dict:
    out = subprocess.run(
        [sys.executable, '-c', code, *args], capture_output=True, text=True, check=True, cwd=HERE.parent
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(path: Path = DEFAULT, repeats: int = 3) -> dict:
    if not path.exists():
        print(f'{path} not found; nothing to benchmark')
        return {}
    res = {'data': str(path), 'imports_only': run(BASELINE)}
    with tempfile.TemporaryDirectory() as d:
        cold = [run(CHILD, str(path), d, '1') for _ in range(repeats)]
        build = run(CHILD, str(path), d, '0')  # builds and writes the cache
        warm = [run(CHILD, str(path), d, '0') for _ in range(repeats)]
        res['cache_bytes'] = sum(f.stat().st_size for f in Path(d).glob('*.npz'))
    assert not any(c['from_cache'] for c in cold) and not build['from_cache'] and all(w['from_cache'] for w in warm)
    best = lambda rs: min(rs, key=lambda r: r['prepare_s'])
    res.update(
        cold=best(cold),
        cold_all_s=[c['prepare_s'] for c in cold],
        build_and_write=build,
        warm=best(warm),
        warm_all_s=[w['prepare_s'] for w in warm],
    )
    c, w = res['cold'], res['warm']
    print(
        f"imports only (numpy, polars, h3, scipy, tqdm): {res['imports_only']['import_s']:.2f} s, "
        f"peak RSS {res['imports_only']['peak_rss_mb']:.0f} MB"
    )
    print(
        f"cold  (no cache): prepare {c['prepare_s']:.2f} s (runs {res['cold_all_s']}), import {c['import_s']:.2f} s, "
        f"peak RSS {c['peak_rss_mb']:.0f} MB (after import {c['rss_after_import_mb']:.0f} MB)"
    )
    print(f"      stages: {c['stage_seconds']}")
    print(f"build + write cache: {build['prepare_s']:.2f} s; cache file {res['cache_bytes'] / 2**20:.1f} MiB")
    print(
        f"warm (cache):     prepare {w['prepare_s']:.3f} s (runs {res['warm_all_s']}), import {w['import_s']:.2f} s, "
        f"peak RSS {w['peak_rss_mb']:.0f} MB"
    )
    print(
        f"cells {c['cells']}, train {c['samples_train']}, val {c['samples_val']}, species {c['n_species']}, "
        f"nnz train {c['nnz_train']}"
    )
    res['targets'] = {
        'cold_under_3s': c['prepare_s'] < 3,
        'warm_under_0.5s': w['prepare_s'] < 0.5,
        'peak_rss_under_1GB': max(c['peak_rss_mb'], w['peak_rss_mb']) < 1024,
    }
    print('targets:', res['targets'])
    out = HERE / 'results' / 'data_prep.json'
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    return res


if __name__ == '__main__':
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT)
