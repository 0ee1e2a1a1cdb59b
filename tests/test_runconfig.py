"""Runs you can repeat from a file: every run writes its options to <checkpoint_dir>/config.toml, and
`geosdm_train --config` on that file trains the same run again; flags on the command line win over the file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

from geosdm.config import OPTIONS, TrainConfig
from geosdm.runconfig import config_toml, parse_config

BIN = Path(sys.executable).parent
TINY = ['--model_scale', '0.1', '--num_epochs', '2', '--batch_size', '512', '--min_obs_per_species', '20']
TINY += ['--device', 'cpu', '--cpu_threads', '1', '--lr_warmup', '0.5']


def train(*args) -> subprocess.CompletedProcess:
    exe = BIN / 'geosdm_train'
    if not exe.exists():
        pytest.skip('geosdm_train is not installed in this environment (pip install -e .)')
    env = {**os.environ, 'TQDM_DISABLE': '1', 'OMP_NUM_THREADS': '1'}
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=900, env=env)


def one_error_line(r: subprocess.CompletedProcess, *words):
    assert r.returncode == 2 and 'Traceback' not in r.stderr, (r.returncode, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith('geosdm_train: error:'), r.stderr
    assert all(w in lines[0] for w in words), (words, lines[0])


def _history(run: Path) -> dict:
    h = json.loads((run / 'training_history.json').read_text())
    return {k: v for k, v in h.items() if 'seconds' not in k and not k.endswith('_per_s')}  # times differ


def test_config_toml_repeats_the_run(tmp_path):
    a, b = tmp_path / 'a', tmp_path / 'b'
    r = train(*TINY, '--checkpoint_dir', a)
    assert r.returncode == 0, r.stderr[-3000:]
    text = (a / 'config.toml').read_text()
    written = tomllib.loads(text)
    listed = set(written) | {n for n in OPTIONS if f'# {n} =' in text}
    assert listed == set(OPTIONS) - {'resume', 'overwrite'}  # every option, set or not, but how the run was started
    assert written['batch_size'] == 512 and written['device'] == 'cpu' and written['amp'] == 'off'
    r = train('--config', a / 'config.toml', '--checkpoint_dir', b)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _history(b) == _history(a)
    wa = torch.load(a / 'checkpoint_latest.pt', weights_only=True)['model_state_dict']
    wb = torch.load(b / 'checkpoint_latest.pt', weights_only=True)['model_state_dict']
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert tomllib.loads((b / 'config.toml').read_text()) == {**written, 'checkpoint_dir': str(b)}


def test_flags_win_over_the_file(tmp_path):
    f = tmp_path / 'run.toml'
    f.write_text(config_toml(TrainConfig(num_epochs=7, lr=0.01, jitter=True, data_path=None)))
    cfg, demo = parse_config(['--config', str(f), '--num_epochs', '3'])
    assert (cfg.num_epochs, cfg.lr, cfg.jitter, demo) == (3, 0.01, True, True)
    assert cfg.model_scale == TrainConfig().model_scale  # in the file: the demo's smaller default does not apply


def test_an_unknown_key_is_one_line_naming_file_and_key(tmp_path):
    f = tmp_path / 'run.toml'
    f.write_text('lr = 0.01\nlearnig_rate = 0.1\n')
    one_error_line(train('--config', f, '--checkpoint_dir', tmp_path / 'c'), 'run.toml', "'learnig_rate'")
    one_error_line(train('--config', tmp_path / 'none.toml'), 'none.toml', 'no such file')
    f.write_text('lr = [\n')
    one_error_line(train('--config', f), 'run.toml', 'not a TOML file')


def test_num_workers_is_gone_with_a_reason(tmp_path):
    one_error_line(train('--num_workers', '4', '--checkpoint_dir', tmp_path), '--num_workers', 'DataLoader')


def test_a_password_is_never_written(tmp_path):
    text = config_toml(TrainConfig(autotune_storage='postgresql://me:hunter2@db/studies'))
    assert 'hunter2' not in text and 'postgresql://me:***@db/studies' in text
    assert 'autotune_storage' not in tomllib.loads(text)
    text = config_toml(TrainConfig(autotune_storage='studies.journal'))
    assert tomllib.loads(text)['autotune_storage'] == 'studies.journal'
