"""Benchmark: exported model sizes and predictions/s, torch vs onnxruntime (fp32, fp16), CPU, batch 1 and 10,000.

Usage: OMP_NUM_THREADS=1 python bench/export.py [--scale 0.5] [--species 6509] [--n_env 7] [--repeats 3]
Writes bench/results/export.json. Random weights (speed and size do not depend on training); one thread each.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from geosdm.export import write_onnx
from geosdm.model import count_parameters, create_model, predict_proba
from geosdm.predict import onnx_proba, onnx_session


def rate(fn, n_rows, calls, repeats):
    "Best predictions/s over `repeats` runs of `calls` calls of `fn` (each predicts n_rows rows)."
    fn()  # warm-up
    best = float('inf')
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, time.perf_counter() - t)
    return n_rows * calls / best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--scale', type=float, default=0.5)
    ap.add_argument('--species', type=int, default=6509)
    ap.add_argument('--n_env', type=int, default=7)
    ap.add_argument('--repeats', type=int, default=3)
    a = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS') or 1))
    model = create_model(a.species, a.n_env, a.scale).eval()
    r = np.random.default_rng(0)
    big = [
        r.uniform(-60, 70, 10_000).astype(np.float32),
        r.uniform(-180, 180, 10_000).astype(np.float32),
        r.integers(1, 49, 10_000).astype(np.float32),
    ]
    one = [x[:1] for x in big]
    out = {
        'scale': a.scale,
        'species': a.species,
        'parameters': count_parameters(model),
        'threads': torch.get_num_threads(),
        'load_1min': os.getloadavg()[0],
        'rows_per_s': {},
        'bytes': {},
    }
    with tempfile.TemporaryDirectory() as d:
        sessions = {}
        for name, fp16 in (('onnx', False), ('onnx_fp16', True)):
            p = write_onnx(model, Path(d) / f'{name}.onnx', fp16=fp16)
            out['bytes'][name] = p.stat().st_size
            sessions[name] = onnx_session(p, 'cpu')
        torch.save(model.state_dict(), Path(d) / 'w.pt')
        out['bytes']['torch_state_dict'] = (Path(d) / 'w.pt').stat().st_size
        runs = {'torch': lambda x: predict_proba(model, *x, batch_size=10_000)}
        runs.update({k: (lambda x, s=s: onnx_proba(s, *x, batch_size=10_000)) for k, s in sessions.items()})
        for k, fn in runs.items():
            out['rows_per_s'][k] = {
                'batch_1': rate(lambda fn=fn: fn(one), 1, 300, a.repeats),
                'batch_10000': rate(lambda fn=fn: fn(big), 10_000, 2, a.repeats),
            }
            print(k, {b: f'{v:,.0f}' for b, v in out['rows_per_s'][k].items()}, flush=True)
    out['load_1min_after'] = os.getloadavg()[0]
    res = Path(__file__).parent / 'results'
    res.mkdir(exist_ok=True)
    (res / 'export.json').write_text(json.dumps(out, indent=1))
    print(json.dumps(out['bytes']), f"load {out['load_1min']:.2f} → {out['load_1min_after']:.2f}")


if __name__ == '__main__':
    main()
