"Trainer and geosdm_train: runs, early stopping, resume (also after SIGKILL), flags, errors."

import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict

import numpy as np
import pytest
import torch
from conftest import exit_code, simulated_world, strip, trainer_config

from geosdm.checkpoint import load_checkpoint
from geosdm.cli import train_main as main
from geosdm.config import TrainConfig, build_parser
from geosdm.core import CheckpointError, ConfigError
from geosdm.trainer import Trainer, prepare, train

pytestmark = pytest.mark.usefixtures('one_thread')  # see conftest: exact comparisons need a fixed count


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    return simulated_world(tmp_path_factory)


base = trainer_config


def test_run_improves_and_writes_outputs(world, tmp_path):
    tr = train(base(world, tmp_path / 'ck', num_epochs=4, batch_size=64), progress=False)  # ~15 steps an epoch
    h = json.loads((tmp_path / 'ck' / 'training_history.json').read_text())
    assert len(h['val_geoscore']) == 4
    untrained = Trainer(tr.cfg, tr.prep).validate()['val_geoscore']
    assert min(h['val_geoscore']) > untrained + 0.04 and max(h['val_geoscore']) > untrained + 0.1
    assert h['val_geoscore'][-1] > h['val_geoscore'][0]
    assert h['val_map'][-1] > h['val_map'][0]
    for k in (
        'train_loss',
        'val_loss',
        'lr',
        'val_f1_10',
        'val_list_ratio_10',
        'val_map_density_ratio',
        'val_top10_recall',
        'val_precision_10',
        'val_recall_10',
        'val_mean_list_len_10',
        'epoch_seconds',
    ):
        assert k in h and len(h[k]) == 4, k
    labels = (tmp_path / 'ck' / 'labels.txt').read_text().splitlines()
    assert [ln.split('\t')[0] for ln in labels] == list(tr.prep.vocab)
    assert all(len(ln.split('\t')) == 3 for ln in labels)
    ck = load_checkpoint(tmp_path / 'ck' / 'checkpoint_best.pt')
    assert ck['epoch'] == int(np.nanargmax(np.array(h['val_geoscore'], dtype=float))) + 1
    assert ck['species_vocab']['codes'] == list(tr.prep.vocab)
    assert ck['env']['names'] == list(tr.prep.env_names)
    assert ck['config']['model_scale'] == 0.25


def test_same_seed_same_history(world, tmp_path):
    a = train(base(world, tmp_path / 'a', num_epochs=2), progress=False).history
    b = train(base(world, tmp_path / 'b', num_epochs=2), progress=False).history
    c = train(base(world, tmp_path / 'c', num_epochs=2, seed=6), progress=False).history
    assert strip(a) == strip(b)
    assert strip(a)['train_loss'] != strip(c)['train_loss']


def test_early_stopping(world, tmp_path):
    # lr so small the model never changes: GeoScore is flat, so patience 2 stops after epoch 3
    tr = train(
        base(world, tmp_path / 'ck', num_epochs=10, patience=2, lr=1e-12, lr_min=0.0, lr_schedule='none'),
        progress=False,
    )
    assert tr.epoch == 3 and tr.best_epoch == 1
    assert load_checkpoint(tmp_path / 'ck' / 'checkpoint_latest.pt')['epoch'] == 3


class _Stop(Exception):
    pass


def fit_and_stop(cfg, after: int):
    "Train `cfg` and stop it (as a crash would) right after epoch `after` was saved."
    tr = Trainer(cfg, prepare(cfg, progress=False))

    def stop(t, row):
        if t.epoch == after:
            raise _Stop

    with pytest.raises(_Stop):
        tr.fit(progress=False, on_epoch=stop)
    return tr


def test_resume_equals_uninterrupted(world, tmp_path):
    full = train(base(world, tmp_path / 'full', num_epochs=4), progress=False).history
    cfg = base(world, tmp_path / 'part', num_epochs=4, save_every=1)
    fit_and_stop(cfg, after=2)
    res = train(
        base(world, tmp_path / 'part', num_epochs=4, resume=str(tmp_path / 'part' / 'checkpoint_latest.pt')),
        progress=False,
    )
    assert res.epoch == 4  # num_epochs is the total, not "4 more"
    assert strip(res.history) == strip(full)


def _run_cli(args, **kw):
    code = 'import sys; from geosdm.cli import train_main; sys.exit(train_main(sys.argv[1:]))'
    return subprocess.Popen(
        [sys.executable, '-c', code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, 'TQDM_DISABLE': '1'},
        **kw,
    )


def test_sigkill_midepoch_then_resume(world, tmp_path):
    args = [
        '--data_path',
        str(world),
        '--model_scale',
        '0.25',
        '--num_epochs',
        '4',
        '--lr_warmup',
        '0.5',
        '--min_obs_per_species',
        '10',
        '--batch_size',
        '64',
        '--device',
        'cpu',
        '--seed',
        '5',
        '--save_every',
        '1',
        '--val_every',
        '1',
    ]
    ref = _run_cli(args + ['--checkpoint_dir', str(tmp_path / 'ref')])
    out, _ = ref.communicate(timeout=300)
    assert ref.returncode == 0, out.decode()
    ck = tmp_path / 'killed'
    p = _run_cli(args + ['--checkpoint_dir', str(ck)])
    hist = ck / 'training_history.json'
    t0 = time.time()
    while time.time() - t0 < 240 and p.poll() is None:  # (a guard against a hang, not a measurement)
        if hist.exists():
            try:
                if len(json.loads(hist.read_text())['val_map']) >= 2:
                    break  # epoch 2 is saved: the kill lands in epoch 3 (or in the writes of its end)
            except (json.JSONDecodeError, KeyError):
                pytest.fail('history file was not valid JSON: writes are not atomic')
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL, 'the run ended before the kill'
    assert len(json.loads(hist.read_text())['val_map']) >= 2
    for f in ck.glob('*.pt'):
        load_checkpoint(f)  # never a half-written checkpoint
    r = _run_cli(args + ['--checkpoint_dir', str(ck), '--resume', str(ck / 'checkpoint_latest.pt')])
    out, _ = r.communicate(timeout=300)
    assert r.returncode == 0, out.decode()
    a = json.loads((tmp_path / 'ref' / 'training_history.json').read_text())
    b = json.loads(hist.read_text())
    assert strip(a) == strip(b)


def test_truncated_checkpoint_stops_and_keeps_the_run(world, tmp_path):
    "An unreadable --resume checkpoint without a previous generation stops the run (issue 14: no fresh start)."
    train(base(world, tmp_path / 'a', num_epochs=1), progress=False)
    bad = tmp_path / 'a' / 'checkpoint_latest.pt'
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 3])

    def files(d):
        return {p.name: p.read_bytes() for p in d.iterdir() if p.is_file() and p.name != '.lock'}

    before = files(tmp_path / 'a')
    for ck in (tmp_path / 'a', tmp_path / 'b'):  # in its own folder, or into a new one
        with pytest.raises(CheckpointError, match=r'checkpoint_latest\.pt: not a readable.*no previous generation'):
            train(base(world, ck, num_epochs=2, resume=str(bad)), progress=False)
    assert files(tmp_path / 'a') == before
    assert not (tmp_path / 'b' / 'training_history.json').exists()


def test_resume_of_an_older_run_keeps_its_epochs(world, tmp_path):
    "A checkpoint from before an epoch meant one pass over the samples with records resumes with its own steps."
    cfg = base(world, tmp_path / 'a', num_epochs=3, save_every=1)
    fit_and_stop(cfg, after=1)
    latest = tmp_path / 'a' / 'checkpoint_latest.pt'
    ck = load_checkpoint(latest)
    sched = ck['scheduler_state_dict']
    assert sched['epoch_definition'] == 'one pass over the training samples with records'
    old_steps = sched['steps_per_epoch'] * 3  # as if every sample, records or not, made the epoch
    del sched['epoch_definition']
    sched['steps_per_epoch'] = old_steps
    torch.save(ck, latest)
    said = []
    h = logging.Handler()
    h.emit = lambda r: said.append(r.getMessage())
    logging.getLogger('geosdm').addHandler(h)
    try:
        res = train(base(world, tmp_path / 'a', num_epochs=3, save_every=1, resume=str(latest)), progress=False)
    finally:
        logging.getLogger('geosdm').removeHandler(h)
    out = '\n'.join(said)
    assert res.epoch == 3 and res.steps_per_epoch == old_steps and res.step == old_steps // 3 + 2 * old_steps
    assert f'keeps its {old_steps:,} steps per epoch' in out


def test_truncated_checkpoint_falls_back_to_previous(world, tmp_path, caplog):
    full = train(base(world, tmp_path / 'full', num_epochs=3), progress=False).history
    cfg = base(world, tmp_path / 'a', num_epochs=3, save_every=1)
    fit_and_stop(cfg, after=2)
    latest = tmp_path / 'a' / 'checkpoint_latest.pt'
    assert load_checkpoint(latest.with_name('checkpoint_latest.prev.pt'))['epoch'] == 1
    latest.write_bytes(latest.read_bytes()[:500])
    res = train(base(world, tmp_path / 'a', num_epochs=3, resume=str(latest)), progress=False)
    assert strip(res.history) == strip(full)  # epochs 2 and 3 replayed exactly
    assert (
        load_checkpoint(latest)['epoch'] == 3
        and load_checkpoint(latest.with_name('checkpoint_latest.prev.pt'))['epoch'] == 1
    )


def test_resume_refuses_other_data(world, tmp_path):
    train(base(world, tmp_path / 'a', num_epochs=1), progress=False)
    with pytest.raises(ConfigError, match='vocabulary'):
        train(
            base(
                world,
                tmp_path / 'b',
                num_epochs=2,
                min_obs_per_species=40,
                resume=str(tmp_path / 'a' / 'checkpoint_latest.pt'),
            ),
            progress=False,
        )
    with pytest.raises(ConfigError, match='split'):
        train(
            base(
                world, tmp_path / 'c', num_epochs=2, val_size=0.3, resume=str(tmp_path / 'a' / 'checkpoint_latest.pt')
            ),
            progress=False,
        )


@pytest.mark.parametrize(
    'flags,msg',
    [
        (['--val_size', '0'], '--val_size'),
        (['--holdout_regions', 'atlantis'], 'atlantis'),
        (['--data_path', '/nonexistent/x.parquet'], 'no such file'),
        (['--resume', '/nonexistent/ck.pt'], 'no such checkpoint'),
        (['--lr_min', '1', '--lr', '0.1'], '--lr_min'),
        (['--holdout_box', '10', '0', '5', '1'], '--holdout_box'),
        (['--batch_size', '0'], '--batch_size'),
    ],
)
def test_bad_flags_exit_clearly(flags, msg, capsys, tmp_path):
    assert exit_code(main, flags + ['--checkpoint_dir', str(tmp_path)]) == 2
    assert msg in capsys.readouterr().err


def test_bad_data_file_exits_clearly(tmp_path, capsys):
    f = tmp_path / 'not.parquet'
    f.write_text('hello')
    assert exit_code(main, ['--data_path', str(f), '--checkpoint_dir', str(tmp_path / 'ck')]) == 2
    assert 'not.parquet' in capsys.readouterr().err


def test_every_flag_is_a_config_field():
    p = build_parser()
    assert vars(p.parse_args([])) == asdict(TrainConfig())
    dests = {a.dest for a in p._actions if a.dest != 'help'}
    seed_flags = {
        'data_path',
        'taxonomy',
        'model_scale',
        'coord_harmonics',
        'week_harmonics',
        'habitat_head',
        'habitat_weight',
        'batch_size',
        'num_epochs',
        'lr',
        'weight_decay',
        'species_weight',
        'env_weight',
        'species_loss',
        'asl_gamma_pos',
        'asl_gamma_neg',
        'asl_clip',
        'focal_alpha',
        'focal_gamma',
        'pos_lambda',
        'neg_samples',
        'label_smoothing',
        'max_obs_per_species',
        'min_obs_per_species',
        'ocean_sample_rate',
        'no_yearly',
        'no_cache',
        'jitter',
        'label_freq_weight',
        'label_freq_weight_min',
        'label_freq_weight_pct_lo',
        'label_freq_weight_pct_hi',
        'propagate_labels',
        'propagate_k',
        'propagate_max_radius',
        'propagate_max_spread',
        'propagate_min_obs',
        'propagate_env_dist_max',
        'propagate_range_cap',
        'lr_schedule',
        'lr_min',
        'lr_warmup',
        'patience',
        'val_size',
        'sample_fraction',
        'holdout_regions',
        'checkpoint_dir',
        'resume',
        'save_every',
        'device',
    }
    assert seed_flags <= dests
    from geosdm.runconfig import REMOVED_FLAGS

    assert 'num_workers' in REMOVED_FLAGS  # that script's flag, answered with a reason: geosdm has no DataLoader
    d = TrainConfig()
    assert (
        d.model_scale,
        d.batch_size,
        d.num_epochs,
        d.lr,
        d.weight_decay,
        d.env_weight,
        d.species_loss,
        d.label_smoothing,
        d.min_obs_per_species,
        d.patience,
        d.val_size,
        d.save_every,
        d.lr_warmup,
        d.lr_min,
        d.neg_samples,
        d.pos_lambda,
    ) == (0.75, 'auto', 100, 'auto', 1e-3, 0.1, 'bce', 0.05, 50, 20, 0.1, 5, 3, 1e-6, 1024, 4.0)


def test_flags_reach_the_code(world, tmp_path):
    cfg = base(
        world,
        tmp_path,
        species_loss='focal',
        focal_alpha=0.3,
        focal_gamma=1.5,
        model_scale=0.5,
        coord_harmonics=4,
        week_harmonics=3,
        habitat_head=True,
        lr=0.02,
        weight_decay=0.05,
        batch_size=100,
        holdout_regions=['california'],
        label_smoothing=0.0,
    )
    tr = Trainer(cfg, prepare(cfg, progress=False))
    mc = tr.model.config
    assert (mc['model_scale'], mc['coord_harmonics'], mc['week_harmonics'], mc['habitat_head']) == (0.5, 4, 3, True)
    assert tr.loss_fn.kind.name == 'focal' and tr.loss_fn.focal_alpha == 0.3 and tr.loss_fn.focal_gamma == 1.5
    assert tr.opt.param_groups[0]['weight_decay'] == 0.05
    assert tr.steps_per_epoch == int((tr.prep.train.n_pos() > 0).sum()) // 100  # one pass over those with records
    assert tr.prep.holdout is not None and len(tr.prep.holdout) > 0
    row = tr.train_epoch(progress=False)
    assert math.isfinite(row['train_habitat_loss'])


def test_jitter_flag_moves_training_coordinates_only(world, tmp_path):
    cfg = base(world, tmp_path, jitter=True)
    prep = prepare(cfg, progress=False)
    tr = Trainer(cfg, prep)
    seen = []
    orig = tr.train_data.inputs

    def spy(idx, **kw):
        out = orig(idx, **kw)
        seen.append((kw.get('jitter_std', 0.0), out[0], idx))
        return out

    tr.train_data.inputs = spy
    tr.train_epoch(progress=False)
    std, lat, idx = seen[0]
    assert std == pytest.approx(prep.jitter_std) and std > 0
    assert not torch.allclose(lat, torch.as_tensor(prep.train.lat)[idx.cpu()])


def test_empty_samples_env_only(world, tmp_path):
    "env_only: species batches hold only samples with observations; empty samples feed only the env head."
    cfg = base(world, tmp_path, empty_samples='env_only', batch_size=64)
    tr = Trainer(cfg, prepare(cfg, progress=False))
    npos = tr.prep.train.n_pos()
    n_obs = int((npos > 0).sum())
    assert 0 < n_obs < len(npos)
    assert tr.split_empty and tr.steps_per_epoch == n_obs // 64  # an epoch: one pass over the samples with records
    seen, env_rows = [], []
    orig_batch, orig_env = tr.train_data.inputs, tr.model.env_head.forward

    def spy(idx, **kw):
        seen.append(idx.clone())
        return orig_batch(idx, **kw)

    def env_spy(h):
        env_rows.append(len(h))
        return orig_env(h)

    tr.train_data.inputs = spy
    tr.model.env_head.forward = env_spy
    row = tr.train_epoch(progress=False)
    rows = torch.cat(seen).numpy()
    assert len(rows) == tr.steps_per_epoch * 64
    assert (npos[rows] > 0).all()  # no empty sample in a species batch
    counts = np.bincount(rows, minlength=len(npos))[npos > 0]
    assert counts.max() == 1 and (counts == 1).sum() == len(rows)  # each sample with records at most once
    assert env_rows[0] == 64 + 32  # species rows and --env_share 0.5 of env-only rows: one pass
    assert math.isfinite(row['train_env_loss'])
    ref = Trainer(base(world, tmp_path, batch_size=64, empty_samples='negative'), tr.prep)
    assert ref.steps_per_epoch == len(npos) // 64 and not ref.split_empty  # negative: one pass over every sample


def test_help_lists_every_flag(capsys):
    assert exit_code(main, ['--help']) == 0
    out = capsys.readouterr().out
    for a in build_parser()._actions:
        if a.dest != 'help':
            assert f'--{a.dest}' in out or any(o in out for o in a.option_strings), a.dest
    words = ' '.join(out.split())  # argparse wraps the help at the terminal's width
    assert 'water > 90%)' in words and 'default: env_only' in words
