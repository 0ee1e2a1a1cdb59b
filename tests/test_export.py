"""ONNX (and TFLite) export: parity with the torch model on random and edge inputs, the ONNX Predictor's species lists,
species subsets, the command line."""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from maps_support import pred, root, tiny_checkpoint  # noqa: E402,F401

pytest.importorskip('onnxruntime')
from geosdm.cli import export_main  # noqa: E402
from geosdm.export import check_inputs, export_model, litert_torch, max_abs_diff, species_counts  # noqa: E402
from geosdm.predict import Predictor, metadata_path  # noqa: E402


@pytest.fixture(scope='module')
def exported(root, pred, tmp_path_factory):
    out = tmp_path_factory.mktemp('exports')
    return {r['format']: r for r in export_model(pred.path, out)}


def test_parity_random_and_edges(exported, pred):
    assert exported['onnx']['max_abs_diff'] <= 1e-5 and exported['onnx_fp16']['max_abs_diff'] <= 2e-3
    lat, lon, week = check_inputs(3000, seed=7)
    edges = lat[-75:], lon[-75:], week[-75:]  # poles, ±180°, weeks 0, 1, 48 only
    assert {-90.0, 90.0} <= set(edges[0].tolist()) and {-180.0, 180.0} <= set(edges[1].tolist())
    for fmt, tol in (('onnx', 1e-5), ('onnx_fp16', 2e-3)):
        assert max_abs_diff(exported[fmt]['path'], pred, inputs=(lat, lon, week)) <= tol
        assert max_abs_diff(exported[fmt]['path'], pred, inputs=edges) <= tol


def test_onnx_predictor_same_lists(exported, pred):
    px = Predictor(exported['onnx']['path'])
    assert px.model is None and px.session is not None and px.vocab == pred.vocab
    for lat, lon, week in [(45.0, -120.0, 0), (45.0, -120.0, 20), (30.0, -100.0, 48), (50.0, -110.0, 1)]:
        a = pred.species_list(lat, lon, week, threshold=0.05)
        b = px.species_list(lat, lon, week, threshold=0.05)
        assert [r[0] for r in a] == [r[0] for r in b]
        np.testing.assert_allclose([r[3] for r in a], [r[3] for r in b], atol=1e-5)
    cells = ['822837fffffffff', '82279ffffffffff']
    np.testing.assert_allclose(px.predict_cells(cells, 0), pred.predict_cells(cells, 0), atol=1e-5)
    p16 = Predictor(exported['onnx_fp16']['path'])
    np.testing.assert_allclose(p16.phenology(45.0, -120.0), pred.phenology(45.0, -120.0), atol=2e-3)


def test_files_beside_the_model(exported, pred):
    r = exported['onnx']
    meta = json.loads(Path(r['metadata']).read_text())
    assert Path(r['metadata']) == metadata_path(r['path'])
    assert meta['species_vocab']['codes'] == pred.vocab and meta['dtype'] == 'float32'
    assert meta['model_config']['n_species'] == pred.n_species and meta['data']['fingerprint']
    assert 'week 0' in meta['week_convention'] and meta['geosdm_version']
    lines = Path(r['labels']).read_text().splitlines()
    assert [ln.split('\t')[0] for ln in lines] == pred.vocab
    assert exported['onnx_fp16']['bytes'] < 0.7 * r['bytes']


def test_common_species_cut(pred, tmp_path):
    rows = export_model(pred.path, tmp_path, ['onnx'], common_species=4)
    px = Predictor(rows[0]['path'])
    counts = species_counts(pred)
    assert len(px.vocab) == 4 and sorted(counts[[pred.index(c) for c in px.vocab]]) == sorted(np.sort(counts)[-4:])
    lat, lon, week = check_inputs(500)
    idx = [pred.index(c) for c in px.vocab]
    np.testing.assert_allclose(px.predict(lat, lon, week), pred.predict(lat, lon, week)[:, idx], atol=1e-5)


def test_export_command(pred, tmp_path):
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert (
            export_main(
                [
                    '--checkpoint',
                    str(pred.path),
                    '--outdir',
                    str(tmp_path),
                    '--formats',
                    'onnx',
                    '--species',
                    pred.vocab[2],
                    pred.vocab[0],
                ]
            )
            == 0
        )
    assert 'geomodel.onnx' in out.getvalue() and '2 species' in out.getvalue()
    assert Predictor(tmp_path / 'geomodel.onnx').vocab == [pred.vocab[2], pred.vocab[0]]
    with contextlib.redirect_stderr(io.StringIO()) as err:
        assert (
            export_main(['--checkpoint', str(pred.path), '--outdir', str(tmp_path), '--species', 'no such bird']) == 2
        )
    assert err.getvalue().count('\n') == 1 and 'not in the model vocabulary' in err.getvalue()


@pytest.mark.slow
def test_dynamo_exporter(pred, tmp_path):
    pytest.importorskip('onnxscript')
    rows = export_model(pred.path, tmp_path, ['onnx'], exporter='dynamo')
    assert rows[0]['max_abs_diff'] <= 1e-5


@pytest.mark.skipif(litert_torch is None, reason='the tflite extra (litert-torch) is not installed')
def test_tflite(pred, tmp_path):
    rows = export_model(pred.path, tmp_path, ['tflite'], tflite_batch=8)
    assert rows[0]['max_abs_diff'] <= 1e-5 and Path(rows[0]['path']).stat().st_size > 0
