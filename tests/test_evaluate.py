"""geosdm.evaluate: per-sample scores against scikit-learn and the trainer's metrics, per-cell and per-region tables."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from maps_support import pred, prep, root  # noqa: E402,F401  (fixtures)

from geosdm import evaluate  # noqa: E402


def test_region_labels():
    lab = evaluate.region_labels([90.0, -90.0, 0.0, 37.0], [180.0, -180.0, 0.0, -120.0])
    assert lab.tolist() == [
        'lat +60..+90, lon +120..+180',
        'lat -90..-60, lon -180..-120',
        'lat +0..+30, lon +0..+60',
        'california',
    ]


def test_sample_scores_against_sklearn_and_metrics(pred, prep):
    import torch
    from sklearn.metrics import average_precision_score

    from geosdm.metrics import MetricAccumulator

    ev = evaluate.evaluate_split(pred, prep, 'val')
    P = ev['n_true'] > 0
    i = np.flatnonzero(P)[:40]
    np.testing.assert_allclose(ev['ap'][i], [average_precision_score(ev['y'][k], ev['probs'][k]) for k in i], atol=1e-9)
    acc = MetricAccumulator(prep.n_species, vocab=prep.vocab)
    lg = torch.logit(torch.from_numpy(ev['probs']).double().clamp(1e-7, 1 - 1e-7)).float()
    acc.update(lg, torch.from_numpy(ev['y']), torch.from_numpy(ev['samples'].obs_density))
    m = acc.compute()
    assert np.nanmean(ev['ap']) == pytest.approx(m['map'], abs=1e-4)
    assert ev['n_pred'][:, 1].mean() == pytest.approx(m['mean_list_len_10'], abs=1e-6)
    assert ev['n_pred'][P, 1].sum() / ev['n_true'][P].sum() == pytest.approx(m['list_ratio_rom_10'], rel=1e-6)


def test_region_and_cell_tables(pred, prep):
    ev = evaluate.evaluate_split(pred, prep, 'holdout')
    rt = evaluate.region_table(ev)
    assert rt['region'].to_list() == ['us_northwest']  # the hold-out set is the box
    assert rt['n_samples'][0] == len(ev['samples'])
    tp, npred, ntrue = ev['tp'][:, 2].sum(), ev['n_pred'][:, 2].sum(), ev['n_true'].sum()
    assert rt['precision_25'][0] == pytest.approx(tp / npred) and rt['recall_25'][0] == pytest.approx(tp / ntrue)
    ct = evaluate.cell_table(ev, 0.25)
    assert ct['n_samples'].sum() == len(ev['samples'])
    assert set(ct['h3_index']) == set(np.asarray(prep.cells)[ev['samples'].cell])
    ev_val = evaluate.evaluate_split(pred, prep, 'val')
    rv = evaluate.region_table(ev_val)
    assert rv['n_samples'].sum() == len(ev_val['samples'])  # (val cells inside the box stay in val)
    assert len(rv) == len(set(evaluate.region_labels(ev_val['samples'].lat, ev_val['samples'].lon)))
    rel = evaluate.reliability(ev_val, bins=5)
    p, y = ev_val['probs'].ravel(), ev_val['y'].ravel()
    m = (p >= 0.2) & (p < 0.4)
    row = rel.filter(pl.col('bin_lo') == 0.2)
    assert row['n'][0] == m.sum() and row['observed'][0] == pytest.approx(y[m].mean())
    with pytest.raises(ValueError, match='not scored'):
        evaluate.cell_table(ev, 0.3)
