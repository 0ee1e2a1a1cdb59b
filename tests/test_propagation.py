"""Label propagation and label-frequency weights: exactness against a brute-force reference, caps, island
endemics, untouched validation labels, cache keys, the weight curve, and the trainer wiring."""

from __future__ import annotations

import h3
import numpy as np
import pytest
import torch
from scipy.stats import percentileofscore

from geosdm.core import demo_parquet
from geosdm.data import flatten_lists, prepare_data, split_cells
from geosdm.inputs import encode_env, load_combined
from geosdm.propagation import (
    PropagationParams,
    env_space,
    freq_weight_curve,
    haversine_km,
    label_freq_weights,
    propagate_keys,
    range_threshold_km,
    region_counts,
    region_of,
    region_percentiles,
    unit_xyz,
)

DEMO = demo_parquet()


@pytest.fixture(scope='module')
def demo_raw():
    "The demo world as propagate_keys sees it inside prepare_data (default split)."
    df, env_cols, res = load_combined(DEMO)
    fl = flatten_lists(df)
    env, names, _ = encode_env(df, env_cols)
    ll = np.array([h3.cell_to_latlng(c) for c in df['h3_index']])
    tr, _ = split_cells(df.height, 0.1)
    train = np.zeros(df.height, bool)
    train[tr] = True
    return dict(
        fl=fl,
        nc=len(fl.codes),
        train=train,
        feats=env_space(env, names),
        lat=ll[:, 0],
        lon=ll[:, 1],
        cells=df['h3_index'].to_list(),
    )


def weekly_sets(w_key, nc, train, week):
    "{cell: set(codes)} of one week's (1..48) labels of training cells."
    s = w_key // nc
    m = (s % 48 == week - 1) & train[s // 48]
    out = {}
    for c, k in zip((s[m] // 48).tolist(), (w_key[m] % nc).tolist()):
        out.setdefault(c, set()).add(k)
    return out


def brute_force_week(labels: dict, train, feats, lat, lon, thr, p: PropagationParams) -> dict:
    "The algorithm for one week, written plainly with loops (slow, obvious)."
    n = len(train)
    donors = [c for c in range(n) if train[c] and len(labels.get(c, ())) >= p.min_obs]
    added = {}
    for r in range(n):
        if not train[r] or len(labels.get(r, ())) >= p.min_obs:
            continue
        d = np.linalg.norm(feats[donors] - feats[r], axis=1)
        cand = set()
        for i in np.argsort(d, kind='stable')[: p.k]:
            dn = donors[i]
            if p.env_dist_max > 0 and d[i] > p.env_dist_max:
                continue
            if haversine_km(lat[r], lon[r], lat[dn], lon[dn]) > p.max_radius:
                continue
            cand |= labels[dn]
        cand -= labels.get(r, set())
        keep = set()
        for s in cand:
            occ = [c for c, ks in labels.items() if s in ks]
            if min(haversine_km(lat[r], lon[r], lat[c], lon[c]) for c in occ) <= thr[s] + 1e-6:
                keep.add(s)
        if keep:
            added[r] = keep
    return added


@pytest.mark.parametrize(
    'params',
    [
        PropagationParams(),
        PropagationParams(k=4, max_radius=600, env_dist_max=1.0, range_cap=300),
        PropagationParams(k=12, max_radius=2000, env_dist_max=0, max_spread=0.5, range_cap=0, min_obs=5),
    ],
)
def test_matches_brute_force(demo_raw, params):
    r = demo_raw
    nc, train = r['nc'], r['train']
    w_new, y_new, rep = propagate_keys(r['fl'].w_key, r['fl'].y_key, nc, train, r['feats'], r['lat'], r['lon'], params)
    ys = r['fl'].y_key // nc
    thr = range_threshold_km(ys[train[ys]], r['fl'].y_key[train[ys]] % nc, nc, unit_xyz(r['lat'], r['lon']), params)
    n_checked = 0
    for week in (3, 27):
        before = weekly_sets(r['fl'].w_key, nc, train, week)
        after = weekly_sets(w_new, nc, train, week)
        expect = brute_force_week(before, train, r['feats'], r['lat'], r['lon'], thr, params)
        got = {c: after[c] - before.get(c, set()) for c in after if after[c] - before.get(c, set())}
        assert got == expect
        assert rep['labels_added_per_week'][week] == sum(map(len, expect.values()))
        n_checked += sum(map(len, expect.values()))
    assert n_checked > 0  # the comparison is not vacuous
    assert rep['labels_added'] == len(w_new) - len(r['fl'].w_key) + len(y_new) - len(r['fl'].y_key)
    # only training cells change; their old labels all stay
    changed = np.setdiff1d(w_new, r['fl'].w_key)
    assert train[changed // nc // 48].all()
    assert np.isin(r['fl'].w_key, w_new).all()


def test_added_labels_respect_every_cap(demo_raw):
    r = demo_raw
    nc, train = r['nc'], r['train']
    p = PropagationParams(k=8, max_radius=700, env_dist_max=1.5, range_cap=350, max_spread=1.5)
    w_new, _, rep = propagate_keys(r['fl'].w_key, r['fl'].y_key, nc, train, r['feats'], r['lat'], r['lon'], p)
    assert rep['labels_added_weekly'] > 100
    new = np.setdiff1d(w_new, r['fl'].w_key)
    s = new // nc
    cell, week, code = s // 48, s % 48, new % nc
    orig = r['fl'].w_key
    os_ = orig // nc
    ocell, oweek, ocode = os_ // 48, os_ % 48, orig % nc
    otrain = train[ocell]
    n_lab = np.bincount(os_[otrain], minlength=len(train) * 48).reshape(-1, 48)
    rng = np.random.default_rng(0)
    for i in rng.choice(len(new), 300, replace=False):
        c, w, k = cell[i], week[i], code[i]
        # some donor (observed training cell of that week, holding the code) satisfies the radius and env caps
        dm = otrain & (oweek == w) & (ocode == k)
        donors = ocell[dm]
        donors = donors[n_lab[donors, w] >= p.min_obs]
        geo = haversine_km(r['lat'][c], r['lon'][c], r['lat'][donors], r['lon'][donors])
        env = np.linalg.norm(r['feats'][donors] - r['feats'][c], axis=1)
        assert ((geo <= p.max_radius) & (env <= p.env_dist_max + 1e-9)).any()
        # the nearest observation of the code that week lies within the hard range cap
        obs = ocell[otrain & (oweek == w) & (ocode == k)]
        assert haversine_km(r['lat'][c], r['lon'][c], r['lat'][obs], r['lon'][obs]).min() <= p.range_cap + 1e-6
        assert n_lab[c, w] < p.min_obs  # only sparse samples receive labels


def test_island_endemics_stay_on_their_island():
    "Hawaii and California share one environment; Hawaii's endemics must not be copied to California."
    island = sorted(h3.grid_disk(h3.latlng_to_cell(20.0, -157.0, 3), 2))  # 19 cells around Hawaii
    main_ = sorted(h3.grid_disk(h3.latlng_to_cell(36.0, -119.0, 3), 3))  # 37 cells in California
    cells = island + main_
    ll = np.array([h3.cell_to_latlng(c) for c in cells])
    lat, lon = ll[:, 0], ll[:, 1]
    n_i, n = len(island), len(cells)
    rng = np.random.default_rng(0)
    feats = rng.normal(0, 0.05, (n, 3))  # one environment everywhere
    keys = []
    for w in range(48):
        for c in range(n):
            if c < n_i:
                codes = range(100, 115)  # island donors: 15 endemics
            elif c % 3 == 0:
                codes = range(0, 12)  # mainland donors
            else:
                codes = [0] if c % 2 else []  # sparse mainland cells
            keys += [(c * 48 + w) * 200 + k for k in codes]
    w_key = np.array(sorted(keys), np.int64)
    y_key = np.unique(w_key // 200 // 48 * 200 + w_key % 200)
    train = np.ones(n, bool)

    def leaked(p):
        w_new, y_new, _ = propagate_keys(w_key, y_key, 200, train, feats, lat, lon, p)
        new = np.concatenate(
            [
                np.setdiff1d(w_new, w_key) // 200 // 48 * 200 + np.setdiff1d(w_new, w_key) % 200,
                np.setdiff1d(y_new, y_key),
            ]
        )
        c, k = new // 200, new % 200
        assert (c >= n_i).all() and len(new) > 0  # mainland cells did gain labels
        return int(((k >= 100) & (c >= n_i)).sum())

    # the radius lets Hawaii's donors reach California (about 4,000 km): only the range check stands in the way
    wide = dict(k=20, max_radius=5000, env_dist_max=2.0, min_obs=10)
    assert leaked(PropagationParams(**wide, max_spread=0)) > 0  # without it, endemics leak
    assert leaked(PropagationParams(**wide)) == 0  # seed defaults: 2 × range, ≤ 500 km
    assert leaked(PropagationParams(**wide, max_spread=3.0, range_cap=0)) == 0  # no cap: the range alone


def test_validation_and_holdout_labels_untouched(tmp_path):
    kw = dict(min_obs_per_species=1, holdout_regions=['california'], progress=False)
    a = prepare_data(DEMO, **kw)
    b = prepare_data(DEMO, propagate_labels=True, **kw)
    assert a.vocab == b.vocab
    for split in ('val', 'holdout'):
        sa, sb = getattr(a, split), getattr(b, split)
        assert len(sa) > 0
        np.testing.assert_array_equal(sa.offsets, sb.offsets)
        np.testing.assert_array_equal(sa.species, sb.species)
        np.testing.assert_array_equal(sa.obs_density, sb.obs_density)
    assert b.train.nnz - a.train.nnz == b.stats['propagation']['labels_added'] > 0
    np.testing.assert_array_equal(a.train.obs_density, b.train.obs_density)
    np.testing.assert_array_equal(a.region_counts, b.region_counts)  # weights count observed labels only


def test_cache_key_includes_propagation_options(tmp_path):
    kw = dict(cache_dir=tmp_path, progress=False)
    off1 = prepare_data(DEMO, **kw)
    off2 = prepare_data(DEMO, propagate_labels=False, **kw)
    assert off2.stats['from_cache'] and off1.fingerprint == off2.fingerprint
    on = prepare_data(DEMO, propagate_labels=True, **kw)
    assert on.fingerprint != off1.fingerprint and not on.stats['from_cache']
    cap = prepare_data(
        DEMO, propagate_labels=True, propagate_range_cap=200, **kw
    )  # not in the key of the BirdNET geomodel training script
    env = prepare_data(DEMO, propagate_labels=True, propagate_env_dist_max=1.0, **kw)
    assert len({on.fingerprint, cap.fingerprint, env.fingerprint}) == 3
    assert cap.train.nnz < on.train.nnz and env.train.nnz < on.train.nnz
    again = prepare_data(DEMO, propagate_labels=True, propagate_range_cap=200.0, **kw)
    assert again.stats['from_cache'] and again.train.nnz == cap.train.nnz
    np.testing.assert_array_equal(again.region_counts, cap.region_counts)
    assert again.stats['propagation']['labels_added'] == cap.stats['propagation']['labels_added']
    with pytest.raises(ValueError, match='--propagate_k: must be ≥ 1'):
        prepare_data(DEMO, propagate_labels=True, propagate_k=0, **kw)


def test_env_space_drops_and_flags():
    names = ['landcover_class_1', 'landcover_class_2', 'a', 'b', 'c', 'empty']
    env = np.array(
        [[1, 0, 1.0, 5.0, 3.0, np.nan], [0, 1, 2.0, np.nan, 3.0, np.nan], [np.nan, np.nan, 3.0, 7.0, 3.0, np.nan]]
    )
    F = env_space(env, names)
    # 2 one-hot + a + b (c constant, empty all-NaN dropped) + b's indicator + landcover-missing indicator
    assert F.shape == (3, 6)
    np.testing.assert_allclose(F[:, 2], (env[:, 2] - 2) / np.std([1, 2, 3]))
    np.testing.assert_allclose(F[:, 4], [0, 1, 0])
    np.testing.assert_allclose(F[:, 5], [0, 0, 1])
    assert np.linalg.norm(F[0, :2] - F[1, :2]) == pytest.approx(1.0)


def test_region_percentiles_match_scipy():
    rng = np.random.default_rng(3)
    counts = rng.poisson(3, size=(36, 50)) * (rng.random((36, 50)) < 0.4)
    counts[5] = 0
    counts[6] = 0
    counts[6, 7] = 4  # an empty region; a single-species region
    counts[:, 49] = 0  # a species never counted
    pct = region_percentiles(counts)
    expect = np.full(50, -np.inf)
    for r in range(36):
        present = np.flatnonzero(counts[r] > 0)
        for s in present:
            v = 50.0 if len(present) < 2 else percentileofscore(counts[r, present], counts[r, s], kind='strict')
            expect[s] = max(expect[s], v)
    np.testing.assert_allclose(pct[:49], expect[:49])
    assert np.isnan(pct[49])
    w = label_freq_weights(counts, 0.05, 10, 90)
    np.testing.assert_allclose(w[:49], freq_weight_curve(expect[:49], 0.05, 10, 90), rtol=1e-6)
    assert w[49] == 1.0


def test_weight_curve_seed_table():
    table = {0: 0.01, 1: 0.01, 10: 0.10, 25: 0.25, 50: 0.50, 75: 0.76, 90: 0.91, 99: 1.0, 100: 1.0}
    got = freq_weight_curve(list(table), 0.01, 1, 99)
    np.testing.assert_allclose(got, list(table.values()), atol=0.006)
    # the CLI defaults (10 → 95): linear in between, clamped outside
    np.testing.assert_allclose(freq_weight_curve([5, 10, 52.5, 95, 97], 0.01, 10, 95), [0.01, 0.01, 0.505, 1, 1])
    with pytest.raises(ValueError, match='pct_lo'):
        label_freq_weights(np.ones((36, 3)), 0.01, 50, 50)


def test_region_counts_bins():
    lat = np.array([-90.0, 0.0, 45.0, 89.9])
    lon = np.array([-180.0, 0.0, 100.0, 179.9])
    np.testing.assert_array_equal(region_of(lat, lon), [0, 21, 28, 35])
    c = region_counts(
        lat,
        lon,
        np.array([0, 1, 1, 2, 3, 3]),
        np.array([0, 0, 1, 1, 2, 2]),
        3,
        keep_cell=np.array([True, True, True, False]),
    )
    assert c.shape == (36, 3) and c.sum() == 4
    assert c[0, 0] == 1 and c[21, 0] == 1 and c[21, 1] == 1 and c[28, 1] == 1


def test_trainer_uses_weights_on_positive_labels(tmp_path):
    from geosdm.config import TrainConfig, check_config
    from geosdm.losses import smooth_targets, total_loss
    from geosdm.trainer import Trainer, prepare

    cfg = TrainConfig(
        data_path=str(DEMO),
        checkpoint_dir=str(tmp_path),
        model_scale=0.25,
        num_epochs=1,
        label_freq_weight=True,
        label_freq_weight_min=0.05,
        label_freq_weight_pct_lo=5,
        label_freq_weight_pct_hi=90,
        propagate_labels=True,
        propagate_k=5,
        propagate_range_cap=300,
        device='cpu',
        seed=0,
    )
    prep = prepare(cfg, progress=False)
    assert PropagationParams.of(prep.options) == PropagationParams(k=5, range_cap=300)
    tr = Trainer(cfg, prep)
    expect = label_freq_weights(prep.region_counts, 0.05, 5, 90)
    np.testing.assert_allclose(tr.label_weights.numpy(), expect)
    assert 0.05 <= expect.min() < 1 and expect.max() == 1
    # the weights scale the positive terms only: compare with the hand-weighted element losses
    lat, lon, week, y, cell = tr.train_data.batch(torch.arange(256))
    assert y.sum() > 0
    with torch.no_grad():
        out = tr.model(lat, lon, week, return_env=True)
        got = total_loss(out, y, tr.env[cell], tr.loss_fn, env_weight=0.0, label_weights=tr.label_weights)['species']
        elem = tr.loss_fn.elementwise(out.species.dense(), smooth_targets(y, tr.loss_fn.label_smoothing))
        hand = (elem * torch.where(y > 0.5, tr.label_weights, torch.ones(()))).mean()
        plain = total_loss(out, y, tr.env[cell], tr.loss_fn, env_weight=0.0)['species']
    assert float(got) == pytest.approx(float(hand), rel=1e-5)
    assert float(got) < float(plain)
    from conftest import exit_code

    from geosdm.cli import train_main

    assert (
        exit_code(
            train_main,
            ['--data_path', str(DEMO), '--propagate_labels', '--propagate_k', '0', '--checkpoint_dir', str(tmp_path)],
        )
        == 2
    )
    from geosdm.core import ConfigError

    with pytest.raises(ConfigError, match='propagate_range_cap'):
        check_config(TrainConfig(data_path=str(DEMO), propagate_labels=True, propagate_range_cap=-5))
    with pytest.raises(ConfigError, match='label_freq_weight_min'):
        check_config(TrainConfig(data_path=str(DEMO), label_freq_weight=True, label_freq_weight_min=0))
