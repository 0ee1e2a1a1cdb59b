"""Tests for geosdm.model: architecture, parameter counts, week-0 treatment, export, AMP, inference."""

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from geosdm.model import (
    BIRDNET_PARAMS,
    LN_EPS,
    N_WEEKS,
    ExportWrapper,
    GeoOutput,
    coord_features,
    count_parameters,
    create_model,
    param_groups,
    predict_proba,
    scale_dims,
    week_features,
)


def _outs(o) -> dict:
    "A model's `GeoOutput` as a dict of its tensors (the logits computed)."
    d = {'species_logits': o.species.dense(), 'env_pred': o.env, 'habitat_logits': o.habitat}
    return {k: v for k, v in d.items() if v is not None}


def _batch(B=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.rand(B, generator=g) * 180 - 90,
        torch.rand(B, generator=g) * 360 - 180,
        torch.randint(0, N_WEEKS + 1, (B,), generator=g),
    )


def _perturb_film(m, std=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.encoder.films.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)


@pytest.mark.parametrize('key', [k for k in sorted(BIRDNET_PARAMS) if k[0] <= 1.0])  # 2.0 is in the notebook
def test_parameter_counts_match_birdnet(key):
    s, S = key
    n = count_parameters(create_model(S, 23, model_scale=s))
    ref = BIRDNET_PARAMS[key]
    assert abs(n - ref) / ref < 0.05
    # the only extra parameters: one yearly-flag weight per unit of each FiLM input layer
    d = scale_dims(s)
    assert n - ref == d['encoder_blocks'] * d['embed_dim']


def test_habitat_parameter_count():
    # the BirdNET geomodel: 1,197,391 at scale 0.5, S=1000, F=23, habitat on
    n = count_parameters(create_model(1000, 23, model_scale=0.5, habitat_head=True))
    assert n - 1_197_391 == 2 * 256


def test_scale_dims_birdnet_table():
    want = {
        0.25: (128, 1, 1, 32, 64, 1),
        0.5: (256, 2, 1, 64, 128, 1),
        0.75: (384, 3, 2, 96, 192, 1),
        1.0: (512, 4, 2, 128, 256, 1),
        1.5: (768, 6, 3, 192, 384, 2),
        2.0: (1024, 8, 4, 256, 512, 2),
    }
    for s, (E, eb, sb, b, H, envb) in want.items():
        d = scale_dims(s)
        assert (
            d['embed_dim'],
            d['encoder_blocks'],
            d['species_blocks'],
            d['bottleneck'],
            d['env_hidden'],
            d['env_blocks'],
        ) == (E, eb, sb, b, H, envb), s
        assert d['dropout'] == pytest.approx(min(max(0.1 + 0.025 * (s - 1), 0), 0.3))
        assert d['species_dropout'] == pytest.approx(min(d['dropout'] + 0.1, 0.4))
    with pytest.raises(ValueError):
        scale_dims(0)


def test_dropout_and_layernorm_settings():
    m = create_model(30, 5, model_scale=0.75, habitat_head=True)
    d = scale_dims(0.75)
    enc = {mod.p for mod in m.encoder.modules() if isinstance(mod, nn.Dropout)}
    sp = {mod.p for mod in m.species_head.modules() if isinstance(mod, nn.Dropout)}
    hab = {mod.p for mod in m.habitat_head.modules() if isinstance(mod, nn.Dropout)}
    env = {mod.p for mod in m.env_head.modules() if isinstance(mod, nn.Dropout)}
    assert enc == env == {d['dropout']} and sp == hab == {d['species_dropout']}
    lns = [mod for mod in m.modules() if isinstance(mod, nn.LayerNorm)]
    assert lns and all(ln.eps == LN_EPS == 1e-4 for ln in lns)


def test_config_round_trip():
    for hab in (False, True):
        m = create_model(40, 6, model_scale=0.3, coord_harmonics=5, week_harmonics=3, habitat_head=hab).eval()
        m2 = create_model(**m.config).eval()
        assert m2.config == m.config
        m2.load_state_dict(m.state_dict())  # strict: same architecture
        lat, lon, week = _batch(8)
        a, b = _outs(m(lat, lon, week, return_env=True)), _outs(m2(lat, lon, week, return_env=True))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    import json

    assert json.loads(json.dumps(m.config)) == m.config


def test_forward_outputs():
    lat, lon, week = _batch(5)
    m = create_model(12, 4, model_scale=0.25)
    out = m(lat, lon, week)
    assert isinstance(out, GeoOutput) and out.species.value is None and out.env is None and out.habitat is None
    assert list(_outs(out)) == ['species_logits'] and out.species.dense().shape == (5, 12)
    out = m(lat, lon, week, return_env=True)
    assert out.env.shape == (5, 4)
    mh = create_model(12, 4, model_scale=0.25, habitat_head=True)
    out = mh(lat, lon, week, return_env=True)
    assert type(out) is GeoOutput and set(_outs(out)) == {'species_logits', 'env_pred', 'habitat_logits'}
    assert set(_outs(mh(lat, lon, week))) == {'species_logits'}
    m0 = create_model(12, 0, model_scale=0.25)
    assert set(_outs(m0(lat, lon, week, return_env=True))) == {'species_logits'}
    with pytest.raises(ValueError):
        create_model(12, 0, habitat_head=True)


def test_habitat_gate_mixing_and_detach():
    torch.manual_seed(0)
    m = create_model(10, 3, model_scale=0.25, habitat_head=True).eval()
    lat, lon, week = _batch(6)
    out = _outs(m(lat, lon, week, return_env=True))
    h = m.encoder(lat, lon, week)
    direct = m.species_head(h)
    g = torch.sigmoid(torch.tensor(3.0))
    assert torch.allclose(out['species_logits'], g * direct + (1 - g) * out['habitat_logits'], atol=1e-5)
    # the habitat loss must not reach the env head (detached env prediction)
    out['habitat_logits'].sum().backward()
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in m.env_head.parameters())
    assert any(p.grad is not None and p.grad.abs().max() > 0 for p in m.habitat_head.parameters())


def test_week0_not_week48_encoding():
    f = week_features(torch.tensor([0.0, 48.0, 1.0]), 8)
    assert f.shape == (3, 17)
    assert (f[0] - f[1]).abs().max() > 0.5
    # the yearly code is unreachable from any (even fractional) weekly input
    wk = week_features(torch.linspace(0.5, 48.5, 2001), 8)
    assert (wk - f[0]).norm(dim=1).min() > 1.0
    assert torch.equal(week_features(torch.tensor([0]), 8), week_features(torch.tensor([0.2]), 8))
    # weeks stay periodic: week 48 is next to week 1 as week 1 is next to week 2
    d = lambda a, b: (week_features(torch.tensor([a]), 8) - week_features(torch.tensor([b]), 8)).norm()
    assert d(48.0, 1.0) == pytest.approx(d(1.0, 2.0).item(), rel=1e-5)


def test_week0_not_week48_model():
    m = create_model(20, 3, model_scale=0.25).eval()
    lat, lon, _ = _batch(16)
    y = lambda w: m(lat, lon, torch.full((16,), w)).species.dense()
    assert torch.allclose(y(0), y(48), atol=1e-6)  # FiLM starts as the identity
    _perturb_film(m)
    assert (y(0) - y(48)).abs().max() > 1e-2
    assert (y(24) - y(48)).abs().max() > 1e-2


def test_int_and_float_week_paths_agree():
    m = create_model(20, 3, model_scale=0.5).eval()
    _perturb_film(m)
    lat, lon, week = _batch(64)
    a = _outs(m(lat, lon, week, return_env=True))
    b = _outs(m(lat, lon, week.float(), return_env=True))
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k
    # gradients agree too (the 49-week table path backpropagates through the gather)
    m.train()
    torch.manual_seed(0)
    ga = torch.autograd.grad(m(lat, lon, week).species.dense().sum(), list(m.encoder.films.parameters()))
    torch.manual_seed(0)
    gb = torch.autograd.grad(m(lat, lon, week.float()).species.dense().sum(), list(m.encoder.films.parameters()))
    for x, y in zip(ga, gb):
        assert torch.allclose(x, y, rtol=1e-4, atol=1e-5)


def test_coord_features_periodic_lon():
    f = coord_features(torch.tensor([10.0, 10.0]), torch.tensor([-180.0, 180.0]))
    assert torch.allclose(f[0], f[1], atol=1e-5)
    assert coord_features(torch.zeros(3), torch.zeros(3), 8).shape == (3, 32)


def test_species_bias_prior():
    m = create_model(10, 2, model_scale=0.25)
    assert torch.allclose(m.species_head.out[-1].bias, torch.full((10,), math.log(0.01 / 0.99)))


@pytest.mark.filterwarnings('ignore::DeprecationWarning')
def test_trace_and_export_match_eager():
    torch.manual_seed(0)
    m = create_model(30, 4, model_scale=0.25, habitat_head=True).eval()
    _perturb_film(m)
    lat, lon, week = _batch(16)
    x = torch.stack([lat, lon, week.float()], 1)
    w = ExportWrapper(m).eval()
    ref = w(x)
    assert ref.shape == (16, 30) and (ref >= 0).all() and (ref <= 1).all()
    traced = torch.jit.trace(w, x)
    x2 = torch.stack(list(_batch(7, seed=3)), 1).float()
    assert torch.allclose(traced(x), ref, atol=1e-6) and torch.allclose(traced(x2), w(x2), atol=1e-6)
    ep = torch.export.export(w, (x,), dynamic_shapes={'x': {0: torch.export.Dim('batch', min=1, max=65536)}})
    assert torch.allclose(ep.module()(x), ref, atol=1e-6)
    assert torch.allclose(ep.module()(x2), w(x2), atol=1e-6)
    # week 0 in the exported graph is the yearly code, not week 48
    x0, x48 = x2.clone(), x2.clone()
    x0[:, 2] = 0
    x48[:, 2] = 48
    assert (ep.module()(x0) - ep.module()(x48)).abs().max() > 1e-4


def test_autocast_bf16_cpu():
    torch.manual_seed(0)
    m = create_model(50, 5, model_scale=0.5, habitat_head=True)
    _perturb_film(m)
    lat, lon, week = _batch(64)
    with torch.no_grad():
        m.eval()
        ref = _outs(m(lat, lon, week, return_env=True))
        m.train()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = _outs(m(lat, lon, week, return_env=True))
        loss = sum(v.float().pow(2).mean() for v in out.values())
    assert all(torch.isfinite(v).all() for v in out.values())
    loss.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in m.parameters())
    m.eval()
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        lo = _outs(m(lat, lon, week, return_env=True))
    assert (lo['species_logits'].float() - ref['species_logits']).abs().max() < 0.25


def test_predict_proba_yearly_max():
    torch.manual_seed(0)
    m = create_model(15, 3, model_scale=0.25)
    _perturb_film(m)
    m.train()
    lat = np.array([10.0, 50.0, -30.0, 10.0])
    lon = np.array([20.0, -100.0, 150.0, 20.0])
    week = np.array([0, 5, 0, 48])
    p = predict_proba(m, lat, lon, week, batch_size=3)
    assert m.training  # mode restored
    assert p.shape == (4, 15) and p.dtype == np.float32
    allw = predict_proba(
        m, np.repeat(lat, N_WEEKS), np.repeat(lon, N_WEEKS), np.tile(np.arange(1, N_WEEKS + 1), 4)
    ).reshape(4, N_WEEKS, 15)
    np.testing.assert_allclose(p[0], allw[0].max(0), atol=1e-6)
    np.testing.assert_allclose(p[2], allw[2].max(0), atol=1e-6)
    np.testing.assert_allclose(p[1], allw[1, 4], atol=1e-6)
    np.testing.assert_allclose(p[3], allw[3, 47], atol=1e-6)
    assert (p[0] >= p[3] - 1e-7).all()
    np.testing.assert_allclose(predict_proba(m, lat, lon, week, batch_size=10_000), p, atol=1e-6)
    # scalars broadcast; 'model' returns the trained yearly output
    m.eval()
    with torch.no_grad():
        direct = torch.sigmoid(m(torch.tensor([10.0]), torch.tensor([20.0]), torch.tensor([0])).species.dense())
    np.testing.assert_allclose(predict_proba(m, 10.0, 20.0, 0, yearly='model')[0], direct[0].numpy(), atol=1e-6)
    with pytest.raises(ValueError, match=f'0..{N_WEEKS}'):
        predict_proba(m, 0, 0, N_WEEKS + 1)
    with pytest.raises(ValueError):
        predict_proba(m, 0, 0, 1, yearly='mean')


def test_param_groups():
    m = create_model(10, 3, model_scale=0.25, habitat_head=True)
    dec, nodec = param_groups(m, 0.01)
    assert dec['weight_decay'] == 0.01 and nodec['weight_decay'] == 0.0
    ln_ids = {id(p) for mod in m.modules() if isinstance(mod, nn.LayerNorm) for p in mod.parameters()}
    bias_ids = {id(p) for n, p in m.named_parameters() if n.endswith('bias')}
    assert {id(p) for p in nodec['params']} == ln_ids | bias_ids
    assert all(p.ndim == 2 for p in dec['params'])
    assert sum(p.numel() for g in (dec, nodec) for p in g['params']) == count_parameters(m)
    torch.optim.AdamW([dec, nodec], lr=1e-3)  # accepted by the optimiser


def test_training_reduces_loss():
    """A few AdamW steps on a fixed batch lower the total loss (the model can learn week-dependent targets)."""
    from geosdm.losses import BCELoss, total_loss

    torch.manual_seed(0)
    m = create_model(8, 2, model_scale=0.25)
    lat, lon, _ = _batch(64)
    week = torch.tensor([0, 48] * 32)
    y = torch.zeros(64, 8)
    y[week == 0, :4] = 1
    y[week == 48, 4:] = 1  # yearly and week 48 differ
    env = torch.randn(64, 2)
    opt = torch.optim.AdamW(param_groups(m, 1e-3), lr=3e-3)
    fn = BCELoss(label_smoothing=0.0)
    losses = []
    for _ in range(150):
        opt.zero_grad()
        parts = total_loss(m(lat, lon, week, return_env=True), y, env, fn)
        parts['loss'].backward()
        opt.step()
        losses.append(parts['species'].item())
    assert losses[-1] < 0.2 * losses[0]
    m.eval()
    p = torch.sigmoid(m(lat, lon, week).species.dense())
    assert (p[week == 0, :4].mean() > 0.8) and (p[week == 48, :4].mean() < 0.2)


@pytest.mark.parametrize('habitat', [False, True])
def test_species_rows_matches_full_forward(habitat):
    torch.manual_seed(0)
    m = create_model(30, 4, model_scale=0.25, habitat_head=habitat).eval()
    lat, lon, week = _batch(12)
    full = _outs(m(lat, lon, week, return_env=True))
    part = _outs(m(lat, lon, week, return_env=True, species_rows=5))
    assert part['species_logits'].shape == (5, 30) and part['env_pred'].shape == (12, 4)
    assert torch.allclose(part['species_logits'], full['species_logits'][:5], atol=1e-5)
    assert torch.allclose(part['env_pred'], full['env_pred'], atol=1e-5)
    if habitat:
        assert torch.allclose(part['habitat_logits'], full['habitat_logits'][:5], atol=1e-5)
