"""Autotune: a small study end to end, pruning, resume, two processes sharing one journal, workers sharing a
PostgreSQL study (exact total, a killed worker's trial failed and replaced, no password anywhere), CLI wiring."""

import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import replace
from pathlib import Path
from unittest import mock

import optuna
import pytest
from conftest import exit_code
from pg_support import postgres  # noqa: F401  (a fixture)

from geosdm import autotune
from geosdm.autotune import HEARTBEAT_ENV, SEARCH_SPACE, Param, _run_trials, open_storage, resolve_params, run_autotune
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
        val_every=1,  # every epoch reports to the pruner
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


def test_failed_trials_are_replaced_until_a_round_fails_entirely():
    st = optuna.create_study(direction='maximize')
    calls = []

    def first_fails(trial):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError('CUDA out of memory')
        return trial.suggest_float('x', 0, 1)

    assert not _run_trials(st, first_fails, 2, lambda s, t: None, None)
    assert [t.state for t in st.trials] == [S.FAIL, S.COMPLETE, S.COMPLETE]  # 2 finished: the failure replaced
    st = optuna.create_study(direction='maximize')

    def always_fails(trial):
        raise RuntimeError('CUDA out of memory')

    assert not _run_trials(st, always_fails, 3, lambda s, t: None, None)
    assert [t.state for t in st.trials] == [S.FAIL] * 3  # every trial of the round failed: it stops


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # st.ask() below, outside optimize, on purpose
def test_database_worker_waits_for_a_running_trial_then_replaces_it(tmp_path, monkeypatch):
    "A trial that another machine's worker runs counts until its heartbeat is too old; then it fails, and is replaced."
    monkeypatch.setenv(HEARTBEAT_ENV, '1,4')
    storage = open_storage(f'sqlite:///{tmp_path / "study.db"}')
    st = optuna.create_study(storage=storage, direction='maximize')
    dead = st.ask()  # a trial of a worker on another machine, that wrote one heartbeat and died
    dead.set_user_attr('worker', 'elsewhere:1')
    storage.record_heartbeat(dead._trial_id)
    sleeps, sleep = [], time.sleep
    monkeypatch.setattr(autotune.time, 'sleep', lambda s: (sleeps.append(s), sleep(s)))
    assert not _run_trials(st, lambda t: t.suggest_float('x', 0, 1), 1, lambda s, t: None, storage)
    assert sleeps  # it waited while the trial looked alive (instead of leaving the study one short)
    assert [t.state for t in st.trials] == [S.FAIL, S.COMPLETE]


def test_sqlite_storage_resumes(world, tmp_path):
    url = f'sqlite:///{tmp_path / "study.db"}'
    cfg = base(world, tmp_path / 'ck', autotune_trials=1, autotune_epochs=1, autotune_storage=url)
    run_autotune(cfg, progress=False)
    run_autotune(replace(cfg, autotune_trials=2), progress=False)
    st = optuna.load_study(study_name=cfg.autotune_study, storage=url)
    assert [(t.number, t.state) for t in st.trials] == [(0, S.COMPLETE), (1, S.COMPLETE)]


WORKER = textwrap.dedent("""
    import os, socket, sys, time
    from pathlib import Path
    if os.environ.get('TEST_HOSTNAME'):  # a worker that says it runs on another machine: its pid tells nothing
        socket.gethostname = lambda: os.environ['TEST_HOSTNAME']
    from geosdm.cli import train_main
    me, others = Path(sys.argv[1]), [Path(p) for p in sys.argv[2].split(',')]
    me.touch()
    t0 = time.time()
    while not all(p.exists() for p in others) and time.time() - t0 < 60: time.sleep(0.05)   # start together
    sys.exit(train_main(sys.argv[3:]))
""")


def worker_args(world, storage, trials, epochs=2, study='shared'):
    "The `geosdm_train --autotune` command line every worker runs (the checkpoint folder is added per worker)."
    return (
        f'--data_path {world} --min_obs_per_species 5 --batch_size 256 --model_scale 0.2 --lr_warmup 0.5 '
        f'--device cpu --autotune lr env_weight --autotune_trials {trials} --autotune_epochs {epochs} '
        f'--autotune_study {study}'
    ).split() + ['--autotune_storage', storage]


def start_workers(tmp_path, args, hosts=(None, None), env=None):
    "One `geosdm_train` process per entry of `hosts` (None: this machine), started together; stdout+stderr piped."
    n, procs = len(hosts), []
    for i, host in enumerate(hosts):
        e = {**os.environ, 'OMP_NUM_THREADS': '1', **(env or {}), **({'TEST_HOSTNAME': host} if host else {})}
        others = ','.join(str(tmp_path / f'ready{j}') for j in range(n) if j != i)
        cmd = [sys.executable, '-c', WORKER, str(tmp_path / f'ready{i}'), others, *args]
        cmd += ['--checkpoint_dir', str(tmp_path / f'ck{i}')]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=e))
    return procs


def finish(procs, timeout=600):
    "Each process's output, once all have exited (killed on a hang, so the test fails instead of waiting)."
    try:
        return [p.communicate(timeout=timeout)[0] for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        raise


def check_shared_study(st, procs, total):
    "Exactly `total` finished trials, numbered without gaps, by every worker, with no repeated proposal."
    fin = [t for t in st.trials if t.state in (S.COMPLETE, S.PRUNED)]
    assert len(fin) == total  # exactly the study's total
    assert sorted(t.number for t in st.trials) == list(range(len(st.trials)))
    workers = {t.user_attrs['worker'] for t in fin}
    assert workers == {f'{os.uname().nodename}:{p.pid}' for p in procs}  # both did trials
    params = [tuple(sorted(t.params.items())) for t in fin]
    assert len(set(params)) == len(params)  # no duplicated proposals
    return fin


def test_two_processes_share_one_journal(world, tmp_path):
    journal = tmp_path / 'shared.journal'
    procs = start_workers(tmp_path, worker_args(world, str(journal), trials=6))
    outs = finish(procs)
    assert [p.returncode for p in procs] == [0, 0], outs
    assert all('geosdm_train --data_path' in o for o in outs), outs
    st = optuna.load_study(study_name='shared', storage=open_storage(str(journal)))
    fin = check_shared_study(st, procs, 6)
    rest = [t for t in st.trials if t not in fin]  # at most one surplus claim per worker, that ran nothing
    assert len(rest) <= 2 and all(t.state == S.FAIL and t.user_attrs.get('surplus') and not t.params for t in rest)
    for i in range(2):  # a worker that stopped while the other's last trial ran saw it running
        res = json.loads((tmp_path / f'ck{i}' / 'autotune' / 'autotune_results.json').read_text())
        assert res['study_name'] == 'shared' and res['n_finished'] + res['n_running'] == 6 and res['n_failed'] == 0


def no_password_anywhere(postgres, db, outs, root):
    "The password is in no output, no file under `root`, and nothing the study's database holds."
    assert not [o for o in outs if postgres.password in o]
    assert not [p for p in Path(root).rglob('*') if p.is_file() and postgres.password.encode() in p.read_bytes()]
    dump = postgres.dump(db)
    assert 'epoch_history' in dump and postgres.password not in dump


def test_two_workers_share_one_postgres_study(world, tmp_path, postgres):
    url = postgres.create_db('two_workers')  # holds the password: it must show up nowhere
    procs = start_workers(tmp_path, worker_args(world, url, trials=6))  # both open the empty database at once
    outs = finish(procs)
    assert [p.returncode for p in procs] == [0, 0], outs
    assert all('geosdm_train --data_path' in o and postgres.url('two_workers').split('@')[1] in o for o in outs)
    st = optuna.load_study(study_name='shared', storage=url)
    fin = check_shared_study(st, procs, 6)
    rest = [t for t in st.trials if t not in fin]
    assert len(rest) <= 2 and all(t.state == S.FAIL and t.user_attrs.get('surplus') and not t.params for t in rest)
    for i in range(2):  # with a database each worker waits for the other's trials: both return with the study whole
        res = json.loads((tmp_path / f'ck{i}' / 'autotune' / 'autotune_results.json').read_text())
        assert (res['n_finished'], res['n_running'], res['n_failed']) == (6, 0, 0)
        assert res['storage'] == url.replace(postgres.password, '***')
    no_password_anywhere(postgres, 'two_workers', outs, tmp_path)


def running_trial_of(st, host_pid):
    "The trial `host_pid` is training (one epoch reported, so its heartbeat has been written), or None."
    for t in st.get_trials(deepcopy=False, states=(S.RUNNING,)):
        if t.user_attrs.get('worker') == host_pid and t.user_attrs.get('epoch_history'):
            return t.number
    return None


def kill_mid_trial(proc, storage, host_pid) -> int:
    "SIGKILL `proc` while it trains a trial (stopped first, so that the trial cannot end in between); its number."
    while proc.poll() is None:
        try:
            st = optuna.load_study(study_name='shared', storage=storage)
        except KeyError:  # not created yet
            st = None
        if st is not None and running_trial_of(st, host_pid) is not None:
            os.kill(proc.pid, signal.SIGSTOP)
            number = running_trial_of(st, host_pid)  # still running now that the process is frozen?
            if number is not None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                return number
            os.kill(proc.pid, signal.SIGCONT)
        time.sleep(0.1)
    raise AssertionError(f'the worker exited before it could be killed mid-trial: {proc.communicate()[0]}')


def test_killed_worker_trial_fails_and_is_replaced(world, tmp_path, postgres):
    """A worker on "another machine" is killed mid-trial: the heartbeat fails its trial, the other worker runs a
    replacement, and the study ends with exactly the requested total plus the one failed trial."""
    url = postgres.create_db('killed_worker')
    args = worker_args(world, url, trials=3, epochs=3)
    procs = start_workers(tmp_path, args, hosts=(None, 'elsewhere'), env={HEARTBEAT_ENV: '1,3'})
    try:
        victim = kill_mid_trial(procs[1], open_storage(url), f'elsewhere:{procs[1].pid}')
        outs = finish(procs)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert procs[0].returncode == 0 and procs[1].returncode == -signal.SIGKILL, outs
    st = optuna.load_study(study_name='shared', storage=url)
    state = {t.number: t.state for t in st.trials}
    assert state[victim] == S.FAIL  # marked failed, not lost: the other worker's heartbeat check did it
    assert sum(s in (S.COMPLETE, S.PRUNED) for s in state.values()) == 3  # the failed one did not count
    assert S.RUNNING not in state.values()
    assert [t.number for t in st.trials if t.state == S.FAIL and not t.user_attrs.get('surplus')] == [victim]
    res = json.loads((tmp_path / 'ck0' / 'autotune' / 'autotune_results.json').read_text())
    assert (res['n_finished'], res['n_failed'], res['n_running']) == (3, 1, 0)
    assert res['all_trials'][victim]['state'] == 'FAIL'
    no_password_anywhere(postgres, 'killed_worker', outs, tmp_path)


def test_postgres_storage_opens(postgres):
    "Workers opening an empty database together all get it; a password from PGPASSWORD works; errors are one line."
    url = postgres.create_db('opens')
    got, barrier = [], threading.Barrier(4)

    def open_together():
        barrier.wait()
        got.append(open_storage(url))

    threads = [threading.Thread(target=open_together) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(got) == 4 and all(s.get_heartbeat_interval() == 60 and s.grace_period == 180 for s in got)
    no_pw = postgres.url('opens', password=False)
    with mock.patch.dict(os.environ, {'PGPASSWORD': postgres.password}):
        optuna.create_study(storage=open_storage(no_pw), study_name='via_pgpassword')
    wrong = url.replace(postgres.password, 'not-the-password')
    with pytest.raises(ConfigError) as e:
        open_storage(wrong)
    assert 'password authentication failed' in str(e.value) and 'not-the-password' not in str(e.value)
    assert '\n' not in str(e.value) and e.value.__cause__ is None and e.value.__suppress_context__
    with mock.patch.dict(os.environ, {HEARTBEAT_ENV: '60'}), pytest.raises(ConfigError, match=HEARTBEAT_ENV):
        open_storage(url)


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
