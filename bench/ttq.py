"""Time to quality on world_a: truth_mAP against wall seconds, one curve per training variant, in one sitting.

Each variant trains world_a minus its test cells (the split of bench/train.py) in its own process and, after every
`--score_every` seconds of training (at the next epoch's end), scores the test cells against the truth. Truth
scoring is allowed here only: training never sees the truth. The clock counts data preparation (from the cache,
made once beforehand), training and validation; the truth scoring is not counted.

A variant is a set of geosdm_train options, optionally on another revision of geosdm (`ref`: a git commit, checked
out into a temporary worktree and put first on the path), so that today's default and each change run side by side.

    python bench/ttq.py                               # every variant in VARIANTS, in turn
    python bench/ttq.py --variants default old_default --minutes 12
    python bench/ttq.py --plot                        # redraw the curve from bench/results/ttq.json

Writes bench/results/ttq.json (per variant: options, revision, machine, and per scoring point the epoch, wall
seconds, passes over the samples with records, truth_mAP overall and per effort stratum, range_mAP, list F1 against
the truth at p > 0.15, validation GeoScore and the truth-free criteria) and bench/results/ttq.png / ttq.svg.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / 'bench' / 'results'
JSON = OUT / 'ttq.json'

# name → (git revision or None for this checkout, geosdm_train options)
VARIANTS: dict[str, tuple[str | None, dict]] = {
    # the defaults before an epoch meant one pass (an epoch = len(train) // batch steps): 36 of those epochs, the
    # run whose quality is the target (scale 0.5, as bench/train.py)
    'old_default': ('0ffa7d3', dict(num_epochs=36, model_scale=0.5)),
    # today's defaults at that scale, and a shorter run of them: the time-to-quality target
    'default_s0.5': (None, dict(model_scale=0.5)),
    'short_s0.5': (None, dict(model_scale=0.5, num_epochs=60)),
    'short_share0.25_s0.5': (None, dict(model_scale=0.5, num_epochs=60, env_share=0.25)),
    # today's defaults (scale 0.75)
    'default': (None, dict()),
}


def machine() -> dict:
    return dict(
        host=platform.node(), cpus=os.cpu_count(), load=os.getloadavg(), python=platform.python_version(),
        date=datetime.datetime.now().isoformat(timespec='seconds'),
    )  # fmt: skip


def checkout(ref: str) -> Path:
    "A worktree of `ref` in a temporary folder (its geosdm package is used instead of this checkout's)."
    d = Path(tempfile.mkdtemp(prefix=f'ttq_{ref[:8]}_'))
    subprocess.run(
        ['git', '-C', str(ROOT), 'worktree', 'add', '--detach', str(d), ref], check=True, capture_output=True
    )
    return d


def run_variant(name: str, minutes: float, score_every: float) -> dict:
    "Train variant `name` in a fresh process (on its revision) and return its curve."
    ref, opts = VARIANTS[name]
    src = checkout(ref) if ref else ROOT
    env = {**os.environ, 'PYTHONPATH': str(src), 'TQDM_DISABLE': '1'}
    args = [sys.executable, str(Path(__file__).resolve()), '--child', name, '--minutes', str(minutes)]
    args += ['--score_every', str(score_every)]
    try:
        p = subprocess.run(args, env=env, capture_output=True, text=True)
    finally:
        if ref:
            subprocess.run(['git', '-C', str(ROOT), 'worktree', 'remove', '--force', str(src)], capture_output=True)
    line = [ln for ln in p.stdout.splitlines() if ln.startswith('RESULT ')]
    if p.returncode or not line:
        return dict(name=name, failed=(p.stderr or p.stdout)[-2000:])
    return json.loads(line[-1][7:])


class _Scorer:
    "truth_mAP and friends of a trainer's model on world_a's test cells (bench/train.py's protocol)."

    def __init__(self, vocab):
        sys.path.insert(0, str(ROOT / 'bench'))
        from train import WORLD, truth_scores

        self.world, self.truth_scores, self.vocab = WORLD, truth_scores, list(vocab)

    def __call__(self, model) -> dict:
        from geosdm.geo import cell_centres
        from geosdm.model import predict_proba

        scorer = self

        class Pred:
            vocab = scorer.vocab

            @staticmethod
            def predict_cells(cells, week):
                lat, lon = cell_centres(cells)
                return predict_proba(model, lat, lon, week)

        return self.truth_scores(Pred(), self.world)


def child(name: str, minutes: float, score_every: float):
    "The variant's own process: prepare (cached), train until `minutes` of training, score on the way."
    sys.path.insert(0, str(ROOT / 'bench'))
    import torch
    from train import prepare_split

    from geosdm.config import TrainConfig, check_config
    from geosdm.trainer import Trainer, prepare

    _, opts = VARIANTS[name]
    data, tax = prepare_split()
    cache = OUT / 'ttq_cache' / (VARIANTS[name][0] or 'head')
    base = dict(data_path=str(data), taxonomy=str(tax), seed=0, checkpoint_dir=tempfile.mkdtemp())
    cfg = check_config(TrainConfig(**{**base, 'data_cache_dir': str(cache), **opts}))
    prepare(cfg, progress=False)  # the cache, made before the clock starts
    t0, c0 = time.perf_counter(), time.process_time()
    prep = prepare(cfg, progress=False)
    tr = Trainer(cfg, prep)
    n_obs = int((prep.train.n_pos() > 0).sum())
    scorer, rows, state = _Scorer(prep.vocab), [], dict(excluded=0.0, excluded_cpu=0.0, next=score_every)

    def on_epoch(tr, row):
        wall = time.perf_counter() - t0 - state['excluded']
        last = wall >= minutes * 60 or tr.epoch >= tr.cfg.num_epochs
        if ('val_geoscore' not in row or wall < state['next']) and not last:
            return  # scored at validated epochs (at most every --score_every seconds), and at the end
        state['next'] = wall + score_every
        cpu = time.process_time() - c0 - state['excluded_cpu']
        ts, cs = time.perf_counter(), time.process_time()
        q = scorer(tr.model)
        rows.append(
            dict(
                epoch=tr.epoch, wall_seconds=wall, steps=tr.step, passes=tr.step * tr.batch_size / max(1, n_obs),
                **{k: v for k, v in q.items() if k.startswith(('truth_mAP', 'range_mAP', 'list_f1'))},
                cpu_seconds=cpu,
                **{k: v for k, v in row.items() if k.startswith(('val_', 'geoscore_')) and isinstance(v, float)},
                train_samples_per_s=row.get('train_samples_per_s'),
            )
        )  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
        state['excluded'] += time.perf_counter() - ts
        state['excluded_cpu'] += time.process_time() - cs
        if last:
            raise StopIteration

    try:
        tr.fit(progress=False, on_epoch=on_epoch, save=False, quiet=True)
    except StopIteration:
        pass
    res = dict(name=name, ref=VARIANTS[name][0], options=opts, machine=machine(), threads=torch.get_num_threads())
    print('RESULT ' + json.dumps({**res, 'curve': rows}), flush=True)


def plot(results: dict):
    import altair as alt

    keep = ('wall_seconds', 'cpu_seconds', 'truth_mAP')
    rows = [
        dict(variant=n, **{k: p[k] for k in keep}) for n, r in results['variants'].items() for p in r.get('curve', [])
    ]
    if not rows:
        return
    base = alt.Chart(alt.Data(values=rows)).mark_line(point=True)
    y = alt.Y('truth_mAP:Q', scale=alt.Scale(zero=False))
    chart = alt.hconcat(
        base.encode(x=alt.X('wall_seconds:Q', title='wall seconds'), y=y, color='variant:N').properties(
            title='world_a: truth_mAP against wall time', width=420, height=320
        ),
        base.encode(x=alt.X('cpu_seconds:Q', title='CPU seconds'), y=y, color='variant:N').properties(
            title='… and against CPU time (steadier on a shared machine)', width=420, height=320
        ),
    )
    chart.save(str(OUT / 'ttq.svg'))
    chart.save(str(OUT / 'ttq.png'))


CRITERIA = ('val_geoscore', 'val_map', 'val_species_loss', 'val_loss')


def criteria(results: dict) -> dict:
    """How well each truth-free validation figure tracks truth_mAP along each curve: Spearman's rho over the
    scored epochs, over the late ones (truth_mAP within 0.01 of its best), and the truth_mAP of the epoch each
    would keep (the best by it) against the curve's best truth_mAP."""
    from scipy.stats import spearmanr

    out = {}
    for name, r in results['variants'].items():
        c = [p for p in r.get('curve', []) if all(isinstance(p.get(k), float) for k in CRITERIA)]
        if len(c) < 3:
            continue
        t = [p['truth_mAP'] for p in c]
        late = [i for i, x in enumerate(t) if x >= max(t) - 0.01]
        row = {'best_truth_mAP': max(t)}
        for k in CRITERIA:
            sign = -1 if k.endswith('loss') else 1
            v = [sign * p[k] for p in c]
            kept = max(range(len(c)), key=v.__getitem__)
            row[k] = dict(
                rho=float(spearmanr(v, t)[0]),
                rho_late=float(spearmanr([v[i] for i in late], [t[i] for i in late])[0]) if len(late) > 2 else None,
                kept_epoch=c[kept]['epoch'], kept_truth_mAP=t[kept],
            )  # fmt: skip
        out[name] = row
        print(
            f'{name}: best truth_mAP {max(t):.4f}; '
            + '; '.join(f'{k} rho {row[k]["rho"]:.3f}, keeps {row[k]["kept_truth_mAP"]:.4f}' for k in CRITERIA)
        )
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--variants', nargs='*', default=list(VARIANTS))
    ap.add_argument('--minutes', type=float, default=40.0, help='most training wall minutes per variant')
    ap.add_argument('--score_every', type=float, default=0.0, help='least seconds of training between truth scores')
    ap.add_argument('--child', help=argparse.SUPPRESS)
    ap.add_argument('--plot', action='store_true', help='only redraw the curve from the JSON')
    ap.add_argument('--out', type=Path, default=JSON, help='the JSON to write (and to add variants to)')
    a = ap.parse_args()
    if a.child:
        return child(a.child, a.minutes, a.score_every)
    OUT.mkdir(parents=True, exist_ok=True)
    results = json.loads(a.out.read_text()) if a.out.exists() else {'variants': {}}
    if not a.plot:
        for n in a.variants:
            print(f'== {n}', flush=True)
            results['variants'][n] = run_variant(n, a.minutes, a.score_every)
            results['machine'] = machine()
            a.out.write_text(json.dumps(results, indent=1))
    results['criteria'] = criteria(results)
    a.out.write_text(json.dumps(results, indent=1))
    plot(results)


if __name__ == '__main__':
    main()
