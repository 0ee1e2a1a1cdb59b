"""The console scripts run as a user runs them: separate processes, exit codes, stdout for results, one line on
stderr for a mistake, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from geosdm.simulate import simulate_world

BIN = Path(sys.executable).parent


def run(script: str, *args, timeout=300) -> subprocess.CompletedProcess:
    exe = BIN / script
    if not exe.exists():
        pytest.skip(f'{script} is not installed in this environment (pip install -e .)')
    env = {**os.environ, 'TQDM_DISABLE': '1', 'OMP_NUM_THREADS': '1'}
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env)


def user_error(r: subprocess.CompletedProcess, prog: str, *words):
    "Exit 2, one line on stderr naming the program and the words, no traceback."
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert 'Traceback' not in r.stderr and lines, r.stderr
    last = lines[-1]
    assert last.startswith(f'{prog}: error:'), r.stderr
    for w in words:
        assert w in last, (w, last)


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
    "A finished tiny run, trained by `geosdm_train` itself."
    d = tmp_path_factory.mktemp('cli')
    simulate_world(n_species=25, res=2, bbox=(-125, 30, -100, 50), seed=2).write(d / 'world')
    r = run(
        'geosdm_train',
        '--data_path',
        d / 'world' / 'combined.parquet',
        '--checkpoint_dir',
        d / 'run',
        '--model_scale',
        '0.1',
        '--num_epochs',
        '1',
        '--min_obs_per_species',
        '5',
        '--batch_size',
        '256',
        '--device',
        'cpu',
    )
    return d, r


def test_train_succeeds_on_stdout(run_dir):
    d, r = run_dir
    assert r.returncode == 0, r.stderr
    assert 'Epoch 1/1' in r.stdout and 'GeoScore' in r.stdout and 'Traceback' not in r.stderr
    assert (d / 'run' / 'checkpoint_best.pt').is_file() and (d / 'run' / 'training_history.json').is_file()


@pytest.mark.parametrize(
    'args,words',
    [
        (['--lr', '-1'], ['--lr', '> 0']),
        (['--empty_samples', 'envonly'], ['--empty_samples', 'envonly']),
        (['--data_path', '/no/such.parquet'], ['--data_path', 'no such file']),
        (['--holdout_regions', 'atlantis'], ['atlantis']),
        (['--no_such_flag'], ['unrecognized arguments']),
        (['--cpu_threads', '0'], ['--cpu_threads', '≥ 1']),
        (['--batch_size', 'big'], ['--batch_size', 'invalid int']),
    ],
)
def test_train_bad_flags(args, words, tmp_path):
    r = run('geosdm_train', *args, '--checkpoint_dir', tmp_path)
    user_error(r, 'geosdm_train', *words)
    assert r.stdout == ''  # nothing said before the answer, not even the demo-world note (speed: bench/wall_clock.py)


def test_train_bad_files(tmp_path):
    f = tmp_path / 'not.parquet'
    f.write_text('hello')
    user_error(run('geosdm_train', '--data_path', f, '--checkpoint_dir', tmp_path / 'a'), 'geosdm_train', 'not.parquet')


def test_predict(run_dir):
    d, _ = run_dir
    r = run(
        'geosdm_predict',
        '--checkpoint',
        d / 'run' / 'checkpoint_best.pt',
        '--lat',
        40,
        '--lon',
        -110,
        '--week',
        20,
        '--threshold',
        1e-9,
    )
    assert r.returncode == 0 and r.stderr == '', r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith('25 species with p ≥ 1e-09 at (40.0000, -110.0000), week 20'), lines[0]
    assert len(lines) > 1 and lines[1].split()[0] == '1'


@pytest.mark.parametrize(
    'args,words',
    [
        (['--lat', 40, '--lon', 400], ['--lon', '[-180, 180]']),
        (['--lat', 95, '--lon', 0], ['--lat', '[-90, 90]']),
        (['--lat', 40, '--lon', 0, '--week', 49], ['--week']),
        (['--lat', 40, '--lon', 0, '--checkpoint', '/no/such.pt'], ['--checkpoint', 'no such file']),
    ],
)
def test_predict_bad_arguments(args, words):
    user_error(run('geosdm_predict', *args), 'geosdm_predict', *words)


def test_predict_not_a_checkpoint():
    readme = Path(__file__).resolve().parents[1] / 'README.md'
    user_error(
        run('geosdm_predict', '--checkpoint', readme, '--lat', 40, '--lon', 0),
        'geosdm_predict',
        'README.md',
        'not a readable geosdm checkpoint',
    )


def test_app_print(run_dir):
    d, _ = run_dir
    r = run('geosdm_app', 'explorer', '--checkpoint', d / 'run' / 'checkpoint_best.pt', '--print')
    assert r.returncode == 0 and r.stderr == '' and 'marimo run' in r.stdout
    user_error(run('geosdm_app', 'explorer', '--checkpoint', '/no/such.pt'), 'geosdm_app', 'no such file')
    user_error(run('geosdm_app', 'nope'), 'geosdm_app', 'invalid choice')


def test_predict_warns_far_from_the_training_data(run_dir):
    "Tokyo for a model of western North America: results on stdout, exit 0, and one warning line on stderr."
    d, _ = run_dir
    ck = d / 'run' / 'checkpoint_best.pt'
    far = run('geosdm_predict', '--checkpoint', ck, '--lat', 35.68, '--lon', 139.69, '--threshold', 0.001)
    assert far.returncode == 0 and 'species with p' in far.stdout
    assert far.stderr.startswith('geosdm_predict: warning: (35.68, 139.69) is ') and 'extrapolation' in far.stderr
    near = run('geosdm_predict', '--checkpoint', ck, '--lat', 40, '--lon', -110, '--threshold', 0.001)
    assert near.returncode == 0 and near.stderr == ''
