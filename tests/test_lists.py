"""Calibrated species lists: the world_a targets from bench/lists.py, the thresholds a run stores, the detection-filter
gain on a simulated world, and geosdm_predict --lists."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import exit_code
from lists_support import world_and_model

from geosdm.calibrate import (
    STRATA,
    THRESHOLD_GRID,
    best_f1_threshold,
    calibrate,
    effort_proxy,
    fit_calibration,
    logit,
    rejected_at,
    sigmoid,
    simulate_detections,
    stratum_table,
    truth_lists,
    validation_lists,
    validation_stats,
)
from geosdm.cli import predict_main
from geosdm.demo import checkpoint_data
from geosdm.geo import cell_centres
from geosdm.model import predict_proba
from geosdm.predict import Predictor

BENCH = Path(__file__).resolve().parents[1] / 'bench' / 'results' / 'lists.json'


@pytest.fixture(scope='module')
def sim(tmp_path_factory, one_thread):
    return world_and_model(tmp_path_factory.mktemp('lists'))


@pytest.mark.skipif(not BENCH.is_file(), reason='run python bench/lists.py (needs ../shared/data/world_a)')
def test_world_a_targets():
    "The measured world_a gains: F1 >= baseline + 0.02, no stratum below it, lengths within 0.85-1.15, filter gain."
    r = json.loads(BENCH.read_text())
    base = r['lists']['baseline (best global F1 on validation)']['scores']
    cal = r['lists']['calibrated (strata + species)']['scores']
    assert cal['all']['f1'] >= base['all']['f1'] + 0.02
    for k in STRATA:
        assert cal[k]['f1'] > base[k]['f1'], k
        assert 0.85 <= cal[k]['length_ratio'] <= 1.15, (k, cal[k]['length_ratio'])
        assert abs(np.log(cal[k]['length_ratio'])) < abs(np.log(base[k]['length_ratio'])), k
    f = r['filter']
    assert (
        f['geo probability, calibrated thresholds']['rejected_false']
        > (f['geo probability, one global threshold']['rejected_false'])
    )
    assert all(abs(v['kept_true'] - 0.95) < 0.005 for v in f.values())


def test_a_run_stores_its_thresholds(sim):
    world, ck = sim
    pr = Predictor(ck, device='cpu')
    c = pr.calibration
    assert c is not None and len(c.offsets) == pr.n_species and len(c.levels) == 3
    prep = checkpoint_data(pr)
    s = validation_lists(prep)
    probs = pr.predict(s.lat, s.lon, s.week, yearly='model')
    y = np.zeros(probs.shape, bool)
    y[s.rows(), s.species] = True
    assert c.info['f1_threshold'] == best_f1_threshold(probs, y)  # the baseline, recorded
    assert abs((probs[y] >= c.global_threshold).mean() - 0.9) < 0.01  # keeps 90 % of the validation records
    assert pr.names.taxonomy_version == 'sim v1' and pr.names.lookup('Oldus namus') == (0,)


def test_the_filter_rejects_more_on_a_simulated_world(sim):
    "At 95 % of the true detections kept, the calibrated thresholds reject more false ones than one threshold."
    world, ck = sim
    pr = Predictor(ck, device='cpu')
    truth = truth_lists(world, pr.vocab)
    lat, lon = cell_centres(truth['cells'])
    probs = pr.predict(lat, lon, truth['week'])
    d = simulate_detections(truth['y'], seed=0)
    p = probs[d['row'], d['species']]
    t = pr.calibration.thresholds(lat, lon)[d['row'], d['species']]
    glob, cal = rejected_at(p, d['true']), rejected_at(logit(p) - logit(t), d['true'])
    assert cal['rejected_false'] > glob['rejected_false'] + 0.01, (cal, glob)
    table = stratum_table(probs, truth, pr.calibration.thresholds(lat, lon))
    assert set(table) >= {'all', 'dense (>20)'} and all(v['n'] > 0 for v in table.values())


def test_predict_lists_flags(sim, capsys):
    _, ck = sim
    args = ['--checkpoint', str(ck), '--lat', '40', '--lon', '-100', '--week', '20', '--device', 'cpu']
    assert exit_code(predict_main, [*args, '--lang', 'de']) == 0
    out = capsys.readouterr().out
    assert "calibrated threshold" in out.splitlines()[0] and ' (de)  ' in out
    assert exit_code(predict_main, [*args, '--lists', 'global', '--threshold', '0.5']) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith(tuple(f'{n} species with p ≥ 0.5' for n in range(99)))
    assert exit_code(predict_main, [*args, '--lists', 'species', '--threshold', '0.5']) == 2
    assert 'with --lists global' in capsys.readouterr().err
    assert exit_code(predict_main, [*args, '--lang', 'xx']) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and "no common names in 'xx'" in err


def _dense_calibration(probs, y, proxy, keep=0.9, n_strata=3, shrink=300.0, weight=0.5) -> dict:
    "The calibration as it was computed before it went in blocks: on the dense (n, S) probabilities and lists."
    lp = logit(probs)
    edges = np.quantile(proxy, np.arange(1, n_strata) / n_strata).tolist()
    st = np.digitize(proxy, edges)
    level = lambda a, b: float(np.quantile(a[b], 1 - keep)) if b.any() else float(logit(0.15))
    levels = [level(lp[st == b], y[st == b]) for b in range(n_strata)]
    r = lp - np.asarray(levels)[st][:, None]
    n = y.sum(0)
    own = np.where(y, r, 0).sum(0) / np.maximum(n, 1)
    f1 = []
    for t in THRESHOLD_GRID:
        lists = probs >= t
        tp, n_pred, n_true = (lists & y).sum(1), lists.sum(1), y.sum(1)
        with np.errstate(invalid='ignore', divide='ignore'):
            f1.append(np.nanmean(np.where(n_pred + n_true > 0, 2 * tp / (n_pred + n_true), np.nan)))
    return {
        'global': level(lp, y),
        'edges': edges,
        'levels': levels,
        'offsets': weight * n / (n + shrink) * (own - r[y].mean()),
        'n_records': n,
        'f1_threshold': THRESHOLD_GRID[int(np.nanargmax(f1))],
    }


def test_calibration_in_blocks_equals_the_dense_one(sim):
    "Blocks of validation samples (the real size has no room for N × S arrays) give the dense calibration."
    _, ck = sim
    pr = Predictor(ck, device='cpu')
    prep = checkpoint_data(pr)
    s = validation_lists(prep)
    probs = predict_proba(pr.model, s.lat, s.lon, s.week, yearly='model')
    y = np.zeros(probs.shape, bool)
    y[s.rows(), s.species] = True
    effort = effort_proxy(prep)
    proxy = effort(s.lat, s.lon)
    want = _dense_calibration(probs, y, proxy)
    dense = fit_calibration(probs, y, proxy, effort)  # the same arithmetic on the same probabilities: equal
    assert dense.edges == want['edges'] and dense.levels == want['levels']
    assert dense.global_threshold == float(sigmoid(want['global']))
    np.testing.assert_array_equal(dense.offsets, want['offsets'])
    np.testing.assert_array_equal(dense.n_records, want['n_records'])
    assert dense.info['f1_threshold'] == want['f1_threshold'] and dense.info['n_records'] == y.sum()
    for rows in (len(s), 4096, 37, 1):  # a block of other than predict_proba's batch may move the last bits
        c = calibrate(pr.model, prep, block_rows=rows)
        assert c.info == dense.info and c.edges == dense.edges
        np.testing.assert_allclose(c.levels, dense.levels, rtol=0, atol=1e-5)
        np.testing.assert_allclose(c.offsets, dense.offsets, rtol=0, atol=1e-5)
        np.testing.assert_array_equal(c.n_records, dense.n_records)
    st = validation_stats(pr.model, s, block_rows=37)
    np.testing.assert_array_equal(st.row, s.rows())
    np.testing.assert_array_equal(st.species, s.species)
    np.testing.assert_allclose(st.lp, logit(probs[y]), rtol=0, atol=1e-5)
