"""Faults a careful user meets (issue 14): damaged checkpoints, caches and histories, runs killed at random points
(also inside checkpoint writes), two runs on one folder, other data or another schedule on resume, env columns
without information, leftovers of killed writes, and console scripts that answer bad input with one line.
Two autotune processes sharing one journal: tests/test_autotune.py::test_two_processes_share_one_journal."""

import contextlib
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import polars as pl
import pytest
import torch
from conftest import exit_code, strip

from geosdm.checkpoint import load_checkpoint
from geosdm.cli import predict_main, train_main
from geosdm.config import TrainConfig
from geosdm.core import WEEK_COLS, ConfigError, stale_temp_files
from geosdm.data import prepare_data
from geosdm.simulate import simulate_world
from geosdm.trainer import Trainer, prepare, train

ARGS = dict(
    model_scale=0.1,
    num_epochs=3,
    lr_warmup=0.5,
    min_obs_per_species=5,
    batch_size=128,
    device='cpu',
    seed=1,
    save_every=1,
    val_every=1,
    lr=1e-3,
    empty_samples='negative',  # an epoch over every sample at 1e-3: each of the 3 epochs improves GeoScore
)
README = Path(__file__).resolve().parents[1] / 'README.md'


pytestmark = pytest.mark.usefixtures('one_thread')  # see conftest


@pytest.fixture(scope='module')
def worlds(tmp_path_factory):
    "A tiny world (a) and the same cells with every week's list moved to the next week (b); files of one size."
    d = tmp_path_factory.mktemp('faults')
    simulate_world(n_species=30, res=2, bbox=(-125, 30, -100, 50), seed=3).write(d / 'sim')
    df = pl.read_parquet(d / 'sim' / 'combined.parquet')
    shifted = df.with_columns([df[WEEK_COLS[i - 1]].alias(c) for i, c in enumerate(WEEK_COLS)])  # week 1 ← 48, …
    out = {}
    for name, frame in (('a', df), ('b', shifted)):
        (d / name).mkdir()
        frame.write_parquet(d / name / 'combined.parquet')
        shutil.copy(d / 'sim' / 'combined_taxonomy.csv', d / name / 'combined_taxonomy.csv')
        out[name] = d / name / 'combined.parquet'
    return out


@pytest.fixture(scope='module')
def run_a(worlds, tmp_path_factory):
    "A finished 3-epoch run on world a (saved every epoch): its folder, kept pristine; tests copy it."
    ck = tmp_path_factory.mktemp('run_a') / 'ck'
    tr = train(cfg(worlds['a'], ck), progress=False)
    assert tr.best_epoch == 3  # each epoch improves: replaying epoch 3 rewrites checkpoint_best.pt
    return ck


@pytest.fixture(scope='module')
def epoch2(worlds, tmp_path_factory) -> Path:
    "The same run's checkpoint after epoch 2, from a run stopped there."
    c = cfg(worlds['a'], tmp_path_factory.mktemp('part') / 'ck')
    tr = Trainer(c, prepare(c, progress=False))

    class Stop(Exception):
        pass

    def stop_after_two(t, row):
        if t.epoch == 2:
            raise Stop

    with pytest.raises(Stop):
        tr.fit(progress=False, on_epoch=stop_after_two)
    return Path(c.checkpoint_dir) / 'checkpoint_latest.pt'


def cfg(data, ck, **kw) -> TrainConfig:
    return TrainConfig(**{**ARGS, 'data_path': str(data), 'checkpoint_dir': str(ck), **kw})


def argv(data, ck, *extra) -> list[str]:
    words = [w for k, v in ARGS.items() for w in (f'--{k}', str(v))]
    return words + ['--data_path', str(data), '--checkpoint_dir', str(ck), *map(str, extra)]


def files(d) -> dict:
    "Bytes of every file of a run folder (not the lock, not the cache)."
    return {p.name: p.read_bytes() for p in Path(d).iterdir() if p.is_file() and p.name != '.lock'}


def history(d) -> dict:
    return strip(json.loads((Path(d) / 'training_history.json').read_text()))


def same_weights(a, b) -> bool:
    ka, kb = load_checkpoint(a), load_checkpoint(b)
    return (ka['epoch'], ka['best_geoscore']) == (kb['epoch'], kb['best_geoscore']) and all(
        torch.equal(x, kb['model_state_dict'][k]) for k, x in ka['model_state_dict'].items()
    )


def copy_run(src, dst) -> Path:
    shutil.copytree(src, dst)
    return dst


def one_line(capsys, *words) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().split('\n')) == 1 and 'Traceback' not in err, err  # (a progress bar ends in \r)
    for w in words:
        assert w in err, (w, err)
    return err


# ---------------------------------------------------------------- killed runs

# Runs to kill are forked from a server process that has imported geosdm once (importing torch costs seconds;
# a dozen runs would spend most of their time there). Each run is a process of its own, killed with SIGKILL. It
# notes each checkpoint write in a file `mark` and may sleep inside write number `at`, after the temporary file
# is written and before it is renamed, so that a kill lands inside the write.
SERVER = textwrap.dedent('''
    import json, os, signal, sys, time, traceback
    import torch, torch._dynamo                            # (the optimiser imports torch._dynamo on first use)
    import geosdm.cli, geosdm.trainer
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)          # finished runs are reaped at once
    save, hook = torch.save, {}
    def slow_save(obj, f, *a, **k):
        save(obj, f, *a, **k)
        hook['n'] += 1
        with open(hook['mark'], 'a') as m: m.write(f"{hook['n']}\\n")
        if hook['n'] == hook['at']: time.sleep(hook['nap'])
    torch.save = slow_save
    for line in sys.stdin:
        job = json.loads(line)
        pid = os.fork()
        if pid:
            print(pid, flush=True); continue
        code = 1
        try:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            hook.update(n=0, mark=job['mark'], at=job['at'], nap=job['nap'])
            fd = os.open(job['out'], os.O_WRONLY | os.O_CREAT | os.O_TRUNC); os.dup2(fd, 1); os.dup2(fd, 2)
            code = geosdm.cli.train_main(job['args'])
        except SystemExit as e: code = e.code
        except BaseException: traceback.print_exc()
        finally:
            sys.stdout.flush(); sys.stderr.flush()
            with open(job['out'] + '.rc', 'w') as f: f.write(str(code))
            os._exit(code)
''')


@pytest.fixture(scope='module')
def server():
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'TQDM_DISABLE': '1'}
    p = subprocess.Popen(
        [sys.executable, '-c', SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    yield p
    p.stdin.close()
    p.wait(timeout=60)


class Run:
    "A `geosdm_train` run forked by the server: `poll` gives its exit status (-9 once killed), `out` its output."

    def __init__(self, server, args, mark, at=0, nap=0.0):
        self.mark, self.out = Path(mark), Path(f'{mark}.out')
        server.stdin.write(
            json.dumps(dict(args=list(map(str, args)), mark=str(mark), at=at, nap=nap, out=str(self.out))) + '\n'
        )
        server.stdin.flush()
        self.pid = int(server.stdout.readline())

    def poll(self):
        rc = Path(f'{self.out}.rc')
        if rc.exists() and rc.read_text():
            return int(rc.read_text())
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return -9
        return None

    def wait(self, timeout=300) -> int:
        t0 = time.time()
        while self.poll() is None and time.time() - t0 < timeout:
            time.sleep(0.01)
        return self.poll()

    def kill(self):
        os.kill(self.pid, signal.SIGKILL)
        while self.poll() is None:
            time.sleep(0.005)

    def writes(self) -> int:
        return len(self.mark.read_text().split()) if self.mark.exists() else 0


def resume_words(ck: Path) -> list:
    for name in ('checkpoint_latest.pt', 'checkpoint_best.pt'):
        if (ck / name).exists():
            return ['--resume', ck / name]
    return []


def assert_whole(ck: Path):
    for f in ck.glob('*.pt'):
        load_checkpoint(f)  # never a half-written checkpoint
    if (ck / 'training_history.json').exists():
        json.loads((ck / 'training_history.json').read_text())


def assert_same_run(ck: Path, ref: Path):
    assert history(ck) == history(ref)
    assert same_weights(ck / 'checkpoint_latest.pt', ref / 'checkpoint_latest.pt')
    assert same_weights(ck / 'checkpoint_best.pt', ref / 'checkpoint_best.pt')
    assert stale_temp_files(ck) == []


def test_seeded_kills_then_resume_is_exact(worlds, server, tmp_path):
    "Ten SIGKILLs at seeded points (inside checkpoint writes, or just after one); each resume ends bit-exact."
    ref = tmp_path / 'ref'
    r = Run(server, argv(worlds['a'], ref), tmp_path / 'ref.mark')
    assert r.wait() == 0, r.out.read_text()
    rng, kills, inside, done, ck = random.Random(14), 0, 0, 0, None
    for n in range(40):
        if kills == 10:
            break
        ck = ck or tmp_path / f'run{done}'
        at, in_write = rng.randint(1, 3), rng.random() < 0.5
        litter = stale_temp_files(ck)
        r = Run(server, argv(worlds['a'], ck, *resume_words(ck)), tmp_path / f'{n}.mark', at, 300 if in_write else 0)
        t0 = time.time()
        while r.writes() < at and r.poll() is None and time.time() - t0 < 120:
            time.sleep(0.005)
        assert not any(f.exists() for f in litter)  # removed when the run started
        if not in_write:
            time.sleep(rng.uniform(0, 0.3))
        if r.poll() is not None:  # the run ended before this kill: well
            assert r.wait() == 0, r.out.read_text()
            assert_same_run(ck, ref)
            done += 1
            ck = None
            continue
        r.kill()
        kills += 1
        if in_write:
            assert stale_temp_files(ck), 'the kill should have landed inside a checkpoint write'
            inside += 1
        assert_whole(ck)
    litter = stale_temp_files(ck)
    r = Run(server, argv(worlds['a'], ck, *resume_words(ck)), tmp_path / 'last.mark')
    assert r.wait() == 0, r.out.read_text()
    assert ('temporary file(s) of interrupted writes' in r.out.read_text()) == bool(litter)
    assert_same_run(ck, ref)
    assert inside >= 3 and done >= 1, (inside, done)


# ---------------------------------------------------------------- damaged files


def cut(path: Path):
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 3])


def test_damaged_latest_falls_back_to_previous(worlds, run_a, tmp_path):
    ck = copy_run(run_a, tmp_path / 'ck')
    cut(ck / 'checkpoint_latest.pt')
    tr = train(cfg(worlds['a'], ck, resume=str(ck / 'checkpoint_latest.pt')), progress=False)
    assert tr.epoch == 3 and history(ck) == history(run_a)  # epoch 3 replayed from the previous one
    for name in ('checkpoint_latest.pt', 'checkpoint_best.pt'):
        assert same_weights(ck / name, run_a / name)
    assert load_checkpoint(ck / 'checkpoint_latest.prev.pt')['epoch'] == 2  # the good generation is kept


@pytest.mark.parametrize('damage', ['latest and previous', 'latest, no previous'])
def test_nothing_readable_exits_2_and_changes_nothing(worlds, run_a, tmp_path, capsys, damage):
    ck = copy_run(run_a, tmp_path / 'ck')
    cut(ck / 'checkpoint_latest.pt')
    if damage == 'latest and previous':
        (ck / 'checkpoint_latest.prev.pt').write_bytes(b'\0' * 1000)
    else:
        (ck / 'checkpoint_latest.prev.pt').unlink(missing_ok=True)
    before = files(ck)
    assert exit_code(train_main, argv(worlds['a'], ck, '--resume', ck / 'checkpoint_latest.pt')) == 2
    one_line(
        capsys,
        'checkpoint_latest.pt: not a readable geosdm checkpoint',
        'checkpoint_latest.prev.pt',
        'cannot be read either' if damage == 'latest and previous' else 'no previous generation',
    )
    assert files(ck) == before  # no fresh start, best and history intact


@pytest.mark.parametrize('damage', ['previous', 'best', 'history', 'cache'])
def test_other_damaged_files_do_not_stop_a_resume(worlds, run_a, epoch2, tmp_path, damage):
    "Resuming from the (whole) epoch-2 checkpoint replays epoch 3 exactly, whatever else is damaged."
    ck = copy_run(run_a, tmp_path / 'ck')
    shutil.copy(epoch2, ck / 'checkpoint_latest.pt')  # back to epoch 2
    target = {
        'previous': ck / 'checkpoint_latest.prev.pt',
        'best': ck / 'checkpoint_best.pt',
        'history': ck / 'training_history.json',
        'cache': next((ck / '.data_cache').glob('*.npz')),
    }[damage]
    cut(target)
    with pytest.warns(UserWarning, match='rebuilding') if damage == 'cache' else contextlib.nullcontext():
        train(cfg(worlds['a'], ck, resume=str(ck / 'checkpoint_latest.pt')), progress=False)
    assert history(ck) == history(run_a)
    for name in ('checkpoint_latest.pt', 'checkpoint_best.pt'):
        assert same_weights(ck / name, run_a / name)


# ---------------------------------------------------------------- the folder


def test_fresh_start_in_a_run_folder_needs_overwrite(worlds, run_a, tmp_path, capsys):
    ck = copy_run(run_a, tmp_path / 'ck')
    before = files(ck)
    assert exit_code(train_main, argv(worlds['a'], ck)) == 2
    one_line(capsys, 'holds a run', '--overwrite', '--resume')
    assert files(ck) == before
    other = copy_run(run_a, tmp_path / 'other')  # resuming another run into it: refused too
    assert exit_code(train_main, argv(worlds['a'], ck, '--resume', other / 'checkpoint_latest.pt')) == 2
    one_line(capsys, 'holds a run')
    assert exit_code(train_main, argv(worlds['a'], ck, '--overwrite', '--num_epochs', 1, '--seed', 2)) == 0
    capsys.readouterr()
    assert sorted(files(ck)) == [
        'checkpoint_best.pt',
        'checkpoint_latest.pt',
        'config.toml',
        'labels.txt',
        'training_history.json',
    ]
    assert load_checkpoint(ck / 'checkpoint_latest.pt')['config']['seed'] == 2 and len(history(ck)['val_map']) == 1


def test_two_runs_on_one_folder(worlds, server, tmp_path, capsys):
    ck = tmp_path / 'ck'
    r = Run(server, argv(worlds['a'], ck), tmp_path / 'first.mark', at=1, nap=300)  # holds the folder, mid-write
    t0 = time.time()
    while r.writes() < 1 and time.time() - t0 < 120:
        time.sleep(0.01)
    try:
        assert exit_code(train_main, argv(worlds['a'], ck)) == 2
        one_line(capsys, 'another run is using this folder', f'pid {r.pid}')
    finally:
        r.kill()
    assert stale_temp_files(ck)  # killed inside its first write
    assert exit_code(train_main, argv(worlds['a'], ck, '--num_epochs', 1)) == 0  # a dead holder's lock is taken over
    assert stale_temp_files(ck) == [] and not (ck / '.lock').exists()  # and released: the file goes with the run


# ---------------------------------------------------------------- other data, other schedule


def test_resume_on_shifted_labels_is_refused(worlds, run_a, tmp_path, capsys):
    ck = copy_run(run_a, tmp_path / 'ck')
    before = files(ck)
    with pytest.raises(ConfigError, match='the content of the data file differs') as e:
        train(cfg(worlds['b'], ck, resume=str(ck / 'checkpoint_latest.pt')), progress=False)
    assert 'vocabulary' not in str(e.value) and 'split' not in str(
        e.value
    )  # same cells, same species: only the bytes tell
    assert files(ck) == before
    ft = train(cfg(worlds['b'], tmp_path / 'ft', finetune=str(ck / 'checkpoint_best.pt'), num_epochs=1), progress=False)
    fresh = train(cfg(worlds['b'], tmp_path / 'fresh', num_epochs=1), progress=False)
    assert ft.epoch == 1 and len(ft.history['val_map']) == 1  # --finetune: a new run on other data,
    assert ft.history['val_geoscore'][0] > fresh.history['val_geoscore'][0] + 0.05  # from the trained weights


def test_replaced_data_is_not_taken_from_the_cache(worlds, tmp_path):
    d = tmp_path / 'data'
    d.mkdir()
    data, cache = d / 'combined.parquet', tmp_path / 'cache'
    shutil.copy(worlds['a'], data)
    shutil.copy(worlds['a'].with_name('combined_taxonomy.csv'), d)
    kw = dict(min_obs_per_species=5, cache_dir=cache, progress=False)
    first = prepare_data(data, **kw)
    st = data.stat()
    assert worlds['b'].stat().st_size == st.st_size
    data.write_bytes(worlds['b'].read_bytes())
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns))
    again = prepare_data(data, **kw)
    assert not again.stats['from_cache'] and again.fingerprint != first.fingerprint
    assert again.fingerprint == prepare_data(worlds['b'], **kw).fingerprint  # the content decides, not the path
    assert prepare_data(data, **kw).stats['from_cache']


@pytest.mark.parametrize(
    'flag,value',
    [
        ('batch_size', 64),
        ('lr', 0.01),
        ('lr_schedule', 'none'),
        ('lr_warmup', 0.0),
        ('lr_min', 1e-5),
        ('num_epochs', 5),
    ],
)
def test_schedule_options_on_resume(worlds, run_a, tmp_path, capsys, flag, value):
    ck = copy_run(run_a, tmp_path / 'ck')
    before = files(ck)
    words = argv(worlds['a'], ck, '--resume', ck / 'checkpoint_latest.pt', f'--{flag}', value)  # the last value wins
    assert exit_code(train_main, words) == 2
    err = one_line(capsys, f'--{flag} ', 'learning-rate schedule', '--finetune')
    assert files(ck) == before, err


# ---------------------------------------------------------------- inputs, litter, console scripts


def test_env_columns_that_carry_nothing_are_dropped(world_writer):
    path = world_writer(
        extra={'soil_ph': [None] * 40, 'ndvi': [float('nan')] * 40, 'band': [7.0] * 40}
    )  # null-typed, NaN, constant
    with pytest.warns(
        UserWarning,
        match=r'3 environmental column\(s\) carry nothing and are dropped: soil_ph '
        r'\(all missing\), ndvi \(all missing\), band \(constant 7\)',
    ):
        p = prepare_data(path, min_obs_per_species=0, progress=False)
    assert p.env_stats['dropped'] == ['soil_ph', 'ndvi', 'band'] and p.env_names[-1] == 'temperature_c'


def test_temp_files_of_live_writers_are_kept(worlds, tmp_path):
    "At the start of a run, leftovers of dead writers go; a file another live process is writing stays."
    from geosdm.core import _HOST

    ck = tmp_path / 'ck'
    ck.mkdir()
    sleeper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()
    try:
        live = ck / f'.checkpoint_best.pt.{sleeper.pid}@{_HOST}.abcdefgh.tmp'
        live.write_bytes(b'x')
        gone = ck / f'.checkpoint_latest.pt.{dead.pid}@{_HOST}.abcdefgh.tmp'
        gone.write_bytes(b'x')
        train(cfg(worlds['a'], ck, num_epochs=1), progress=False)
        assert live.exists() and not gone.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_console_scripts_answer_bad_input_in_one_line(worlds, run_a, tmp_path, capsys):
    cut_ck = tmp_path / 'cut.pt'
    shutil.copy(run_a / 'checkpoint_best.pt', cut_ck)
    cut(cut_ck)
    for ck in (README, cut_ck):  # not a checkpoint, a checkpoint cut short
        assert exit_code(predict_main, ['--checkpoint', str(ck), '--lat', '40', '--lon', '-110']) == 2
        one_line(capsys, ck.name, 'not a readable geosdm checkpoint')
    foreign = tmp_path / 'foreign.parquet'
    pl.DataFrame({'x': [1, 2], 'y': ['a', 'b']}).write_parquet(foreign)  # a parquet, but not ours
    assert exit_code(train_main, argv(foreign, tmp_path / 'f')) == 2
    one_line(capsys, 'foreign.parquet', 'missing required column')
    if os.geteuid() == 0:
        locked = Path('/sys/geosdm_no_permission/run')  # root passes file modes; /sys refuses
    else:
        (tmp_path / 'ro').mkdir(mode=0o500)
        locked = tmp_path / 'ro' / 'run'
    assert exit_code(train_main, argv(worlds['a'], locked)) == 2
    one_line(capsys, str(locked.parent))


def test_full_disk_is_one_line(worlds, tmp_path):
    "A write that fails (here: the file size limit, EFBIG, as a full disk gives ENOSPC) names the file; no traceback."

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, resource.RLIM_INFINITY))

    ck = tmp_path / 'ck'
    code = 'import sys; from geosdm.cli import train_main; sys.exit(train_main(sys.argv[1:]))'
    r = subprocess.run(
        [sys.executable, '-c', code, *map(str, argv(worlds['a'], ck, '--no_cache'))],
        capture_output=True,
        text=True,
        env={**os.environ, 'OMP_NUM_THREADS': '1', 'TQDM_DISABLE': '1'},
        preexec_fn=small_files,
        timeout=300,
    )
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.replace('\r', '\n').split('\n') if ln.strip()]  # progress bars, then the error
    assert lines[-1] == f'geosdm_train: error: {ck / "checkpoint_best.pt"}: File too large', r.stderr
    assert 'Traceback' not in r.stderr and sum('error' in ln for ln in lines) == 1
    assert stale_temp_files(ck) == [] and not (ck / 'checkpoint_best.pt').exists()
