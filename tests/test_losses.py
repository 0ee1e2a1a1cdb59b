"""Tests for geosdm.losses: every loss against hand-computed (numpy) values on small tensors."""

import math

import numpy as np
import pytest
import torch

from geosdm.core import N_WEEKS
from geosdm.losses import (
    LOSSES,
    asl_elementwise,
    masked_mse,
    random_latlon,
    sample_negatives,
    smooth_targets,
    total_loss,
)
from geosdm.losskinds import LOSS_KINDS
from geosdm.model import GeoOutput, SpeciesLogits


def SpeciesLoss(kind: str, **kw):
    "The loss `kind` with those of `kw` that it has (label smoothing and its own options)."
    own = {o.name for o in LOSS_KINDS[kind].options} | {'label_smoothing'}
    return LOSSES[kind](**{k: v for k, v in kw.items() if k in own})


def _out(z, env=None, hab=None) -> GeoOutput:
    return GeoOutput(SpeciesLogits(value=z), env, hab)


def _np_sig(z):
    return 1 / (1 + np.exp(-z))


def _np_bce(z, y):
    p = _np_sig(z)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


@pytest.fixture
def small():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 7, generator=g, dtype=torch.float64).float() * 2
    targets = (torch.rand(4, 7, generator=g) < 0.35).float()
    targets[0, 0] = 1
    targets[0, 1] = 0
    return logits, targets


def test_smoothing_values():
    y = torch.tensor([0.0, 1.0])
    assert torch.allclose(smooth_targets(y, 0.05), torch.tensor([0.025, 0.975]))
    assert torch.equal(smooth_targets(y, 0.0), y)


@pytest.mark.parametrize('eps', [0.0, 0.05, 0.2])
def test_bce_hand(small, eps):
    z, y = small
    ys = y.numpy() * (1 - eps) + eps / 2
    want = _np_bce(z.numpy().astype(np.float64), ys).mean()
    got = SpeciesLoss('bce', label_smoothing=eps)(z, y).item()
    assert got == pytest.approx(want, rel=1e-5)


def test_smoothing_changes_every_loss(small):
    z, y = small
    for kind in LOSS_KINDS:
        a = SpeciesLoss(kind, label_smoothing=0.0, neg_samples=0)(z, y)
        b = SpeciesLoss(kind, label_smoothing=0.1, neg_samples=0)(z, y)
        assert abs(a.item() - b.item()) > 1e-4, kind


@pytest.mark.parametrize(
    'gp,gn,clip,eps', [(0.0, 2.0, 0.05, 0.0), (1.0, 4.0, 0.2, 0.05), (0.0, 2.0, 0.0, 0.1), (0.5, 0.0, 0.0, 0.0)]
)
def test_asl_hand(small, gp, gn, clip, eps):
    z, y = small
    zz = z.numpy().astype(np.float64)
    ys = y.numpy() * (1 - eps) + eps / 2
    p = _np_sig(zz)
    pm = np.maximum(p - clip, 0) if clip > 0 else p
    pos = -ys * (1 - p) ** gp * np.log(p)
    neg = -(1 - ys) * pm**gn * np.log(1 - pm)
    want = (pos + neg).mean()
    got = SpeciesLoss('asl', label_smoothing=eps, asl_gamma_pos=gp, asl_gamma_neg=gn, asl_clip=clip)(z, y).item()
    assert got == pytest.approx(want, rel=1e-5)


def test_asl_clip_zeroes_easy_negatives():
    z = torch.tensor([[-5.0, -2.0, 3.0]])  # p = 0.0067, 0.119, 0.95
    y = torch.zeros(1, 3)
    el = asl_elementwise(z, y, 0.0, 2.0, clip=0.05)
    assert el[0, 0].item() == 0.0  # p < margin: no loss at all
    assert el[0, 1].item() > 0 and el[0, 2].item() > el[0, 1].item()


@pytest.mark.parametrize('alpha,gamma,eps', [(0.5, 2.0, 0.0), (0.25, 1.0, 0.05), (0.75, 0.0, 0.0)])
def test_focal_hand(small, alpha, gamma, eps):
    z, y = small
    zz = z.numpy().astype(np.float64)
    ys = y.numpy() * (1 - eps) + eps / 2
    p = _np_sig(zz)
    pt = p * ys + (1 - p) * (1 - ys)
    at = alpha * ys + (1 - alpha) * (1 - ys)
    want = (at * (1 - pt) ** gamma * _np_bce(zz, ys)).mean()
    got = SpeciesLoss('focal', label_smoothing=eps, focal_alpha=alpha, focal_gamma=gamma)(z, y).item()
    assert got == pytest.approx(want, rel=1e-5)


def test_focal_gamma0_is_weighted_bce(small):
    z, y = small
    a = SpeciesLoss('focal', label_smoothing=0.0, focal_alpha=0.5, focal_gamma=0.0)(z, y)
    b = SpeciesLoss('bce', label_smoothing=0.0)(z, y)
    assert a.item() == pytest.approx(0.5 * b.item(), rel=1e-6)


@pytest.mark.parametrize('kind', ['bce', 'asl', 'focal'])
@pytest.mark.parametrize('shape', ['S', 'BS'])
def test_label_weights_multiply_positive_loss(small, kind, shape):
    z, y = small
    B, S = z.shape
    g = torch.Generator().manual_seed(3)
    w = torch.rand(S, generator=g) if shape == 'S' else torch.rand(B, S, generator=g)
    fn = SpeciesLoss(kind, label_smoothing=0.05)
    el = fn.elementwise(z, smooth_targets(y, 0.05))
    wf = torch.where(y > 0.5, w.expand(B, S), torch.ones(()))
    assert fn(z, y, label_weights=w).item() == pytest.approx((el * wf).mean().item(), rel=1e-5)
    # weights of ones are a no-op; weights never change the target (negatives unaffected)
    assert fn(z, y, label_weights=torch.ones(S)).item() == pytest.approx(fn(z, y).item(), rel=1e-6)
    zero = fn(z, y, label_weights=torch.zeros(S)).item()
    assert zero == pytest.approx((el * (y < 0.5)).mean().item(), rel=1e-5)


def _np_an(z, y, lam, eps, rand=None, w=None):
    zz = z.numpy().astype(np.float64)
    yy = y.numpy() > 0.5
    hi, lo = 1 - eps / 2, eps / 2
    B, S = zz.shape
    ww = np.ones((B, S)) if w is None else np.broadcast_to(w.numpy(), (B, S))
    out = []
    for i in range(B):  # explicit per-row loop: the by-hand computation
        pos = sum(ww[i, j] * _np_bce(zz[i, j], hi) for j in range(S) if yy[i, j])
        neg = sum(_np_bce(zz[i, j], lo) for j in range(S) if not yy[i, j])
        sp = 0.0
        if rand is not None:
            rr = rand.numpy().astype(np.float64)
            sp = sum(ww[i, j] * _np_bce(rr[i, j], lo) for j in range(S) if yy[i, j])
        out.append((lam * pos + neg + sp) / S)
    return float(np.mean(out))


@pytest.mark.parametrize('eps,lam', [(0.0, 4.0), (0.05, 8.0)])
def test_an_exact_hand(small, eps, lam):
    z, y = small
    fn = SpeciesLoss('an', label_smoothing=eps, pos_lambda=lam, neg_samples=0)
    assert fn(z, y).item() == pytest.approx(_np_an(z, y, lam, eps), rel=1e-5)
    # neg_samples >= S also means "all negatives"
    assert SpeciesLoss('an', label_smoothing=eps, pos_lambda=lam, neg_samples=50)(z, y).item() == pytest.approx(
        fn(z, y).item(), rel=1e-6
    )


def test_an_spatial_negatives_and_weights(small):
    z, y = small
    g = torch.Generator().manual_seed(5)
    rand = torch.randn(z.shape, generator=g) * 3
    w = torch.rand(z.shape[1], generator=g)
    fn = SpeciesLoss('an', label_smoothing=0.05, pos_lambda=4.0, neg_samples=0)
    assert fn(z, y, rand_logits=rand).item() == pytest.approx(_np_an(z, y, 4.0, 0.05, rand), rel=1e-5)
    assert fn(z, y, rand_logits=rand, label_weights=w).item() == pytest.approx(
        _np_an(z, y, 4.0, 0.05, rand, w), rel=1e-5
    )
    # raising a random-location logit of a positive species raises the loss; of a negative one does nothing
    i, j = torch.nonzero(y > 0.5)[0]
    k, m = torch.nonzero(y < 0.5)[0]
    up_pos, up_neg = rand.clone(), rand.clone()
    up_pos[i, j] += 2
    up_neg[k, m] += 2
    base = fn(z, y, rand_logits=rand).item()
    assert fn(z, y, rand_logits=up_pos).item() > base
    assert fn(z, y, rand_logits=up_neg).item() == pytest.approx(base, rel=1e-7)


def test_sample_negatives_distinct_and_counts():
    B, S, k = 64, 200, 50
    g = torch.Generator().manual_seed(0)
    pos = torch.rand(B, S, generator=g) < 0.1
    pos[0] = True
    pos[0, :10] = False  # a row with only 10 negatives
    pos[1] = False  # a row with no positives
    m = sample_negatives(pos, k, torch.Generator().manual_seed(1))
    assert m.dtype == torch.bool and m.shape == (B, S)
    assert not (m & pos).any()  # only negatives
    n_neg = (~pos).sum(1)
    assert torch.equal(m.sum(1), torch.minimum(n_neg, torch.tensor(k)))  # exactly k distinct (a mask has no repeats)
    # reproducible with a generator
    assert torch.equal(m, sample_negatives(pos, k, torch.Generator().manual_seed(1)))


def test_sample_negatives_uniform():
    S, k, reps = 20, 5, 4000
    pos = torch.zeros(reps, S, dtype=torch.bool)
    pos[:, :4] = True
    m = sample_negatives(pos, k, torch.Generator().manual_seed(2)).float()
    freq = m.mean(0)[4:]
    assert torch.allclose(freq, torch.full_like(freq, k / 16), atol=0.03)  # each negative w.p. k/|N|


def test_an_sampled_is_unbiased(small):
    z, y = small
    exact = SpeciesLoss('an', neg_samples=0)(z, y).item()
    fn = SpeciesLoss('an', neg_samples=2)
    g = torch.Generator().manual_seed(0)
    est = np.mean([fn(z, y, generator=g).item() for _ in range(3000)])
    assert est == pytest.approx(exact, rel=0.02)
    # same generator state → same value
    a = fn(z, y, generator=torch.Generator().manual_seed(9))
    b = fn(z, y, generator=torch.Generator().manual_seed(9))
    assert a.item() == b.item()


def test_an_requested_negatives_used():
    # one row, all-zero logits: each sampled negative contributes log 2, rescaled by |N|/|M|,
    # so the loss is the exact all-negative value whatever M is; check M through the mask
    B, S = 8, 300
    y = torch.zeros(B, S)
    y[:, :5] = 1
    pos = y > 0.5
    m = sample_negatives(pos, 128, torch.Generator().manual_seed(0))
    assert (m.sum(1) == 128).all()
    z = torch.zeros(B, S)
    fn = SpeciesLoss('an', label_smoothing=0.0, pos_lambda=1.0, neg_samples=128)
    assert fn(z, y, generator=torch.Generator().manual_seed(0)).item() == pytest.approx(math.log(2), rel=1e-5)


def test_masked_mse_hand():
    pred = torch.tensor([[1.0, 2.0, 3.0], [0.0, -1.0, 2.0]], requires_grad=True)
    tgt = torch.tensor([[0.0, float('nan'), 1.0], [float('nan'), 1.0, float('nan')]])
    loss = masked_mse(pred, tgt)
    assert loss.item() == pytest.approx((1 + 4 + 4) / 3)
    loss.backward()
    assert torch.isfinite(pred.grad).all()
    assert pred.grad[0, 1].item() == 0 and pred.grad[1, 0].item() == 0
    assert pred.grad[0, 0].item() == pytest.approx(2 * 1 / 3)
    assert masked_mse(pred, torch.full_like(tgt, float('nan'))).item() == 0.0
    assert masked_mse(torch.tensor([[1e6]]), torch.tensor([[0.0]])).item() == pytest.approx(1e8)  # clamped ±1e4


def test_total_loss_combination(small):
    z, y = small
    env_pred = torch.randn(4, 3)
    env_t = torch.randn(4, 3)
    env_t[0, 0] = float('nan')
    hab = torch.randn(4, 7)
    fn = SpeciesLoss('bce')
    out = total_loss(_out(z, env_pred, hab), y, env_t, fn, species_weight=2.0, env_weight=0.5, habitat_weight=0.3)
    assert set(out) == {'loss', 'species', 'env', 'habitat'}
    assert all(isinstance(v, torch.Tensor) and v.ndim == 0 for v in out.values())
    assert out['species'].item() == pytest.approx(fn(z, y).item())
    assert out['env'].item() == pytest.approx(masked_mse(env_pred, env_t).item())
    assert out['habitat'].item() == pytest.approx(fn(hab, y).item())
    assert out['loss'].item() == pytest.approx(
        2 * out['species'].item() + 0.5 * out['env'].item() + 0.3 * out['habitat'].item(), rel=1e-6
    )
    # no env, no habitat
    out = total_loss(_out(z), y, None, fn)
    assert (
        out['env'].item() == 0 and out['habitat'].item() == 0 and out['loss'].item() == pytest.approx(fn(z, y).item())
    )


def test_total_loss_an_rand_logits(small):
    z, y = small
    rand = torch.randn_like(z)
    fn = SpeciesLoss('an', neg_samples=0)
    out = total_loss(_out(z), y, None, fn, rand_logits=rand)
    assert out['species'].item() == pytest.approx(fn(z, y, rand_logits=rand).item())


@pytest.mark.parametrize('kind', LOSS_KINDS)
def test_extreme_logits_finite(kind):
    z = torch.tensor([[100.0, -100.0, 30.0, -30.0, 0.0]], requires_grad=True)
    y = torch.tensor([[0.0, 1.0, 1.0, 0.0, 1.0]])
    loss = SpeciesLoss(kind, neg_samples=0)(z, y, rand_logits=torch.full((1, 5), 50.0) if kind == 'an' else None)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()


def _half_dtype():
    try:
        with torch.autocast('cpu', dtype=torch.float16):
            torch.nn.Linear(2, 2)(torch.ones(1, 2))
        return torch.float16
    except Exception:
        return torch.bfloat16


@pytest.mark.parametrize('kind', LOSS_KINDS)
def test_gradients_finite_under_autocast(kind):
    from geosdm.model import create_model

    torch.manual_seed(0)
    m = create_model(50, 4, model_scale=0.25, habitat_head=True)
    B = 16
    lat, lon, week = torch.rand(B) * 180 - 90, torch.rand(B) * 360 - 180, torch.randint(0, N_WEEKS + 1, (B,))
    y = (torch.rand(B, 50) < 0.1).float()
    env = torch.randn(B, 4)
    env[0] = float('nan')
    dt = _half_dtype()
    with torch.autocast('cpu', dtype=dt):
        out = m(lat, lon, week, return_env=True)
        rand = m(lat.flip(0), lon.flip(0), week, return_env=False).species if kind == 'an' else None
        parts = total_loss(
            out, y, env, SpeciesLoss(kind, neg_samples=10), rand_logits=rand, generator=torch.Generator().manual_seed(0)
        )
    assert parts['loss'].dtype == torch.float32
    parts['loss'].backward()
    for n, p in m.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), n


def test_errors():
    with pytest.raises(KeyError):
        LOSSES['mse']
    with pytest.raises(TypeError, match='unknown option'):
        LOSSES['bce'](neg_samples=3)  # a loss takes its own options only
    with pytest.raises(ValueError, match='same shape'):
        SpeciesLoss('bce')(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match='rand_logits'):
        SpeciesLoss('an')(torch.zeros(2, 3), torch.zeros(2, 3), rand_logits=torch.zeros(2, 4))


def test_random_latlon_uniform_on_sphere():
    lat, lon = random_latlon(200_000, torch.Generator().manual_seed(0))
    assert lat.dtype == torch.float32 and lat.shape == lon.shape == (200_000,)
    assert lat.abs().max() <= 90 and lon.min() >= -180 and lon.max() < 180
    # area fraction between latitudes a and b is (sin b - sin a)/2
    for a, b in [(0, 30), (60, 90), (-90, -45)]:
        frac = ((lat >= a) & (lat < b)).float().mean().item()
        assert frac == pytest.approx((math.sin(math.radians(b)) - math.sin(math.radians(a))) / 2, abs=0.005)
    assert torch.equal(
        random_latlon(5, torch.Generator().manual_seed(1))[0], random_latlon(5, torch.Generator().manual_seed(1))[0]
    )


@pytest.mark.parametrize(
    'kind,kw',
    [
        ('focal', dict(focal_gamma=0.5)),
        ('asl', dict(asl_gamma_pos=0.5, asl_gamma_neg=0.5)),
        ('asl', dict(asl_gamma_pos=0.5, asl_gamma_neg=0.5, asl_clip=0.0)),
    ],
)
def test_fractional_gamma_saturated_logits_finite_grad(kind, kw):
    z = torch.tensor([[40.0, -40.0, 40.0, -40.0, -3.0]], requires_grad=True)
    y = torch.tensor([[1.0, 0.0, 0.0, 1.0, 0.0]])
    loss = SpeciesLoss(kind, label_smoothing=0.0, **kw)(z, y)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()


def test_every_kind_has_its_loss_and_options():
    "The registry: each declared kind has a class, whose options are the declaration's, defaults included."
    assert set(LOSSES) == set(LOSS_KINDS)
    for name, cls in LOSSES.items():
        fn = cls()
        assert cls.kind is LOSS_KINDS[name]
        assert {o.name: getattr(fn, o.name) for o in cls.kind.options} == {o.name: o.default for o in cls.kind.options}


TOY = r"""
import json, sys
from geosdm.losskinds import loss_kind
from geosdm.options import Option, Param

# 1. the declaration (the loss kinds notebook)
factor = Option('toy_factor', 2.0, 'Factor of the toy loss', range='> 0', tune=Param('float', 1, 4), tune_all=True)
loss_kind('toy', 'a toy: BCE times a factor', factor)

# 2. the implementation (the losses notebook)
from geosdm.losses import SpeciesLoss, bce_elementwise

class ToyLoss(SpeciesLoss, kind='toy'):
    def elementwise(self, logits, y):
        return self.toy_factor * bce_elementwise(logits, y)

# nothing else: the option table, the command line, autotune and the trainer read the registry
from geosdm.autotune import LOSS_PARAMS, inactive_params
from geosdm.cli import train_main
from geosdm.config import OPTIONS, SEARCH_SPACE, TrainConfig, build_parser
from geosdm.trainer import Trainer

d = sys.argv[1]
rc = train_main(['--species_loss', 'toy', '--toy_factor', '3', '--num_epochs', '1', '--model_scale', '0.25',
                 '--device', 'cpu', '--cpu_threads', '1', '--checkpoint_dir', d, '--batch_size', '512'])
print(json.dumps(dict(
    rc=rc, choices=list(OPTIONS['species_loss'].choices), in_space='toy_factor' in SEARCH_SPACE,
    owner=LOSS_PARAMS['toy_factor'], inactive=inactive_params({'toy_factor': 2.0}, TrainConfig()),
    help='toy' in build_parser().format_help(), field=TrainConfig().toy_factor,
    config=open(d + '/config.toml').read(),
)))
"""


def test_a_new_loss_is_one_declaration_and_one_class(tmp_path):
    """A toy loss, declared and implemented in a test, trains from the command line: the option table, the
    parser, TrainConfig, autotune's space and the run's config.toml all know it, and nothing else was edited."""
    import json
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, '-c', TOY, str(tmp_path / 'run')],
        capture_output=True,
        text=True,
        env={**_env(), 'OMP_NUM_THREADS': '1'},
    )
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out['rc'] == 0 and out['choices'][-1] == 'toy' and out['in_space'] and out['help']
    assert out['owner'] == ['toy'] and out['inactive'] == ['toy_factor'] and out['field'] == 2.0
    assert 'species_loss = "toy"' in out['config'] and 'toy_factor = 3.0' in out['config']


def _env():
    import os

    return {k: v for k, v in os.environ.items() if k != 'OMP_NUM_THREADS'}
