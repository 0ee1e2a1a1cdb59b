"geosdm_ingest: a hand-made archive with every bad-record kind, input kinds, round trips, reader contract, training."

from __future__ import annotations

import json
import zipfile

import h3
import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from conftest import WORLD_A, exit_code

from geosdm.cli import ingest_main
from geosdm.core import WEEK_COLS, GeoSDMDataError
from geosdm.gbif import write_dwca
from geosdm.ingest import CLUSTER_SQL, ingest
from geosdm.inputs import read_columns
from geosdm.synthetic import synthetic_records
from geosdm.tally import ID_FLAG, Filters, pack_key, week_table
from geosdm.weeklists import count_triples, weekly_lists

RES = 3
A_LL = (52.1, 5.1)
A = h3.latlng_to_cell(*A_LL, RES)
GRID = sorted(h3.grid_disk(A, 1))
A2 = next(c for c in GRID if c != A)
A2_LL = h3.cell_to_latlng(A2)
B_LL = (48.3, 2.2)  # outside the grid
COLS = [
    'gbifID',
    'decimalLatitude',
    'decimalLongitude',
    'year',
    'month',
    'day',
    'taxonKey',
    'speciesKey',
    'taxonRank',
    'species',
    'scientificName',
    'class',
    'basisOfRecord',
    'occurrenceStatus',
    'eventID',
    'recordedBy',
    'coordinateUncertaintyInMeters',
    'license',
]
HAWK, CROW, PIGEON, STOCK, DAW = 2480242, 9515886, 5229490, 2495455, 2482473
NAMES = {
    HAWK: 'Accipiter nisus',
    CROW: 'Corvus corone',
    PIGEON: 'Columba palumbus',
    STOCK: 'Columba oenas',
    DAW: 'Coloeus monedula',
}


def rec(
    i,
    ll,
    date,
    key,
    *,
    taxon=None,
    rank='SPECIES',
    cls='Aves',
    basis='HUMAN_OBSERVATION',
    status='PRESENT',
    event=None,
    unc='',
):
    y, m, d = (date.split('-') + ['', ''])[:3]
    return [
        str(i),
        str(ll[0]),
        str(ll[1]),
        y,
        m,
        d,
        str(taxon or key or ''),
        str(key or ''),
        rank,
        NAMES.get(key, ''),
        f'{NAMES.get(key, "Accipiter")} L.',
        cls,
        basis,
        status,
        event or '',
        'obs1',
        unc,
        'CC0_1_0',
    ]


RECORDS = [  # kept (1-9), then one record per bad kind (10-20)
    rec(1, A_LL, '2020-05-03', HAWK, event='e1'),
    rec(2, A_LL, '2020-05-03', CROW, event='e1'),
    rec(3, A_LL, '2020-05-03', HAWK, taxon=7000001, rank='SUBSPECIES', event='e1'),  # merged, and a duplicate of 1
    rec(4, A2_LL, '2021-01-31', PIGEON, event='e2'),
    rec(5, A2_LL, '2021-12-31', PIGEON, event='e3'),
    rec(6, A_LL, '2019-02-28', CROW, taxon=8000001),  # a synonym, merged
    rec(7, B_LL, '2020-06-10', CROW, event='e5'),  # outside the grid
    rec(8, A_LL, '2020-07-01', DAW, event='e6'),  # not in the taxonomy
    rec(9, A_LL, '2020-07-01', STOCK, event='e6'),  # the taxonomy gives it the pigeon's code
    rec(10, A_LL, '2020-05-03', None, taxon=2480200, rank='GENUS'),
    rec(11, A_LL, '2020-05-03', 1000001, cls='Insecta'),
    rec(12, A_LL, '2020-05-03', CROW, status='ABSENT'),
    rec(13, A_LL, '2020-05-03', CROW, basis='FOSSIL_SPECIMEN'),
    rec(14, (0.0, 0.0), '2020-05-03', CROW),
    rec(15, ('abc', 5.1), '2020-05-03', CROW),
    rec(16, (95.0, 5.1), '2020-05-03', CROW),
    rec(17, A_LL, '2020-05-03', CROW, unc='50000'),
    rec(18, A_LL, '2020', CROW),  # year only
    rec(19, A_LL, '2020-04-31', CROW),  # no such date
    rec(20, A_LL, '1950-05-03', CROW),
]
TAXONOMY = (
    'species_code,taxonKey,sci_name,com_name,species_code,class_name\n'
    'eurspa1,1,Accipiter nisus,Eurasian Sparrowhawk,eurspa1,aves\ncarcro1,2,Corvus corone,,carcro1,aves\n'
    'comwop1,3,Columba palumbus,Common Wood-Pigeon,comwop1,aves\ncomwop1,4,Columba oenas,,comwop1,aves\n'
)
VERNACULAR = pl.DataFrame(
    {
        'gbifID': ['2', '2', '6'],
        'vernacularName': ['Carrion Crow', 'Rabenkrähe', 'Carrion Crow'],
        'language': ['en', 'de', 'en'],
    }
)
SHUFFLED = [
    'license',
    'day',
    'species',
    'gbifID',
    'decimalLongitude',
    'occurrenceStatus',
    'taxonKey',
    'month',
    'class',
    'eventID',
    'decimalLatitude',
    'basisOfRecord',
    'speciesKey',
    'recordedBy',
    'scientificName',
    'year',
    'coordinateUncertaintyInMeters',
    'taxonRank',
]


@pytest.fixture(scope='module')
def small(tmp_path_factory):
    d = tmp_path_factory.mktemp('small')
    frame = pl.DataFrame(RECORDS, schema=COLS, orient='row')
    z = write_dwca(d / 'small.zip', frame, VERNACULAR, order=SHUFFLED)
    pl.DataFrame({'h3_index': GRID, 'elevation_m': [float(i) for i in range(len(GRID))]}).write_parquet(
        d / 'grid.parquet'
    )
    (d / 'taxonomy.csv').write_text(TAXONOMY)
    return d, z, frame


def run_small(d, z, name='out', **kw):
    opts = dict(
        grid=d / 'grid.parquet', taxonomy=d / 'taxonomy.csv', drop_unmatched=True, filters=Filters(classes=('aves',))
    )
    return ingest(z, d / name / 'combined.parquet', **(opts | kw))


def test_meta_order_and_every_bad_kind(small):
    d, z, _ = small
    with zipfile.ZipFile(z) as zf:
        assert zf.read('occurrence.txt').decode().split('\n')[0].split('\t') == SHUFFLED
    r = run_small(d, z)
    assert r['rows_read'] == 20
    assert [(s['filter'], s['dropped'], s['remaining']) for s in r['filters']] == [
        ('rank', 1, 19),
        ('class', 1, 18),
        ('absent', 1, 17),
        ('basis', 1, 16),
        ('coordinates', 3, 13),
        ('uncertainty', 1, 12),
        ('date', 2, 10),
        ('year', 1, 9),
        ('taxonomy', 1, 8),
        ('outside_grid', 1, 7),
        ('duplicate', 1, 6),
    ]
    assert (
        r['rows_kept'],
        r['cells'],
        r['cells_with_records'],
        r['cell_weeks_with_records'],
        r['cells_outside_grid'],
    ) == (6, 7, 2, 5, 1)
    assert (r['species'], r['taxa_merged'], r['taxa_dropped']) == (3, 4, 3)


def test_exact_outputs(small):
    d, z, _ = small
    run_small(d, z)
    out = read_columns(d / 'out' / 'combined.parquet')
    assert out['h3_index'].to_list() == GRID and out.columns == ['h3_index', 'elevation_m'] + WEEK_COLS
    lists = {
        (c, w): v for c, row in zip(out['h3_index'], out.select(WEEK_COLS).rows()) for w, v in enumerate(row, 1) if v
    }
    assert lists == {
        (A, 17): ['carcro1', 'eurspa1'],
        (A, 8): ['carcro1'],
        (A, 25): ['comwop1'],
        (A2, 4): ['comwop1'],
        (A2, 48): ['comwop1'],
    }
    tax = (d / 'out' / 'combined_taxonomy.csv').read_text().splitlines()
    assert tax == [
        'species_code,scientificName,commonName,class,gbifKey,records',
        'carcro1,Corvus corone,Carrion Crow,Aves,9515886,2',
        'comwop1,Columba palumbus,Common Wood-Pigeon,Aves,2495455,3',
        'eurspa1,Accipiter nisus,Eurasian Sparrowhawk,Aves,2480242,1',
    ]
    man = pl.read_csv(d / 'out' / 'combined_manifest.csv')
    assert man.select('taxonKey', 'action', 'reason', 'species_code', 'records').rows() == [
        (1000001, 'dropped', 'class', None, 1),
        (2480200, 'dropped', 'rank', None, 1),
        (DAW, 'dropped', 'not in the taxonomy', None, 1),
        (STOCK, 'merged', 'same code in the taxonomy', 'comwop1', 1),
        (PIGEON, 'merged', 'same code in the taxonomy', 'comwop1', 2),
        (7000001, 'merged', 'infraspecific', 'eurspa1', 1),
        (8000001, 'merged', 'synonym', 'carcro1', 1),
    ]
    rep = json.loads((d / 'out' / 'combined_report.json').read_text())
    assert rep['rows_kept'] == 6 and rep['peak_rss_mb'] > 0 and set(rep['seconds']) >= {'scan', 'total'}


def test_defaults_keep_gbif_keys_and_outside_cells(small):
    d, z, _ = small
    r = ingest(
        z, d / 'plain' / 'c.parquet', grid=d / 'grid.parquet', outside_grid='keep', filters=Filters(dedup='none')
    )
    out = read_columns(d / 'plain' / 'c.parquet')
    assert out.height == len(GRID) + 1 and out['elevation_m'].null_count() == 1
    assert {s['filter']: s['dropped'] for s in r['filters']}['class'] == 0 and 'duplicate' not in [
        s['filter'] for s in r['filters']
    ]
    row = out.filter(pl.col('h3_index') == A).row(0, named=True)
    assert row['week_25'] == sorted([str(DAW), str(STOCK)]) and row['week_17'] == sorted(
        ['1000001', str(HAWK), str(CROW)]
    )  # no class filter by default


def test_input_kinds_agree(small, tmp_path):
    "The same records as a DwC-A folder, a simple download (zip) and snapshot-style parquet give the same files."
    d, z, frame = small
    ref = run_small(d, z)
    folder = tmp_path / 'dwca'
    with zipfile.ZipFile(z) as zf:
        zf.extractall(folder)
    simple = tmp_path / 'simple.zip'
    with zipfile.ZipFile(simple, 'w') as zf:
        zf.writestr('0001.csv', frame.write_csv(separator='\t', quote_style='never'))
    typed = frame.with_columns(
        pl.col('decimalLatitude').cast(pl.Float64, strict=False), pl.col('recordedBy').str.split(';')
    )
    typed.rename({c: c.lower() for c in typed.columns}).write_parquet(tmp_path / 'snap.parquet')
    expect = read_columns(d / 'out' / 'combined.parquet')
    for name, src in [('folder', folder), ('simple', simple), ('parquet', tmp_path / 'snap.parquet')]:
        r = run_small(d, src, name=name)
        assert r['filters'] == ref['filters'], name
        assert read_columns(d / name / 'combined.parquet').equals(expect), name


def test_reader_contract_and_geoparquet(small):
    from geosdm.data import load_combined

    d, z, _ = small
    run_small(d, z, name='geo', geometry=True)
    p = d / 'geo' / 'combined.parquet'
    t = pq.read_table(p)
    assert str(t.schema.field('h3_index').type) == 'string' and str(t.schema.field('geometry').type) == 'binary'
    assert all(str(t.schema.field(c).type) == 'list<element: string>' for c in WEEK_COLS)
    assert json.loads(t.schema.metadata[b'geo'])['columns']['geometry']['encoding'] == 'WKB'
    df, env, res = load_combined(p)
    assert (env, res, df.height) == (['elevation_m'], RES, len(GRID))
    assert df.select(pl.col(WEEK_COLS).null_count()).sum_horizontal().item() == 0


def test_errors_name_the_problem(small, tmp_path):
    d, z, frame = small
    with pytest.raises(GeoSDMDataError, match='resolution 3, but --resolution is 2'):
        ingest(z, tmp_path / 'x.parquet', grid=d / 'grid.parquet', resolution=2)
    with pytest.raises(GeoSDMDataError, match='--resolution'):
        ingest(z, tmp_path / 'x.parquet')
    frame.drop('decimalLatitude').write_parquet(tmp_path / 'bad.parquet')
    with pytest.raises(GeoSDMDataError, match=r"missing column\(s\) \['decimalLatitude'\]"):
        ingest(tmp_path / 'bad.parquet', tmp_path / 'x.parquet', resolution=3)
    assert not (tmp_path / 'x.parquet').exists()


def test_cli(small, tmp_path, capsys):
    d, z, _ = small
    assert (
        exit_code(
            ingest_main,
            [
                str(z),
                '-o',
                str(tmp_path / 'c.parquet'),
                '--grid',
                str(d / 'grid.parquet'),
                '--taxonomy',
                str(d / 'taxonomy.csv'),
                '--drop_unmatched',
                '--classes',
                'aves',
            ],
        )
        == 0
    )
    out = capsys.readouterr().out
    assert 'Read 20 records (dwca)' in out and 'Kept 6 records' in out
    assert (
        exit_code(
            ingest_main,
            [str(z), '--grid', str(d / 'grid.parquet'), '--resolution', '2', '-o', str(tmp_path / 'y.parquet')],
        )
        == 2
    )
    assert capsys.readouterr().err.strip().startswith('geosdm_ingest: error:') and not (tmp_path / 'y.parquet').exists()


def test_weeks_are_core_weeks():
    from geosdm.core import week_of

    m, dd = np.divmod(np.flatnonzero(week_table()), 32)
    assert (week_table()[week_table() > 0] == week_of(m, dd)).all() and len(m) == 366


def world_slice(n_cells=60):
    comb = read_columns(WORLD_A, columns=['h3_index'] + WEEK_COLS)
    busy = comb.filter(pl.sum_horizontal(pl.col(WEEK_COLS).list.len()) > 0)
    return busy[np.linspace(0, busy.height - 1, n_cells).astype(int)]


@pytest.mark.skipif(not WORLD_A.exists(), reason='shared world_a not present')
def test_world_a_round_trip(tmp_path):
    "world_a lists → synthetic GBIF archive (with spoiled records) → ingest → the same lists per cell and week."
    part = world_slice()
    tax = pl.read_csv(WORLD_A.with_name('combined_taxonomy.csv'))
    z = write_dwca(
        tmp_path / 'wa.zip',
        synthetic_records(
            part,
            3 * part.select(pl.col(WEEK_COLS).list.len()).sum_horizontal().sum(),
            taxonomy=tax,
            bad=0.05,
            seed=3,
            chunk=50_000,
        ),
    )
    r = ingest(
        z,
        tmp_path / 'wa.parquet',
        grid=WORLD_A.with_name('..').resolve() / 'global_350km_ee.parquet',
        taxonomy=WORLD_A.with_name('combined_taxonomy.csv'),
    )
    out = read_columns(tmp_path / 'wa.parquet')
    assert out.height == 5794
    got = out.join(part.select('h3_index'), on='h3_index').sort('h3_index').select('h3_index', *WEEK_COLS)
    want = part.sort('h3_index').select('h3_index', *[pl.col(c).list.sort() for c in WEEK_COLS])
    assert got.to_dicts() == want.to_dicts()
    assert r['cells_with_records'] == part.height and all(
        s['dropped'] > 0 for s in r['filters'][:8] if s['filter'] != 'class'
    )


def test_trainer_runs_on_an_ingested_file(tmp_path):
    from geosdm.config import TrainConfig
    from geosdm.core import demo_parquet
    from geosdm.trainer import train

    demo = read_columns(demo_parquet(), columns=['h3_index'] + WEEK_COLS)
    z = write_dwca(tmp_path / 'demo.zip', synthetic_records(demo, 80_000, bad=0.02))
    ingest(z, tmp_path / 'demo.parquet', grid=demo_parquet())
    tr = train(
        TrainConfig(
            data_path=str(tmp_path / 'demo.parquet'),
            checkpoint_dir=str(tmp_path / 'ck'),
            model_scale=0.25,
            num_epochs=1,
            min_obs_per_species=5,
            batch_size=512,
            device='cpu',
            seed=1,
        ),
        progress=False,
    )
    assert len(tr.history['train_species_loss']) == 1 and (tmp_path / 'ck' / 'checkpoint_latest.pt').is_file()


def test_cluster_query_matches(tmp_path):
    "CLUSTER_SQL, run by DuckDB (an H3 function registered from Python), gives ingest's lists."
    duckdb = pytest.importorskip('duckdb')
    import polars_h3 as plh3

    from geosdm.core import demo_parquet

    demo = read_columns(demo_parquet(), columns=['h3_index'] + WEEK_COLS)
    recs = pl.concat(synthetic_records(demo, 60_000, bad=0.05))
    snap = tmp_path / 'snap.parquet'
    recs.with_columns(pl.col('speciesKey', 'taxonKey').cast(pl.Int64)).rename(
        {c: c.lower() for c in recs.columns}
    ).write_parquet(snap)
    ingest(snap, tmp_path / 'c.parquet', resolution=RES)
    want = read_columns(tmp_path / 'c.parquet')

    def cell(lat, lon, res):
        df = pl.DataFrame({'a': pl.from_arrow(lat), 'b': pl.from_arrow(lon)})
        return (
            df.select(plh3.latlng_to_cell('a', 'b', int(res[0].as_py()), return_dtype=pl.UInt64)).to_series().to_arrow()
        )

    con = duckdb.connect()
    con.create_function('h3_latlng_to_cell', cell, ['DOUBLE', 'DOUBLE', 'INTEGER'], 'UBIGINT', type='arrow')
    m, dd = np.divmod(np.flatnonzero(week_table()), 32)
    weeks = pl.DataFrame({'month': m, 'day': dd, 'week': week_table()[week_table() > 0].astype(np.int64)})
    con.register('weeks', weeks.to_arrow())
    con.sql(f"CREATE VIEW occurrence AS SELECT * FROM read_parquet('{snap}')")
    got = pl.from_arrow(con.sql(CLUSTER_SQL.replace(', 3)', f', {RES})')).arrow())
    trip = (
        got.explode('species')
        .rename({'species': 'key'})
        .with_columns(pl.col('key').cast(pl.Int64), pl.col('week').cast(pl.Int8))
    )
    sp = trip.select('key').unique().with_columns(pl.col('key').cast(pl.String).alias('species_code'))
    lists = weekly_lists(trip.select('cell', 'week', 'key'), sp)
    lists = lists.with_columns(
        pl.col('cell').map_elements(h3.int_to_str, return_dtype=pl.String).alias('h3_index')
    ).sort('h3_index')
    assert lists.select('h3_index', *WEEK_COLS).equals(want.select('h3_index', *WEEK_COLS))


def test_high_resolution_groups_without_packing(small, tmp_path):
    """Above resolution 7 (cell, week, key) are grouped unpacked: the res-9 lists, merged into their res-7 parents, are
    the res-7 lists."""
    d, z, _ = small
    for r in (7, 9):
        ingest(z, tmp_path / f'r{r}.parquet', resolution=r)
    lo = read_columns(tmp_path / 'r7.parquet')
    hi = (
        read_columns(tmp_path / 'r9.parquet')
        .with_columns(pl.col('h3_index').map_elements(lambda c: h3.cell_to_parent(c, 7), return_dtype=pl.String))
        .group_by('h3_index')
        .agg(pl.col(WEEK_COLS).list.explode().drop_nulls().unique().sort())
        .sort('h3_index')
    )
    assert h3.get_resolution(read_columns(tmp_path / 'r9.parquet')['h3_index'][0]) == 9
    assert hi.select('h3_index', *WEEK_COLS).to_dicts() == lo.sort('h3_index').select('h3_index', *WEEK_COLS).to_dicts()


@pytest.mark.parametrize('res', [4, 9])
def test_count_triples_is_a_group_by(res):
    """The distinct (cell, week, key) of shuffled records with repeated ids, packed (res 4) and unpacked (res 9): the
    records and the duplicates (records repeating an id of their triple) per triple, as a group-by counts them."""
    rng, n = np.random.default_rng(res), 50_000
    pool = np.array([h3.str_to_int(c) for c in h3.grid_disk(h3.latlng_to_cell(*A_LL, res), 6)], np.uint64)
    cell, week, key = rng.choice(pool, n), rng.integers(1, 49, n), rng.integers(1, 40, n)
    has, ids = rng.random(n) < 0.7, rng.integers(1, 6, n).astype(np.uint64)
    flag = np.where(has, ID_FLAG, np.uint64(0))
    if res <= 7:
        cols = [pack_key(cell, week, key, res).view(np.uint64) | flag, ids]
    else:
        cols = [cell | flag, (week.astype(np.uint64) << np.uint64(58)) | key.astype(np.uint64), ids]
    t = count_triples(cols, res, ids=True)
    got = pl.DataFrame(
        {'cell': t.cells[t.at], 'week': t.week.astype(np.int64), 'key': t.key, 'rows': t.rows, 'dups': t.dups}
    )
    rec = pl.DataFrame({'cell': cell, 'week': week, 'key': key, 'has': has, 'id': ids.astype(np.int64)})
    want = (
        rec.group_by('cell', 'week', 'key')
        .agg(
            pl.len().cast(pl.Int64).alias('rows'),
            (pl.col('has').sum() - pl.col('id').filter(pl.col('has')).n_unique()).cast(pl.Int64).alias('dups'),
        )
        .sort('cell', 'week', 'key')
    )
    assert got.with_columns(pl.col('rows', 'dups').cast(pl.Int64)).equals(want)  # in order of cell, week, key
    assert want['dups'].sum() > 0
