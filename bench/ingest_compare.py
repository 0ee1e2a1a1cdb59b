"""Compare an ingest's outputs with what they must be: a world's combined parquet and taxonomy (`bench/scale_world.py`)
and, optionally, another ingest of the same records (e.g. by main's code) for the records per species and the report.

    python bench/ingest_compare.py OUT.parquet --world /work/scale_world [--other OTHER.parquet] [--out result.json]

Rows are compared as sets (order ignored): the same cells, the same environment values, and per cell and week the
same species (sorted); the taxonomy by species code (names, and records per code against `--other`'s taxonomy);
the report's filter counts against `--other`'s report. One week column is read at a time (memory stays small).
Prints a JSON summary; exit status 1 where anything differs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import polars as pl

from geosdm.core import WEEK_COLS


def _sorted_lists(path: Path, col: str) -> pl.DataFrame:
    return (
        pl.scan_parquet(path)
        .select('h3_index', pl.col(col).list.sort().alias('l'))
        .filter(pl.col('l').list.len() > 0)
        .collect()
        .sort('h3_index')
    )


def compare_lists(got: Path, want: Path) -> dict:
    "Per week column: cells whose lists differ (or exist in one file only), and labels in each."
    out = {'weeks_differing': {}, 'labels_got': 0, 'labels_want': 0}
    for c in WEEK_COLS:
        a, b = _sorted_lists(got, c), _sorted_lists(want, c)
        out['labels_got'] += int(a['l'].list.len().sum())
        out['labels_want'] += int(b['l'].list.len().sum())
        j = a.join(b, on='h3_index', how='full', suffix='_w', coalesce=True)
        bad = j.filter(pl.col('l').is_null() | pl.col('l_w').is_null() | (pl.col('l') != pl.col('l_w')))
        if bad.height:
            ex = bad.head(3).with_columns(pl.col('l', 'l_w').list.head(8)).to_dicts()
            out['weeks_differing'][c] = {'cells': bad.height, 'examples': ex}
    return out


def compare_rows(got: Path, want: Path) -> dict:
    "The same cells and the same environment values (the columns both have, geometry and weeks aside)."
    sa, sb = pl.scan_parquet(got).collect_schema(), pl.scan_parquet(want).collect_schema()
    env = [c for c in sa if c in sb and c not in WEEK_COLS and c not in ('h3_index', 'geometry')]
    a = pl.read_parquet(got, columns=['h3_index', *env]).sort('h3_index')
    b = pl.read_parquet(want, columns=['h3_index', *env]).sort('h3_index')
    return {
        'rows_got': a.height,
        'rows_want': b.height,
        'cells_same': a['h3_index'].equals(b['h3_index']),
        'env_columns': env,
        'env_same': a.equals(b),
        'columns_only_got': [c for c in sa if c not in sb],
        'columns_only_want': [c for c in sb if c not in sa and c != 'geometry'],
    }


def compare_taxonomy(got: Path, want: Path, other: Path | None) -> dict:
    a = pl.read_csv(got, infer_schema=False).sort('species_code')
    b = pl.read_csv(want, infer_schema=False).sort('species_code')
    both = [c for c in ('species_code', 'scientificName', 'commonName') if c in a.columns and c in b.columns]
    d = {'species_got': a.height, 'species_want': b.height, 'names_same': a.select(both).equals(b.select(both))}
    if not d['names_same']:
        d['differing'] = a.select(both).join(b.select(both), on=both, how='anti').head(5).to_dicts()
    if other is not None:
        o = pl.read_csv(other, infer_schema=False).sort('species_code')
        d['same_as_other'] = a.equals(o)
        if not d['same_as_other']:
            d['differing_from_other'] = a.join(o, on=a.columns, how='anti').head(5).to_dicts()
    return d


def compare_reports(got: Path, other: Path) -> dict:
    a, b = json.loads(got.read_text()), json.loads(other.read_text())
    keys = ('rows_read', 'rows_kept', 'cells', 'cells_with_records', 'cell_weeks_with_records', 'species')
    d = {k: (a.get(k), b.get(k)) for k in keys if a.get(k) != b.get(k)}
    fa, fb = {f['filter']: f['dropped'] for f in a['filters']}, {f['filter']: f['dropped'] for f in b['filters']}
    if fa != fb:
        d['filters'] = {'got': fa, 'other': fb}
    return {'report_same': not d, **({'report_differs': d} if d else {})}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('output', help="an ingest's combined parquet (its _taxonomy.csv and _report.json beside it)")
    ap.add_argument('--world', default='/work/scale_world')
    ap.add_argument('--other', default=None, help="another ingest's combined parquet of the same records")
    ap.add_argument('--out', default=None, help='write the summary here (JSON)')
    a = ap.parse_args(argv)
    got, world = Path(a.output), Path(a.world)
    other = Path(a.other) if a.other else None
    side = lambda p, s: p.with_name(f'{p.stem}_{s}')  # noqa: E731
    res = {'output': str(got), 'world': str(world), 'other': a.other}
    res['rows'] = compare_rows(got, world / 'combined.parquet')
    res['lists'] = compare_lists(got, world / 'combined.parquet')
    res['taxonomy'] = compare_taxonomy(
        side(got, 'taxonomy.csv'), world / 'combined_taxonomy.csv', other and side(other, 'taxonomy.csv')
    )
    if other is not None:
        res['report'] = compare_reports(side(got, 'report.json'), side(other, 'report.json'))
    r, t = res['rows'], res['taxonomy']
    res['same'] = bool(
        r['cells_same']
        and r['env_same']
        and not r['columns_only_got']
        and not r['columns_only_want']
        and not res['lists']['weeks_differing']
        and res['lists']['labels_got'] == res['lists']['labels_want']
        and t['names_same']
        and t.get('same_as_other', True)
        and res.get('report', {}).get('report_same', True)
    )
    text = json.dumps(res, indent=1, default=str)
    print(text)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text + '\n')
    sys.exit(0 if res['same'] else 1)


if __name__ == '__main__':
    main()
