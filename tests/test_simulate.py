"Tests of geosdm.simulate: determinism, file formats (world_a's), environment, species, observation process."

import json
from pathlib import Path

import h3
import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from geosdm.core import N_WEEKS, WEEK_COLS, demo_data_dir, demo_parquet
from geosdm.geo import unit_xyz
from geosdm.inputs import read_columns
from geosdm.planet import DEMO_BBOX, ISLAND_GROUPS, WHOCRA_BREEDING, WHOCRA_WINTER, grid_cells
from geosdm.simulate import DEMO_KWARGS, simulate_world
from geosdm.worldfiles import ENV_COLUMNS, TRUTH_WEEKS, write_world

WORLD_A = Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'world_a'
KW = dict(n_species=80, res=2, bbox=DEMO_BBOX, seed=3)


@pytest.fixture(scope='module')
def world():
    return simulate_world(**KW)


@pytest.fixture(scope='module')
def written(world, tmp_path_factory):
    return write_world(world, tmp_path_factory.mktemp('world'))


def _centroid(world, s, week):
    "p-weighted mean unit vector of species s in week (1..48) -> (lat, lon)."
    c = world.cells
    xyz = unit_xyz(c['lat'].to_numpy(), c['lon'].to_numpy())
    p = world.truth[:, week - 1, s].astype(float)
    v = (xyz * p[:, None]).sum(0)
    v /= np.linalg.norm(v)
    return v


# ---------------------------------------------------------------- determinism
def test_determinism_files(world, written, tmp_path):
    again = write_world(simulate_world(**KW), tmp_path / 'again')
    for f in sorted(p.name for p in written.iterdir()):
        assert (written / f).read_bytes() == (again / f).read_bytes(), f


def test_determinism_arrays(world):
    w2 = simulate_world(**KW)
    np.testing.assert_array_equal(world.truth, w2.truth)
    np.testing.assert_array_equal(world.effort, w2.effort)
    np.testing.assert_array_equal(world.obs_species, w2.obs_species)
    assert world.env.equals(w2.env) and world.species.equals(w2.species)
    w3 = simulate_world(**{**KW, 'seed': 4})
    assert not np.array_equal(world.truth, w3.truth)
    assert not np.array_equal(world.effort, w3.effort)
    assert not world.env.equals(w3.env)


# ---------------------------------------------------------------- formats
def test_files_layout(written):
    assert sorted(p.name for p in written.iterdir()) == sorted(
        [
            'combined.parquet',
            'combined_taxonomy.csv',
            'truth_land.parquet',
            'effort.parquet',
            'test_cells.txt',
            'world.json',
        ]
    )
    assert not list(written.glob('.*'))  # no temp files left


def test_combined_schema_like_world_a(written):
    if not (WORLD_A / 'combined.parquet').exists():
        pytest.skip('shared world_a not available')
    for f in ('combined.parquet', 'effort.parquet', 'truth_land.parquet'):
        ours, ref = pq.read_schema(written / f), pq.read_schema(WORLD_A / f)
        assert ours.names == ref.names, f
        assert [t for t in ours.types] == [t for t in ref.types], f
    ours, ref = pq.read_schema(written / 'combined.parquet'), pq.read_schema(WORLD_A / 'combined.parquet')
    assert (
        ours.field('geometry').metadata[b'ARROW:extension:name']
        == ref.field('geometry').metadata[b'ARROW:extension:name']
    )
    og, rg = json.loads(ours.metadata[b'geo']), json.loads(ref.metadata[b'geo'])
    assert og['primary_column'] == rg['primary_column'] == 'geometry'
    assert og['columns']['geometry']['encoding'] == 'WKB'
    assert og['columns']['geometry']['geometry_types'] == ['Polygon']
    assert og['columns']['geometry']['crs']['id'] == {'authority': 'EPSG', 'code': 4326}
    ref_tax = pl.read_csv(WORLD_A / 'combined_taxonomy.csv', n_rows=2)
    assert pl.read_csv(written / 'combined_taxonomy.csv').columns == ref_tax.columns


def test_combined_content(world, written):
    df = read_columns(written / 'combined.parquet')
    assert df.columns == ['h3_index', 'geometry', *ENV_COLUMNS, *WEEK_COLS]
    assert all(df.schema[c] == pl.Float64 for c in ENV_COLUMNS)
    assert all(df.schema[c] == pl.List(pl.String) for c in WEEK_COLS)
    assert df['h3_index'].to_list() == sorted(df['h3_index'].to_list())
    assert all(h3.is_valid_cell(c) and h3.get_resolution(c) == 2 for c in df['h3_index'])
    for c in WEEK_COLS:
        assert df[c].null_count() == 0
    # lists equal the world's observation matrix, codes sorted as strings
    codes = np.array(world.codes)
    for w in (1, 20, 48):
        m = world.observed(w)
        got = df[f'week_{w}'].to_list()
        assert got == [codes[np.flatnonzero(r)].tolist() for r in m]
    # WKB: closed ring, (lng, lat), centre inside the ring's bounding box
    import struct

    for i in (0, len(df) // 2, len(df) - 1):
        b = df['geometry'][i]
        bo, gt, nr, npt = struct.unpack('<BIII', b[:13])
        assert (bo, gt, nr) == (1, 3, 1) and npt in (6, 7)
        xy = np.frombuffer(b[13:], '<f8').reshape(-1, 2)
        np.testing.assert_array_equal(xy[0], xy[-1])
        lat, lng = h3.cell_to_latlng(df['h3_index'][i])
        assert xy[:, 0].min() <= lng <= xy[:, 0].max() and xy[:, 1].min() <= lat <= xy[:, 1].max()
    env = df.select(ENV_COLUMNS)
    assert env.equals(world.env.select(ENV_COLUMNS))


def test_truth_effort_files(world, written):
    t = read_columns(written / 'truth_land.parquet')
    land = world.cells.filter(pl.col('land'))['h3_index']
    assert len(t) == len(land) * len(TRUTH_WEEKS)
    assert sorted(t['week'].unique().to_list()) == list(TRUTH_WEEKS)
    p = t['p'].explode().drop_nulls().to_numpy()
    assert p.min() >= world.params['truth_min_p'] and p.max() < 1
    ix = {c: i for i, c in enumerate(world.codes)}
    row = {c: i for i, c in enumerate(world.cells['h3_index'])}
    for r in t.filter(pl.col('species').list.len() > 3).head(20).iter_rows(named=True):
        got = world.truth[row[r['h3_index']], r['week'] - 1, [ix[s] for s in r['species']]]
        np.testing.assert_allclose(got, r['p'], rtol=1e-6)
    e = read_columns(written / 'effort.parquet')
    assert e.columns == ['h3_index', 'lat', 'lon', *WEEK_COLS]
    np.testing.assert_array_equal(e.select(WEEK_COLS).to_numpy(), world.effort)
    js = json.loads((written / 'world.json').read_text())
    assert js['cells'] == world.n_cells and js['species'] == world.n_species and js['seed'] == 3
    assert js['checklists'] == int(world.effort.sum())


def test_test_cells_whole_blocks(world, written):
    test = (written / 'test_cells.txt').read_text().split()
    assert 0 < len(test) < 0.3 * world.cells['land'].sum()
    c = world.cells.with_columns(
        pl.col('h3_index').map_elements(lambda x: h3.cell_to_parent(x, 0), pl.String).alias('b')
    )
    blocks = set(c.filter(pl.col('h3_index').is_in(test))['b'])
    assert set(c.filter(pl.col('b').is_in(blocks) & pl.col('land'))['h3_index']) == set(test)
    assert c.filter(pl.col('h3_index').is_in(test))['land'].all()


# ---------------------------------------------------------------- environment
def test_env_nulls_and_ranges(world):
    e, c = world.env, world.cells
    land = c['land'].to_numpy()
    ocean = ~land
    isnull = lambda col: e[col].is_null().to_numpy()
    assert isnull('water_fraction').mean() > 0.85
    assert isnull('temperature_c')[ocean].all() and isnull('precipitation_mm')[ocean].all()
    assert isnull('temperature_c')[land].mean() < 0.05
    assert isnull('elevation_m')[ocean].mean() > 0.7 and isnull('elevation_m')[land].mean() < 0.05
    assert e['canopy_height_m'].null_count() == 0
    assert not isnull('landcover_class')[land].any() and isnull('landcover_class')[ocean].any()
    assert not isnull('urban_fraction')[land].any()
    lc = e['landcover_class'].drop_nulls().to_numpy()
    assert set(np.unique(lc)) <= set(range(1, 18)) and np.all(lc == np.round(lc))
    assert len(np.unique(lc)) >= 10
    assert (e['landcover_class'].to_numpy()[ocean & ~isnull('landcover_class')] == 17).all()
    for col, lo, hi in [
        ('water_fraction', 0, 1),
        ('urban_fraction', 0, 1),
        ('temperature_c', -35, 32),
        ('precipitation_mm', 0, 8000),
        ('elevation_m', -100, 7000),
        ('canopy_height_m', 0, 60),
    ]:
        v = e[col].drop_nulls().to_numpy()
        assert v.min() >= lo and v.max() <= hi, col
    assert (e['canopy_height_m'].to_numpy()[ocean] == 0).all()


def test_temperature_falls_with_latitude_and_elevation(world):
    d = (
        pl.concat([world.env, world.cells.drop('h3_index')], how='horizontal')
        .filter(pl.col('land'))
        .drop_nulls(['temperature_c', 'elevation_m'])
    )
    X = np.c_[np.ones(len(d)), np.abs(d['lat'].to_numpy()), d['elevation_m'].to_numpy()]
    coef = np.linalg.lstsq(X, d['temperature_c'].to_numpy(), rcond=None)[0]
    assert -1.2 < coef[1] < -0.3  # °C per degree latitude
    assert -0.012 < coef[2] < -0.002  # lapse rate °C per m


def test_anchor_points_on_land_and_global_grid():
    from global_land_mask import globe

    pts = np.array([p for g in ISLAND_GROUPS.values() for p in g[0]] + [WHOCRA_BREEDING, WHOCRA_WINTER])
    assert globe.is_land(pts[:, 0], pts[:, 1]).all()
    assert len(grid_cells(2)) == 5794  # the real 350 km grid's cell count (antimeridian cells dropped)


# ---------------------------------------------------------------- species
def test_kinds_and_watchlist(world):
    k = world.species['kind'].value_counts()
    kinds = dict(zip(k['kind'], k['count']))
    assert set(kinds) == {'resident', 'migrant', 'generalist', 'endemic'}
    codes = world.codes
    assert codes == sorted(codes)
    for c in ('hawgoo', 'iiwi', 'apapan', 'calcon', 'whocra'):
        assert c in codes
    for c in ('kea1', 'galhaw1', 'kagu1'):
        assert c not in codes  # outside the box
    tax = world.taxonomy()
    assert tax['scientificName'].n_unique() == len(tax) and tax['commonName'].n_unique() == len(tax)


def test_migrants_move(world):
    mig = np.flatnonzero(world.species['kind'].to_numpy() == 'migrant')
    assert len(mig) >= 10
    mass = world.truth[:, [1, 25]][:, :, mig].sum(0)
    assert (mass > 0).all(0).mean() > 0.8  # most migrants are inside the box in both seasons
    moved = []
    for s in mig[(mass > 0).all(0)]:
        a, b = _centroid(world, s, 2), _centroid(world, s, 26)
        moved.append(np.arccos(np.clip(a @ b, -1, 1)) * 6371)
        assert not np.allclose(world.truth[:, 1, s], world.truth[:, 25, s])
    assert np.median(moved) > 1500
    # residents barely move
    res = np.flatnonzero(world.species['kind'].to_numpy() == 'resident')[:10]
    rm = [np.arccos(np.clip(_centroid(world, s, 2) @ _centroid(world, s, 26), -1, 1)) * 6371 for s in res]
    assert np.median(rm) < 300
    # the whooping crane: north in summer, Texas coast in winter
    s = world.codes.index('whocra')
    lat_w = np.degrees(np.arcsin(_centroid(world, s, 2)[2]))
    lat_s = np.degrees(np.arcsin(_centroid(world, s, 26)[2]))
    assert lat_s - lat_w > 20 and abs(lat_w - WHOCRA_WINTER[0]) < 6 and abs(lat_s - WHOCRA_BREEDING[0]) < 6


def test_endemics_zero_off_island(world):
    end = world.species.filter(pl.col('kind') == 'endemic')['species_code'].to_list()
    assert set(end) == set(world.range_masks)
    for code in end:
        s = world.codes.index(code)
        m = world.range_masks[code]
        assert m.sum() <= 20
        assert (world.truth[~m, :, s] == 0).all()
        assert world.truth[m, :, s].max() > 0.1
    lat, lon = world.cells['lat'].to_numpy(), world.cells['lon'].to_numpy()
    for code in ('hawgoo', 'iiwi'):
        on = world.truth[:, :, world.codes.index(code)].max(1) > 0
        assert on.any() and ((lat[on] > 17) & (lat[on] < 24) & (lon[on] > -162) & (lon[on] < -153)).all()


# ---------------------------------------------------------------- observation process
def test_effort_bias(world):
    land = world.cells['land'].to_numpy()
    yearly = world.effort.sum(1)
    assert yearly[~land & (world.cells['land_frac'].to_numpy() == 0)].sum() == 0  # no effort on open ocean
    assert yearly[land].max() > 20 * max(np.median(yearly[land]), 1)
    assert (yearly[land] == 0).mean() > 0.05
    # seasonal: northern effort peaks in spring/early summer
    north = land & (world.cells['lat'].to_numpy() > 20)
    by_week = world.effort[north].sum(0)
    assert by_week[16:22].mean() > 1.3 * by_week[np.r_[40:48, 0:2]].mean()


def test_observations_noisy_subset_of_truth(world):
    recs, fls = [], []
    for w in range(N_WEEKS):
        o = world.obs_offsets[w]
        rows = np.repeat(np.arange(world.n_cells), np.diff(o))
        sp = world.obs_species[o[0] : o[-1]]
        recs.append(world.truth[rows, w, sp])
        fls.append(world.obs_false[o[0] : o[-1]])
        assert (world.effort[np.diff(o) > 0, w] > 0).all()  # records only where checklists were made
    p, fp = np.concatenate(recs), np.concatenate(fls)
    assert (p[~fp] > 0).all()  # every true detection has p > 0
    assert 0.002 < (p == 0).mean() < 0.02  # false positives ~1 %
    assert 0.004 < fp.mean() < 0.02


def test_detection_probability_matches_formula(world):
    det = world.species['detectability'].to_numpy().astype(np.float32)
    exp_hits, got_hits = 0.0, 0
    for w in range(0, N_WEEKS, 3):
        n = world.effort[:, w]
        q = 1 - (1 - world.truth[:, w] * det) ** n[:, None]
        exp_hits += q.sum()
        o = world.obs_offsets[w]
        got_hits += int((~world.obs_false[o[0] : o[-1]]).sum())
    assert abs(got_hits - exp_hits) < 4 * np.sqrt(exp_hits) + 0.01 * exp_hits


# ---------------------------------------------------------------- demo, speed
def test_demo_data():
    try:
        d = demo_data_dir()
    except FileNotFoundError:
        pytest.skip('demo data not bundled')
    assert demo_parquet() == d / 'combined.parquet'
    js = json.loads((d / 'world.json').read_text())
    assert js['seed'] == DEMO_KWARGS['seed'] and js['n_species'] == DEMO_KWARGS['n_species']
    assert 500 <= js['cells'] <= 2000 and js['samples'] > 3000
    assert sum(f.stat().st_size for f in d.iterdir()) < 5e6
    df = read_columns(d / 'combined.parquet')
    assert df.columns == ['h3_index', 'geometry', *ENV_COLUMNS, *WEEK_COLS]


def test_bad_arguments():
    with pytest.raises(ValueError, match='res'):
        grid_cells(7)
    with pytest.raises(ValueError, match='bbox'):
        grid_cells(2, (0, 10, 5, 5))
    with pytest.raises(ValueError, match='n_species'):
        simulate_world(0)


def test_5000_cells_300_species():
    "A world of world_a's size (how fast: bench/wall_clock.py)."
    w = simulate_world(n_species=300, res=2, seed=11)
    assert w.n_cells >= 5000 and w.n_species == 300
