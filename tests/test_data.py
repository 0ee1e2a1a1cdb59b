"""Tests of geosdm.data against small hand-checkable worlds (see conftest.py) and world_a."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import h3
import numpy as np
import polars as pl
import pytest
import torch
from conftest import WEEKS, WORLD_A, default_lists, grid_cells, write_world

from geosdm.batches import DeviceSamples, jitter_latlon, multi_hot
from geosdm.config import DATA_OPTIONS, data_options
from geosdm.core import ConfigError, GeoSDMDataError
from geosdm.data import Prepared, Samples, cache_key, jitter_std_for_res, prepare_data, split_cells
from geosdm.geo import HOLDOUT_REGIONS
from geosdm.inputs import find_taxonomy, read_taxonomy

P = dict(progress=False, min_obs_per_species=0)


def row_sets(s: Samples, vocab) -> list[set]:
    return [{vocab[j] for j in s.species[s.offsets[i] : s.offsets[i + 1]]} for i in range(len(s))]


def all_samples(p: Prepared) -> dict:
    "(cell id, week) -> set of codes over train + val + holdout."
    out = {}
    for s in (p.train, p.val, p.holdout):
        if s is None:
            continue
        for (c, w), ln in zip(zip(s.cell, s.week), row_sets(s, p.vocab)):
            out[(p.cells[c], int(w))] = ln
    return out


def naive_counts(n_cells=40, lists=default_lists, yearly=True, cells=None):
    cnt = Counter()
    for i in range(n_cells) if cells is None else cells:
        year = set()
        for w in range(1, 49):
            ln = set(lists(i, w))
            year |= ln
            cnt.update(ln)
        if yearly:
            cnt.update(year)
    return cnt


# ---------------------------------------------------------------- flattening


def test_flatten_counts_and_order(world):
    p = prepare_data(world, **P)
    assert len(p.cells) == 40 and len(p.train) + len(p.val) == 40 * 49
    assert p.stats['samples_total'] == 40 * 49
    for s in (p.train, p.val):
        assert s.offsets.dtype == np.int64 and s.species.dtype == np.int32 and s.lat.dtype == np.float32
        assert s.week.dtype == np.int64 and s.cell.dtype == np.int32 and s.obs_density.dtype == np.float32
        # 49 samples per cell, weeks 1..48 then yearly 0
        assert np.array_equal(s.week.reshape(-1, 49), np.tile(np.r_[np.arange(1, 49), 0], (len(s) // 49, 1)))
        # species sorted (strictly) within each row
        d = np.diff(s.species.astype(np.int64))
        starts = s.offsets[1:-1]
        ok = np.ones(len(d), bool)
        ok[starts[(starts > 0) & (starts < s.nnz)] - 1] = False
        assert (d[ok] > 0).all()
        ll = np.array([h3.cell_to_latlng(p.cells[c]) for c in s.cell])
        assert np.allclose(s.lat, ll[:, 0], atol=1e-4) and np.allclose(s.lon, ll[:, 1], atol=1e-4)
    q = prepare_data(world, no_yearly=True, **P)
    assert len(q.train) + len(q.val) == 40 * 48 and 0 not in q.train.week and 0 not in q.val.week


def test_weekly_lists_and_yearly_union(world):
    p = prepare_data(world, **P)
    got = all_samples(p)
    cells = grid_cells(40)
    for i, c in enumerate(cells):
        year = set()
        for w in range(1, 49):
            assert got[(c, w)] == set(default_lists(i, w))
            year |= set(default_lists(i, w))
        assert got[(c, 0)] == year


def test_duplicate_codes_in_a_list_are_deduplicated(world_writer):
    path = world_writer(lists=lambda i, w: ['b', 'a', 'b'] if w == 1 else [])
    p = prepare_data(path, **P)
    s = all_samples(p)
    assert s[(p.cells[0], 1)] == {'a', 'b'} and p.train.n_pos().max() == 2
    # obs_density counts raw list lengths (3) + the yearly union (2)
    assert set(np.unique(p.train.obs_density)) == {5.0}


def test_obs_density_is_cell_total(world):
    p = prepare_data(world, **P)
    cells = grid_cells(40)
    for s in (p.train, p.val):
        for c, dens in zip(s.cell, s.obs_density):
            i = cells.index(p.cells[c])
            raw = sum(len(default_lists(i, w)) for w in range(1, 49))
            year = len(set().union(*(default_lists(i, w) for w in range(1, 49))))
            assert dens == raw + year
    q = prepare_data(world, no_yearly=True, **P)
    i = cells.index(q.cells[q.train.cell[0]])
    assert q.train.obs_density[0] == sum(len(default_lists(i, w)) for w in range(1, 49))


def test_samples_subset_matches_naive(world):
    p = prepare_data(world, **P)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(p.train), 300)
    sub = p.train.subset(idx)
    full = row_sets(p.train, p.vocab)
    assert row_sets(sub, p.vocab) == [full[i] for i in idx]
    assert np.array_equal(sub.week, p.train.week[idx]) and np.array_equal(sub.n_pos(), p.train.n_pos()[idx])
    assert len(p.train.subset(np.zeros(len(p.train), bool))) == 0


# ---------------------------------------------------------------- vocabulary


@pytest.mark.parametrize('min_obs', [0, 50, 200, 300, 500])
@pytest.mark.parametrize('no_yearly', [False, True])
def test_min_obs_filter_exact(world, min_obs, no_yearly):
    cnt = naive_counts(yearly=not no_yearly)
    keep = sorted(c for c, k in cnt.items() if k >= min_obs)
    if not keep:
        with pytest.raises(GeoSDMDataError, match='no species left'):
            prepare_data(world, min_obs_per_species=min_obs, no_yearly=no_yearly, progress=False)
        return
    p = prepare_data(world, min_obs_per_species=min_obs, no_yearly=no_yearly, progress=False)
    assert p.vocab == keep
    assert p.stats['species_before_filter'] == 10 and p.stats['species_after_filter'] == len(keep)
    # per-species sample counts over all splits equal the naive counts
    got = np.bincount(np.concatenate([p.train.species, p.val.species]), minlength=p.n_species)
    assert got.tolist() == [cnt[c] for c in keep]


def test_max_species(world):
    kept = sorted(c for c, k in naive_counts().items() if k >= 100)
    p = prepare_data(world, min_obs_per_species=100, max_species=3, progress=False)
    expect = sorted(np.random.RandomState(42).choice(kept, 3, replace=False).tolist())
    assert p.vocab == expect and p.n_species == 3 and p.train.n_species == 3
    assert p.train.species.max() < 3
    assert prepare_data(world, min_obs_per_species=100, max_species=50, progress=False).vocab == kept


@pytest.mark.parametrize('cap', [1, 30, 100])
def test_max_obs_cap(world, cap):
    base = prepare_data(world, **P)
    p = prepare_data(world, max_obs_per_species=cap, **P)
    counts = np.bincount(p.train.species, minlength=p.n_species)
    before = np.bincount(base.train.species, minlength=p.n_species)
    assert (counts <= cap).all() and np.array_equal(counts, np.minimum(before, cap))
    assert p.stats['labels_capped'] == int(np.maximum(before - cap, 0).sum()) > 0
    # samples never dropped, capped labels are a subset of the original ones, val untouched
    assert len(p.train) == len(base.train) and np.array_equal(p.train.week, base.train.week)
    assert all(a <= b for a, b in zip(row_sets(p.train, p.vocab), row_sets(base.train, p.vocab)))
    assert np.array_equal(p.val.species, base.val.species) and np.array_equal(
        p.train.obs_density, base.train.obs_density
    )
    # deterministic
    assert np.array_equal(prepare_data(world, max_obs_per_species=cap, **P).train.species, p.train.species)


# ---------------------------------------------------------------- ocean


@pytest.mark.parametrize('rate', [0.0, 0.5, 1.0])
def test_ocean_sample_rate(world, rate):
    wf = np.array(
        [np.nan if v is None else v for v in write_world.__globals__['default_env'](grid_cells(40))['water_fraction']]
    )
    ocean = np.nan_to_num(wf) > 0.9
    keep = ~ocean | (np.random.default_rng(42).random(40) < rate) if rate < 1 else np.ones(40, bool)
    p = prepare_data(world, ocean_sample_rate=rate, **P)
    assert p.cells == [c for c, k in zip(grid_cells(40), keep) if k]
    assert p.stats['ocean_cells'] == 4 and p.stats['ocean_cells_dropped'] == int((~keep).sum())
    assert len(p.train) + len(p.val) == keep.sum() * 49


# ---------------------------------------------------------------- env targets


def test_env_encoding(world):
    p = prepare_data(world, **P)
    env = write_world.__globals__['default_env'](grid_cells(40))
    assert 'target_km' not in p.env_names and 'h3_resolution' not in p.env_names
    assert p.env_names == [
        'landcover_class_1',
        'landcover_class_2',
        'landcover_class_3',
        'landcover_class_4',
        'water_fraction',
        'urban_fraction',
        'elevation_m',
        'temperature_c',
    ]
    assert p.env.shape == (40, 8) and p.env.dtype == np.float32 and p.n_env == 8
    lc = np.array([np.nan if v is None else v for v in env['landcover_class']])
    oh = p.env[:, :4]
    assert np.isnan(oh[np.isnan(lc)]).all()
    ok = ~np.isnan(lc)
    assert np.array_equal(oh[ok].argmax(1) + 1, lc[ok]) and np.array_equal(oh[ok].sum(1), np.ones(ok.sum()))
    wf = np.array([np.nan if v is None else v for v in env['water_fraction']], np.float32)
    assert np.array_equal(p.env[:, 4], wf, equal_nan=True)  # fraction: raw, NaN kept
    assert np.allclose(p.env[:, 5], np.array(env['urban_fraction'], np.float32))
    for j, name in ((6, 'elevation_m'), (7, 'temperature_c')):
        raw = np.array([np.nan if v is None else v for v in env[name]])
        col = p.env[:, j]
        assert np.array_equal(np.isnan(col), np.isnan(raw))
        assert abs(np.nanmean(col)) < 1e-5 and abs(np.nanstd(col) - 1) < 1e-5
        st = p.env_stats['continuous'][name]
        assert np.allclose(col * st['std'] + st['mean'], raw, equal_nan=True, rtol=1e-5)
    assert p.env_stats['categorical']['landcover_class'] == [1.0, 2.0, 3.0, 4.0]


def test_non_numeric_extra_column(world_writer):
    path = world_writer(extra={'region': ['x'] * 40})
    with pytest.raises(GeoSDMDataError, match=r'combined\.parquet.*non-numeric.*region'):
        prepare_data(path, **P)


def test_extra_numeric_column_is_continuous(world_writer):
    path = world_writer(extra={'geoid_m': [float(i) for i in range(40)]})
    p = prepare_data(path, **P)
    assert p.env_names[-1] == 'geoid_m' and abs(p.env[:, -1].mean()) < 1e-6


# ---------------------------------------------------------------- split, sample fraction, hold-out


@pytest.mark.parametrize('n,val', [(40, 0.1), (439, 0.1), (100, 0.25), (7, 0.3)])
def test_split_matches_sklearn(n, val):
    from sklearn.model_selection import train_test_split

    tr, va = split_cells(n, val)
    str_, sva = train_test_split(np.arange(n), test_size=val, random_state=42)
    assert np.array_equal(tr, np.sort(str_)) and np.array_equal(va, np.sort(sva))
    assert len(va) == math.ceil(val * n)


@pytest.mark.parametrize('val_size', [0.1, 0.3])
def test_split_by_location(world, val_size):
    p = prepare_data(world, val_size=val_size, **P)
    tr, va = set(p.train.cell.tolist()), set(p.val.cell.tolist())
    assert not tr & va and len(tr | va) == 40
    assert len(va) == math.ceil(val_size * 40) == p.stats['cells_val']
    assert np.array_equal(np.bincount(p.val.cell)[sorted(va)], [49] * len(va))


def test_val_size_zero_is_refused(world):
    "The option table's range for --val_size, (0, 1), holds for the library too: one range, one place."
    with pytest.raises(ValueError, match=r'--val_size: must be in \(0, 1\)'):
        prepare_data(world, val_size=0.0, **P)


def test_sample_fraction_before_split(world):
    p = prepare_data(world, sample_fraction=0.5, **P)
    k = int(40 * 0.5)
    chosen = set(np.random.RandomState(42).choice(40, k, replace=False).tolist())
    tr, va = set(p.train.cell.tolist()), set(p.val.cell.tolist())
    assert tr | va == chosen and not tr & va and len(va) == math.ceil(0.1 * k)
    assert len(p.train) + len(p.val) == k * 49
    # the vocabulary still comes from all cells
    assert p.vocab == prepare_data(world, **P).vocab


def test_holdout_boxes(world):
    base = prepare_data(world, **P)
    box = (0.0, 45.0, 10.0, 55.0)
    p = prepare_data(world, holdout_boxes=[box], **P)
    lat, lon = base.cell_lat, base.cell_lon
    inside = {c for c in range(40) if box[0] <= lon[c] <= box[2] and box[1] <= lat[c] <= box[3]}
    btr = set(base.train.cell.tolist())
    assert set(p.holdout.cell.tolist()) == btr & inside
    assert set(p.train.cell.tolist()) == btr - inside
    assert np.array_equal(p.val.cell, base.val.cell) and np.array_equal(p.val.species, base.val.species)
    assert p.stats['cells_holdout'] == len(btr & inside) > 0 and len(p.holdout) == 49 * len(btr & inside)
    assert base.holdout is None


def test_holdout_named_regions(world_writer):
    # a patch around Belgium: named region, case-insensitive
    path = world_writer(cells=grid_cells(40, lat=51.0, lon=4.5))
    p = prepare_data(path, holdout_regions=['BeNeLux'], **P)
    x0, y0, x1, y1 = HOLDOUT_REGIONS['benelux']
    lat, lon = p.cell_lat[p.holdout.cell], p.cell_lon[p.holdout.cell]
    assert len(p.holdout) > 0 and ((lon >= x0) & (lon <= x1) & (lat >= y0) & (lat <= y1)).all()
    lat, lon = p.cell_lat[p.train.cell], p.cell_lon[p.train.cell]
    assert not ((lon >= x0) & (lon <= x1) & (lat >= y0) & (lat <= y1)).any()
    assert p.options['holdout_regions'] == ['benelux']


def test_holdout_errors(world):
    with pytest.raises(ConfigError, match='--holdout_regions: unknown.*atlantis.*valid.*us_northwest'):
        prepare_data(world, holdout_regions=['atlantis'], **P)
    with pytest.raises(GeoSDMDataError, match=r'combined\.parquet.*cover every'):
        prepare_data(world, holdout_boxes=[(-180, -90, 180, 90)], **P)
    with pytest.warns(UserWarning, match='no training cell'):
        p = prepare_data(world, holdout_regions=['japan'], **P)
    assert p.holdout is None


# ---------------------------------------------------------------- taxonomy


def test_taxonomy_autodetect_and_names(world_writer, tmp_path):
    p = prepare_data(
        world_writer(), **P
    )  # header with duplicated species_code, as the BirdNET geomodel training script writes it
    assert p.sci_names[0] == 'Sci s00' and p.common_names[0] == 'Common s00'
    q = prepare_data(world_writer(name='other_with_ee', taxonomy=None), **P)
    assert q.sci_names == q.vocab and q.stats['taxonomy'] is None
    # <stem without _with_ee>_taxonomy.csv
    write_world(tmp_path / 'b', name='grid', taxonomy='alt')
    os.rename(tmp_path / 'b' / 'grid.parquet', tmp_path / 'b' / 'grid_with_ee.parquet')
    assert find_taxonomy(tmp_path / 'b' / 'grid_with_ee.parquet') == tmp_path / 'b' / 'grid_taxonomy.csv'
    r = prepare_data(tmp_path / 'b' / 'grid_with_ee.parquet', **P)
    assert r.common_names[1] == 'Common s01'
    # explicit override
    s = prepare_data(world_writer(name='third', taxonomy=None), taxonomy=tmp_path / 'b' / 'grid_taxonomy.csv', **P)
    assert s.sci_names[2] == 'Sci s02'
    assert read_taxonomy(tmp_path / 'b' / 'grid_taxonomy.csv')['s03'] == ('Sci s03', 'Common s03')


def test_code_absent_from_taxonomy(world_writer, tmp_path):
    path = world_writer()
    tax = path.with_name('combined_taxonomy.csv')
    tax.write_text('\n'.join(ln for ln in tax.read_text().splitlines() if not ln.startswith(('s01,', 's07,'))))
    with pytest.raises(
        GeoSDMDataError, match=r'combined\.parquet: 2 species code.*: s07 \(640 cell-weeks\), s01 \(160 cell-weeks\)'
    ):
        prepare_data(path, **P)


# ---------------------------------------------------------------- bad input


def _bad(path, match):
    with pytest.raises(GeoSDMDataError, match=match) as e:
        prepare_data(path, **P)
    assert Path(path).name in str(e.value)


def test_bad_inputs(world_writer, tmp_path):
    notpq = tmp_path / 'notpq.parquet'
    notpq.write_text('hello')
    _bad(notpq, 'not a readable parquet')
    _bad(tmp_path / 'absent.parquet', 'not found')
    _bad(world_writer(name='nocols', drop=('week_3', 'week_17')), r"missing required column.*week_3.*week_17")
    _bad(world_writer(name='noh3', drop=('h3_index',)), 'missing required column.*h3_index')
    cells = grid_cells(40)
    cells[3] = 'nothex'
    cells[5] = '8f'
    _bad(world_writer(name='badh3', cells=cells), r"2 invalid H3 id.*nothex")
    mixed = grid_cells(39) + [h3.latlng_to_cell(0, 0, 3)]
    _bad(world_writer(name='mixed', cells=mixed), 'mixed H3 resolutions')
    dup = grid_cells(39)
    dup.append(dup[0])
    _bad(world_writer(name='dup', cells=dup), 'duplicated H3')
    _bad(world_writer(name='notlist', extra={'week_5': ['a'] * 40}), r'week_5.*expected list')
    _bad(
        world_writer(
            name='nulls',
            taxonomy=None,
            extra={'week_9': pl.Series([None] * 3 + [['s00']] * 37, dtype=pl.List(pl.String))},
        ),
        r'null species lists.*week_9: 3 cell',
    )
    _bad(world_writer(name='empty', lists=lambda i, w: []), 'no species left')
    with pytest.raises(GeoSDMDataError, match='taxonomy file not found'):
        prepare_data(world_writer(name='x'), taxonomy=tmp_path / 'none.csv', **P)


def test_integer_codes_and_h3_ids(world_writer):
    cells = grid_cells(40)
    path = world_writer(
        name='ints',
        taxonomy=None,
        cells=[h3.str_to_int(c) for c in cells],
        extra={w: pl.Series([[int(k), 7] for k in range(40)], dtype=pl.List(pl.Int64)) for w in WEEKS},
    )
    p = prepare_data(path, **P)
    assert p.cells == cells and '7' in p.vocab and p.vocab == sorted(p.vocab)


def test_option_validation(world):
    for kw in ({'val_size': 1.0}, {'sample_fraction': 0.0}, {'ocean_sample_rate': 2.0}, {'min_obs_per_species': -1}):
        with pytest.raises(ValueError):
            prepare_data(world, **{**P, **kw})


# ---------------------------------------------------------------- cache

OPTIONS = [
    ('min_obs_per_species', 3),
    ('max_obs_per_species', 10),
    ('max_species', 4),
    ('ocean_sample_rate', 0.5),
    ('no_yearly', True),
    ('val_size', 0.2),
    ('sample_fraction', 0.8),
    ('holdout_regions', ['uk']),
    ('holdout_boxes', [(0, 45, 10, 55)]),
    ('propagate_labels', True),
]


PROPAGATION = [
    ('propagate_k', 3),
    ('propagate_max_radius', 500.0),
    ('propagate_max_spread', 1.0),
    ('propagate_min_obs', 5),
    ('propagate_env_dist_max', 1.0),
    ('propagate_range_cap', 200.0),
]


def test_every_data_option_is_tried():
    assert {n for n, _ in OPTIONS + PROPAGATION} == set(DATA_OPTIONS)


@pytest.mark.parametrize('name,value', OPTIONS + PROPAGATION)
def test_cache_key_changes_with_every_option(world, name, value):
    base = {**P, 'propagate_labels': name.startswith('propagate_') and name != 'propagate_labels'}
    assert set(prepare_data(world, **base).options) == set(DATA_OPTIONS) | {'data_path', 'taxonomy'}
    a = prepare_data(world, **base).fingerprint
    b = prepare_data(world, **{**base, name: value}).fingerprint
    assert a != b


def test_propagation_values_do_not_enter_the_key_when_it_is_off(world):
    assert prepare_data(world, **P).fingerprint == prepare_data(world, propagate_k=3, **P).fingerprint


def _key(path, tax=None, **kw):
    o = dict(
        min_obs_per_species=0,
        max_obs_per_species=0,
        max_species=0,
        ocean_sample_rate=1.0,
        no_yearly=False,
        val_size=0.1,
        sample_fraction=1.0,
        holdout_regions=(),
        holdout_boxes=(),
    )
    opts = {'data_path': str(Path(path).resolve()), 'taxonomy': str(Path(tax).resolve()) if tax else None}
    return cache_key({**opts, **data_options(**{**o, **kw})})


def test_cache_key_file_identity(world, tmp_path):
    "The key follows the bytes of the data and taxonomy files (issue 14), not their path, time or size."
    a = prepare_data(world, **P).fingerprint
    tax = world.with_name('combined_taxonomy.csv')
    assert _key(world, tax) == a
    # not part of the key: progress, cache_dir, no_cache
    assert prepare_data(world, progress=True, cache_dir=tmp_path / 'c', min_obs_per_species=0).fingerprint == a
    assert prepare_data(world, no_cache=True, **P).fingerprint == a
    st = world.stat()
    os.utime(world, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # mtime only: same bytes, same key
    assert _key(world, tax) == a
    copy = tmp_path / 'elsewhere' / 'combined.parquet'
    copy.parent.mkdir()
    copy.write_bytes(world.read_bytes())  # same bytes at another path
    assert _key(copy, tax) == a
    data = bytearray(world.read_bytes())
    data[len(data) // 2] ^= 1
    st = world.stat()
    world.write_bytes(bytes(data))  # other bytes, same size, mtime restored
    os.utime(world, ns=(st.st_atime_ns, st.st_mtime_ns))
    b = _key(world, tax)
    assert b != a
    with open(world, 'ab') as f:
        f.write(b'\0')  # size
    c = _key(world, tax)
    assert c not in (a, b)
    tax.write_text(tax.read_text() + '\n')  # taxonomy content
    assert _key(world, tax) != c and _key(world, None) != c
    # same options spelled differently -> same key
    assert _key(world, tax, holdout_regions=['UK', 'japan']) == _key(world, tax, holdout_regions=('Japan', 'uk'))


def _assert_same(a: Prepared, b: Prepared):
    for nm in ('train', 'val', 'holdout'):
        sa, sb = getattr(a, nm), getattr(b, nm)
        assert (sa is None) == (sb is None)
        if sa is None:
            continue
        for f in ('lat', 'lon', 'week', 'cell', 'offsets', 'species', 'obs_density'):
            x, y = getattr(sa, f), getattr(sb, f)
            assert x.dtype == y.dtype and np.array_equal(x, y), (nm, f)
        assert sa.n_species == sb.n_species
    assert np.array_equal(a.env, b.env, equal_nan=True) and a.env.dtype == b.env.dtype
    assert np.array_equal(a.cell_lat, b.cell_lat) and np.array_equal(a.cell_lon, b.cell_lon)
    for f in (
        'cells',
        'env_names',
        'env_stats',
        'vocab',
        'sci_names',
        'common_names',
        'jitter_std',
        'h3_res',
        'options',
        'fingerprint',
    ):
        assert getattr(a, f) == getattr(b, f), f


def test_cache_roundtrip(world, tmp_path):
    kw = dict(P, holdout_boxes=[(0, 45, 10, 55)], max_obs_per_species=30, cache_dir=tmp_path / 'c')
    fresh = prepare_data(world, **kw)
    files = list((tmp_path / 'c').glob('*.npz'))
    assert len(files) == 1 and fresh.fingerprint in files[0].name and not list((tmp_path / 'c').glob('*.tmp'))
    cached = prepare_data(world, **kw)
    assert cached.stats['from_cache'] and not fresh.stats['from_cache']
    _assert_same(fresh, cached)
    _assert_same(fresh, prepare_data(world, **{**kw, 'no_cache': True}))


def test_no_cache_neither_reads_nor_writes(world, tmp_path):
    prepare_data(world, **P, cache_dir=tmp_path / 'c', no_cache=True)
    assert not (tmp_path / 'c').exists() or not list((tmp_path / 'c').iterdir())
    prepare_data(world, **P, cache_dir=tmp_path / 'c')
    (f,) = (tmp_path / 'c').glob('*.npz')
    f.write_bytes(b'garbage')  # would fail to load if read
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        p = prepare_data(world, **P, cache_dir=tmp_path / 'c', no_cache=True)
    assert not p.stats['from_cache'] and f.read_bytes() == b'garbage'


@pytest.mark.parametrize('damage', ['truncate', 'garbage', 'empty'])
def test_corrupt_cache_is_rebuilt(world, tmp_path, damage):
    fresh = prepare_data(world, **P, cache_dir=tmp_path)
    (f,) = tmp_path.glob('*.npz')
    data = f.read_bytes()
    f.write_bytes({'truncate': data[: len(data) // 2], 'garbage': b'x' * 1000, 'empty': b''}[damage])
    with pytest.warns(UserWarning, match='unreadable.*rebuilding'):
        p = prepare_data(world, **P, cache_dir=tmp_path)
    assert not p.stats['from_cache']
    _assert_same(fresh, p)
    assert prepare_data(world, **P, cache_dir=tmp_path).stats['from_cache']  # rewritten


# ---------------------------------------------------------------- jitter and device batches


def test_jitter_stays_mostly_in_cell():
    cells = grid_cells(200, lat=10.0, lon=20.0)
    ll = torch.tensor([h3.cell_to_latlng(c) for c in cells], dtype=torch.float32).repeat(20, 1)
    std = jitter_std_for_res(2)
    assert abs(std - 0.6577) < 1e-4
    lat, lon = jitter_latlon(ll[:, 0], ll[:, 1], std, torch.Generator().manual_seed(0))
    back = [h3.latlng_to_cell(a, b, 2) for a, b in zip(lat.tolist(), lon.tolist())]
    frac = np.mean([b == c for b, c in zip(back, cells * 20)])
    assert 0.8 < frac < 1.0
    moved = torch.sqrt((lat - ll[:, 0]) ** 2 + (lon - ll[:, 1]) ** 2)
    assert abs(moved.pow(2).mean().sqrt().item() / math.sqrt(2) - std) < 0.03  # isotropic Gaussian, std per axis


def test_jitter_wrap_and_clamp():
    g = torch.Generator().manual_seed(0)
    lat = torch.full((20000,), 89.9)
    lon = torch.full((20000,), 179.9)
    jl, jo = jitter_latlon(lat, lon, 1.0, g)
    assert jl.max() <= 90 and jl.min() >= -90 and (jl == 90).any()
    assert (jo >= -180).all() and (jo < 180).all() and (jo < 0).mean(dtype=torch.float32) > 0.4  # wrapped past 180
    jl, jo = jitter_latlon(-lat, -lon, 1.0, g)
    assert (jl == -90).any() and (jo > 0).any() and (jo >= -180).all()
    assert jitter_latlon(lat, lon, 0.0)[0] is lat
    # same generator state -> same noise; different draws differ
    a = jitter_latlon(lat[:5], lon[:5], 0.5, torch.Generator().manual_seed(3))
    b = jitter_latlon(lat[:5], lon[:5], 0.5, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0])


DEVICES = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])


@pytest.mark.parametrize('device', DEVICES)
def test_device_batch(world, device):
    p = prepare_data(world, **P)
    ds = DeviceSamples(p.train, device)
    assert len(ds) == len(p.train) and ds.n_species == p.n_species
    idx = torch.tensor([5, 0, 48, 100, 5])
    lat, lon, week, y, cell = (t.cpu() for t in ds.batch(idx.to(device)))
    assert lat.dtype == lon.dtype == torch.float32 and week.dtype == torch.int64 and y.shape == (5, p.n_species)
    assert torch.equal(lat, torch.from_numpy(p.train.lat[idx.numpy()]))  # no jitter by default
    assert torch.equal(lon, torch.from_numpy(p.train.lon[idx.numpy()]))
    assert week.tolist() == p.train.week[idx.numpy()].tolist() and cell.tolist() == p.train.cell[idx.numpy()].tolist()
    dense = np.zeros((5, p.n_species), np.float32)
    for r, i in enumerate(idx.tolist()):
        for j in p.train.species[p.train.offsets[i] : p.train.offsets[i + 1]]:
            dense[r, j] = 1
    assert np.array_equal(y.numpy(), dense)
    jl, jo, *_ = ds.batch(idx, jitter_std=p.jitter_std, generator=torch.Generator(device).manual_seed(0))
    jl = jl.cpu()
    assert not torch.equal(jl, lat) and (jl - lat).abs().max() < 5 * p.jitter_std
    # val never jittered unless asked
    vs = DeviceSamples(p.val, device)
    assert torch.equal(vs.batch(torch.arange(len(p.val)))[0].cpu(), torch.from_numpy(p.val.lat))
    assert vs.obs_density.device.type == device and vs.offsets.dtype == torch.long


def test_multi_hot_matches_naive():
    rng = np.random.default_rng(1)
    n, S = 500, 37
    lens = rng.integers(0, 10, n)
    off = np.r_[0, np.cumsum(lens)]
    sp = np.concatenate([np.sort(rng.choice(S, k, replace=False)) for k in lens]).astype(np.int32)
    rows = rng.integers(0, n, 128)
    dense = np.zeros((n, S), np.float32)
    for i in range(n):
        dense[i, sp[off[i] : off[i + 1]]] = 1
    got = multi_hot(torch.from_numpy(off), torch.from_numpy(sp), torch.from_numpy(rows), S)
    assert got.dtype == torch.float32 and np.array_equal(got.numpy(), dense[rows])
    assert multi_hot(torch.from_numpy(off), torch.from_numpy(sp), torch.zeros(0, dtype=torch.long), S).shape == (0, S)


def test_data_does_not_load_torch():
    code = 'import sys, geosdm.data as D; assert "torch" not in sys.modules'
    subprocess.run([sys.executable, '-c', code], check=True)


# ---------------------------------------------------------------- progress and stats


def test_progress_lines_and_stats(world, capsys, monkeypatch):
    monkeypatch.setenv('TQDM_DISABLE', '1')
    p = prepare_data(world, min_obs_per_species=0, progress=True)
    out = capsys.readouterr().out
    for stage in ('load', 'flatten', 'vocabulary', 'env', 'split', 'samples'):
        assert f'data: {stage}' in out and p.stats['seconds'][stage] >= 0
    prepare_data(world, **P)
    assert capsys.readouterr().out == ''
    s = p.stats
    assert s['cells'] == 40 and s['samples_train'] + s['samples_val'] == 40 * 49
    assert s['nnz_train'] == p.train.nnz and s['nnz_val'] == p.val.nnz
    assert p.options['min_obs_per_species'] == 0 and p.region_counts.shape == (36, p.n_species) and p.h3_res == 2


# ---------------------------------------------------------------- world_a


@pytest.mark.skipif(not WORLD_A.exists(), reason='shared world_a data absent')
def test_world_a(tmp_path):
    t = time.perf_counter()
    p = prepare_data(WORLD_A, progress=False, cache_dir=tmp_path)
    cold = time.perf_counter() - t
    assert len(p.cells) == 5794 and p.h3_res == 2 and p.stats['samples_total'] == 5794 * 49
    assert len(p.train) + len(p.val) == 5794 * 49 and p.stats['cells_val'] == math.ceil(0.1 * 5794) == 580
    assert p.stats['detections_raw'] == 5451226 and p.stats['species_before_filter'] == 6509
    assert p.n_env == 23 and p.env.shape == (5794, 23)
    assert p.vocab == sorted(p.vocab) and p.n_species == p.stats['species_after_filter']
    # counts of the kept species are >= 50 in samples
    cnt = np.bincount(np.concatenate([p.train.species, p.val.species]), minlength=p.n_species)
    assert cnt.min() >= 50
    t = time.perf_counter()
    q = prepare_data(WORLD_A, progress=False, cache_dir=tmp_path)
    warm = time.perf_counter() - t
    assert q.stats['from_cache'] and warm < 0.5, warm
    _assert_same(p, q)
    assert cold < 20


def test_watchlist_warning_after_sample_fraction(tmp_path):
    "--sample_fraction warns of the watchlist species the sampled training / validation cells lost."
    import warnings

    from geosdm.core import WATCHLIST
    from geosdm.data import prepare_data
    from geosdm.simulate import simulate_world

    simulate_world(n_species=30, res=2, bbox=(-135.0, 25.0, -95.0, 55.0), seed=5).write(tmp_path / 'w')
    path = tmp_path / 'w' / 'combined.parquet'
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        prepare_data(path, min_obs_per_species=5, sample_fraction=0.03, no_cache=True, progress=False)
        prepare_data(path, min_obs_per_species=5, no_cache=True, progress=False)
    msgs = [str(x.message) for x in w if 'watchlist' in str(x.message)]
    assert len(msgs) == 1 and '--sample_fraction 0.03' in msgs[0]
    assert any(f'({c}) in' in msgs[0] for c in WATCHLIST)
