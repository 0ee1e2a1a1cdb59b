"""GPU benchmark of the trainer on world_a; run by bench/gpu.sh (see there). Writes bench/results/gpu.json.

1. Time to quality: wall seconds from nothing (data preparation without cache, CUDA start included) to a model
   whose truth_mAP on world_a's test cells reaches --target (the 12-epoch CPU default run), with the defaults
   (--batch_size auto, --amp auto, --compile auto), in a run of --ttq_epochs epochs (the next length only if the
   first does not get there); validation runs every epoch as in geosdm_train, the truth scoring between epochs
   is not counted.
2. Throughput grid: scale x batch x precision, --epochs epochs each (figures of the last epoch): samples/s,
   GPU SM busy % (nvidia-smi dmon, over that epoch's training), peak GPU memory, train and validation seconds.
   Scale 0.75 first, then 3. compile modes at scale 0.75, batch auto, bf16, then the other scales.

Every run is skipped once the time budget (--budget seconds) would be exceeded; the JSON is rewritten after each run.
    python bench/gpu.py --prepare   # on the CPU machine: bench/results/gpu_in/world_a (test cells only for the truth)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'bench'))
IN = ROOT / 'bench' / 'results' / 'gpu_in'
OUT_JSON = ROOT / 'bench' / 'results' / 'gpu.json'
T0 = time.perf_counter()


def prepare_inputs():
    "world_a minus its test cells (no geometry) and the truth of the test cells, into gpu_in/world_a."
    import polars as pl
    from train import WORLD, prepare_split

    data, tax = prepare_split()
    dst = IN / 'world_a'
    dst.mkdir(parents=True, exist_ok=True)
    test = (WORLD / 'test_cells.txt').read_text().split()
    (dst / 'test_cells.txt').write_text((WORLD / 'test_cells.txt').read_text())
    for f in ('truth_land.parquet', 'effort.parquet'):
        pl.read_parquet(WORLD / f).filter(pl.col('h3_index').is_in(test)).write_parquet(dst / f)
    pl.read_parquet(data).write_parquet(dst / 'train.parquet')
    (dst / 'taxonomy.csv').write_bytes(Path(tax).read_bytes())
    print('wrote', dst, sorted(p.name for p in dst.iterdir()))


class Dmon:
    "`nvidia-smi dmon -s u` in the background: SM busy % samples with their wall-clock time."

    def __init__(self):
        self.samples, self.col = [], None
        try:
            self.p = subprocess.Popen(
                ['stdbuf', '-oL', 'nvidia-smi', 'dmon', '-s', 'u', '-d', '1'],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        except OSError:
            try:
                self.p = subprocess.Popen(
                    ['nvidia-smi', 'dmon', '-s', 'u', '-d', '1'],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    text=True,
                )
            except OSError:
                self.p = None
                return
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            f = line.split()
            if line.startswith('#') and 'sm' in f:
                self.col = f.index('sm') - 1  # '#' is its own field
            elif f and self.col is not None and not line.startswith('#'):
                try:
                    self.samples.append((time.time(), float(f[self.col])))
                except (ValueError, IndexError):
                    pass

    def mean(self, t0: float, t1: float):
        "Mean SM busy % of the samples in [t0, t1 + 1 s] (dmon reports each second the second before)."
        v = [s for t, s in self.samples if t0 < t <= t1 + 1.0]
        return sum(v) / len(v) if v else None

    def stop(self):
        if self.p:
            self.p.terminate()


DEVICE, FRACTION = 'cuda', 1.0  # --device / --fraction (a quick check of this script on the CPU)


def config(**kw):
    from geosdm.config import TrainConfig, check_config

    d = IN / 'world_a'
    base = dict(
        data_path=str(d / 'train.parquet'),
        taxonomy=str(d / 'taxonomy.csv'),
        device=DEVICE,
        seed=0,
        patience=0,
        checkpoint_dir=tempfile.mkdtemp(),
        data_cache_dir=str(IN / 'cache'),
        sample_fraction=FRACTION,
    )
    return check_config(TrainConfig(**{**base, **kw}))


class InMemory:
    "The predictor interface of bench/train.py's truth_scores, on a trainer's model."

    def __init__(self, tr):
        self.tr, self.vocab = tr, list(tr.prep.vocab)

    def predict_cells(self, cells, week):
        from geosdm.geo import cell_centres
        from geosdm.model import predict_proba

        lat, lon = cell_centres(cells)
        return predict_proba(self.tr.model, lat, lon, week)


def epoch(tr, dmon) -> dict:
    "Train and validate one epoch; the figures of the grid."
    import torch

    if DEVICE == 'cuda':
        torch.cuda.synchronize()
    t0 = time.time()
    row = tr.train_epoch(progress=False)
    t1 = time.time()
    tr.epoch += 1
    tv = time.perf_counter()
    v = tr.validate()
    val_s = time.perf_counter() - tv
    return dict(
        samples_per_s=row['train_samples_per_s'],
        train_seconds=row['train_seconds'],
        val_seconds=val_s,
        val_share=val_s / row['train_seconds'],
        sm_busy_pct=dmon.mean(t0, t1),
        batch_size=row['batch_size'],
        lr_peak=row['lr_peak'],
        skipped=row['train_skipped_batches'],
        train_loss=row['train_loss'],
        val_geoscore=v['val_geoscore'],
    )


def time_to_quality(target: float, max_epochs: int, dmon) -> dict:
    "Wall seconds to truth_mAP ≥ target with the defaults in `max_epochs` epochs, data preparation (no cache) included."
    from train import truth_scores

    from geosdm.trainer import Trainer, prepare

    t0 = time.perf_counter()
    scoring = 0.0
    cfg = config(num_epochs=max_epochs, no_cache=True)
    prep = prepare(cfg, progress=False)
    t_prep = time.perf_counter() - t0
    tr = Trainer(cfg, prep)
    curve = []
    for _ep in range(max_epochs):
        e = epoch(tr, dmon)
        ts = time.perf_counter()
        q = truth_scores(InMemory(tr), IN / 'world_a')
        scoring += time.perf_counter() - ts
        wall = time.perf_counter() - t0 - scoring
        curve.append(dict(epoch=tr.epoch, wall_seconds=wall, truth_mAP=q['truth_mAP'], range_mAP=q['range_mAP'], **e))
        print(
            f"time to quality ({max_epochs} epochs): epoch {tr.epoch} {wall:.1f} s truth_mAP {q['truth_mAP']:.4f} "
            f"({e['samples_per_s']:,.0f} samples/s, validation {e['val_seconds']:.2f} s)",
            flush=True,
        )
        if q['truth_mAP'] >= target:
            return dict(
                reached=True,
                wall_seconds=wall,
                truth_mAP=q['truth_mAP'],
                quality=q,
                epochs=tr.epoch,
                prep_seconds=t_prep,
                target=target,
                batch_size=tr.batch_size,
                compile=tr.compile,
                amp=str(tr.amp_dtype),
                curve=curve,
            )
    return dict(
        reached=False,
        wall_seconds=curve[-1]['wall_seconds'],
        truth_mAP=curve[-1]['truth_mAP'],
        quality=q,
        epochs=tr.epoch,
        prep_seconds=t_prep,
        target=target,
        batch_size=tr.batch_size,
        compile=tr.compile,
        amp=str(tr.amp_dtype),
        curve=curve,
    )


def grid_run(scale, batch, amp, epochs, dmon, compile='off') -> dict:
    import torch

    from geosdm.trainer import Trainer, prepare

    cfg = config(model_scale=scale, batch_size=batch, amp=amp, num_epochs=epochs, compile=compile)
    tr = Trainer(cfg, prepare(cfg, progress=False))
    cuda = DEVICE == 'cuda'
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    eps = [epoch(tr, dmon) for _ in range(epochs)]
    r = dict(
        scale=scale,
        batch=batch,
        amp=amp,
        compile=compile,
        epochs=eps,
        **eps[-1],
        peak_gpu_mib=torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        n_train=len(tr.prep.train),
        n_species=tr.prep.n_species,
    )
    del tr
    if cuda:
        torch.cuda.empty_cache()
    return r


def save(res):
    OUT_JSON.parent.mkdir(parents=True, exist_ok=True)
    tmp = OUT_JSON.with_suffix('.tmp')
    tmp.write_text(json.dumps(res, indent=1))
    os.replace(tmp, OUT_JSON)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--prepare', action='store_true', help='write the inputs (on the CPU machine) and stop')
    ap.add_argument('--target', type=float, default=0.874, help='truth_mAP of the 12-epoch CPU default run')
    ap.add_argument(
        '--ttq_epochs',
        type=int,
        nargs='+',
        default=[12, 20],
        help='time to quality: runs of these many epochs (cosine to the end), until one reaches --target',
    )
    ap.add_argument('--epochs', type=int, default=2, help='epochs per grid run')
    ap.add_argument('--scales', type=float, nargs='+', default=[0.5, 0.75, 1.0])
    ap.add_argument('--batches', nargs='+', default=['1024', '8192', 'auto', '16384', '32768'])
    ap.add_argument('--amps', nargs='+', default=['bf16', 'fp16'])
    ap.add_argument('--compiles', nargs='*', default=['default', 'reduce-overhead'])
    ap.add_argument('--budget', type=float, default=420, help='seconds for everything')
    ap.add_argument('--device', default='cuda', help='cpu: a quick check of this script')
    ap.add_argument('--fraction', type=float, default=1.0, help='--sample_fraction of every run (quick checks)')
    a = ap.parse_args()
    if a.prepare:
        return prepare_inputs()
    global DEVICE, FRACTION
    DEVICE, FRACTION = a.device, a.fraction
    import torch

    res = dict(
        started=datetime.datetime.now().isoformat(),
        torch=torch.__version__,
        cuda=torch.version.cuda,
        gpu=torch.cuda.get_device_name() if DEVICE == 'cuda' else None,
        import_seconds=time.perf_counter() - T0,
        args=vars(a),
        grid=[],
        compile=[],
        skipped=[],
    )
    dmon = Dmon()
    try:
        res['time_to_quality'] = []
        for n in a.ttq_epochs:
            res['time_to_quality'].append(time_to_quality(a.target, n, dmon))
            save(res)
            if res['time_to_quality'][-1]['reached']:
                break
        first = [s for s in a.scales if s == 0.75]  # the target's scale first, then compile, then the rest
        runs = [('grid', s, b, amp, 'off') for s in first for amp in a.amps for b in a.batches]
        runs += [('compile', 0.75, 'auto', 'bf16', c) for c in a.compiles]
        runs += [('grid', s, b, amp, 'off') for s in a.scales if s not in first for amp in a.amps for b in a.batches]
        for kind, s, b, amp, c in runs:
            left = a.budget - (time.perf_counter() - T0)
            need = 60 if c != 'off' else 12
            if left < need:
                res['skipped'].append(dict(scale=s, batch=b, amp=amp, compile=c))
                continue
            batch = b if b == 'auto' else int(b)
            try:
                r = grid_run(s, batch, amp, a.epochs, dmon, c)
            except Exception as e:
                r = dict(scale=s, batch=b, amp=amp, compile=c, error=repr(e)[:300])
            res[kind].append(r)
            save(res)
            if 'error' in r:
                print(f'{kind} scale {s} batch {b} {amp} {c}: {r["error"]}', flush=True)
                continue
            print(
                f"{kind} scale {s} batch {b}→{r['batch_size']} {amp} compile {c}: {r['samples_per_s']:,.0f} samples/s, "
                f"SM busy {r['sm_busy_pct']} %, peak {r['peak_gpu_mib'] or 0:,.0f} MiB, "
                f"train {r['train_seconds']:.2f} s, "
                f"validation {r['val_seconds']:.2f} s",
                flush=True,
            )
    finally:
        dmon.stop()
        res['seconds'] = time.perf_counter() - T0
        save(res)
    print('wrote', OUT_JSON)


if __name__ == '__main__':
    main()
