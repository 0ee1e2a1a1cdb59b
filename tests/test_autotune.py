"Autotune: a small study end to end, pruning, resume, two processes sharing one journal, CLI wiring."

import json
import os
import shlex
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
from conftest import exit_code

from geosdm.autotune import SEARCH_SPACE, Param, open_storage, resolve_params, run_autotune
from geosdm.cli import train_main as main
from geosdm.config import TrainConfig, build_parser
from geosdm.core import ConfigError
from geosdm.simulate import simulate_world
from geosdm.trainer import Trainer

SMALL = {**SEARCH_SPACE, 'model_scale': Param('float', 0.1, 0.3, log=True)}  # keep every trial quick
S = optuna.trial.TrialState


pytestmark = pytest.mark.usefixtures('one_thread')  # see conftest


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp('atworld')
    simulate_world(n_species=40, res=2, bbox=(-130, 20, -60, 55), seed=1).write(d)
    return d / 'combined.parquet'


def base(world, ck, **kw):
    d = dict(
        data_path=str(world),
        checkpoint_dir=str(ck),
        min_obs_per_species=5,
        batch_size=256,
        lr_warmup=0.5,
        model_scale=0.2,
        device='cpu',
        seed=3,
        autotune=['lr', 'env_weight'],
        autotune_trials=3,
        autotune_epochs=2,
    )
    d.update(kw)
    return TrainConfig(**d)


def results(cfg):
    return json.loads((Path(cfg.checkpoint_dir) / 'autotune' / 'autotune_results.json').read_text())


def test_small_study_cold_then_warm_cache(world, tmp_path):
    cfg = base(world, tmp_path / 'ck', autotune=[])  # tune everything (model_scale narrowed)
    assert not (tmp_path / 'ck' / '.data_cache').exists()  # cold cache: the reference crashes here
    r = run_autotune(cfg, space=SMALL, progress=False)
    res = results(cfg)
    assert res == json.loads(json.dumps(r.results))
    names = resolve_params([])
    assert res['tuned_params'] == names and len(names) == 17
    assert [t['number'] for t in res['all_trials']] == [0, 1, 2]
    assert all(t['state'] == 'COMPLETE' and len(t['epoch_history']) == 2 for t in res['all_trials'])
    assert res['n_finished'] == 3 and res['epochs_per_trial'] == 2
    vals = [t['value'] for t in res['all_trials']]
    best = max(range(3), key=vals.__getitem__)
    assert res['best_geoscore'] == vals[best] and res['best_trial'] == best
    assert res['best_params'] == res['all_trials'][best]['params'] and set(res['best_params']) == set(names)
    for t in res['all_trials']:  # the objective is the best epoch's GeoScore
        assert t['value'] == max(h['val_geoscore'] for h in t['epoch_history'])
        assert 0 < t['value'] < 1
    # the command parses, carries the user's flags and the active best parameters
    words = shlex.split(res['command'])
    assert words[0] == 'geosdm_train'
    a = build_parser().parse_args(words[1:])
    assert a.data_path == str(world) and a.min_obs_per_species == 5 and a.batch_size == 256
    assert a.autotune is None and a.resume is None
    inactive = set(res['best_inactive_params'])
    for k, v in res['best_params'].items():
        if k in inactive:
            assert f'--{k}' not in words
        elif isinstance(v, float):
            assert getattr(a, k) == pytest.approx(v, rel=1e-5)
        else:
            assert getattr(a, k) == v
    # the loss named by the best trial decides what is inactive
    loss = res['best_params']['species_loss']
    assert ('focal_gamma' in inactive) == (loss != 'focal') and ('pos_lambda' in inactive) == (loss != 'an')
    # warm cache, same seed, in memory: the same study again
    assert list((tmp_path / 'ck' / '.data_cache').glob('prepared_*.npz'))
    r2 = run_autotune(
        replace(cfg, checkpoint_dir=str(tmp_path / 'ck2'), data_cache_dir=str(tmp_path / 'ck' / '.data_cache')),
        space=SMALL,
        progress=False,
    )
    assert [t.params for t in r2.study.trials] == [t['params'] for t in res['all_trials']]
    assert [t.value for t in r2.study.trials] == pytest.approx(vals, abs=1e-6)


def test_bad_trial_is_pruned(world, tmp_path):
    cfg = base(
        world,
        tmp_path / 'ck',
        autotune=['lr'],
        autotune_trials=3,
        autotune_epochs=5,
        autotune_storage=str(tmp_path / 'j.log'),
    )
    st = optuna.create_study(
        storage=open_storage(cfg.autotune_storage), study_name=cfg.autotune_study, direction='maximize'
    )
    for lr in (3e-3, 5e-3, 1e-6):  # two good trials, then a learning rate far too small to learn anything
        st.enqueue_trial({'lr': lr})
    run_autotune(cfg, space={'lr': Param('float', 1e-6, 1e-2, log=True)}, n_startup_trials=2, progress=False)
    t = results(cfg)['all_trials']
    assert [x['state'] for x in t] == ['COMPLETE', 'COMPLETE', 'PRUNED']
    assert len(t[2]['epoch_history']) == 4  # the seed's 3 warm-up epochs, then pruned before epoch 5
    assert 'median' in t[2]['pruned_reason']
    assert max(h['val_geoscore'] for h in t[2]['epoch_history']) < min(x['value'] for x in t[:2])


def test_nonfinite_loss_prunes(world, tmp_path, monkeypatch):
    orig = Trainer.train_epoch

    def nan_epoch(self, progress=True):
        row = orig(self, progress)
        row['train_loss'] = float('nan')
        return row

    monkeypatch.setattr(Trainer, 'train_epoch', nan_epoch)
    cfg = base(world, tmp_path / 'ck', autotune_trials=1, autotune_epochs=2)
    r = run_autotune(cfg, progress=False)
    t = r.results['all_trials'][0]
    assert t['state'] == 'PRUNED' and 'non-finite' in t['pruned_reason'] and t['epoch_history'] == []
    assert r.results['best_params'] is None and r.command is None


def test_interrupt_then_resume_continues_numbering(world, tmp_path, monkeypatch):
    cfg = base(world, tmp_path / 'ck', autotune_trials=3, autotune_epochs=1, autotune_storage=str(tmp_path / 'j.log'))
    orig, calls = Trainer.train_epoch, []

    def ctrl_c_in_second_trial(self, progress=True):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return orig(self, progress)

    monkeypatch.setattr(Trainer, 'train_epoch', ctrl_c_in_second_trial)
    r = run_autotune(cfg, progress=False)
    assert r.interrupted
    assert [(t['number'], t['state']) for t in results(cfg)['all_trials']] == [(0, 'COMPLETE'), (1, 'FAIL')]
    monkeypatch.setattr(Trainer, 'train_epoch', orig)
    r = run_autotune(cfg, progress=False)  # resume: the missing two trials, numbered on
    assert not r.interrupted
    assert [(t['number'], t['state']) for t in results(cfg)['all_trials']] == [
        (0, 'COMPLETE'),
        (1, 'FAIL'),
        (2, 'COMPLETE'),
        (3, 'COMPLETE'),
    ]
    assert results(cfg)['n_finished'] == 3
    run_autotune(cfg, progress=False)  # already complete: nothing runs
    assert len(results(cfg)['all_trials']) == 4
    with pytest.raises(ConfigError, match='different settings.*epochs_per_trial'):
        run_autotune(replace(cfg, autotune_epochs=2), progress=False)
    with pytest.raises(ConfigError, match='--batch_size'):
        run_autotune(replace(cfg, batch_size=128), progress=False)


def test_sqlite_storage_resumes(world, tmp_path):
    url = f'sqlite:///{tmp_path / "study.db"}'
    cfg = base(world, tmp_path / 'ck', autotune_trials=1, autotune_epochs=1, autotune_storage=url)
    run_autotune(cfg, progress=False)
    run_autotune(replace(cfg, autotune_trials=2), progress=False)
    st = optuna.load_study(study_name=cfg.autotune_study, storage=url)
    assert [(t.number, t.state) for t in st.trials] == [(0, S.COMPLETE), (1, S.COMPLETE)]


WORKER = textwrap.dedent('''
    import sys, time
    from pathlib import Path
    from geosdm.cli import train_main
    me, other = Path(sys.argv[1]), Path(sys.argv[2])
    me.touch()
    t0 = time.time()
    while not other.exists() and time.time() - t0 < 60: time.sleep(0.05)   # start together
    sys.exit(train_main(sys.argv[3:]))
''')


def test_two_processes_share_one_journal(world, tmp_path):
    journal = tmp_path / 'shared.journal'
    args = [
        '--data_path',
        str(world),
        '--min_obs_per_species',
        '5',
        '--batch_size',
        '256',
        '--model_scale',
        '0.2',
        '--lr_warmup',
        '0.5',
        '--device',
        'cpu',
        '--autotune',
        'lr',
        'env_weight',
        '--autotune_trials',
        '6',
        '--autotune_epochs',
        '2',
        '--autotune_storage',
        str(journal),
        '--autotune_study',
        'shared',
    ]
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                '-c',
                WORKER,
                str(tmp_path / f'ready{i}'),
                str(tmp_path / f'ready{1 - i}'),
                *args,
                '--checkpoint_dir',
                str(tmp_path / f'ck{i}'),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert all('geosdm_train --data_path' in o for o in outs), outs
    st = optuna.load_study(study_name='shared', storage=open_storage(str(journal)))
    fin = [t for t in st.trials if t.state in (S.COMPLETE, S.PRUNED)]
    assert len(fin) == 6  # exactly the study's total (issue 14)
    rest = [t for t in st.trials if t not in fin]  # at most one surplus claim per worker, that ran nothing
    assert len(rest) <= 2 and all(t.state == S.FAIL and t.user_attrs.get('surplus') and not t.params for t in rest)
    assert sorted(t.number for t in st.trials) == list(range(len(st.trials)))
    workers = {t.user_attrs['worker'] for t in fin}
    assert workers == {f'{os.uname().nodename}:{p.pid}' for p in procs}  # both did trials
    params = [tuple(sorted(t.params.items())) for t in fin]
    assert len(set(params)) == len(params)  # no duplicated proposals
    for i in range(2):  # a worker that stopped while the other's last trial ran saw it running
        res = json.loads((tmp_path / f'ck{i}' / 'autotune' / 'autotune_results.json').read_text())
        assert res['study_name'] == 'shared' and res['n_finished'] + res['n_running'] == 6 and res['n_failed'] == 0


def test_cli_errors(world, tmp_path, capsys):
    assert (
        exit_code(main, ['--data_path', str(world), '--checkpoint_dir', str(tmp_path), '--autotune', 'lr', 'dropout'])
        == 2
    )
    err = capsys.readouterr().err
    assert 'dropout' in err and 'pos_lambda' in err and 'week_harmonics' in err
    with pytest.raises(ConfigError, match='autotune_trials'):
        run_autotune(base(world, tmp_path, autotune_trials=0))
    with pytest.raises(ConfigError, match='SQLAlchemy|cannot open'):
        open_storage('nosuchdialect://x/y')
