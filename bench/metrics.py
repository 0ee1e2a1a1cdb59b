"""Benchmark: full metric set (MetricAccumulator.update over chunks + compute) for N samples x S species.

Usage: python bench/metrics.py [--device cpu|cuda] [--n 25000] [--species 6500] [--chunk 2048] [--repeats 3]
Writes bench/results/metrics.json (merged per device).
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from geosdm.geoscore import geoscore
from geosdm.metrics import WATCHLIST, MetricAccumulator


def make_data(n, s, pos_per_sample, device, seed=0):
    "Random logits with ~pos_per_sample sparse positives per row; positives get a modest logit boost."
    g = torch.Generator(device='cpu').manual_seed(seed)
    y = torch.rand(n, s, generator=g) < (pos_per_sample / s)
    lg = torch.randn(n, s, generator=g) * 2.0 - 3.0 + 2.0 * y.float()
    dens = torch.rand(n, generator=g) * 100
    return lg.to(device), y.to(device), dens.to(device)


def sync(dev):
    if dev.startswith('cuda'):
        torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--n', type=int, default=25000)
    ap.add_argument('--species', type=int, default=6500)
    ap.add_argument('--chunk', type=int, default=2048)
    ap.add_argument('--pos', type=float, default=20.0)
    ap.add_argument('--repeats', type=int, default=3)
    ap.add_argument('--store_dtype', default='int16', choices=['int16', 'float32'])
    a = ap.parse_args()
    lg, y, dens = make_data(a.n, a.species, a.pos, a.device)
    vocab = [f'sp{i:05d}' for i in range(a.species - len(WATCHLIST))] + WATCHLIST
    times, upd, cpu = [], [], []
    for r in range(a.repeats + 1):  # first round is warm-up
        acc = MetricAccumulator(a.species, vocab, device=a.device, store_dtype=a.store_dtype)
        sync(a.device)
        t0 = time.perf_counter()
        c0 = time.process_time()
        for i in range(0, a.n, a.chunk):
            acc.update(lg[i : i + a.chunk], y[i : i + a.chunk], dens[i : i + a.chunk])
        sync(a.device)
        t1 = time.perf_counter()
        m = acc.compute()
        sync(a.device)
        t2 = time.perf_counter()
        c2 = time.process_time()
        if r:
            times.append(t2 - t0)
            upd.append(t1 - t0)
            cpu.append(c2 - c0)
    res = dict(
        device=a.device,
        device_name=(
            torch.cuda.get_device_name() if a.device.startswith('cuda') else f'cpu x{torch.get_num_threads()} threads'
        ),
        n=a.n,
        species=a.species,
        chunk=a.chunk,
        pos_per_sample=a.pos,
        store_dtype=a.store_dtype,
        total_s_best=min(times),
        total_s_median=sorted(times)[len(times) // 2],
        update_s_best=min(upd),
        compute_s_best=min(t - u for t, u in zip(times, upd)),
        process_cpu_s_best=min(cpu),
        load_avg_1min=os.getloadavg()[0],
        cpu_count=os.cpu_count(),
        map=m['map'],
        species_map=m['species_map'],
        geoscore=geoscore(m)[0],
        torch=torch.__version__,
        torch_threads=torch.get_num_threads(),
    )
    for k, v in res.items():
        print(f'{k:>16}: {v}')
    out = Path(__file__).parent / 'results' / 'metrics.json'
    out.parent.mkdir(parents=True, exist_ok=True)
    allres = json.loads(out.read_text()) if out.exists() else {}
    allres[f'{a.device}_{a.store_dtype}_torchthreads{torch.get_num_threads()}'] = res
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix='.tmp')
    with os.fdopen(fd, 'w') as f:
        json.dump(allres, f, indent=1)
    os.replace(tmp, out)


if __name__ == '__main__':
    main()
