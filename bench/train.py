"""Training benchmark on world_a: throughput, peak RSS and quality against known truth.

Trains on ../shared/data/world_a/combined.parquet minus the cells of test_cells.txt, then predicts the
test cells at the truth weeks and scores them as ../shared/data/README.md describes:

- truth_mAP: mean over (test cell, truth week) of the AP of the predicted scores against the true
  present set (p >= 0.1), over the vocabulary plus every truly present species the vocabulary lacks
  (ranked last); also per effort stratum of the cell (0 checklists / <= 20 / more in the year).
- range_mAP: for each (species, week) present in >= 5 test cells, the AP over the test cells; the mean.

Each configuration runs in its own process so that its peak RSS is its own.

    python bench/train.py                        # scales 0.5 and 0.75, 12 epochs, batch 1024, CPU
    python bench/train.py --scales 0.5 --epochs 3 -- --species_loss an   # extra geosdm_train flags after --
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WORLD = ROOT.parent / 'shared' / 'data' / 'world_a'
OUT = ROOT / 'bench' / 'results'


def average_precision_rows(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    "AP of every row (scikit-learn's definition, ties as one threshold); NaN for rows without positives."
    order = np.argsort(-scores, axis=1, kind='stable')
    s = np.take_along_axis(scores, order, 1)
    y = np.take_along_axis(labels, order, 1).astype(np.float64)
    cum = np.cumsum(y, 1)
    n, m = s.shape
    idx = np.broadcast_to(np.arange(m), (n, m))
    end = np.ones((n, m), bool)
    end[:, :-1] = s[:, :-1] != s[:, 1:]
    # index of the last element of each element's tie group: reverse cumulative minimum of end indices
    g = np.where(end, idx, m)
    g = np.minimum.accumulate(g[:, ::-1], axis=1)[:, ::-1]
    prec_at_g = np.take_along_axis(cum, g, 1) / (g + 1)
    npos = cum[:, -1]
    with np.errstate(invalid='ignore', divide='ignore'):
        ap = (y * prec_at_g).sum(1) / npos
    ap[npos == 0] = np.nan
    return ap


def prepare_split() -> tuple[Path, Path]:
    "world_a minus its test cells, written once under bench/results/."
    import polars as pl

    from geosdm.core import atomic_path

    OUT.mkdir(parents=True, exist_ok=True)
    dst = OUT / 'world_a_train.parquet'
    src = WORLD / 'combined.parquet'
    if not dst.exists() or dst.stat().st_mtime < src.stat().st_mtime:
        test = set((WORLD / 'test_cells.txt').read_text().split())
        df = pl.read_parquet(src).filter(~pl.col('h3_index').is_in(list(test)))
        with atomic_path(dst) as tmp:
            df.drop('geometry').write_parquet(tmp)  # runs started together: whole files
    return dst, WORLD / 'combined_taxonomy.csv'


LIST_P = 0.15  # the probability a species list starts at, for list_f1


def truth_scores(predictor, world: Path = WORLD) -> dict:
    "truth_mAP (overall and per effort stratum) and range_mAP of `predictor` on world_a's test cells (in `world`)."
    import polars as pl

    test = (world / 'test_cells.txt').read_text().split()
    truth = pl.read_parquet(world / 'truth_land.parquet').filter(pl.col('h3_index').is_in(test))
    eff = pl.read_parquet(world / 'effort.parquet').filter(pl.col('h3_index').is_in(test))
    year = eff.select('h3_index', pl.sum_horizontal([f'week_{w}' for w in range(1, 49)]).alias('n'))
    strata = {
        r[0]: ('none' if r[1] == 0 else 'sparse (<=20)' if r[1] <= 20 else 'dense (>20)') for r in year.iter_rows()
    }
    truth = truth.sort('h3_index', 'week')
    cells, weeks = truth['h3_index'].to_list(), truth['week'].to_numpy()
    vocab = predictor.vocab
    vidx = {c: i for i, c in enumerate(vocab)}
    present = [
        [s for s, p in zip(ss, pp) if p >= 0.1] for ss, pp in zip(truth['species'].to_list(), truth['p'].to_list())
    ]
    extra = sorted({s for row in present for s in row if s not in vidx})
    cols = {**vidx, **{s: len(vocab) + i for i, s in enumerate(extra)}}
    n, m = len(cells), len(vocab) + len(extra)
    probs = predictor.predict_cells(cells, weeks)
    scores = np.full((n, m), -1.0, np.float32)
    scores[:, : len(vocab)] = probs  # missing species rank last
    labels = np.zeros((n, m), bool)
    for i, row in enumerate(present):
        labels[i, [cols[s] for s in row]] = True
    ap = average_precision_rows(scores, labels)
    res = {
        'truth_mAP': float(np.nanmean(ap)),
        'n_rows': int(np.sum(~np.isnan(ap))),
        'n_species_missing_from_vocab': len(extra),
    }
    st = np.array([strata.get(c, 'none') for c in cells])
    for k in ('none', 'sparse (<=20)', 'dense (>20)'):
        sel = (st == k) & ~np.isnan(ap)
        res[f'truth_mAP[{k}]'] = float(ap[sel].mean()) if sel.any() else None
        res[f'n_rows[{k}]'] = int(sel.sum())
    # range_mAP: per (species, week) over the test cells
    raps = []
    for w in np.unique(weeks):
        sel = weeks == w
        lab, sc = labels[sel].T, scores[sel].T
        keep = lab.sum(1) >= 5
        if keep.any():
            raps.append(average_precision_rows(sc[keep], lab[keep]))
    raps = np.concatenate(raps)
    res['range_mAP'] = float(np.mean(raps))
    pred = scores >= LIST_P  # the species list at p >= LIST_P against the truth's list, per (cell, week)
    size = pred.sum(1) + labels.sum(1)
    f1 = 2 * (pred & labels).sum(1) / np.maximum(size, 1)
    res['list_f1'] = float(f1[size > 0].mean())
    res['n_species_weeks'] = int(len(raps))
    return res


def single(spec: dict) -> dict:
    "One training run + scoring, in this process."
    import torch

    from geosdm.config import TrainConfig, build_parser
    from geosdm.predict import Predictor
    from geosdm.trainer import train

    data, tax = prepare_split()
    ck = OUT / f"ck_{spec['name']}"
    args = [
        '--data_path',
        str(data),
        '--taxonomy',
        str(tax),
        '--model_scale',
        str(spec['scale']),
        '--num_epochs',
        str(spec['epochs']),
        '--batch_size',
        str(spec['batch_size']),
        '--device',
        spec['device'],
        '--checkpoint_dir',
        str(ck),
        '--overwrite',
        '--seed',
        str(spec['seed']),
        '--patience',
        '0',
        *spec['extra'],
    ]
    cfg = TrainConfig(**vars(build_parser().parse_args(args)))
    load0, t0 = os.getloadavg(), time.perf_counter()
    tr = train(cfg, progress=False)
    wall = time.perf_counter() - t0
    h = tr.history
    out = {
        'spec': spec,
        'args': args,
        'wall_seconds': wall,
        'n_train_samples': len(tr.prep.train),
        'batch_size': (h.get('batch_size') or [spec['batch_size']])[-1],
        'torch_threads': torch.get_num_threads(),
        'load_avg_start': load0,
        'load_avg_end': os.getloadavg(),
        'samples_per_s_epochs': h['train_samples_per_s'],
        'train_seconds_epochs': h['train_seconds'],
        'n_species': tr.prep.n_species,
        'epochs': tr.epoch,
        'samples_per_s_median': float(np.median(h['train_samples_per_s'])),
        'train_seconds_per_epoch_median': float(np.median(h['train_seconds'])),
        'val_seconds_per_epoch_median': float(np.median(h['val_seconds'])),
        'best_epoch': tr.best_epoch,
        'best_val_geoscore': tr.best_geoscore,
        'final_val_geoscore': h['val_geoscore'][-1],
        'final_val_map': h['val_map'][-1],
    }
    for which in ('latest', 'best'):
        pr = Predictor(ck / f'checkpoint_{which}.pt', device=spec['device'])
        out[f'quality_{which}'] = truth_scores(pr)
    out['peak_rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--scales', type=float, nargs='+', default=[0.5, 0.75])
    ap.add_argument('--epochs', type=int, default=12)
    ap.add_argument('--batch_size', default='auto', help='a number or auto (CPU: 1024)')
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--name', default='', help='suffix of the result names')
    ap.add_argument('--out', default=str(OUT / 'train.json'))
    ap.add_argument('--_single', help=argparse.SUPPRESS)
    argv = sys.argv[1:]
    extra = argv[argv.index('--') + 1 :] if '--' in argv else []
    a = ap.parse_args(argv[: argv.index('--')] if '--' in argv else argv)
    if a._single:
        print('RESULT ' + json.dumps(single(json.loads(a._single))), flush=True)
        return
    if not WORLD.exists():
        print(f'skipped: {WORLD} not found')
        return
    results = []
    for s in a.scales:
        spec = dict(
            name=f'scale{s}{a.name}',
            scale=s,
            epochs=a.epochs,
            batch_size=a.batch_size,
            device=a.device,
            seed=a.seed,
            extra=extra,
        )
        p = subprocess.run(
            [sys.executable, __file__, '--_single', json.dumps(spec)],
            capture_output=True,
            text=True,
            env={**os.environ, 'TQDM_DISABLE': '1'},
        )
        line = [ln for ln in p.stdout.splitlines() if ln.startswith('RESULT ')]
        if p.returncode or not line:
            print(p.stdout[-3000:], p.stderr[-3000:])
            raise SystemExit(f'run {spec} failed')
        r = json.loads(line[-1][7:])
        results.append(r)
        q = r['quality_best']
        print(
            f"scale {s}, batch {r['batch_size']}, {r['torch_threads']} threads, load {r['load_avg_start'][0]:.1f}→"
            f"{r['load_avg_end'][0]:.1f}: {r['samples_per_s_median']:,.0f} samples/s, "
            f"{r['train_seconds_per_epoch_median']:.1f} s/epoch "
            f"(+{r['val_seconds_per_epoch_median']:.1f} s val), peak RSS {r['peak_rss_mb']:,.0f} MB, "
            f"best epoch {r['best_epoch']} GeoScore {r['best_val_geoscore']:.4f}"
        )
        for which in ('best', 'latest'):
            q = r[f'quality_{which}']
            print(
                f"  [{which}] truth_mAP {q['truth_mAP']:.3f} (none {q['truth_mAP[none]']}, "
                f"sparse {q['truth_mAP[sparse (<=20)]']}, "
                f"dense {q['truth_mAP[dense (>20)]']})  range_mAP {q['range_mAP']:.3f}"
            )
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(results, indent=1))
    print(f'wrote {a.out}')


if __name__ == '__main__':
    main()
