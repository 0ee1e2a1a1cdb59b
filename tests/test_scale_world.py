"""bench/scale_world.py at a tiny size (H3 res 2, 150 species): its sparse truth explains every label but the marked
false positives, and its GBIF-like records (parquet and Darwin Core Archive) ingest to exactly its combined parquet."""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from geosdm.core import WEEK_COLS
from geosdm.ingest import ingest
from geosdm.worldfiles import ENV_COLUMNS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'bench'))
import scale_world  # noqa: E402


@pytest.fixture(scope='module')
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp('scale_world')
    scale_world.make_world(out, res=2, n_species=150, effort=0.5, records=1.3, seed=3, log=lambda *a: None)
    return out


def labels(world: Path) -> pl.DataFrame:
    "(h3_index, week, species_code) of every label of the combined parquet."
    comb = pl.read_parquet(world / 'combined.parquet', columns=['h3_index', *WEEK_COLS])
    return (
        comb.unpivot(index='h3_index', variable_name='w', value_name='species_code')
        .explode('species_code')
        .drop_nulls('species_code')
        .select('h3_index', pl.col('w').str.slice(5).cast(pl.Int32).alias('week'), 'species_code')
    )


def test_files_and_counts(world):
    comb = pl.read_parquet(world / 'combined.parquet')
    assert comb.columns == ['h3_index', 'geometry', *ENV_COLUMNS, *WEEK_COLS]
    assert comb['h3_index'].is_sorted() and comb['h3_index'].n_unique() == comb.height == 5794  # as the real res-2 grid
    tax = pl.read_csv(world / 'combined_taxonomy.csv')
    assert tax.columns == ['species_code', 'scientificName', 'commonName'] and tax.height == 150
    assert tax['scientificName'].n_unique() == 150
    summary = json.loads((world / 'world.json').read_text())
    lab = labels(world)
    assert summary['labels'] == lab.height > 10_000 and summary['cells'] == comb.height
    assert set(lab['species_code']) <= set(tax['species_code'])
    # the real grids' nulls: no temperature over the open sea, some land cells with one
    assert 0 < comb['temperature_c'].null_count() < comb.height
    assert summary['records'] == pl.scan_parquet(world / 'records.parquet').select(pl.len()).collect().item()


def test_truth_is_sparse_and_explains_the_labels(world):
    ranges = pl.read_parquet(world / 'truth_ranges.parquet').with_columns(
        pl.col('species_code', 'h3_index').cast(pl.String)
    )
    sp = pl.read_parquet(world / 'truth_species.parquet')
    n_cells = pl.scan_parquet(world / 'combined.parquet').select(pl.len()).collect().item()
    assert ranges.height < 0.2 * n_cells * sp.height  # per species ranges, not a dense array
    assert ranges.select(pl.col('breeding').max(), pl.col('winter').max()).row(0) <= (1.0, 1.0)
    table = dict(
        p_max=sp['p_max'].to_numpy(),
        amp=np.stack(sp['amp'].to_numpy()),
        winter_weight=np.stack(sp['winter_weight'].to_numpy()),
    )
    idx = {c: i for i, c in enumerate(sp['species_code'])}
    lab = (
        labels(world)
        .join(ranges, on=['species_code', 'h3_index'], how='left')
        .with_columns(pl.col('breeding', 'winter').fill_null(0.0))
    )
    s = lab['species_code'].replace_strict(idx, return_dtype=pl.Int64).to_numpy()
    p = scale_world.truth_p(table, s, lab['breeding'].to_numpy(), lab['winter'].to_numpy(), lab['week'].to_numpy())
    impossible = lab.filter(pl.Series(p <= 0))
    false = pl.read_parquet(world / 'false_positives.parquet').with_columns(
        pl.col('h3_index', 'species_code').cast(pl.String)
    )
    assert 0 < false.height < 0.03 * lab.height
    # every label the truth rules out is a marked false positive, and every marked one is a label
    assert impossible.join(false, on=['h3_index', 'week', 'species_code'], how='anti').height == 0
    assert false.join(lab, on=['h3_index', 'week', 'species_code'], how='anti').height == 0
    # migrants move: some species has labels that need its wintering range
    assert (lab.filter(pl.col('breeding') == 0)['winter'] > 0).sum() > 0


@pytest.mark.parametrize('source', ['records.parquet', 'records_dwca.zip'])
def test_records_ingest_to_the_combined_parquet(world, tmp_path, source):
    if source.endswith('.zip'):
        assert zipfile.ZipFile(world / source).testzip() is None  # CRC and sizes of the parallel deflate are right
    rep = ingest(
        world / source,
        tmp_path / 'c.parquet',
        grid=world / 'combined.parquet',
        taxonomy=world / 'combined_taxonomy.csv',
        workdir=tmp_path,
    )
    want = pl.read_parquet(world / 'combined.parquet').drop('geometry')
    got = pl.read_parquet(tmp_path / 'c.parquet')
    assert got.equals(want)
    dropped = {f['filter']: f['dropped'] for f in rep['filters']}
    assert all(dropped[k] > 0 for k in ('rank', 'absent', 'basis', 'coordinates', 'uncertainty', 'date', 'year'))
    assert dropped['duplicate'] > 0 and rep['rows_read'] == json.loads((world / 'world.json').read_text())['records']
