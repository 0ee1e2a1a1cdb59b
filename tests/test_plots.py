"""geosdm_plot: files are written, non-empty, and their data are the history's / the model's."""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from maps_support import pred, root, tiny_checkpoint  # noqa: E402,F401

from geosdm.cli_plot import plot_main  # noqa: E402
from geosdm.inputs import read_columns
from geosdm.plots import PANELS, chart_values, training_chart  # noqa: E402


def plot(*argv) -> list[Path]:
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert plot_main([str(a) for a in argv]) == 0
    files = [Path(x) for x in out.getvalue().split()]
    assert files and all(f.is_file() and f.stat().st_size > 0 for f in files)
    return files


def test_training_curves_match_history(pred, tmp_path):
    run = Path(pred.path).parent
    files = plot('training', run, '--outdir', tmp_path)
    assert sorted(f.suffix for f in files) == ['.html', '.png', '.svg']
    hist = json.loads((run / 'training_history.json').read_text())
    chart = training_chart(run)
    for key in ('val_geoscore', 'val_loss', 'lr', 'holdout_map', 'val_list_ratio_rom_10', 'geoscore_map'):
        assert [v for _, v in chart_values(chart, key)] == pytest.approx(hist[key]), key
    spec = json.loads(chart.to_json())
    assert len(spec['concat']) == sum(any(k in hist for k in m) for _, m, _ in PANELS)
    html = next(f for f in files if f.suffix == '.html').read_text()
    assert 'val_geoscore' in html and '<script src="http' not in html  # data inside, JS inlined


def test_range_and_gis_files(pred, tmp_path):
    files = plot(
        'range',
        '--checkpoint',
        pred.path,
        '--species',
        pred.vocab[1],
        '--weeks',
        0,
        20,
        '--outdir',
        tmp_path,
        '--formats',
        'svg',
        '--device',
        'cpu',
    )
    gp = next(f for f in files if f.suffix == '.parquet')
    t = pq.read_table(gp)
    assert json.loads(t.schema.metadata[b'geo'])['columns']['geometry']['encoding'] == 'WKB'
    df = read_columns(gp)
    np.testing.assert_allclose(
        df['p_week_20'].to_numpy(), pred.predict_cells(df['h3_index'].to_list(), 20)[:, 1], atol=1e-6
    )
    gj = json.loads(next(f for f in files if f.suffix == '.geojson').read_text())
    assert len(gj['features']) == df.height


def test_richness_phenology_weekly_env(pred, tmp_path):
    plot(
        'richness', '--checkpoint', pred.path, '--week', 26, '--outdir', tmp_path, '--formats', 'png', '--device', 'cpu'
    )
    files = plot(
        'phenology',
        '--checkpoint',
        pred.path,
        '--lat',
        45,
        '--lon',
        -120,
        '--top_k',
        3,
        '--outdir',
        tmp_path,
        '--formats',
        'svg',
        '--device',
        'cpu',
    )
    ph = pl.read_csv(next(f for f in files if f.suffix == '.csv'))
    code = ph['code'][0]
    np.testing.assert_allclose(
        ph.filter(pl.col('code') == code)['probability'].to_numpy(),
        pred.phenology(45.0, -120.0)[:, pred.index(code)],
        atol=1e-6,
    )
    files = plot(
        'weekly',
        '--checkpoint',
        pred.path,
        '--species',
        pred.vocab[0],
        '--weeks',
        1,
        25,
        '--outdir',
        tmp_path,
        '--device',
        'cpu',
    )
    assert Image.open(next(f for f in files if f.suffix == '.gif')).n_frames == 2
    files = plot(
        'env',
        '--data_path',
        pred.config.data_path,
        '--columns',
        'elevation_m',
        '--outdir',
        tmp_path,
        '--formats',
        'svg',
    )
    assert read_columns(next(f for f in files if f.suffix == '.parquet'))['elevation_m'].is_finite().any()


def test_user_errors(pred, tmp_path):
    with contextlib.redirect_stderr(io.StringIO()) as err:
        assert (
            plot_main(['range', '--checkpoint', str(pred.path), '--species', 'no such bird', '--outdir', str(tmp_path)])
            == 2
        )
    assert err.getvalue().startswith('geosdm_plot: error:') and err.getvalue().count('\n') == 1
    with pytest.raises(SystemExit) as e, contextlib.redirect_stderr(io.StringIO()):
        plot_main(['phenology', '--checkpoint', str(pred.path), '--lat', '95', '--lon', '0'])
    assert e.value.code == 2
