"""geosdm.zoom and geosdm.zoommap: the cells a view draws are the model's own where they fit, parents hold the max
(or mean) of their cells or the model at their centre, values are computed once, and the map answers its views."""

from __future__ import annotations

import contextlib
import io
import re
import sys
from pathlib import Path

import h3
import numpy as np
import polars as pl
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from maps_support import pred, root  # noqa: E402,F401  (fixtures)

from geosdm import zoom, zoommap  # noqa: E402
from geosdm.geo import in_boxes  # noqa: E402


@pytest.fixture(scope='module')
def res4():
    "Every H3 cell of resolution 4 under four cells of resolution 0 (Europe, North America, the antimeridian)."
    roots = {h3.latlng_to_cell(lat, lon, 0) for lat, lon in ((47, 8), (45, -100), (60, 179.5), (60, -179.5))}
    return zoom.CellGrid.from_cells([c for r in roots for c in h3.cell_to_children(r, 4)])


def parents_of(grid, res):
    return zoom.h3_strings(grid.parents(res))


# ---------------------------------------------------------------- which cells a view draws
@pytest.mark.parametrize('box', [(6.0, 45.0, 10.0, 48.0), (-104.0, 40.0, -96.0, 47.0), (178.0, 58.0, -178.0, 62.0)])
def test_region_draws_exactly_the_models_cells_there(res4, box):
    d = zoom.view_cells(res4, box, max_cells=5000)
    assert d.res == res4.res == 4 and len(d) > 10
    cells = zoom.h3_strings(res4.ids)
    inside = {c for c in cells if in_boxes(*h3.cell_to_latlng(c), [box])[()]}
    assert set(d.cells()) == inside  # the model's own cells, all of them, and no other
    assert all(h3.get_resolution(c) == 4 for c in d.cells())
    if box[0] < box[2]:  # H3's polygon fill (centre containment) agrees
        poly = h3.LatLngPoly([(box[1], box[0]), (box[1], box[2]), (box[3], box[2]), (box[3], box[0])])
        assert set(d.cells()) == set(h3.h3shape_to_cells(poly, 4)) & set(cells)


def test_antimeridian_box_has_both_sides(res4):
    d = zoom.view_cells(res4, zoom.view_box({'west': 170, 'east': 190, 'south': 55, 'north': 65}), 5000)
    lon = np.array([h3.cell_to_latlng(c)[1] for c in d.cells()])
    assert d.res == 4 and (lon > 170).any() and (lon < -170).any() and not ((lon > -170) & (lon < 170)).any()


def test_world_view_draws_parents(res4):
    d = zoom.view_cells(res4, zoom.WORLD, max_cells=500)
    assert d.res < 4 and len(d) <= 500 < len(set(parents_of(res4, d.res + 1)))  # the finest that fits
    assert set(d.cells()) == set(parents_of(res4, d.res)) and len(d.idx) == len(res4)
    np.testing.assert_array_equal(d.ids[d.group], res4.parents(d.res)[d.idx])


def test_world_of_a_global_resolution_4_model():
    cells = [c for r in h3.get_res0_cells() for c in h3.cell_to_children(r, 4)]
    g = zoom.CellGrid.from_cells(cells)
    d = zoom.view_cells(g, zoom.WORLD, 8000)
    assert (len(g), d.res, len(d)) == (288_122, 2, 5_882)


# ---------------------------------------------------------------- the values of drawn cells
@pytest.mark.parametrize('how', ['max', 'mean'])
def test_parents_hold_the_max_or_mean_of_their_cells(res4, how):
    rng = np.random.default_rng(0)
    v = rng.random(len(res4))
    v[::7] = np.nan  # cells without a value do not count
    d = zoom.view_cells(res4, zoom.WORLD, max_cells=300)
    got, rule = zoom.view_values(zoom.CellValues(res4, v), d, how)
    df = pl.DataFrame({'p': parents_of(res4, d.res), 'v': v}).fill_nan(None)
    want = dict(df.group_by('p').agg(pl.col('v').max() if how == 'max' else pl.col('v').mean()).iter_rows())
    assert rule == how
    np.testing.assert_allclose(got, [want[c] for c in d.cells()])


def test_model_values_max_centre_and_auto(pred):
    g = zoom.model_grid(pred)
    i, week = 2, 14
    own = pred.predict(g.lat, g.lon, np.full(len(g), week))[:, i]
    d = zoom.view_cells(g, zoom.WORLD, max_cells=40)
    assert d.res < g.res
    v, rule = zoom.view_values(zoom.ModelValues(pred, g, i, week), d, 'max')
    want = dict(pl.DataFrame({'p': parents_of(g, d.res), 'v': own}).group_by('p').agg(pl.col('v').max()).iter_rows())
    assert rule == 'max'
    np.testing.assert_allclose(v, [want[c] for c in d.cells()], atol=1e-5)
    v, rule = zoom.view_values(zoom.ModelValues(pred, g, i, week), d, 'centre')
    lat, lon = np.array([h3.cell_to_latlng(c) for c in d.cells()]).T
    assert rule == 'centre'
    np.testing.assert_allclose(v, pred.predict(lat, lon, np.full(len(lat), week))[:, i], atol=1e-5)
    # auto: the max while the cells cost at most the budget, else the centres
    assert zoom.view_values(zoom.ModelValues(pred, g, i, week), d, budget=len(g))[1] == 'max'
    assert zoom.view_values(zoom.ModelValues(pred, g, i, week), d, budget=len(g) - 1)[1] == 'centre'


@pytest.mark.parametrize('week,yearly', [(9, 'max'), (0, 'max'), (0, 'model')])
def test_species_probs_is_one_column_of_predict(pred, week, yearly):
    g = zoom.model_grid(pred)
    want = pred.predict(g.lat, g.lon, np.full(len(g), week), yearly=yearly)[:, 4]
    np.testing.assert_allclose(zoom.species_probs(pred, g.lat, g.lon, week, 4, yearly), want, atol=1e-5)


def test_values_are_computed_once(pred, monkeypatch):
    g = zoom.model_grid(pred)
    calls = []
    real = zoom.species_probs
    monkeypatch.setattr(zoom, 'species_probs', lambda p, lat, lon, *a: calls.append(len(lat)) or real(p, lat, lon, *a))
    cache = zoom.ValueCache()
    a = zoom.ModelValues(pred, g, 1, 5, cache=cache).at_cells(np.arange(0, len(g), 2))
    b = zoom.ModelValues(pred, g, 1, 5, cache=cache).at_cells(np.arange(len(g)))
    np.testing.assert_array_equal(a, b[::2])
    assert calls == [len(range(0, len(g), 2)), len(g) // 2]  # the second asks only for the cells not yet known
    zoom.ModelValues(pred, g, 2, 5, cache=cache).at_cells(np.arange(3))
    assert calls[-1] == 3  # another species: its own values


def test_richness_counts_species_above_threshold(pred):
    g = zoom.model_grid(pred)
    idx = np.arange(0, len(g), 5)
    got = zoom.RichnessValues(pred, g, 20, 0.2).at_cells(idx)
    np.testing.assert_array_equal(got, (pred.predict(g.lat[idx], g.lon[idx], 20) > 0.2).sum(1))


# ---------------------------------------------------------------- the map
def test_draw_answers_each_view(res4):
    v = np.linspace(0, 1, len(res4))
    m = zoommap.DeckMap(bounds=list(res4.bounds()))
    r = zoommap.draw(m, zoom.CellValues(res4, v), title='t', max_cells=500, agg='mean')
    assert r['res'] < 4 and r['rule'] == 'mean' and r['seq'] == 0
    m.view = {'west': 7.0, 'east': 9.0, 'south': 46.0, 'north': 47.0, 'zoom': 8, 'seq': 3}
    r = zoommap.draw(m, zoom.CellValues(res4, v), max_cells=500, agg='mean')
    assert (r['res'], r['rule'], m.status['seq'], m.status['cells']) == (4, 'cells', 3, len(r['drawn']))
    layer = m.layers[0]
    assert [row['h'] for row in layer['data']] == r['drawn'].cells()
    assert m.caption.endswith("the model's own") and m.legend['colors']


def test_yearly_max_draws_fewer_cells_on_a_budget(res4, pred):
    g = zoom.model_grid(pred)
    m = zoommap.DeckMap()
    r = zoommap.draw(m, zoom.ModelValues(pred, g, 0, 0, yearly='max'), budget=48 * 30)
    assert r['cells'] <= 30 < len(g)  # 48 passes per value: 30 values in the budget


def test_map_loads_nothing_from_the_network():
    js = zoommap.DeckMap._esm
    assert js.startswith(zoommap.deck_bundle()) and 'createDeck' in js and 'export default' in js
    assert not re.search(r'<(script|link)[^>]*(src|href)=', js)
    assert 'mapProvider' not in zoommap._MAP_JS  # no base map: tiles would come from the network


# ---------------------------------------------------------------- geosdm_plot on the same cells
def plot_parquet(*argv) -> pl.DataFrame:
    "Run geosdm_plot; the GeoParquet values file it wrote."
    from geosdm.cli import plot_main
    from geosdm.inputs import read_columns

    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert plot_main([str(a) for a in argv]) == 0
    return read_columns(next(Path(f) for f in out.getvalue().split() if f.endswith('.parquet')))


def test_plot_box_draws_the_models_cells(pred, tmp_path):
    g = zoom.model_grid(pred)
    box = (-125.0, 42.0, -116.0, 48.0)
    argv = ['range', '--checkpoint', pred.path, '--species', pred.vocab[1], '--weeks', 7, '--formats', 'svg']
    fine = plot_parquet(*argv, '--box', *box, '--outdir', tmp_path / 'fine')
    assert set(fine['h3_index']) == set(zoom.h3_strings(g.ids[in_boxes(g.lat, g.lon, [box])]))
    coarse = plot_parquet(*argv, '--max_cells', 20, '--agg', 'max', '--outdir', tmp_path / 'coarse')
    own = pred.predict(g.lat, g.lon, np.full(len(g), 7))[:, 1]
    r = h3.get_resolution(coarse['h3_index'][0])
    want = dict(pl.DataFrame({'p': parents_of(g, r), 'v': own}).group_by('p').agg(pl.col('v').max()).iter_rows())
    assert r < g.res and coarse.height <= 20
    np.testing.assert_allclose(coarse['p_week_7'].to_numpy(), [want[c] for c in coarse['h3_index']], atol=1e-5)
