"""ONNX (and TFLite) export: parity with the torch model on random and edge inputs, the ONNX Predictor's species lists,
species subsets, float16 and int8 weights, all-or-nothing runs, metadata without local paths or secrets, broken model
files, the command line (as a user runs it: separate processes)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from maps_support import pred, root, tiny_checkpoint  # noqa: E402,F401

pytest.importorskip('onnxruntime')
onnx = pytest.importorskip('onnx')
from geosdm.cli import export_main  # noqa: E402
from geosdm.core import CheckpointError, stale_temp_files  # noqa: E402
from geosdm.export import (  # noqa: E402
    FORMATS,
    INT8_MIN_SIZE,
    check_inputs,
    compare,
    export_model,
    litert_torch,
    max_abs_diff,
    species_counts,
)
from geosdm.predict import EXPORT_FORMAT_VERSION, Predictor, metadata_path  # noqa: E402

BIN = Path(sys.executable).parent


@pytest.fixture(scope='module')
def exported(root, pred, tmp_path_factory):
    out = tmp_path_factory.mktemp('exports')
    return {r['format']: r for r in export_model(pred.path, out)}


def script(name: str, *args, env=None, code=None) -> subprocess.CompletedProcess:
    "Run console script `name` (or, with `code`, python -c code) as a user does; its stdout and stderr."
    exe = BIN / name
    if code is None and not exe.exists():
        pytest.skip(f'{name} is not installed in this environment (pip install -e .)')
    cmd = [sys.executable, '-c', code] if code else [str(exe)]
    env = {**os.environ, 'OMP_NUM_THREADS': '1', **(env or {})}
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, timeout=600, env=env)


def one_line_error(r: subprocess.CompletedProcess, prog: str, *words):
    "Exit 2, a single line on stderr naming the program and the words, no traceback."
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert 'Traceback' not in r.stderr and r.stderr.count('\n') == 1, r.stderr
    assert r.stderr.startswith(f'{prog}: error:') and all(w in r.stderr for w in words), r.stderr


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir())}


def test_parity_random_and_edges(exported, pred):
    assert exported['onnx']['max_abs_diff'] <= 1e-5 and exported['onnx_fp16']['max_rel_diff'] <= 0.03
    lat, lon, week = check_inputs(3000, seed=7)
    edges = lat[-75:], lon[-75:], week[-75:]  # poles, ±180°, weeks 0, 1, 48 only
    assert {-90.0, 90.0} <= set(edges[0].tolist()) and {-180.0, 180.0} <= set(edges[1].tolist())
    for inputs in ((lat, lon, week), edges):
        assert max_abs_diff(exported['onnx']['path'], pred, inputs=inputs) <= 1e-5
        e = compare(exported['onnx_fp16']['path'], pred, inputs=inputs)
        assert e['max_rel_diff'] <= FORMATS['onnx_fp16'].max_rel and e['max_abs_diff'] <= 5e-3


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
    assert meta['format_version'] == EXPORT_FORMAT_VERSION and meta['arithmetic'] == 'float32'
    assert meta['config']['model_scale'] == 0.25 and meta['config']['holdout_regions'] == ['us_northwest']
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


@pytest.fixture(scope='module')
def wide_ck(tmp_path_factory):
    "A scale-0.5 model (its weight matrices are large enough for int8), two epochs on a small simulated world."
    from geosdm.simulate import simulate_world
    from geosdm.trainer import TrainConfig, train

    d = tmp_path_factory.mktemp('wide')
    simulate_world(n_species=40, res=2, bbox=(-130, 20, -60, 55), seed=3).write(d / 'world')
    cfg = TrainConfig(
        data_path=str(d / 'world' / 'combined.parquet'),
        checkpoint_dir=str(d / 'ck'),
        model_scale=0.5,
        num_epochs=2,
        min_obs_per_species=5,
        batch_size=256,
        device='cpu',
    )
    train(cfg, progress=False)
    return d / 'ck' / 'checkpoint_latest.pt'


def test_int8_weights(wide_ck, tmp_path):
    rows = {r['format']: r for r in export_model(wide_ck, tmp_path, ['onnx', 'onnx_fp16', 'onnx_int8'])}
    r8 = rows['onnx_int8']
    assert r8['ok'] and r8['max_rel_diff'] <= FORMATS['onnx_int8'].max_rel and r8['top10_overlap'] >= 0.95
    assert r8['bytes'] < 0.6 * rows['onnx_fp16']['bytes'] and r8['bytes'] < 0.3 * rows['onnx']['bytes']
    g = onnx.load(r8['path']).graph
    codes = {t.name for t in g.initializer if t.data_type == onnx.TensorProto.INT8 and t.name.endswith('.int8')}
    sizes = {t.name: int(np.prod(t.dims)) for t in g.initializer}
    assert codes and all(sizes[c] >= INT8_MIN_SIZE for c in codes)
    assert {n.op_type for n in g.node if set(n.input) & codes} == {'DequantizeLinear'}
    p8, pt = Predictor(r8['path']), Predictor(wide_ck, device='cpu')  # runs like the other ONNX files
    assert p8.vocab == pt.vocab and json.loads(Path(r8['metadata']).read_text())['dtype'] == 'int8'
    assert np.abs(p8.phenology(40.0, -100.0) - pt.phenology(40.0, -100.0)).max() < 0.05
    lists = [[r[0] for r in p.species_list(40.0, -100.0, 20, top_k=10, threshold=0)] for p in (p8, pt)]
    assert len(set(lists[0]) & set(lists[1])) >= 8


def test_fp16_weights_float32_arithmetic(exported):
    "Only Casts to float32 read the float16 weights: every operation runs in float32."
    g = onnx.load(exported['onnx_fp16']['path']).graph
    half = {t.name for t in g.initializer if t.data_type == onnx.TensorProto.FLOAT16}
    readers = [n for n in g.node if set(n.input) & half]
    assert half and len(readers) == len(half)
    assert all(n.op_type == 'Cast' and n.attribute[0].i == onnx.TensorProto.FLOAT for n in readers)


PATCHED_EXPORT = (
    "import sys; import geosdm.export as e; "
    "e.FORMATS['onnx_fp16'] = e.FORMATS['onnx_fp16']._replace(max_rel=1e-12); "
    "from geosdm.cli import export_main; sys.exit(export_main(sys.argv[1:]))"
)


def test_failed_check_keeps_earlier_files(pred, tmp_path):
    "geosdm_export whose float16 file fails its check (its limit made impossible in that process)."
    export_model(pred.path, tmp_path, ['onnx'])
    before = snapshot(tmp_path)
    args = ('--checkpoint', pred.path, '--outdir', tmp_path, '--formats', 'onnx', 'onnx_fp16')
    r = script('geosdm_export', *args, code=PATCHED_EXPORT)
    one_line_error(r, 'geosdm_export', 'onnx_fp16', 'relative error', 'no file was written')
    assert snapshot(tmp_path) == before and not stale_temp_files(tmp_path)
    assert sorted(before) == ['geomodel.onnx', 'geomodel.onnx.json', 'geomodel_labels.txt']  # no fp16 file


@pytest.mark.skipif(litert_torch is not None, reason='the tflite extra is installed here')
def test_tflite_without_its_extra_keeps_earlier_files(pred, tmp_path):
    export_model(pred.path, tmp_path, ['onnx', 'onnx_fp16'])
    before = snapshot(tmp_path)
    r = script('geosdm_export', '--checkpoint', pred.path, '--outdir', tmp_path, '--formats', 'onnx', 'tflite')
    one_line_error(r, 'geosdm_export', 'litert-torch')
    assert snapshot(tmp_path) == before


def test_ctrl_c_keeps_earlier_files(pred, tmp_path, monkeypatch):
    "Ctrl-C while the second of three formats is checked: the files of the earlier export stay, byte for byte."
    import geosdm.export as ex

    export_model(pred.path, tmp_path, ['onnx', 'onnx_fp16'])
    before, real, calls = snapshot(tmp_path), ex.compare, []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(ex, 'compare', interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_model(pred.path, tmp_path, ['onnx', 'onnx_fp16', 'onnx_int8'])
    assert snapshot(tmp_path) == before and len(calls) == 2


def test_refuses_to_write_over_its_checkpoint(pred, tmp_path):
    ck = tmp_path / 'geomodel_labels.txt'  # a checkpoint under the name of one of the outputs
    shutil.copy(pred.path, ck)
    r = script('geosdm_export', '--checkpoint', ck, '--outdir', tmp_path / '.', '--formats', 'onnx')
    one_line_error(r, 'geosdm_export', 'input of this run')
    assert ck.read_bytes() == Path(pred.path).read_bytes() and [p.name for p in tmp_path.iterdir()] == [ck.name]


def test_metadata_without_leaks(pred, tmp_path):
    "A checkpoint whose options hold a database URL with a password and paths in a home folder."
    import torch

    from geosdm.checkpoint import load_checkpoint

    home = tmp_path / 'home' / 'alice'
    ck = load_checkpoint(pred.path)
    ck['config'] |= {
        'autotune_storage': 'postgresql://u:secret@host/db',
        'checkpoint_dir': str(home / 'runs' / 'b7'),
        'data_cache_dir': str(home / '.cache' / 'geosdm'),
        'resume': str(home / 'runs' / 'a' / 'checkpoint_latest.pt'),
    }
    src = home / 'runs' / 'b7' / 'checkpoint_best.pt'
    src.parent.mkdir(parents=True)
    torch.save(ck, src)
    out = tmp_path / 'out'
    r = script('geosdm_export', '--checkpoint', src, '--outdir', out, '--formats', 'onnx', 'onnx_fp16', 'onnx_int8')
    assert r.returncode == 0, r.stderr
    leaks = [b'secret', b'postgresql', str(home).encode(), str(Path(pred.config.data_path).parent).encode()]
    assert len(list(out.iterdir())) == 9
    for f in out.iterdir():
        b = f.read_bytes()
        assert not [x for x in leaks if x in b], f.name
    meta = json.loads((out / 'geomodel.onnx.json').read_text())
    assert meta['config']['model_scale'] == 0.25 and meta['source']['sha256']
    assert not {'autotune_storage', 'checkpoint_dir', 'data_path', 'data_cache_dir', 'resume'} & set(meta['config'])
    assert Predictor(out / 'geomodel_int8.onnx').config.model_scale == 0.25


def test_predict_refuses_broken_models(exported, tmp_path):
    "A truncated .onnx file, and one beside a JSON that is not ours: one line from Predictor and geosdm_predict."
    good = Path(exported['onnx']['path'])
    cut, alien = tmp_path / 'cut.onnx', tmp_path / 'alien.onnx'
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    shutil.copy(metadata_path(good), metadata_path(cut))
    shutil.copy(good, alien)
    metadata_path(alien).write_text(json.dumps({'name': 'some other model card', 'labels': ['a', 'b']}))
    for model, why in ((cut, 'not a readable ONNX model'), (alien, 'not the metadata of a geosdm export')):
        with pytest.raises(CheckpointError, match=why):
            Predictor(model)
        r = script('geosdm_predict', '--checkpoint', model, '--lat', 45, '--lon', -120)
        one_line_error(r, 'geosdm_predict', model.name, why)
