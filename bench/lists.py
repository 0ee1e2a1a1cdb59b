"""Species lists and a detection filter on world_a: calibrated thresholds against one global threshold.

Uses the world_a model that `bench/train.py --scales 0.5` trains (world_a minus its test cells), learns the
thresholds on its validation cells (geosdm.calibrate) and scores them against the truth of the test cells:

- lists: mean list F1 against the true lists (reporting rate >= 0.1) and the list length ratio, overall and per
  effort stratum of the cell (no checklists / <= 20 in the year / more), for the baseline (the best global F1
  threshold on the validation lists), each calibration variant, and the truth-best global threshold;
- filter: detections simulated from the truth (true species plus species absent there); at 95 % of the true
  detections kept, the share of false ones rejected by the probability, the calibrated thresholds, the classifier
  confidence and the combined score.

Writes bench/results/lists.json (read by nbs/25_calibrate.ipynb).

    python bench/lists.py [--checkpoint bench/results/ck_scale0.5/checkpoint_best.pt]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WORLD = ROOT.parent / 'shared' / 'data' / 'world_a'
OUT = ROOT / 'bench' / 'results'

# name → fit_calibration options (each learned on the validation cells only)
VARIANTS = {
    'record level (global)': dict(n_strata=1, weight=0.0),
    'species offsets only': dict(n_strata=1, weight=0.5),
    'strata only': dict(n_strata=3, weight=0.0),
    'calibrated (strata + species)': dict(n_strata=3, weight=0.5),
    'calibrated, keep 85 %': dict(n_strata=3, weight=0.5, keep=0.85),
    'calibrated, keep 95 %': dict(n_strata=3, weight=0.5, keep=0.95),
    'calibrated, 5 strata': dict(n_strata=5, weight=0.5),
    'calibrated, shrink 100': dict(n_strata=3, weight=0.5, shrink=100.0),
    'calibrated, full offsets': dict(n_strata=3, weight=1.0),
}


def validation(pred, prep):
    "Validation probabilities, recorded lists and effort proxies of the weekly samples with records."
    from geosdm.calibrate import effort_proxy, validation_lists

    s = validation_lists(prep)
    probs = pred.predict(s.lat, s.lon, s.week, yearly='model')
    y = np.zeros(probs.shape, bool)
    y[s.rows(), s.species] = True
    effort = effort_proxy(prep)
    return probs, y, effort(s.lat, s.lon), effort


def list_rows(cal_of, probs_t, truth, lat, lon, baseline: float) -> dict:
    "Per variant: its thresholds at the test rows and its scores against the truth."
    from geosdm.calibrate import THRESHOLD_GRID, list_scores, stratum_table

    rows = {'baseline (best global F1 on validation)': {'threshold_label': f'{baseline:.2f}', 'thr': baseline}}
    for name, cal in cal_of.items():
        label = f'{cal.global_threshold:.3f}' if name.startswith('record level') else 'per species and place'
        thr = cal.global_threshold if name.startswith('record level') else cal.thresholds(lat, lon)
        rows[name] = {'threshold_label': label, 'thr': thr}
    f1 = [np.nanmean(list_scores(probs_t, truth['y'], t, truth['missing'])['f1']) for t in THRESHOLD_GRID]
    best = float(THRESHOLD_GRID[int(np.nanargmax(f1))])
    rows['truth-best global (for scale)'] = {'threshold_label': f'{best:.2f}', 'thr': best}
    for r in rows.values():
        r['scores'] = stratum_table(probs_t, truth, r.pop('thr'))
    return rows


def filter_rows(probs_t, truth, cal, lat, lon) -> dict:
    "Share of false detections rejected at 95 % of the true ones kept, per score."
    from geosdm.calibrate import combined_score, logit, rejected_at, simulate_detections

    d = simulate_detections(truth['y'], n_true=20, n_false=20, seed=0)
    p = probs_t[d['row'], d['species']]
    thr = cal.thresholds(lat, lon)[d['row'], d['species']]
    scores = {
        'geo probability, one global threshold': p,
        'geo probability, calibrated thresholds': logit(p) - logit(thr),
        'classifier confidence alone': d['confidence'],
        'confidence x geo prior (geo_score)': combined_score(d['confidence'], p, thr),
    }
    out = {k: rejected_at(v, d['true'], 0.95) for k, v in scores.items()}
    return out, len(d['true'])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--checkpoint', default=str(OUT / 'ck_scale0.5' / 'checkpoint_best.pt'))
    ap.add_argument('--out', default=str(OUT / 'lists.json'))
    a = ap.parse_args()
    if not WORLD.exists() or not Path(a.checkpoint).is_file():
        print(f'skipped: needs {WORLD} and {a.checkpoint} (python bench/train.py --scales 0.5 --epochs 12)')
        return
    from geosdm.calibrate import best_f1_threshold, fit_calibration, truth_lists
    from geosdm.core import write_json
    from geosdm.demo import checkpoint_data
    from geosdm.geo import cell_centres
    from geosdm.predict import Predictor

    t0 = time.perf_counter()
    pred = Predictor(a.checkpoint, device='cpu')
    prep = checkpoint_data(pred)
    probs_v, y_v, proxy_v, effort = validation(pred, prep)
    baseline = best_f1_threshold(probs_v, y_v)
    cals = {k: fit_calibration(probs_v, y_v, proxy_v, effort, **kw) for k, kw in VARIANTS.items()}
    truth = truth_lists(WORLD, pred.vocab)
    lat, lon = cell_centres(truth['cells'])
    probs_t = pred.predict(lat, lon, truth['week'])
    lists = list_rows(cals, probs_t, truth, lat, lon, baseline)
    filt, n_det = filter_rows(probs_t, truth, cals['calibrated (strata + species)'], lat, lon)
    res = {
        'checkpoint': str(Path(a.checkpoint).relative_to(ROOT) if ROOT in Path(a.checkpoint).parents else a.checkpoint),
        'n_val_samples': int(len(y_v)),
        'n_val_records': int(y_v.sum()),
        'n_truth_rows': int(len(truth['y'])),
        'n_detections': n_det,
        'baseline_threshold': baseline,
        'variants': {k: {'options': kw, **cals[k].info} for k, kw in VARIANTS.items()},
        'lists': lists,
        'filter': filt,
        'seconds': round(time.perf_counter() - t0, 1),
    }
    write_json(a.out, res)
    for k, v in lists.items():
        s = v['scores']
        print(
            f'{k:42s} {v["threshold_label"]:>22s}  F1 {s["all"]["f1"]:.3f}  ratio {s["all"]["length_ratio"]:.2f}  '
            + '  '.join(f'{n.split()[0]} {s[n]["f1"]:.3f}/{s[n]["length_ratio"]:.2f}' for n in s if n != 'all')
        )
    for k, v in filt.items():
        print(f'{k:42s} rejected {v["rejected_false"]:.4f} at {v["kept_true"]:.4f} kept')
    print(f'wrote {a.out}')


if __name__ == '__main__':
    main()
