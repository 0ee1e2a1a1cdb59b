"""Where the time of one ingest pass goes: one input read through cumulative stages, each timed in wall and CPU
seconds (this process, all threads) with the load average beside it.

Stages (each includes the ones before):
  scan     the columns ingest reads, decoded (every column's null count is computed, so none is pruned)
  records  + weeks, the first filter each record fails, keys, the duplicate id's hash
  cells    + the H3 cell of every record
  tally    the whole `geosdm.tally.tally` (side books, duplicate spill, the group-by)

Usage: python bench/ingest_stages.py INPUT [--res 3] [--max-rows N] [--stages scan records cells tally]
           [--env NAME=VALUE ...] [--out bench/results/ingest_stages.json]
On a shared machine CPU seconds per million records are the comparable figure; wall seconds move with the load.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def timed(fn) -> dict:
    load, w0, c0 = os.getloadavg()[0], time.perf_counter(), time.process_time()
    fn()
    return {
        'wall_s': round(time.perf_counter() - w0, 2),
        'cpu_s': round(time.process_time() - c0, 2),
        'load_avg_1m': round(load, 2),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('input')
    ap.add_argument('--res', type=int, default=3)
    ap.add_argument('--max-rows', type=int, default=0)
    ap.add_argument('--stages', nargs='+', default=['scan', 'records', 'cells', 'tally'])
    ap.add_argument('--env', nargs='*', default=[], help='NAME=VALUE settings for polars, set before it is imported')
    ap.add_argument('--out', default=str(HERE / 'results' / 'ingest_stages.json'))
    a = ap.parse_args(argv)
    os.environ.update(dict(kv.split('=', 1) for kv in a.env))

    import polars as pl

    from geosdm.gbif import open_occurrences
    from geosdm.tally import CellMapper, Filters, keys_for, records, small_read_ahead, tally

    f = Filters()
    runs = []
    with tempfile.TemporaryDirectory() as wd:
        occ = open_occurrences(a.input, wd)
        lf = occ.frame.head(a.max_rows) if a.max_rows else occ.frame
        n = lf.select(pl.len()).collect(engine='streaming').item()

        def rec():
            return records(lf, f, keys_for(occ, f, lf))

        def cells():
            cm = CellMapper(a.res)
            return rec().with_columns(
                pl.struct('lat', 'lon').map_batches(cm, return_dtype=pl.UInt64, is_elementwise=True).alias('cell')
            )

        queries = {
            'scan': lambda: lf.select(pl.all().null_count()),
            'records': lambda: rec().select(pl.all().null_count()),
            'cells': lambda: cells().select(pl.all().null_count()),
        }
        for st in a.stages:
            with small_read_ahead():
                if st == 'tally':
                    t = timed(lambda: tally(occ, f, a.res, wd, a.max_rows))
                else:
                    t = timed(lambda q=queries[st]: q().collect(engine='streaming'))
            t |= {'stage': st, 'records': n, 'cpu_s_per_M': round(t['cpu_s'] / n * 1e6, 3)}
            runs.append(t)
            print(json.dumps(t), flush=True)
    res = {
        'input': a.input,
        'env': a.env,
        'cpus': os.cpu_count(),
        'peak_rss_mb': round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        'runs': runs,
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, 'a') as fh:
        fh.write(json.dumps(res) + '\n')


if __name__ == '__main__':
    main()
