"The training step: compiled = eager, resume under --compile, batch-size and learning-rate rules, non-finite batches."

import logging
import math

import pytest
import torch
from conftest import simulated_world, strip, trainer_config

from geosdm.config import TrainConfig
from geosdm.steps import LossScale, peak_lr, resolve_batch_size
from geosdm.trainer import Trainer, lr_at, prepare, train

pytestmark = pytest.mark.usefixtures('one_thread')  # see conftest: exact comparisons need a fixed count


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    return simulated_world(tmp_path_factory)


base = trainer_config


def test_batch_size_rule():
    assert resolve_batch_size('auto', 'cpu', 300_000) == 1024
    assert resolve_batch_size('auto', 'cuda', 300_000) == 8192
    assert resolve_batch_size('auto', 'cuda', 16 * 8192 - 1) == 4096  # at least 16 batches per epoch
    assert resolve_batch_size('auto', 'cuda', 1000) == 1000  # never more than the data
    assert resolve_batch_size(2048, 'cpu', 300_000) == 2048
    assert resolve_batch_size(4096, 'cpu', 100) == 100


def test_lr_scaling_rule():
    cfg = TrainConfig(num_epochs=10, lr_warmup=2, lr=1e-3, lr_min=1e-6)
    for B, spe in ((256, 960), (1024, 240), (8192, 30), (32768, 8)):
        k = max(B, 1024) / 1024
        peak = 1e-3 * k * min(k, 8) ** (1 / 3)  # 1e-3, 1e-3, 1.6e-2, 6.4e-2
        assert peak_lr(1e-3, B) == pytest.approx(peak)
        assert lr_at(2 * spe, spe, cfg, B) == pytest.approx(peak)  # the peak, after the same 2 epochs
        assert lr_at(spe, spe, cfg, B) == pytest.approx(peak * (0.01 + 0.99 / 2))
        assert lr_at(10 * spe, spe, cfg, B) == pytest.approx(1e-6)  # lr_min at the end
    flat = TrainConfig(lr_scaling='none', lr=1e-3, lr_warmup=0, lr_schedule='none')
    assert lr_at(0, 30, flat, 8192) == 1e-3


def test_history_records_batch_size_and_lr(world, tmp_path):
    cfg = base(world, tmp_path, batch_size='auto', num_epochs=1)
    tr = Trainer(cfg, prepare(cfg, progress=False))
    row = tr.train_epoch(progress=False)
    assert row['batch_size'] == tr.batch_size == min(1024, len(tr.prep.train))
    assert row['lr_peak'] == pytest.approx(3e-3)  # --lr auto at batches up to 1024
    assert tr.steps_per_epoch == int((tr.prep.train.n_pos() > 0).sum()) // tr.batch_size  # samples with records


def _three_steps(cfg, prep):
    "Losses of the first 3 steps of epoch 1 and the state after them."
    tr = Trainer(cfg, prep)
    tr.steps_per_epoch = 3
    losses, step = [], tr._step

    def spy(loss):
        losses.append(float(loss.detach()))
        return step(loss)

    tr._step = spy
    tr.train_epoch(progress=False)
    return losses, tr.model.state_dict(), tr.opt.state_dict()['state']


def test_compiled_step_equals_eager(world, tmp_path):
    cfg = base(world, tmp_path)
    prep = prepare(cfg, progress=False)
    l0, w0, s0 = _three_steps(cfg, prep)
    with torch._inductor.config.patch(fallback_random=True):  # dropout masks from the generator eager uses
        l1, w1, s1 = _three_steps(base(world, tmp_path, compile='default'), prep)
    # tolerance: fp32 kernels that sum in another order; three AdamW steps of at most lr each
    assert l1 == pytest.approx(l0, rel=1e-5)
    for k in w0:
        torch.testing.assert_close(w1[k], w0[k], rtol=1e-4, atol=1e-5)
    for i in s0:
        for k in ('exp_avg', 'exp_avg_sq'):
            torch.testing.assert_close(s1[i][k], s0[i][k], rtol=1e-3, atol=1e-8)


def test_compiled_run_resumes_exactly(world, tmp_path):
    full = train(base(world, tmp_path / 'full', compile='default'), progress=False).history
    cfg = base(world, tmp_path / 'part', compile='default', save_every=1)
    tr = Trainer(cfg, prepare(cfg, progress=False))

    class Stop(Exception):
        pass

    def stop_after_two(t, row):
        if t.epoch == 2:
            raise Stop

    with pytest.raises(Stop):
        tr.fit(progress=False, on_epoch=stop_after_two)
    res = train(
        base(world, tmp_path / 'part', compile='default', resume=str(tmp_path / 'part' / 'checkpoint_latest.pt')),
        progress=False,
    )
    assert res.epoch == 3 and res.compile == 'default'
    assert strip(res.history) == strip(full)


def _state(tr):
    return (
        {k: v.clone() for k, v in tr.model.state_dict().items()},
        {i: {k: v.clone() for k, v in s.items()} for i, s in tr.opt.state_dict()['state'].items()},
    )


@pytest.mark.parametrize('amp', ['off', 'bf16', 'fp16'])
def test_nonfinite_batch_is_skipped(world, tmp_path, amp):
    cfg = base(world, tmp_path, amp='bf16' if amp == 'bf16' else 'off')
    tr = Trainer(cfg, prepare(cfg, progress=False))
    if amp == 'fp16':  # the CUDA fp16 path on the CPU: fp16 autocast and the dynamic loss scale
        tr.amp_dtype, tr.scaler = torch.float16, LossScale('cpu', enabled=True)
    gen = torch.Generator().manual_seed(0)
    good = tr._batch(torch.arange(64), 0.0, gen, size=4096)
    bad = dict(good, lat=good['lat'].clone().index_fill_(0, torch.tensor([5]), float('nan')))
    assert bool(tr._step(tr._losses(good, gen, train=True)['loss']))
    before = _state(tr)
    assert not bool(tr._step(tr._losses(bad, gen, train=True)['loss']))
    after = _state(tr)
    for k in before[0]:
        assert torch.equal(before[0][k], after[0][k]), k
    for i in before[1]:
        for k in before[1][i]:
            assert torch.equal(before[1][i][k], after[1][i][k]), (i, k)
    assert bool(tr._step(tr._losses(good, gen, train=True)['loss']))  # and training goes on
    if amp == 'fp16':
        assert float(tr.scaler.scale) == 2.0**15  # halved once, by the skipped step


@pytest.mark.parametrize('amp', ['off', 'bf16'])
def test_epoch_counts_skipped_batches(world, tmp_path, amp):
    cfg = base(world, tmp_path, amp=amp)
    tr = Trainer(cfg, prepare(cfg, progress=False))
    batch, n = tr._batch, []

    def poisoned(idx, jit, gen, size=None):
        b = batch(idx, jit, gen, size)
        n.append(1)
        if len(n) == 2:
            b['lat'] = b['lat'] * float('nan')
        return b

    tr._batch = poisoned
    row = tr.train_epoch(progress=False)
    assert row['train_skipped_batches'] == 1 and math.isfinite(row['train_loss'])
    assert all(torch.isfinite(p).all() for p in tr.model.parameters())


def test_cpu_share_counts_other_processes_only(monkeypatch):
    """CpuShare counts other processes' CPU use, not this process's own: on a machine whose clocks the test sets
    (the same with a real busy process, where a shared machine's load decides: bench/wall_clock.py)."""
    from types import SimpleNamespace

    import geosdm.core as core

    now = dict(t=100.0, busy=500.0, own=20.0)  # seconds: the clock, every process's CPU, this process's CPU
    monkeypatch.setattr(core, 'usable_cpus', lambda: 4)
    monkeypatch.setattr(core, '_machine_cpu', lambda: (now['busy'], 4))
    monkeypatch.setattr(core, 'os', SimpleNamespace(times=lambda: SimpleNamespace(user=now['own'], system=0.0)))
    monkeypatch.setattr(core, 'time', SimpleNamespace(monotonic=lambda: now['t'], sleep=lambda s: None))

    def spend(seconds, own, others):
        now['t'] += seconds
        now['own'] += own * seconds
        now['busy'] += (own + others) * seconds

    s = core.CpuShare()
    free = []
    for own, others in ((2.0, 0.0), (1.0, 1.0), (0.0, 2.6), (0.0, 2.4), (4.0, 9.0)):
        spend(2.0, own, others)
        free.append(s.free_cores())
    assert free == [4, 3, 1, 2, 1]  # our own 2 cores count as free; 2.6 others' round to 3 busy; at least 1
    monkeypatch.setattr(core, '_machine_cpu', lambda: (now['busy'], 8))  # /proc/stat sees other CPUs than ours
    assert core.CpuShare().free_cores() is None


class _Share:
    cores = 4

    def __init__(self, free):
        self.free = free

    def free_cores(self):
        return self.free.pop(0)


def test_cpu_threads_follow_the_free_cores_and_come_back(world, tmp_path, caplog):
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        cfg = base(world, tmp_path, num_epochs=3)
        tr = Trainer(cfg, prepare(cfg, progress=False))
        tr.share = _Share([1, 3, 2])  # 3 free: still at most the 2 fit starts with
        seen = []
        lg = logging.getLogger('geosdm')
        lg.addHandler(caplog.handler)
        level = lg.level
        lg.setLevel(logging.INFO)
        try:
            tr.fit(progress=False, save=False, on_epoch=lambda t, r: seen.append(torch.get_num_threads()))
        finally:
            lg.removeHandler(caplog.handler)
            lg.setLevel(level)
        assert seen == [1, 2, 2]
        assert torch.get_num_threads() == 2  # put back after fit
        assert 'CPU threads: 1 (other processes keep 3 of 4 cores busy)' in caplog.text
        fixed = Trainer(base(world, tmp_path / 'f', num_epochs=1, cpu_threads=1), tr.prep)
        fixed.fit(progress=False, save=False, on_epoch=lambda t, r: seen.append(torch.get_num_threads()))
        assert seen[-1] == 1 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
