"""Peak memory of the data preparation per label, on a generated mid-size world, in a process of its own.

The first pipeline needed about 80-100 bytes per label (strings in one polars frame, int64 sort keys): 9.2 GB for
the 106 M labels of a resolution-4 world. bench/data_prep.py measures the present one on a production-size world
(about 16 bytes per label above the imports at 83 M labels); on the mid-size world here fixed costs weigh more.
"""

import json
import subprocess
import sys

import h3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from geosdm.core import N_WEEKS, WEEK_COLS

N_CELLS, N_CODES, MEAN_LIST = 12_000, 3_000, 12  # ~3.8 M labels after de-duplication: ~2 s to write, ~4 s to prepare
MAX_BYTES_PER_LABEL = 40  # peak RSS above the RSS after the imports, per label of the splits (first pipeline: ~80)

CHILD = r'''
import json, resource, sys
import geosdm.data as D
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
p = D.prepare_data(sys.argv[1], progress=False, no_cache=True, min_obs_per_species=1)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({'rss_after_import_mb': rss0, 'peak_rss_mb': peak, 'labels': p.train.nnz + p.val.nnz,
                  'samples': len(p.train) + len(p.val), 'n_species': p.n_species}))
'''


def write_world(path, seed=0):
    "A combined parquet: N_CELLS res-3 cells, week lists of random codes (some cells and weeks empty), dictionary-free."
    rng = np.random.default_rng(seed)
    cells = sorted(c for r in h3.get_res0_cells() for c in h3.cell_to_children(r, 3))[:N_CELLS]
    codes = pa.array([f'sp{i:05d}' for i in range(N_CODES)])
    popular = rng.zipf(1.3, 10 * N_CELLS * MEAN_LIST) % N_CODES  # a few common species, many rare ones
    cols, at = {}, 0
    for w in WEEK_COLS:
        lens = rng.poisson(MEAN_LIST, N_CELLS) * (rng.random(N_CELLS) < 0.5)
        n = int(lens.sum())
        idx = np.take(popular, np.arange(at, at + n), mode='wrap')
        at += n
        values = pa.DictionaryArray.from_arrays(pa.array(idx.astype(np.int32)), codes).cast(pa.string())
        cols[w] = pa.ListArray.from_arrays(pa.array(np.r_[0, np.cumsum(lens)].astype(np.int32)), values)
    env = {'elevation_m': pa.array(rng.normal(500, 300, N_CELLS)), 'water_fraction': pa.array(rng.random(N_CELLS))}
    pq.write_table(pa.table({'h3_index': pa.array(cells), **env, **cols}), path)
    return path


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='ru_maxrss in KiB: Linux')
def test_prepare_peak_memory_per_label(tmp_path):
    path = write_world(tmp_path / 'combined.parquet')
    out = subprocess.run([sys.executable, '-c', CHILD, str(path)], capture_output=True, text=True, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r['samples'] == N_CELLS * (N_WEEKS + 1) and r['labels'] > 3_000_000
    per_label = (r['peak_rss_mb'] - r['rss_after_import_mb']) * 2**20 / r['labels']
    assert per_label < MAX_BYTES_PER_LABEL, f'{per_label:.1f} bytes per label: {r}'
