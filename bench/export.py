"""Benchmark: exported models of trained checkpoints: file sizes, errors against torch, top-10 agreement, speed.

Usage: OMP_NUM_THREADS=1 python bench/export.py [--species 12000] [--scale 0.75] [--big_epochs 16] [--work DIR]

Three trained models: the demo world's (scale 0.5) after 3 and after 12 epochs, and a 12,000-species model of scale
0.75 (the shape of the BirdNET geomodel) trained briefly on a simulated world, so that its weights are a trained
model's (the sizes depend on the shape only; the errors depend on the weights). For each, the formats of
`geosdm_export` (onnx, onnx_fp16, onnx_int8) and the candidates they were chosen against: the float16 graph geosdm
wrote before (float16 arithmetic, onnxruntime's converter), the same with the output layer and the sigmoid in
float32, and onnxruntime's dynamic int8 quantization (int8 activations too). Each gets its file size, the measures
of `geosdm.export.prob_errors` on `check_inputs()` (max |Δp|, the relative error, the top-10 overlap and the share
of equal top-10 sets), the largest |Δp| per band of p, and predictions per CPU second (one thread, onnxruntime, batch
1 and batch 10,000; CPU time of this process, so that other load on a shared machine counts less than wall time).
Writes bench/results/export.json.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from geosdm import simulate
from geosdm.config import DEMO_DEFAULTS
from geosdm.core import write_json
from geosdm.export import FORMATS, check_inputs, compare, export_model, prob_errors
from geosdm.model import count_parameters, predict_proba
from geosdm.predict import Predictor, onnx_proba, onnx_session
from geosdm.trainer import TrainConfig, train

BANDS = [(0, 0.001), (0.001, 0.01), (0.01, 0.1), (0.1, 0.5)]  # of min(p, 1 - p)


def many_names(n, rng, _invent=simulate.invent_names):
    "`invent_names` for more species than its 7,200 scientific names: repeat it with a suffix per round."
    if n <= 7000:
        return _invent(n, rng)
    sci, com = [], []
    for i in range(0, n, 7000):
        a, b = _invent(min(7000, n - i), rng)
        sci += [f'{x} {"abcdefghij"[i // 7000]}' if i else x for x in a]
        com += [f'{x} {i // 7000}' if i else x for x in b]
    return sci, com


def demo_model(work: Path, epochs: int) -> Path:
    "The demo world's model (the defaults of geosdm_train without --data_path) after `epochs` epochs."
    ck = work / f'demo_{epochs}' / 'checkpoint_latest.pt'
    if not ck.is_file():
        cfg = {**DEMO_DEFAULTS, 'num_epochs': epochs, 'checkpoint_dir': str(ck.parent), 'device': 'cpu'}
        train(TrainConfig(**cfg, cpu_threads=1), progress=False)
    return ck


def big_model(work: Path, species: int, scale: float, epochs: int) -> Path:
    "A `species`-species model of `scale` trained `epochs` epochs on a simulated world of H3 resolution 1."
    world, ck = work / f'world_{species}', work / f'big_{species}_{scale}_{epochs}' / 'checkpoint_latest.pt'
    if not (world / 'combined.parquet').is_file():
        simulate.invent_names = many_names
        simulate.simulate_world(n_species=int(species * 1.08), res=1, seed=1).write(world)
    if not ck.is_file():
        cfg = dict(data_path=str(world / 'combined.parquet'), checkpoint_dir=str(ck.parent), model_scale=scale)
        cfg |= dict(num_epochs=epochs, min_obs_per_species=1, max_species=species, lr_warmup=0.5, device='cpu')
        train(TrainConfig(**cfg, cpu_threads=1), progress=False)
    return ck


def candidates(fp32: Path, d: Path) -> dict[str, Path]:
    "The files the formats were chosen against, made from the float32 export."
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.float16 import convert_float_to_float16

    out = {}
    m = convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True, op_block_list=['LayerNormalization'])
    onnx.save(m, str(d / 'fp16_arith.onnx'))
    out['fp16 arithmetic (geosdm before)'] = d / 'fp16_arith.onnx'
    g = onnx.load(str(fp32))
    last = [n.name for n in g.graph.node if n.op_type in ('Gemm', 'Sigmoid')][-2:]  # the output layer, the sigmoid
    m = convert_float_to_float16(
        g, keep_io_types=True, op_block_list=['LayerNormalization'], node_block_list=last, force_fp16_initializers=True
    )
    onnx.save(m, str(d / 'fp16_out32.onnx'))
    out['fp16 arithmetic, output layer and sigmoid float32'] = d / 'fp16_out32.onnx'
    onnx.save(gemm_to_matmul(onnx.load(str(fp32))), str(d / 'matmul.onnx'))
    quantize_dynamic(d / 'matmul.onnx', d / 'int8_dyn.onnx', per_channel=True, weight_type=QuantType.QInt8)
    out['int8 dynamic (onnxruntime, per channel)'] = d / 'int8_dyn.onnx'
    return out


def gemm_to_matmul(m: onnx.ModelProto) -> onnx.ModelProto:
    "Gemm(x, W, b) with transB=1 → MatMul(x, Wᵀ) + b: onnxruntime's dynamic quantization knows MatMul, not Gemm."
    from onnx import helper, numpy_helper

    g, nodes = m.graph, []
    inits = {t.name: t for t in g.initializer}
    for n in g.node:
        if n.op_type == 'Gemm' and n.input[1] in inits:
            w = numpy_helper.to_array(inits[n.input[1]])
            g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w.T), n.input[1] + '.t'))
            nodes.append(helper.make_node('MatMul', [n.input[0], n.input[1] + '.t'], [n.output[0] + '.mm']))
            nodes.append(helper.make_node('Add', [n.output[0] + '.mm', n.input[2]], [n.output[0]]))
        else:
            nodes.append(n)
    del g.node[:]
    g.node.extend(nodes)
    return m


def band_errors(p: np.ndarray, ref: np.ndarray) -> dict:
    "The largest |Δp| among the entries whose min(p, 1 - p) lies in each band."
    d, q = np.abs(p - ref), np.minimum(ref, 1 - ref)
    return {f'{a:g}-{b:g}': float(d[(q >= a) & (q < b)].max(initial=0)) for a, b in BANDS}


def speeds(runs: dict, repeats: int) -> dict:
    "Predictions per CPU second of each run at batch 1 and 10,000: the best of `repeats` interleaved rounds."
    r = np.random.default_rng(1)
    big = [r.uniform(-60, 70, 10_000), r.uniform(-180, 180, 10_000), r.integers(1, 49, 10_000)]
    big = [x.astype(np.float32) for x in big]
    one = [x[:1] for x in big]
    best = {k: {'batch_1': 0.0, 'batch_10000': 0.0} for k in runs}
    for _ in range(repeats):
        for k, fn in runs.items():
            for b, x, calls in (('batch_1', one, 200), ('batch_10000', big, 2)):
                fn(x)
                t = time.process_time()
                for _ in range(calls):
                    fn(x)
                best[k][b] = max(best[k][b], len(x[0]) * calls / max(time.process_time() - t, 1e-9))
    return best


def measure(ck: Path, repeats: int) -> dict:
    "Sizes, errors and speeds of the exports of checkpoint `ck`."
    pred = Predictor(ck, device='cpu')
    lat, lon, week = inputs = check_inputs()
    ref = pred.predict(lat, lon, week, yearly='model')
    out = {'n_species': pred.n_species, 'scale': pred.config.model_scale, 'epochs': pred.epoch}
    out |= {'parameters': count_parameters(pred.model), 'formats': {}, 'candidates': {}}
    with tempfile.TemporaryDirectory() as d:
        rows = export_model(ck, d, ['onnx', 'onnx_fp16', 'onnx_int8'])
        files = {r['format']: Path(r['path']) for r in rows}
        for r in rows:
            keep = ('bytes', 'max_abs_diff', 'max_rel_diff', 'top10_overlap', 'top10_same', 'ok')
            out['formats'][r['format']] = {k: r[k] for k in keep} | {'limits': r['limits']}
        cands = candidates(files['onnx'], Path(d))
        for k, f in cands.items():
            out['candidates'][k] = {'bytes': f.stat().st_size, **compare(f, pred, inputs=inputs)}
        sessions = {k: onnx_session(f, 'cpu') for k, f in {**files, **cands}.items()}
        for k, s in sessions.items():
            row = out['formats'].get(k) or out['candidates'][k]
            row['max_abs_diff_by_band'] = band_errors(onnx_proba(s, lat, lon, week, yearly='model'), ref)
        runs = {'torch': lambda x: predict_proba(pred.model, *x, batch_size=10_000)}
        runs |= {k: (lambda x, s=s: onnx_proba(s, *x, batch_size=10_000)) for k, s in sessions.items()}
        for k, v in speeds(runs, repeats).items():
            (out['formats'].get(k) or out['candidates'].get(k) or out.setdefault('torch', {}))['rows_per_cpu_s'] = v
    assert prob_errors(ref, ref)['max_abs_diff'] == 0
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--species', type=int, default=12_000)
    ap.add_argument('--scale', type=float, default=0.75)
    ap.add_argument('--big_epochs', type=int, default=16)
    ap.add_argument('--repeats', type=int, default=5)
    ap.add_argument('--work', default=None, help='Folder for the worlds and checkpoints (kept; default: temporary)')
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS') or 1))
    work = Path(a.work or tempfile.mkdtemp(prefix='geosdm_bench_export_'))
    t0, load0 = time.time(), os.getloadavg()[0]
    cks = {'demo_3_epochs': demo_model(work, 3), 'demo_12_epochs': demo_model(work, 12)}
    cks[f'species{a.species}_scale{a.scale:g}_{a.big_epochs}_epochs'] = big_model(
        work, a.species, a.scale, a.big_epochs
    )
    res = {'threads': torch.get_num_threads(), 'load_1min': load0, 'models': {}}
    res['limits'] = {k: f._asdict() for k, f in FORMATS.items()}
    for name, ck in cks.items():
        res['models'][name] = m = measure(ck, a.repeats)
        print(
            name,
            {k: (v['bytes'], f"{v['max_abs_diff']:.1e}", f"{v['max_rel_diff']:.1e}") for k, v in m['formats'].items()},
        )
        print(' ' * len(name), {k: f"{v['max_abs_diff']:.1e}" for k, v in m['candidates'].items()}, flush=True)
    big = res['models'][list(cks)[-1]]['formats']
    res['targets'] = {
        'fp16 <= 8 MB and passes': big['onnx_fp16']['bytes'] <= 8e6 and big['onnx_fp16']['ok'],
        'int8 <= 4.5 MB and top-10 overlap >= 0.95': big['onnx_int8']['bytes'] <= 4.5e6
        and big['onnx_int8']['top10_overlap'] >= 0.95,
    }
    res |= {'load_1min_after': os.getloadavg()[0], 'seconds': time.time() - t0}
    out = Path(__file__).parent / 'results'
    out.mkdir(exist_ok=True)
    write_json(out / 'export.json', res)  # strict JSON: the limits that do not apply (inf) are null
    print(json.dumps(res['targets']), f"load {load0:.2f} → {res['load_1min_after']:.2f}, {res['seconds']:.0f} s")


if __name__ == '__main__':
    main()
