"Metrics vs independent implementations (scikit-learn, scipy, numpy)."

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.stats import pearsonr
from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score

import geosdm.core
import geosdm.metrics as M
from geosdm.geoscore import GEOSCORE_WEIGHTS, geoscore, geoscore_table, merge_holdout, prefix_metrics
from geosdm.metrics import WATCHLIST, MetricAccumulator, per_sample_ap

SET = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def problems(draw):
    "Random (logits, targets, density, chunk) with ties, all-negative and single-positive rows."
    n = draw(st.integers(1, 40))
    s = draw(st.integers(1, 35))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    levels = draw(st.sampled_from([3, 7, 0]))  # 0 = continuous scores, else few distinct values (ties)
    lg = (
        rng.integers(-levels, levels + 1, (n, s)).astype(np.float32)
        if levels
        else rng.normal(0, 2, (n, s)).astype(np.float32)
    )
    y = rng.random((n, s)) < draw(st.sampled_from([0.05, 0.2, 0.5]))
    kinds = rng.integers(0, 4, n)  # 0: as drawn, 1: all negative, 2: single positive
    y[kinds == 1] = False
    single = np.where(kinds == 2)[0]
    y[single] = False
    y[single, rng.integers(0, s, single.size)] = True
    dens = rng.integers(0, 5, n).astype(np.float64) if draw(st.booleans()) else rng.random(n) * 10
    chunk = draw(st.integers(1, n))
    return lg, y, dens, chunk


def run(lg, y, dens, chunk, **kw):
    S = lg.shape[1]
    acc = MetricAccumulator(S, **kw)
    for i in range(0, lg.shape[0], chunk):
        acc.update(
            torch.from_numpy(lg[i : i + chunk]),
            torch.from_numpy(y[i : i + chunk]),
            None if dens is None else torch.from_numpy(dens[i : i + chunk]),
        )
    return acc, acc.compute()


def probs(lg):
    return torch.sigmoid(torch.from_numpy(lg).clamp(-30, 30).double()).float().numpy()


def nan_eq(a, b, tol=1e-9):
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= tol * max(1.0, abs(b))


@SET
@given(problems())
def test_sample_map_vs_sklearn(pb):
    lg, y, dens, chunk = pb
    _, m = run(lg, y, dens, chunk)
    p = probs(lg)
    aps = [average_precision_score(y[i], p[i]) for i in range(len(y)) if y[i].any()]
    assert m['n_pos_samples'] == len(aps) and m['n_samples'] == len(y)
    assert nan_eq(m['map'], float(np.mean(aps)) if aps else float('nan'))


@SET
@given(problems())
def test_per_sample_ap_vs_sklearn_and_map(pb):
    "per_sample_ap is sklearn's AP row by row (ties included), NaN without positives; `map` is its nan-mean."
    lg, y, dens, chunk = pb
    ap = per_sample_ap(torch.from_numpy(lg), torch.from_numpy(y))
    assert ap.dtype == torch.float64 and ap.shape == (len(y),)
    p = probs(lg)
    for i in range(len(y)):
        if not y[i].any():
            assert math.isnan(ap[i])
            continue
        assert abs(float(ap[i]) - average_precision_score(y[i], lg[i])) <= 1e-12
        assert abs(float(ap[i]) - average_precision_score(y[i], p[i])) <= 1e-12
    _, m = run(lg, y, dens, chunk)
    has = ~torch.isnan(ap)
    assert nan_eq(m['map'], float(ap[has].mean()) if has.any() else float('nan'), tol=0)  # the very same values
    # {0, 1} float targets, int16 scores and the pure-torch (CUDA) path give the same values
    assert torch.equal(
        per_sample_ap(torch.from_numpy(lg), torch.from_numpy(y).float()).nan_to_num(-1), ap.nan_to_num(-1)
    )
    q = torch.from_numpy(lg).to(torch.int16)
    qa = per_sample_ap(q, torch.from_numpy(y))
    for i in np.where(y.any(1))[0]:
        assert abs(float(qa[i]) - average_precision_score(y[i], q[i].numpy())) <= 1e-12
    M._TORCH_ONLY = True
    try:
        at = per_sample_ap(torch.from_numpy(lg), torch.from_numpy(y))
    finally:
        M._TORCH_ONLY = False
    assert torch.equal(at.nan_to_num(-1), ap.nan_to_num(-1))


def test_per_sample_ap_inputs():
    assert per_sample_ap(np.array([[0.2, 0.9, 0.9]]), np.array([[1, 1, 0]]))[0].item() == pytest.approx(
        average_precision_score([1, 1, 0], [0.2, 0.9, 0.9]), abs=1e-15
    )  # numpy arrays are accepted
    assert per_sample_ap(torch.zeros(0, 4), torch.zeros(0, 4)).shape == (0,)
    with pytest.raises(ValueError, match='NaN'):
        per_sample_ap(torch.tensor([[float('nan'), 1.0]]), torch.tensor([[1, 0]]))
    with pytest.raises(ValueError, match='shape'):
        per_sample_ap(torch.zeros(2, 3), torch.zeros(2, 4))


def test_watchlist_is_core_watchlist():
    assert WATCHLIST == list(geosdm.core.WATCHLIST) and isinstance(WATCHLIST, list) and len(WATCHLIST) == 18


@SET
@given(problems())
def test_species_ap_vs_sklearn(pb):
    lg, y, dens, chunk = pb
    acc, m = run(lg, y, dens, chunk, store_dtype='float32')
    p = probs(lg)
    ref = np.array([average_precision_score(y[:, j], p[:, j]) if y[:, j].any() else np.nan for j in range(y.shape[1])])
    np.testing.assert_allclose(acc.species_ap, ref, rtol=1e-9, atol=1e-12)
    assert nan_eq(m['species_map'], float(np.nanmean(ref)) if (~np.isnan(ref)).any() else float('nan'))


@SET
@given(problems())
def test_micro_prf_lists_topk_vs_numpy(pb):
    lg, y, dens, chunk = pb
    _, m = run(lg, y, dens, chunk)
    p = probs(lg)
    P = y.any(1)
    for t, k in [(0.05, '5'), (0.10, '10'), (0.25, '25')]:
        pred = p > np.float32(t)
        yt, yp = y.ravel(), pred.ravel()
        assert abs(m[f'precision_{k}'] - precision_score(yt, yp, zero_division=0)) < 1e-12
        assert abs(m[f'recall_{k}'] - recall_score(yt, yp, zero_division=0)) < 1e-12
        assert abs(m[f'f1_{k}'] - f1_score(yt, yp, zero_division=0)) < 1e-7
        c = pred.sum(1)
        assert nan_eq(m[f'mean_list_len_{k}'], c.mean())
        if P.any():
            assert nan_eq(m[f'list_ratio_{k}'], float(np.mean(c[P] / y[P].sum(1))))
            assert nan_eq(m[f'list_ratio_rom_{k}'], float(c[P].sum() / y[P].sum()))
    # top-K recall: expected hits under random tie-breaking, computed by brute force on the ranks
    for K in (10, 30):
        hits = 0.0
        for i in np.where(P)[0]:
            for j in np.where(y[i])[0]:
                gt = (p[i] > p[i, j]).sum()
                g = (p[i] == p[i, j]).sum()
                hits += min(max(K - gt, 0), g) / g
        assert nan_eq(m[f'top{K}_recall'], hits / y.sum() if y.sum() else float('nan'))


def test_topk_matches_torch_topk_without_ties():
    rng = np.random.default_rng(0)
    lg = rng.normal(size=(50, 60)).astype(np.float32)
    y = rng.random((50, 60)) < 0.2
    _, m = run(lg, y, None, 17)
    for K in (10, 30):
        top = torch.topk(torch.from_numpy(lg), K, dim=1).indices.numpy()
        hits = np.take_along_axis(y, top, 1).sum()
        assert abs(m[f'top{K}_recall'] - hits / y.sum()) < 1e-12


@SET
@given(problems())
def test_density_and_corr_vs_scipy(pb):
    lg, y, dens, chunk = pb
    acc, m = run(lg, y, dens, chunk)
    p = probs(lg)
    P = y.any(1)
    c = (p > np.float32(0.10)).sum(1)
    if c.std() == 0 or dens.std() == 0 or len(c) < 2:
        assert math.isnan(m['pred_density_corr'])
    else:
        assert abs(m['pred_density_corr'] - pearsonr(c, dens)[0]) < 1e-9
    if P.any():
        ap = np.array([average_precision_score(y[i], p[i]) for i in np.where(P)[0]])
        d = dens[P]
        q25, q75 = np.quantile(d, 0.25), np.quantile(d, 0.75)
        ms, md = ap[d <= q25].mean(), ap[d >= q75].mean()
        assert nan_eq(m['map_sparse'], ms) and nan_eq(m['map_dense'], md)
        assert nan_eq(m['map_density_ratio'], ms / md if md > 0 else float('nan'))


@SET
@given(problems())
def test_ece_vs_numpy(pb):
    lg, y, dens, chunk = pb
    _, m = run(lg, y, dens, chunk)
    p = probs(lg).ravel().astype(np.float64)
    yy = y.ravel()
    edges = (np.arange(1, 15, dtype=np.float32) / np.float32(15)).astype(np.float64)
    b = np.searchsorted(edges, p, side='right')
    ece = sum(abs(p[b == k].sum() - yy[b == k].sum()) for k in range(15)) / p.size
    assert abs(m['ece'] - ece) < 1e-6


@SET
@given(problems(), st.integers(1, 40))
def test_chunked_equals_one_shot(pb, chunk2):
    lg, y, dens, chunk = pb
    a1, m1 = run(lg, y, dens, lg.shape[0])
    a2, m2 = run(lg, y, dens, min(chunk2, lg.shape[0]))
    assert a1.species_ap.shape == (lg.shape[1],)
    for k, v in m1.items():
        if isinstance(v, float):
            assert nan_eq(m2[k], v, 1e-6), k
        else:
            assert m2[k] == v, k
    np.testing.assert_allclose(a1.species_ap, a2.species_ap, rtol=1e-12)


def test_watchlist_missing_and_present():
    rng = np.random.default_rng(1)
    vocab = ['aaa', 'kea1', 'bbb', 'calcon', 'galpet']
    lg = rng.normal(size=(30, 5)).astype(np.float32)
    y = rng.random((30, 5)) < 0.3
    y[:, 4] = False  # galpet present but without positives
    acc, m = run(lg, y, None, 7, vocab=vocab)
    assert m['watchlist_missing'] == [c for c in WATCHLIST if c not in vocab] and len(m['watchlist_missing']) == 15
    assert m['watchlist_no_positive'] == ['galpet'] and math.isnan(m['ap_galpet'])
    p = probs(lg)
    assert abs(m['ap_kea1'] - average_precision_score(y[:, 1], p[:, 1])) < 1e-12
    assert abs(m['ap_calcon'] - average_precision_score(y[:, 3], p[:, 3])) < 1e-12
    assert abs(m['watchlist_mean_ap'] - (m['ap_kea1'] + m['ap_calcon']) / 2) < 1e-12
    assert 'ap_hawgoo' not in m
    # only the watchlist columns stored: same watchlist numbers, no per-species export
    acc2, m2 = run(lg, y, None, 7, vocab=vocab, keep_species_ap=False)
    assert acc2.species_ap is None and math.isnan(m2['species_map'])
    for k in ('ap_kea1', 'ap_calcon', 'watchlist_mean_ap'):
        assert m2[k] == m[k]
    # no vocabulary: everything is reported missing, the mean is NaN
    _, m3 = run(lg, y, None, 7)
    assert m3['watchlist_missing'] == WATCHLIST and math.isnan(m3['watchlist_mean_ap'])


@SET
@given(problems())
def test_int16_store_is_sklearn_on_quantised_logits(pb):
    lg, y, dens, chunk = pb
    acc, m = run(lg, y, dens, chunk)  # default store: logits quantised to 1/1024
    q = np.trunc(np.clip(lg, -30, 30).astype(np.float32) * np.float32(1024))
    ref = np.array([average_precision_score(y[:, j], q[:, j]) if y[:, j].any() else np.nan for j in range(y.shape[1])])
    np.testing.assert_allclose(acc.species_ap, ref, rtol=1e-9, atol=1e-12)
    assert nan_eq(m['species_map'], float(np.nanmean(ref)) if (~np.isnan(ref)).any() else float('nan'))


def test_int16_and_float32_store_agree_when_exact():
    rng = np.random.default_rng(2)
    lg = (rng.integers(-12, 12, (40, 20)) / 4).astype(np.float32)  # multiples of 1/1024: quantisation is exact
    y = rng.random((40, 20)) < 0.3
    a1, _ = run(lg, y, None, 9, store_dtype='float32')
    a2, _ = run(lg, y, None, 9)
    np.testing.assert_allclose(a1.species_ap, a2.species_ap, rtol=1e-12)


def test_bad_input():
    acc = MetricAccumulator(5)
    with pytest.raises(ValueError, match='species'):
        acc.update(torch.zeros(2, 4), torch.zeros(2, 4), None)
    with pytest.raises(ValueError, match='obs_density'):
        acc.update(torch.zeros(2, 5), torch.zeros(2, 5), torch.zeros(3))
    with pytest.raises(ValueError, match='store_dtype'):
        MetricAccumulator(5, store_dtype='float16')
    lg = torch.zeros(3, 5)
    lg[1, 2] = float('nan')
    with pytest.raises(ValueError, match='NaN'):
        acc.update(lg, torch.zeros(3, 5), None)
    with pytest.raises(ValueError, match='shape'):
        acc.update(torch.zeros(2, 5), torch.zeros(3, 5), None)
    with pytest.raises(ValueError, match='vocab'):
        MetricAccumulator(5, vocab=['a'])


def test_empty_accumulator():
    m = MetricAccumulator(4).compute()
    assert m['n_samples'] == 0 and math.isnan(m['map']) and math.isnan(m['ece'])


# ---------------------------------------------------------------- GeoScore
BASE = dict(
    map=0.5,
    f1_10=0.4,
    list_ratio_rom_10=1.0,
    watchlist_mean_ap=0.3,
    holdout_map=0.2,
    map_density_ratio=0.8,
    pred_density_corr=0.1,
)


def test_geoscore_full():
    s, c = geoscore(BASE)
    exp = 0.2 * 0.5 + 0.2 * 0.4 + 0.15 * 1.0 + 0.1 * 0.3 + 0.1 * 0.2 + 0.2 * 0.8 + 0.05 * 0.9
    assert abs(sum(GEOSCORE_WEIGHTS.values()) - 1) < 1e-12 and abs(s - exp) < 1e-12
    assert c['list_ratio_rom_10'] == 1.0 and abs(c['pred_density_corr'] - 0.9) < 1e-12


@pytest.mark.parametrize('drop', ['holdout_map', 'watchlist_mean_ap', 'pred_density_corr', 'map_density_ratio'])
@pytest.mark.parametrize('how', ['missing', 'nan', 'none'])
def test_geoscore_redistribution(drop, how):
    m = dict(BASE)
    if how == 'missing':
        del m[drop]
    else:
        m[drop] = float('nan') if how == 'nan' else None
    s, c = geoscore(m)
    t = geoscore_table(BASE)
    rest = {k: v for k, v in t.items() if k != drop}
    exp = sum(v['score'] * v['weight'] for v in rest.values()) / sum(v['weight'] for v in rest.values())
    assert abs(s - exp) < 1e-12 and math.isnan(c[drop])
    assert abs(sum(v['eff_weight'] for v in geoscore_table(m).values()) - 1) < 1e-12


def test_geoscore_transform_edges():
    def comp(**kw):
        return geoscore({**BASE, **kw})[1]

    assert comp(list_ratio_rom_10=0.0)['list_ratio_rom_10'] == 0.0
    assert comp(list_ratio_rom_10=float('inf'))['list_ratio_rom_10'] == 0.0
    assert abs(comp(list_ratio_rom_10=math.e)['list_ratio_rom_10']) < 1e-12  # |ln e| = 1 -> 0
    assert comp(list_ratio_rom_10=10.0)['list_ratio_rom_10'] == 0.0  # clipped at 0
    assert abs(comp(list_ratio_rom_10=math.exp(-0.5))['list_ratio_rom_10'] - 0.5) < 1e-12
    assert comp(pred_density_corr=1.0)['pred_density_corr'] == 0.0
    assert comp(pred_density_corr=-1.0)['pred_density_corr'] == 0.0
    assert comp(pred_density_corr=0.0)['pred_density_corr'] == 1.0
    assert comp(map_density_ratio=1.7)['map_density_ratio'] == 1.0  # clipped to [0, 1]
    assert comp(map_density_ratio=0.0)['map_density_ratio'] == 0.0
    # one list ratio is scored: the mean of ratios (the BirdNET geomodel's, still reported) is never a fallback
    m = {k: v for k, v in BASE.items() if k != 'list_ratio_rom_10'}
    assert geoscore({**m, 'list_ratio_10': 1.0})[0] == geoscore(m)[0] != geoscore(BASE)[0]
    assert math.isnan(geoscore({**m, 'list_ratio_10': 1.0})[1]['list_ratio_rom_10'])
    assert geoscore({}) == (0.0, {k: pytest.approx(float('nan'), nan_ok=True) for k in GEOSCORE_WEIGHTS})


def test_holdout_merge():
    ho = {'map': 0.25, 'f1_10': 0.3, 'map_sparse': 0.1}
    assert prefix_metrics(ho) == {'holdout_map': 0.25, 'holdout_f1_10': 0.3, 'holdout_map_sparse': 0.1}
    base = {k: v for k, v in BASE.items() if k != 'holdout_map'}
    out = merge_holdout(base, ho)
    assert out['holdout_map'] == 0.25 and out == {
        **base,
        'holdout_map': 0.25,
        'holdout_f1_10': 0.3,
        'holdout_map_sparse': 0.1,
    }
    assert merge_holdout(base, None) == base


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_torch_paths_equal_numpy_paths(pb):
    "The pure-torch code paths (used on CUDA) give the same metrics as the numpy-accelerated CPU paths."
    lg, y, dens, chunk = pb
    a1, m1 = run(lg, y, dens, chunk)
    M._TORCH_ONLY = True
    try:
        a2, m2 = run(lg, y, dens, chunk)
    finally:
        M._TORCH_ONLY = False
    for k, v in m1.items():
        if isinstance(v, float):
            assert nan_eq(m2[k], v, 1e-6), k
        else:
            assert m2[k] == v, k
    np.testing.assert_allclose(a1.species_ap, a2.species_ap, rtol=1e-12)


# ---------------------------------------------------------------- streaming per-species AP, label pairs


@SET
@given(problems(), st.integers(1, 60), st.sampled_from(['int16', 'float32']))
def test_column_ap_streamed_equals_stored(pb, entries, dtype):
    "Per-species AP from column blocks computed on demand (`column_ap`) is the stored one, for any block size."
    lg, y, dens, chunk = pb
    acc, m = run(lg, y, dens, chunk, store_dtype=dtype)
    rows, cols = np.nonzero(y)
    asked = []

    def column_logits(c0, c1):
        asked.append((c0, c1))
        return torch.from_numpy(lg[:, c0:c1].T.copy())

    sap = M.column_ap(column_logits, lg.shape[1], lg.shape[0], rows, cols, store_dtype=dtype, entries=entries)
    np.testing.assert_array_equal(sap.numpy(), acc.species_ap)
    assert all(y[:, c0:c1].any() for c0, c1 in asked)  # blocks without a positive are never computed
    acc2, m2 = run(lg, y, dens, chunk, store_dtype=None)
    assert acc2._columns is None
    m2 = acc2.compute(column_ap=sap)
    for k, v in m.items():
        assert m2[k] == v or (isinstance(v, float) and math.isnan(v) and math.isnan(m2[k])), k


@SET
@given(problems())
def test_label_pairs_equal_dense_targets(pb):
    "Targets given as `Positives` (label pairs, padded) give the metrics of the dense targets."
    from geosdm.batches import Positives

    lg, y, dens, chunk = pb
    _, m = run(lg, y, dens, chunk)
    acc = MetricAccumulator(lg.shape[1])
    for i in range(0, lg.shape[0], chunk):
        r, c = np.nonzero(y[i : i + chunk])
        pad = 3  # padding pairs (valid 0) are ignored
        rows = torch.from_numpy(np.r_[r, np.zeros(pad, np.int64)])
        species = torch.from_numpy(np.r_[c, np.zeros(pad, np.int64)])
        valid = torch.from_numpy(np.r_[np.ones(len(r)), np.zeros(pad)]).float()
        pos = Positives(rows, species, valid, len(lg[i : i + chunk]), lg.shape[1])
        acc.update(torch.from_numpy(lg[i : i + chunk]), pos, torch.from_numpy(dens[i : i + chunk]))
    m2 = acc.compute()
    for k, v in m.items():
        assert m2[k] == v or (isinstance(v, float) and math.isnan(v) and math.isnan(m2[k])), k
