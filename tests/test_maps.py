"""geosdm.maps (cell geometry, charts as PNG / HTML / pydeck, model and evaluation maps), geosdm.demo, app launcher."""

from __future__ import annotations

import json
import re
import struct
import sys
from pathlib import Path

import h3
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from maps_support import pred, prep, root, tiny_checkpoint  # noqa: E402,F401  (pred, prep, root: fixtures)

from geosdm import cli, demo, evaluate, geo, maps  # noqa: E402
from geosdm.geo import HOLDOUT_REGIONS  # noqa: E402


def png_size(path: Path) -> tuple[int, int]:
    b = Path(path).read_bytes()
    assert b[:8] == b'\x89PNG\r\n\x1a\n' and b[12:16] == b'IHDR'
    return struct.unpack('>II', b[16:24])


# ---------------------------------------------------------------- geometry
def test_every_res1_cell_is_valid_geojson():
    cells = [c for r in h3.get_res0_cells() for c in h3.cell_to_children(r, 1)]
    fc = geo.cells_geojson(cells)
    n_rings = geo.check_geojson(fc)  # closed, clockwise, in range
    multi = [f for f in fc['features'] if f['geometry']['type'] == 'MultiPolygon']
    assert len(fc['features']) == len(cells) and n_rings == len(cells) + len(multi)
    assert 5 <= len(multi) <= 40  # the antimeridian cells and the two polar cells
    json.loads(json.dumps(fc))


def test_ring_orientation_and_closure():
    c = h3.latlng_to_cell(10.0, 20.0, 3)
    (ring,) = geo.cell_polygons(c)
    assert ring[0] == ring[-1] and len(ring) == 7
    assert geo.ring_area(ring) < 0  # clockwise (d3's exterior)
    # the same vertices as H3's, swapped to [lng, lat] and reversed
    b = [[round(lng, 5), round(lat, 5)] for lat, lng in h3.cell_to_boundary(c)]
    assert ring[:-1] == b[::-1]
    with pytest.raises(ValueError, match='clockwise'):
        geo.check_geojson(
            {
                'type': 'FeatureCollection',
                'features': [
                    {'type': 'Feature', 'properties': {}, 'geometry': {'type': 'Polygon', 'coordinates': [ring[::-1]]}}
                ],
            }
        )
    with pytest.raises(ValueError, match='closed'):
        geo.check_geojson(
            {
                'type': 'FeatureCollection',
                'features': [
                    {'type': 'Feature', 'properties': {}, 'geometry': {'type': 'Polygon', 'coordinates': [ring[:-1]]}}
                ],
            }
        )


def test_antimeridian_split_preserves_area_and_sides():
    cells = [c for r in h3.get_res0_cells() for c in h3.cell_to_children(r, 2)]
    cross = [
        c
        for c in cells
        if np.ptp([p[1] for p in h3.cell_to_boundary(c)]) > 180
        and h3.latlng_to_cell(90, 0, 2) != c
        and h3.latlng_to_cell(-90, 0, 2) != c
    ]
    assert len(cross) > 10
    for c in cross:
        pieces = geo.cell_polygons(c)
        assert len(pieces) == 2
        sides = sorted(np.sign(np.mean([p[0] for p in r])) for r in pieces)
        assert sides == [-1, 1]  # one piece each side
        ll = np.array(h3.cell_to_boundary(c))[:, ::-1]
        ll[ll[:, 0] < 0, 0] += 360
        assert sum(abs(geo.ring_area(r)) for r in pieces) == pytest.approx(abs(geo.ring_area(ll)), rel=1e-4)


def test_polar_cell_reaches_pole():
    for lat in (90.0, -90.0):
        rings = geo.cell_polygons(h3.latlng_to_cell(lat, 0.0, 1))
        assert any(pt[1] == lat for r in rings for pt in r)
        assert all(geo.ring_area(r) < 0 for r in rings)


def test_box_ring():
    for _k, b in HOLDOUT_REGIONS.items():
        r = np.array(maps.box_ring(b))
        assert geo.ring_area(r) < 0 and (r[0] == r[-1]).all()
        assert r[:, 0].min() == b[0] and r[:, 1].max() == b[3]
        assert geo.ring_area(r) == pytest.approx(-(b[2] - b[0]) * (b[3] - b[1]))


# ---------------------------------------------------------------- charts
def test_png_html_and_deck(tmp_path, root):
    cells = sorted(h3.grid_disk(h3.latlng_to_cell(45.0, -100.0, 2), 4))
    ch = maps.hex_map(cells, np.linspace(0, 1, len(cells)), title='t', width=300, height=200)
    png = maps.save_chart(ch, tmp_path / 'm.png')
    w, h = png_size(png)
    assert w >= 300 and h >= 200
    html = maps.save_chart(ch, tmp_path / 'm.html').read_text()
    assert not re.search(r'<script[^>]*src=', html) and 'vega' in html
    assert not list(tmp_path.glob('.*'))  # no temp file left
    d = maps.deck_html(cells, np.arange(len(cells)), tmp_path / 'd.html')
    assert 'H3HexagonLayer' in d and not re.search(r'<(script|link)[^>]*(src|href)=["\']?https?://', d)
    assert '"mapProvider": null' in d or 'mapProvider' not in d or 'null' in d
    with pytest.raises(ValueError, match='png'):
        maps.save_chart(ch, tmp_path / 'm.gif')
    png2 = maps.save_chart(maps.holdout_regions_map(width=300, height=160), tmp_path / 'regions.png')
    assert png_size(png2)[0] >= 300


def test_land_cells_cached(root):
    cells = maps.land_cells(1)
    assert (Path(root) / 'cache' / 'land_cells_r1.json').is_file()
    assert h3.latlng_to_cell(-25.0, 135.0, 1) in cells  # Australia
    assert h3.latlng_to_cell(-30.0, -120.0, 1) not in cells  # the South Pacific


# ---------------------------------------------------------------- model maps and scores
def test_model_maps_match_predictor(pred, prep):
    cells = maps.model_cells(pred)
    assert set(cells) == set(prep.cells)
    sp = pred.vocab[3]
    vals = [
        f['properties']['value']
        for f in maps.probability_map(pred, sp, 12, cells).to_dict()['layer'][1]['data']['values']
    ]
    np.testing.assert_allclose(vals, pred.predict_cells(cells, 12)[:, 3], atol=2e-6)
    yearly = [f['properties']['value'] for f in maps.range_map(pred, sp, cells).to_dict()['layer'][1]['data']['values']]
    ll = np.array([h3.cell_to_latlng(c) for c in cells])
    weekly = pred.predict(np.repeat(ll[:, 0], 48), np.repeat(ll[:, 1], 48), np.tile(np.arange(1, 49), len(cells)))
    np.testing.assert_allclose(yearly, weekly[:, 3].reshape(len(cells), 48).max(1), atol=2e-6)
    eff = maps.effort_map(prep).to_dict()['layer'][1]['data']['values']
    t = prep.train
    assert sum(f['properties']['value'] for f in eff) == pytest.approx(t.n_pos()[t.week > 0].sum())
    with pytest.raises(KeyError):
        maps.probability_map(pred, 'no such bird', 1, cells)


def test_eval_maps(pred, prep):
    ev, ev_val = evaluate.evaluate_split(pred, prep, 'holdout'), evaluate.evaluate_split(pred, prep, 'val')
    ch = maps.eval_maps({'val': ev_val, 'holdout': ev})
    assert len(ch.to_dict()['vconcat']) == 2


def test_checkpoint_data_checks_vocab(pred, prep, monkeypatch):
    monkeypatch.setattr(pred, 'vocab', pred.vocab[:-1])
    with pytest.raises(ValueError, match='not the data this model was trained on'):
        demo.checkpoint_data(pred)


# ---------------------------------------------------------------- demo model and launcher
def test_demo_checkpoint_trains_once_atomically(tmp_path, root):
    data = Path(root) / 'world' / 'combined.parquet'
    tiny_checkpoint(root)
    kw = dict(
        data_path=str(data),
        num_epochs=1,
        min_obs_per_species=5,
        batch_size=512,
        holdout_regions=[],
        sample_fraction=0.2,
        model_scale=0.1,
    )
    ck = demo.demo_checkpoint(tmp_path, **kw)
    assert ck == tmp_path / 'demo_model' / 'checkpoint_latest.pt' and ck.is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith('.demo_model')]  # temp dir renamed away
    mtime = ck.stat().st_mtime_ns
    assert demo.demo_checkpoint(tmp_path, **kw) == ck and ck.stat().st_mtime_ns == mtime


def test_resolve_checkpoint(tmp_path, monkeypatch, pred):
    with pytest.raises(FileNotFoundError):
        demo.resolve_checkpoint(tmp_path / 'missing.pt')
    monkeypatch.setenv('GEOSDM_CHECKPOINT', str(pred.path))
    assert demo.resolve_checkpoint() == pred.path


def test_app_main(capsys, pred):
    assert cli.app_main(['calibration', '--checkpoint', str(pred.path), '--port', '2790', '--print']) == 0
    cmd = capsys.readouterr().out.split()
    assert cmd[2:5] == ['marimo', 'run', str(cli.app_path('calibration'))]
    assert cmd[-2:] == ['--checkpoint', str(pred.path.resolve())] and '2790' in cmd
    with pytest.raises(SystemExit) as e:
        cli.app_main(['explorer', '--checkpoint', '/no/such.pt'])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        cli.app_main(['nope'])
