"""Benchmark env-neighbour label propagation on world_a (default parameters).

Runs prepare_data on ../shared/data/world_a/combined.parquet without the cache, once without and once
with propagation, each in its own subprocess (so peak RSS is per run), and prints the propagation
seconds, labels added (in total and per week), the samples changed and peak RSS.

    python bench/propagation.py [path/to/combined.parquet]

Writes bench/results/propagation.json.
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
import geosdm.data as D
import hashlib, numpy as np
path, prop, vocab_file = sys.argv[1], sys.argv[2] == '1', sys.argv[3]
t0 = time.perf_counter()
p = D.prepare_data(path, no_cache=True, progress=False, propagate_labels=bool(prop))
out = {'prepare_s': round(time.perf_counter() - t0, 3),
       'peak_rss_mb': round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
       'stage_seconds': p.stats['seconds'], 'n_species': p.n_species, 'samples_train': len(p.train),
       'nnz_train': p.train.nnz, 'nnz_val': p.val.nnz, 'propagation': p.stats.get('propagation')}
# the validation labels as (row, code) over the vocabulary without propagation: must not change
if not prop: open(vocab_file, 'w').write('\n'.join(p.vocab))
keep = set(open(vocab_file).read().split('\n'))
codes = np.array(p.vocab)[p.val.species]
m = np.isin(codes, list(keep))
pairs = np.char.add(np.char.add(p.val.rows()[m].astype(str), ':'), codes[m])
out['val_labels_sha256'] = hashlib.sha256('\n'.join(pairs.tolist()).encode()).hexdigest()
print(json.dumps(out))
'''


def run(path: Path, prop: bool, vocab_file: Path) -> dict:
    r = subprocess.run(
        [sys.executable, '-c', CHILD, str(path), '1' if prop else '0', str(vocab_file)], capture_output=True, text=True
    )
    if r.returncode:
        raise SystemExit(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT
    if not path.exists():
        print(f'skipped: {path} not found')
        return
    with tempfile.TemporaryDirectory() as td:
        vf = Path(td) / 'vocab.txt'
        off, on = run(path, False, vf), run(path, True, vf)
    pr = on['propagation']
    res = {
        'data': str(path),
        'params': pr['params'],
        'propagation_s': pr['seconds'],
        'prepare_s_without': off['prepare_s'],
        'prepare_s_with': on['prepare_s'],
        'peak_rss_mb_without': off['peak_rss_mb'],
        'peak_rss_mb_with': on['peak_rss_mb'],
        'labels_added': pr['labels_added'],
        'labels_added_weekly': pr['labels_added_weekly'],
        'labels_added_yearly': pr['labels_added_yearly'],
        'labels_added_per_week': pr['labels_added_per_week'],
        'labels_before': pr['labels_before'],
        'sparse_samples': pr['sparse_samples'],
        'samples_changed': pr['samples_changed'],
        'nnz_train_without': off['nnz_train'],
        'nnz_train_with': on['nnz_train'],
        'n_species_without': off['n_species'],
        'n_species_with': on['n_species'],
        'val_labels_unchanged': off['val_labels_sha256'] == on['val_labels_sha256'],
    }
    print(f"propagation (default parameters {pr['params']}):")
    print(
        f"  {pr['seconds']:.2f} s inside prepare_data "
        f"({on['prepare_s']:.2f} s in all, {off['prepare_s']:.2f} s without)"
    )
    print(
        f"  +{pr['labels_added']:,} labels ({pr['labels_added'] / pr['labels_before']:.0%} of {pr['labels_before']:,} "
        f"training labels): {pr['labels_added_weekly']:,} weekly, {pr['labels_added_yearly']:,} yearly"
    )
    print(f"  {pr['samples_changed']:,} of {pr['sparse_samples']:,} sparse training samples changed")
    pw = pr['labels_added_per_week'][1:]
    print(f"  per week: min {min(pw):,}  median {sorted(pw)[len(pw) // 2]:,}  max {max(pw):,}")
    print(f"  peak RSS {on['peak_rss_mb']:,.0f} MB ({off['peak_rss_mb']:,.0f} MB without)")
    print(
        f"  vocabulary {off['n_species']:,} → {on['n_species']:,} species; "
        f"validation labels unchanged: {res['val_labels_unchanged']}"
    )
    out = HERE / 'results' / 'propagation.json'
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(f'wrote {out}')


if __name__ == '__main__':
    main()
