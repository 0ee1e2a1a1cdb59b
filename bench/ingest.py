"""Benchmark geosdm_ingest on synthetic GBIF-like archives made from world_a (20 M and 5 M records by default).

Step 1 (build, once): world_a's combined parquet -> synthetic records (checklists of ~19 species at hotspots, 1 % of
the records spoiled in every way the filters catch) -> a Darwin Core Archive zip (also unpacked into a folder), and the
same records as parquet with the cloud snapshots' lower-case column names (row groups of 1 M records).
Step 2 (run): each input is ingested in its own subprocess (peak RSS per run), with world_a's grid and taxonomy, and
the lists are checked against world_a's.

Usage: python bench/ingest.py [--rows 20e6 5e6] [--work /tmp/ingest/bench] [--build-only] [--kinds dwca folder parquet]
           [--code DIR] [--tag NAME] [--repeat N] [--out bench/results/ingest.json]
Writes JSON (records/s wall and per CPU-second, CPU seconds per million records, peak RSS, the load average before
and after each run). `--code DIR` runs the geosdm package found in DIR (e.g. an export of another commit) so that
a before/after comparison runs in one sitting on one machine; `--tag` labels the runs. On a shared machine the
wall-clock rate moves with the load: CPU seconds per record are the comparable figure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / 'shared' / 'data'
WORLD_A = SHARED / 'world_a' / 'combined.parquet'

CHILD = r'''
import json, sys
from geosdm.ingest import ingest
src, out, grid, tax = sys.argv[1:5]
r = ingest(src, out, grid=grid, taxonomy=tax, workdir=sys.argv[5])
print(json.dumps(r))
'''

CHECK = r'''
import json, sys, polars as pl
from geosdm.core import WEEK_COLS
a = pl.read_parquet(sys.argv[1], columns=['h3_index'] + WEEK_COLS).sort('h3_index')
b = pl.read_parquet(sys.argv[2], columns=['h3_index'] + WEEK_COLS).sort('h3_index')
b = b.select('h3_index', *[pl.col(c).list.sort() for c in WEEK_COLS])
print(json.dumps(a.equals(b)))
'''


def build(rows: int, work: Path) -> dict:
    "Write the synthetic archive (zip) and parquet for `rows` records unless they exist; returns their paths and sizes."
    import polars as pl
    import pyarrow.parquet as pq

    from geosdm.core import WEEK_COLS
    from geosdm.gbif import write_dwca
    from geosdm.synthetic import synthetic_records

    z, p = work / f'world_a_{rows // 10**6}M.zip', work / f'world_a_{rows // 10**6}M.parquet'
    if not (z.exists() and p.exists()):
        comb = pl.read_parquet(WORLD_A, columns=['h3_index'] + WEEK_COLS)
        tax = pl.read_csv(WORLD_A.with_name('combined_taxonomy.csv'))
        t0, writer = time.perf_counter(), None

        def chunks():
            nonlocal writer
            for df in synthetic_records(comb, rows, taxonomy=tax, bad=0.01, seed=1):
                snap = df.with_columns(
                    pl.col('recordedBy').str.split('|'), pl.col('decimalLatitude', 'decimalLongitude').cast(pl.Float64)
                )
                t = snap.rename({c: c.lower() for c in snap.columns}).to_arrow()
                writer = writer or pq.ParquetWriter(p, t.schema, compression='zstd')
                writer.write_table(t)
                yield df

        write_dwca(z, chunks())
        writer.close()
        print(f'built {z.name} and {p.name} in {time.perf_counter() - t0:.0f} s', flush=True)
    folder = work / f'world_a_{rows // 10**6}M_dwca'
    if not (folder / 'meta.xml').exists():
        import zipfile

        zipfile.ZipFile(z).extractall(folder)
    return {
        'zip': str(z),
        'zip_mb': round(z.stat().st_size / 2**20),
        'parquet': str(p),
        'parquet_mb': round(p.stat().st_size / 2**20),
        'folder': str(folder),
        'folder_mb': round(sum(f.stat().st_size for f in folder.iterdir()) / 2**20),
    }


def run(src: str, work: Path, kind: str, code: str | None = None) -> dict:
    """Ingest `src` in a fresh process (with the geosdm of `code` if given); wall and CPU seconds, that process's peak
    RSS (its report), and whether the lists match."""
    out = work / f'out_{Path(src).stem}_{kind}.parquet'
    env = dict(os.environ, **({'PYTHONPATH': str(Path(code).resolve())} if code else {}))
    load = os.getloadavg()
    r0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    res = subprocess.run(
        [
            sys.executable,
            '-c',
            CHILD,
            src,
            str(out),
            str(SHARED / 'global_350km_ee.parquet'),
            str(WORLD_A.with_name('combined_taxonomy.csv')),
            str(work),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=work,  # not the repository: `code` (or the installed package) is what is imported
    )
    wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    if res.returncode:
        raise SystemExit(res.stderr)
    rep = json.loads(res.stdout.strip().splitlines()[-1])
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    ok = json.loads(
        subprocess.run([sys.executable, '-c', CHECK, str(out), str(WORLD_A)], capture_output=True, text=True).stdout
    )
    return {
        'input': kind,
        'rows_read': rep['rows_read'],
        'rows_kept': rep['rows_kept'],
        'wall_s': round(wall, 2),
        'ingest_s': rep['seconds'],
        'rows_per_s': round(rep['rows_read'] / wall),
        'cpu_s': round(cpu, 2),
        'rows_per_cpu_s': round(rep['rows_read'] / cpu),
        'cpu_s_per_M_rows': round(cpu / rep['rows_read'] * 1e6, 3),
        'peak_rss_mb': rep['peak_rss_mb'],
        'h3_points': rep['h3_points'],
        'filters': rep['filters'],
        'lists_match_world_a': ok,
        'load_avg_before': [round(x, 2) for x in load],
        'load_avg_after': [round(x, 2) for x in os.getloadavg()],
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--rows', type=float, nargs='+', default=[20e6, 5e6])
    ap.add_argument('--work', default='/tmp/ingest/bench')
    ap.add_argument(
        '--kinds',
        nargs='+',
        default=['dwca', 'folder', 'parquet'],
        choices=['dwca', 'folder', 'parquet'],
        help='dwca: the zip (extraction included); folder: the unpacked archive; parquet: snapshot-style parquet',
    )
    ap.add_argument('--build-only', action='store_true')
    ap.add_argument('--code', default=None, help='a folder holding the geosdm package to run (default: the installed)')
    ap.add_argument('--tag', default='', help='a label for these runs (e.g. before, after)')
    ap.add_argument('--repeat', type=int, default=1)
    ap.add_argument('--out', default=str(HERE / 'results' / 'ingest.json'))
    a = ap.parse_args(argv)
    if not WORLD_A.exists():
        raise SystemExit(f'{WORLD_A} not found: the benchmark needs the shared world_a')
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    files = {int(n): build(int(n), work) for n in a.rows}
    if a.build_only:
        print(json.dumps(files, indent=1))
        return
    runs = []
    for _ in range(a.repeat):
        for n, f in files.items():
            for kind in a.kinds:
                r = run(f[{'dwca': 'zip'}.get(kind, kind)], work, kind, a.code)
                runs.append({'tag': a.tag, 'rows_target': n, **r})
                print(json.dumps({k: v for k, v in runs[-1].items() if k != 'filters'}), flush=True)
    res = {
        'machine': {'cpus': os.cpu_count(), 'note': 'shared machine: see load averages'},
        'code': a.code or 'installed',
        'tag': a.tag,
        'files': files,
        'runs': runs,
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + '\n')
    print(f'wrote {out}')


if __name__ == '__main__':
    main()
