"""Nothing lost at the edges: every console script, run as a user runs it (a separate process), against each class
of mistake and accident: an argument error, an input used as an output, an empty result, a failure after the first
output is written, a malformed input, a damaged model file, Ctrl-C mid-run. Each test asserts the exit code, a single
line on stderr without a traceback, and that every file that was there before is byte-identical (nothing half
written, no temporary files, no lock left behind). The ingest-specific cases (archives, metadata, its outputs) are in
tests/test_ingest.py; the figures' (odd histories, frames) in tests/test_plots.py."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from maps_support import root, tiny_checkpoint  # noqa: E402,F401

BIN = Path(sys.executable).parent
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'TQDM_DISABLE': '1'}
PASSWORD = 'hunter2-secret'
STORAGE = f'postgresql://me:{PASSWORD}@db.example.org/tune'
TINY = ['--model_scale', '0.1', '--min_obs_per_species', '5', '--batch_size', '256', '--device', 'cpu']


def exe(prog: str) -> str:
    p = BIN / prog
    if not p.exists():
        pytest.skip(f'{prog} is not installed in this environment (pip install -e .)')
    return str(p)


def script(prog: str, *args, cwd=None, timeout=600) -> subprocess.CompletedProcess:
    "Run console script `prog` as a user does."
    return subprocess.run(
        [exe(prog), *map(str, args)], capture_output=True, text=True, timeout=timeout, env=ENV, cwd=cwd
    )


_BAR = re.compile(r'\d+%\|')  # a progress bar (drawn with \r on stderr, and erased)


def err_lines(stderr: str) -> list[str]:
    "The lines of stderr, progress bars left out."
    return [s for s in re.split(r'[\r\n]', stderr) if s.strip() and not _BAR.search(s)]


def one_line(r, prog: str, *words, code: int = 2) -> str:
    "Exit status `code`, and one line on stderr, `<prog>: error: ...` (or the Ctrl-C line), naming `words`."
    lines = err_lines(r.stderr)
    assert r.returncode == code, (r.returncode, r.stdout[-2000:], r.stderr[-3000:])
    assert 'Traceback' not in r.stderr and len(lines) == 1, r.stderr[-3000:]
    assert lines[0].startswith(f'{prog}: error: ' if code == 2 else f'{prog}: interrupted'), lines[0]
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def tree(folder) -> dict[str, bytes | None]:
    "Every file (hidden ones too) under `folder`, by relative path, with its bytes (None: a folder)."
    folder = Path(folder)
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): (None if p.is_dir() else p.read_bytes()) for p in sorted(folder.rglob('*'))}


def no_temp_files(folder) -> bool:
    return not [p for p in Path(folder).rglob('*') if p.name.endswith('.tmp')]


@pytest.fixture(scope='module')
def model(root) -> Path:
    "A tiny trained checkpoint (shared by the session's tests; never written to)."
    return tiny_checkpoint(root)


@pytest.fixture(scope='module')
def cut_model(model, tmp_path_factory) -> Path:
    "The checkpoint cut to a third of its length."
    p = tmp_path_factory.mktemp('cut') / 'cut.pt'
    p.write_bytes(model.read_bytes()[: model.stat().st_size // 3])
    return p


@pytest.fixture(scope='module')
def world(tmp_path_factory) -> Path:
    "A folder `w` with a small simulated world (combined.parquet and its taxonomy)."
    from geosdm.simulate import simulate_world

    d = tmp_path_factory.mktemp('edges')
    simulate_world(n_species=25, res=2, bbox=(-125, 30, -100, 50), seed=2).write(d / 'w')
    return d


@pytest.fixture(scope='module')
def trained(world) -> Path:
    "A run trained by `geosdm_train` from `world` with relative paths and a storage URL that holds a password."
    r = script(
        'geosdm_train',
        '--data_path',
        'w/combined.parquet',
        '--checkpoint_dir',
        'run',
        '--num_epochs',
        '2',
        '--save_every',
        '1',
        '--autotune_storage',
        STORAGE,
        *TINY,
        cwd=world,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return world / 'run'


CSV_HEAD = 'Start (s),End (s),Scientific name,Common name,Confidence,File,lat,lon,week\n'


@pytest.fixture(scope='module')
def detections(model, tmp_path_factory) -> Path:
    "A folder `dets` with two BirdNET Analyzer result files, a.csv and b.csv, of the model's first species."
    from geosdm.predict import Predictor

    sci = Predictor(model, device='cpu').sci_names[0]
    d = tmp_path_factory.mktemp('dets') / 'dets'
    d.mkdir()
    for name in ('a', 'b'):
        (d / f'{name}.csv').write_text(CSV_HEAD + f'0.0,3.0,{sci},x,0.9,{name}.wav,45,-120,20\n')
    return d


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns('.lock'))
    return dst


# ---------------------------------------------------------------- argument errors: one line, exit 2


ARG_ERRORS = [
    ('geosdm_train', ['--no_such_flag'], ['unrecognized arguments']),
    ('geosdm_train', ['--batch_size', 'big'], ['--batch_size', 'invalid']),
    ('geosdm_train', ['--lr', '-1'], ['--lr']),
    ('geosdm_predict', ['--lat', '40'], ['--lon']),
    ('geosdm_predict', ['--lat', '40', '--lon', '0', '--top_k', '-1'], ['--top_k -1', '≥ 1']),
    ('geosdm_predict', ['--lat', '40', '--lon', '0', '--top_k', '0'], ['--top_k 0']),
    ('geosdm_predict', ['--lat', '40', '--lon', '0', '--threshold', '1.5'], ['--threshold 1.5', '(0, 1)']),
    ('geosdm_predict', ['--lat', '40', '--lon', '0', '--threshold', 'nan'], ['--threshold nan', '(0, 1)']),
    ('geosdm_predict', ['--lat', '40', '--lon', '0', '--threshold', '0'], ['--threshold 0']),
    ('geosdm_app', ['nope'], ['invalid choice']),
    ('geosdm_app', ['explorer', '--port', 'x'], ['--port']),
    ('geosdm_export', ['--formats', 'zip'], ['--formats', 'invalid choice']),
    ('geosdm_export', ['--common_species', '-1'], ['--common_species']),
    ('geosdm_ingest', [], ['input']),
    ('geosdm_ingest', ['.', '--resolution', '16'], ['--resolution 16']),
    ('geosdm_plot', ['nope'], ['invalid choice']),
    ('geosdm_plot', ['range'], ['--species']),
    ('geosdm_plot', ['weekly', '--species', 'x', '--fps', '0'], ['--fps 0']),
    ('geosdm_plot', ['richness', '--threshold', '1.5'], ['--threshold 1.5', '(0, 1)']),
    ('geosdm_plot', ['phenology', '--lat', '1', '--lon', '2', '--top_k', '0'], ['--top_k 0', '≥ 1']),
    ('geosdm_plot', ['range', '--species', 'x', '--weeks', '49'], ['--weeks 49']),
    ('geosdm_filter', [], ['inputs']),
    ('geosdm_filter', ['r.csv', '--lat', '95', '--lon', '0'], ['--lat 95', '[-90, 90]']),
    ('geosdm_filter', ['r.csv', '--week', '49'], ['--week 49']),
    ('geosdm_filter', ['r.csv', '--threshold', '1.5'], ['--threshold 1.5', '(0, 1)']),
    ('geosdm_filter', ['r.csv', '--threshold', 'nan'], ['--threshold nan', '(0, 1)']),
    ('geosdm_filter', ['r.csv', '--lists', 'species', '--threshold', '0.5'], ['with --lists global']),
    ('geosdm_filter', ['r.csv', '--lat', '45'], ['--lat and --lon together']),
]


@pytest.mark.parametrize('prog,args,words', ARG_ERRORS, ids=[f'{p}{" ".join(a)}' for p, a, _ in ARG_ERRORS])
def test_argument_errors_are_one_line(prog, args, words, model, tmp_path):
    "`<program>: error: <what> (see --help)`, exit 2, before anything is written."
    if prog == 'geosdm_predict' and '--lon' in args:
        args = [*args, '--checkpoint', model]
    r = script(prog, *args, cwd=tmp_path)
    line = one_line(r, prog, *words)
    assert re.search(r'\(see (geosdm_plot \w+ )?--help\)$', line) and r.stdout == '', line
    assert tree(tmp_path) == {}


# ---------------------------------------------------------------- an input used as an output


def test_train_refuses_its_checkpoint_as_the_new_run(trained, tmp_path):
    "--finetune from a checkpoint into the folder that holds it: refused, the folder as it was, no lock left."
    ck = copy_run(trained, tmp_path / 'run')
    before = tree(ck)
    r = script('geosdm_train', '--data_path', trained.parent / 'w' / 'combined.parquet', '--checkpoint_dir', ck,
               '--finetune', ck / 'checkpoint_best.pt', '--overwrite', '--num_epochs', 1, *TINY)  # fmt: skip
    one_line(r, 'geosdm_train', '--finetune', 'belongs to the run')
    assert tree(ck) == before


def test_export_refuses_its_checkpoint_as_an_output(model, tmp_path):
    ck = tmp_path / 'geomodel_labels.txt'  # a checkpoint under the name of one of the outputs
    shutil.copy(model, ck)
    before = tree(tmp_path)
    one_line(script('geosdm_export', '--checkpoint', ck, '--outdir', tmp_path, '--formats', 'onnx'),
             'geosdm_export', 'input of this run')  # fmt: skip
    assert tree(tmp_path) == before


@pytest.mark.parametrize('target', ['input', 'checkpoint'])
def test_filter_refuses_an_input_as_its_output(target, model, detections, tmp_path):
    "-o naming the result file it reads, or the checkpoint: refused, every file as it was."
    shutil.copytree(detections, tmp_path / 'dets')
    shutil.copy(model, tmp_path / 'model.pt')
    src = tmp_path / 'dets' / 'a.csv'
    before = tree(tmp_path)
    out = src if target == 'input' else tmp_path / 'model.pt'
    r = script('geosdm_filter', src, '--checkpoint', tmp_path / 'model.pt', '-o', out)
    one_line(r, 'geosdm_filter', out.name, 'input')
    assert tree(tmp_path) == before


def test_plot_refuses_its_data_file_as_an_output(world, tmp_path):
    "env maps into the folder of their data file, which has the name of one of the outputs."
    figs = tmp_path / 'figs'
    figs.mkdir()
    shutil.copy(world / 'w' / 'combined.parquet', figs / 'env_maps.parquet')
    before = tree(figs)
    r = script('geosdm_plot', 'env', '--data_path', figs / 'env_maps.parquet', '--outdir', figs, '--max_cells', 50)
    one_line(r, 'geosdm_plot', 'env_maps.parquet', 'input of this run')
    assert tree(figs) == before


# ---------------------------------------------------------------- an empty result


def test_train_with_no_species_left(world, tmp_path):
    "Every species filtered out: exit 2 naming the counts; no run folder made, no lock left."
    r = script('geosdm_train', '--data_path', world / 'w' / 'combined.parquet', '--checkpoint_dir', tmp_path / 'run',
               *TINY, '--min_obs_per_species', 10**6)  # fmt: skip
    one_line(r, 'geosdm_train', 'no species left', '25', '1000000')
    assert tree(tmp_path) == {}


def test_predict_with_no_species_above_the_threshold(model):
    "An empty list is an error that says what was left out and what the best was, not an empty success."
    r = script('geosdm_predict', '--checkpoint', model, '--lat', 45, '--lon', -120, '--threshold', 0.999999)
    one_line(r, 'geosdm_predict', 'no species with p ≥ 0.999999', 'the most probable', '--threshold')
    assert r.stdout == ''


@pytest.mark.parametrize('kind', ['no result files', 'no detections'])
def test_filter_with_nothing_to_filter(kind, model, tmp_path):
    "A folder without result files, or result files without a detection: exit 2 naming what was found, no output."
    d = tmp_path / 'dets'
    d.mkdir()
    (d / 'notes.txt').write_text('not a result file\n')
    if kind == 'no detections':
        (d / 'a.csv').write_text(CSV_HEAD)
    before = tree(tmp_path)
    r = script('geosdm_filter', d, '--checkpoint', model, '-o', tmp_path / 'out')
    one_line(
        r,
        'geosdm_filter',
        *(['no BirdNET Analyzer'] if kind == 'no result files' else ['1 result file', 'no detection']),
    )
    assert tree(tmp_path) == before


def test_export_of_an_unknown_species(model, tmp_path):
    (tmp_path / 'geomodel.onnx').write_bytes(b'an earlier export')
    before = tree(tmp_path)
    r = script('geosdm_export', '--checkpoint', model, '--outdir', tmp_path, '--species', 'Dodo')
    one_line(r, 'geosdm_export', 'Dodo')
    assert tree(tmp_path) == before


def test_plot_phenology_with_no_species_above_the_threshold(model, tmp_path):
    r = script('geosdm_plot', 'phenology', '--checkpoint', model, '--lat', 45, '--lon', -120, '--threshold', 0.999999,
               '--outdir', tmp_path / 'figs', '--device', 'cpu')  # fmt: skip
    one_line(r, 'geosdm_plot', 'no species reaches p ≥ 0.999999', 'the most probable')
    assert tree(tmp_path) == {}


# ---------------------------------------------------------------- a failure after the first output is written


def test_export_failure_after_the_first_file(model, tmp_path):
    "A folder where the second model must go: the first is written, then refused; the old files stay."
    out = tmp_path / 'exports'
    out.mkdir()
    (out / 'geomodel.onnx').write_bytes(b'old model')
    (out / 'geomodel_fp16.onnx').mkdir()
    before = tree(out)
    r = script('geosdm_export', '--checkpoint', model, '--outdir', out, '--formats', 'onnx', 'onnx_fp16')
    one_line(r, 'geosdm_export', 'geomodel_fp16.onnx')
    assert tree(out) == before


def test_train_failure_after_the_first_checkpoint(world, tmp_path):
    "A folder where the history must go: epoch 1's checkpoint is written, then the run stops in one line."
    ck = tmp_path / 'run'
    (ck / 'training_history.json').mkdir(parents=True)
    r = script('geosdm_train', '--data_path', world / 'w' / 'combined.parquet', '--checkpoint_dir', ck,
               '--num_epochs', 2, *TINY)  # fmt: skip
    one_line(r, 'geosdm_train', 'training_history.json')
    assert not (ck / '.lock').exists() and no_temp_files(ck)
    assert (ck / 'training_history.json').is_dir()


def test_filter_failure_after_the_first_file(model, detections, tmp_path):
    "A folder where the second output must go: the first is written, then refused; the earlier output stays."
    out = tmp_path / 'out'
    (out / 'b.csv').mkdir(parents=True)
    (out / 'a.csv').write_text('an earlier output')
    before = tree(out)
    r = script('geosdm_filter', detections, '--checkpoint', model, '-o', out)
    one_line(r, 'geosdm_filter', 'b.csv')
    assert tree(out) == before


def test_plot_range_with_an_unknown_second_species(model, tmp_path):
    "Every name is looked up before anything is drawn: no file of the first species either."
    from geosdm.predict import Predictor

    good = Predictor(model, device='cpu').vocab[0]
    figs = tmp_path / 'figs'
    r = script('geosdm_plot', 'range', '--checkpoint', model, '--species', good, 'Unknown', '--outdir', figs,
               '--max_cells', 50, '--device', 'cpu')  # fmt: skip
    one_line(r, 'geosdm_plot', "'Unknown'", 'not in the model')
    assert tree(tmp_path) == {}


def test_plot_failure_after_the_first_file(model, tmp_path):
    "A folder where a later file must go: every figure file is written, then the last is refused; the old stay."
    from geosdm.predict import Predictor

    code = Predictor(model, device='cpu').vocab[0]
    figs = tmp_path / 'figs'
    figs.mkdir()
    (figs / f'range_{code}.png').write_bytes(b'an earlier figure')
    (figs / f'range_{code}.parquet').mkdir()
    before = tree(figs)
    r = script('geosdm_plot', 'range', '--checkpoint', model, '--species', code, '--outdir', figs, '--weeks', 20,
               '--max_cells', 50, '--formats', 'png', 'svg', '--device', 'cpu')  # fmt: skip
    one_line(r, 'geosdm_plot', f'range_{code}.parquet')
    assert tree(figs) == before


# ---------------------------------------------------------------- malformed inputs


def test_train_on_a_foreign_parquet(tmp_path):
    import polars as pl

    pl.DataFrame({'x': [1, 2]}).write_parquet(tmp_path / 'foreign.parquet')
    before = tree(tmp_path)
    r = script('geosdm_train', '--data_path', tmp_path / 'foreign.parquet', '--checkpoint_dir', tmp_path / 'run')
    one_line(r, 'geosdm_train', 'foreign.parquet', 'missing required column')
    assert tree(tmp_path) == before  # no run folder, no lock


def test_train_with_a_malformed_options_file(tmp_path):
    (tmp_path / 'opts.toml').write_text('num_epochs = [\n')
    r = script('geosdm_train', '--config', tmp_path / 'opts.toml', '--checkpoint_dir', tmp_path / 'run')
    one_line(r, 'geosdm_train', 'opts.toml', 'not a TOML file')
    assert sorted(tree(tmp_path)) == ['opts.toml']


def test_plot_env_of_a_foreign_parquet(tmp_path):
    import polars as pl

    pl.DataFrame({'x': [1, 2]}).write_parquet(tmp_path / 'foreign.parquet')
    before = tree(tmp_path)
    r = script('geosdm_plot', 'env', '--data_path', tmp_path / 'foreign.parquet', '--outdir', tmp_path / 'figs')
    one_line(r, 'geosdm_plot', 'foreign.parquet')
    assert tree(tmp_path) == before


# ---------------------------------------------------------------- odd training histories


def test_plot_training_of_a_resumed_run_with_a_metric_added_later(tmp_path):
    "Lists of different lengths (a metric a newer version added after a resume): drawn, the missing epochs a gap."
    import json

    h = {'epoch': [1, 2, 3, 4], 'val_loss': [0.9, 0.7, 0.6, 0.5], 'val_geoscore': [0.2, 0.3, 0.35, 0.4],
         'holdout_map': [0.5, 0.6], 'lr': [1e-3, 8e-4, None, 2e-4]}  # fmt: skip
    (tmp_path / 'training_history.json').write_text(json.dumps(h))
    r = script('geosdm_plot', 'training', tmp_path, '--formats', 'svg', 'json')
    assert r.returncode == 0 and r.stderr == '', r.stderr
    spec = json.loads((tmp_path / 'training_curves.json').read_text())
    rows = [x for v in spec['datasets'].values() for x in v if x.get('metric') == 'holdout_map']
    assert [(x['epoch'], x['value']) for x in rows] == [(1, None), (2, None), (3, 0.5), (4, 0.6)]


@pytest.mark.parametrize('text', ['null', '[1, 2]', '{"val_loss": [0.5, nul'])
def test_plot_training_of_a_file_that_holds_no_history(text, tmp_path):
    (tmp_path / 'training_history.json').write_text(text)
    (tmp_path / 'training_curves.svg').write_text('an earlier figure')
    before = tree(tmp_path)
    r = script('geosdm_plot', 'training', tmp_path)
    one_line(r, 'geosdm_plot', 'training_history.json', 'training history')
    assert tree(tmp_path) == before


# ---------------------------------------------------------------- damaged model files


@pytest.mark.parametrize(
    'prog', ['geosdm_predict', 'geosdm_export', 'geosdm_app', 'geosdm_train', 'geosdm_plot', 'geosdm_filter']
)
def test_damaged_checkpoint(prog, cut_model, world, detections, tmp_path):
    args = {
        'geosdm_predict': ['--checkpoint', cut_model, '--lat', 45, '--lon', -120],
        'geosdm_export': ['--checkpoint', cut_model, '--outdir', tmp_path / 'out'],
        'geosdm_app': ['explorer', '--checkpoint', cut_model, '--print'],
        'geosdm_train': ['--data_path', world / 'w' / 'combined.parquet', '--checkpoint_dir', tmp_path / 'run',
                         '--finetune', cut_model, *TINY],
        'geosdm_plot': ['richness', '--checkpoint', cut_model, '--outdir', tmp_path / 'figs'],
        'geosdm_filter': [detections, '--checkpoint', cut_model, '-o', tmp_path / 'out'],
    }[prog]  # fmt: skip
    one_line(script(prog, *args, cwd=tmp_path), prog, 'cut.pt', 'not a readable geosdm checkpoint')
    assert tree(tmp_path) == {}


# ---------------------------------------------------------------- Ctrl-C


def interrupt(args: list, ready, cwd=None, timeout=600) -> subprocess.CompletedProcess:
    "Start console script args[0], send it SIGINT (Ctrl-C) once `ready(pid)` holds, and collect its end."
    p = subprocess.Popen(
        [exe(args[0]), *map(str, args[1:])], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=cwd
    )
    t0 = time.monotonic()
    while not ready(p.pid) and p.poll() is None and time.monotonic() - t0 < timeout:
        time.sleep(0.005)
    running = p.poll() is None
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=timeout)
    assert running, f'{args[0]} ended before it could be interrupted: {err[-2000:]}'
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def loaded(lib: str):
    "Whether process `pid` has mapped a shared library whose name holds `lib` (it is in the body of its command)."

    def ready(pid: int) -> bool:
        try:
            return lib in Path(f'/proc/{pid}/maps').read_text()
        except OSError:
            return False

    if not Path('/proc/self/maps').exists():
        pytest.skip('needs /proc')
    return ready


def test_ctrl_c_train(world, tmp_path):
    "Interrupted after its first checkpoint: exit 130, whole files, no temporary file, no lock."
    from geosdm.checkpoint import load_checkpoint

    ck = tmp_path / 'run'
    args = ['geosdm_train', '--data_path', world / 'w' / 'combined.parquet', '--checkpoint_dir', ck,
            '--num_epochs', 200, '--save_every', 1, *TINY]  # fmt: skip
    r = interrupt(args, lambda pid: (ck / 'checkpoint_latest.pt').exists())
    one_line(r, 'geosdm_train', code=130)
    assert not (ck / '.lock').exists() and no_temp_files(ck)
    assert load_checkpoint(ck / 'checkpoint_latest.pt')['epoch'] >= 1  # (resuming it: tests/test_faults.py)


def test_ctrl_c_predict(model):
    one_line(interrupt(['geosdm_predict', '--checkpoint', model, '--lat', 45, '--lon', -120], loaded('libtorch')),
             'geosdm_predict', code=130)  # fmt: skip


def test_ctrl_c_filter(model, detections, tmp_path):
    "Interrupted once the model is loading: exit 130, the earlier output as it was."
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'a.csv').write_text('an earlier output')
    before = tree(out)
    r = interrupt(['geosdm_filter', detections, '--checkpoint', model, '-o', out], loaded('libtorch'))
    one_line(r, 'geosdm_filter', code=130)
    assert tree(out) == before


def test_ctrl_c_export(model, tmp_path):
    "Interrupted while its temporary files are being written: the earlier files as they were, no temporary file."
    from geosdm.core import is_temp_file

    (tmp_path / 'geomodel.onnx').write_bytes(b'old model')
    before = tree(tmp_path)

    def writing(pid):
        return any(is_temp_file(p.name) for p in tmp_path.iterdir())

    r = interrupt(['geosdm_export', '--checkpoint', model, '--outdir', tmp_path, '--formats', 'onnx', 'onnx_int8'],
                  writing)  # fmt: skip
    one_line(r, 'geosdm_export', code=130)
    assert tree(tmp_path) == before


def test_ctrl_c_plot(model, tmp_path):
    "Interrupted while the weekly frames are written: the earlier files as they were, no temporary file."
    from geosdm.core import is_temp_file
    from geosdm.predict import Predictor

    figs = tmp_path / 'figs'
    (figs / 'frames').mkdir(parents=True)
    (figs / 'frames' / 'old.png').write_bytes(b'an earlier frame')
    before = tree(figs)

    def drawing(pid):
        return any(is_temp_file(p.name) for p in figs.rglob('*'))

    code = Predictor(model, device='cpu').vocab[0]
    args = ['geosdm_plot', 'weekly', '--checkpoint', model, '--species', code, '--outdir', figs,
            '--max_cells', 50, '--device', 'cpu']  # fmt: skip
    one_line(interrupt(args, drawing), 'geosdm_plot', code=130)
    assert tree(figs) == before


def test_ctrl_c_app(model, tmp_path):
    "Ctrl-C in a terminal reaches the app and the marimo server it runs (one process group): 130, one line."
    import socket

    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    args = [exe('geosdm_app'), 'explorer', '--checkpoint', model, '--headless', '--port', port]
    p = subprocess.Popen(list(map(str, args)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                         start_new_session=True)  # fmt: skip
    try:
        t0 = time.monotonic()
        while p.poll() is None and time.monotonic() - t0 < 300:  # until it serves (a guard, not a measurement)
            with contextlib.suppress(OSError), socket.create_connection(('127.0.0.1', port), timeout=0.2):
                break
            time.sleep(0.1)
        assert p.poll() is None, p.stderr.read()[-2000:]
        os.killpg(p.pid, signal.SIGINT)
        out, err = p.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
    one_line(subprocess.CompletedProcess(p.args, p.returncode, out, err), 'geosdm_app', code=130)


def test_ctrl_c_ingest(tmp_path):
    "Interrupted while it unpacks the archive: exit 130, the earlier output as it was."
    from geosdm.core import WEEK_COLS, demo_parquet
    from geosdm.gbif import write_dwca
    from geosdm.inputs import read_columns
    from geosdm.synthetic import synthetic_records

    records = synthetic_records(read_columns(demo_parquet(), columns=['h3_index', *WEEK_COLS]), 400_000)
    z = write_dwca(tmp_path / 'dwca.zip', records)
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'combined.parquet').write_bytes(b'an earlier output')
    before = tree(out)
    work = tmp_path / 'work'
    work.mkdir()

    def reading(pid):  # the archive is being unpacked (Python code; see geosdm.cli.run for Ctrl-C in native code)
        return any(p.is_file() for p in work.rglob('*'))

    args = ['geosdm_ingest', z, '-o', out / 'combined.parquet', '--grid', demo_parquet(), '--work_dir', work]
    r = interrupt(args, reading)
    one_line(r, 'geosdm_ingest', code=130)
    assert tree(out) == before


# ---------------------------------------------------------------- what a checkpoint keeps


def test_no_password_anywhere(trained):
    "A storage URL with a password: not in the checkpoints, the history, the options file, the cache or the lock."
    from geosdm.checkpoint import load_checkpoint

    files = [p for p in trained.rglob('*') if p.is_file()]
    assert len(files) >= 6
    for f in files:
        assert PASSWORD.encode() not in f.read_bytes(), f
    cfg = load_checkpoint(trained / 'checkpoint_best.pt')['config']
    assert cfg['autotune_storage'] == 'postgresql://me:***@db.example.org/tune'


def test_paths_are_absolute_and_old_relative_ones_are_found(trained, tmp_path):
    "Paths are stored absolute; a relative one (an older checkpoint) is found from the checkpoint's folder."
    import torch

    from geosdm.checkpoint import load_checkpoint
    from geosdm.predict import Predictor

    ck = load_checkpoint(trained / 'checkpoint_best.pt')
    data = trained.parent / 'w' / 'combined.parquet'
    assert ck['config']['data_path'] == str(data) and ck['config']['checkpoint_dir'] == str(trained)
    ck['config'] |= {'data_path': 'w/combined.parquet', 'checkpoint_dir': 'run'}  # as older versions stored them
    old = trained / 'old.pt'
    torch.save(ck, old)
    try:
        elsewhere = tmp_path / 'elsewhere'
        elsewhere.mkdir()
        cwd = os.getcwd()
        os.chdir(elsewhere)
        try:
            assert Predictor(old).config.data_path == str(data)
        finally:
            os.chdir(cwd)
        r = script('geosdm_export', '--checkpoint', old, '--outdir', elsewhere / 'out', '--common_species', 3,
                   '--formats', 'onnx', cwd=elsewhere)  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert '3 species' in r.stdout
        r = script('geosdm_plot', 'range', '--checkpoint', old, '--species', ck['species_vocab']['codes'][0],
                   '--weeks', 20, '--max_cells', 50, '--formats', 'svg', '--device', 'cpu', cwd=elsewhere)  # fmt: skip
        assert r.returncode == 0 and (elsewhere / 'figures').is_dir(), r.stderr
    finally:
        old.unlink()


def test_a_finished_run_leaves_no_lock(trained):
    assert not (trained / '.lock').exists() and no_temp_files(trained)


# ---------------------------------------------------------------- README's commands


def readme_commands() -> list[list[str]]:
    "The `geosdm_*` command lines of README's shell blocks, as words (continued lines joined)."
    import shlex

    text = (Path(__file__).resolve().parents[1] / 'README.md').read_text()
    blocks = re.findall(r'```sh\n(.*?)```', text, re.S)
    lines = [ln for b in blocks for ln in b.replace('\\\n', ' ').splitlines()]
    return [
        w
        for ln in lines
        for c in ln.split('&&')
        if (w := shlex.split(c, comments=True))[:1] and w[0].startswith('geosdm_')
    ]


def test_readme_commands_parse():
    "Each command of README's examples names flags its script has, with values they take (files aside)."
    from geosdm.cli import _export_parser, _ingest_parser, _predict_parser
    from geosdm.cli_filter import filter_parser
    from geosdm.cli_plot import _plot_parser
    from geosdm.runconfig import REMOVED_FLAGS, parse_config

    parsers = {'geosdm_predict': _predict_parser, 'geosdm_export': _export_parser, 'geosdm_ingest': _ingest_parser}
    parsers |= {'geosdm_plot': _plot_parser, 'geosdm_filter': filter_parser}
    cmds = readme_commands()
    assert {c[0] for c in cmds} >= {'geosdm_train', 'geosdm_predict', 'geosdm_ingest'}, cmds
    for prog, *args in cmds:
        if prog == 'geosdm_train':
            if '--config' in args:  # (a file of the run above)
                i = args.index('--config')
                args = args[:i] + args[i + 2 :]
            cfg, _ = parse_config([a for a in args if a.lstrip('-') not in REMOVED_FLAGS])
            assert not (cfg.resume and cfg.finetune), args
            assert not (cfg.resume and '--num_epochs' in args), f'{args}: a resume keeps its schedule'
        elif prog in parsers:
            parsers[prog]().parse_args(args)
