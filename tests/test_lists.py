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
    best_f1_threshold,
    logit,
    rejected_at,
    simulate_detections,
    stratum_table,
    truth_lists,
    validation_lists,
)
from geosdm.cli import predict_main
from geosdm.demo import checkpoint_data
from geosdm.geo import cell_centres
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
