"""Benchmark one full training step of GeoModel: forward (with env), BCE species loss + masked env MSE,
backward, AdamW step. Prints samples/s and peak memory per variant; writes bench/results/model_step.json.

Usage: python bench/model_step.py [--device cpu|cuda|auto] [--scales 0.5 0.75] [--species 6500]
       [--batch 1024] [--steps 20] [--variants ...]
Each variant runs in a fresh subprocess so that CPU peak RSS is per variant. On CPU the headline figure uses the
median step time (the mean and the 10th-percentile step, a "quiet machine" estimate, are recorded too): on a shared
2-core machine other processes easily halve the throughput of a 2-thread run.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# name -> settings. 'week_float' disables the FiLM table of weeks 0..N_WEEKS (the BirdNET geomodel training script
# computes FiLM per row).
CPU_VARIANTS = {
    'fp32_baseline': dict(amp=None, adamw='plain', week_float=True, compile=False, threads=None),
    'fp32_weektable': dict(amp=None, adamw='plain', week_float=False, compile=False, threads=None),
    'fp32_foreach': dict(amp=None, adamw='foreach', week_float=False, compile=False, threads=None),
    'fp32_fused': dict(amp=None, adamw='fused', week_float=False, compile=False, threads=None),
    'fp32_fused_1thr': dict(amp=None, adamw='fused', week_float=False, compile=False, threads=1),
    'bf16_fused': dict(amp='bf16', adamw='fused', week_float=False, compile=False, threads=None),
    'fp32_compile': dict(amp=None, adamw='fused', week_float=False, compile=True, threads=None),
}
CUDA_VARIANTS = {
    'fp32': dict(amp=None, adamw='fused', week_float=False, compile=False, threads=None),
    'fp16_amp': dict(amp='fp16', adamw='fused', week_float=False, compile=False, threads=None),
    'bf16_amp': dict(amp='bf16', adamw='fused', week_float=False, compile=False, threads=None),
    'fp16_amp_compile': dict(amp='fp16', adamw='fused', week_float=False, compile=True, threads=None),
    'bf16_amp_compile': dict(amp='bf16', adamw='fused', week_float=False, compile=True, threads=None),
}


def run_one(device: str, scale: float, n_species: int, n_env: int, batch: int, steps: int, v: dict) -> dict:
    import torch

    from geosdm.core import N_WEEKS
    from geosdm.losses import BCELoss, total_loss
    from geosdm.model import count_parameters, create_model

    if v['threads']:
        torch.set_num_threads(v['threads'])
    torch.manual_seed(0)
    dev = torch.device(device)
    model = create_model(n_species, n_env, model_scale=scale).to(dev)
    opt_kw = dict(lr=1e-3, weight_decay=1e-3)
    if v['adamw'] == 'plain':
        opt_kw['foreach'] = False
    elif v['adamw'] == 'foreach':
        opt_kw['foreach'] = True
    else:
        opt_kw['fused'] = True
    opt = torch.optim.AdamW(model.parameters(), **opt_kw)
    loss_fn = BCELoss(label_smoothing=0.05)
    g = torch.Generator(device='cpu').manual_seed(0)
    n_batches = 4
    lat = (torch.rand(n_batches, batch, generator=g) * 180 - 90).to(dev)
    lon = (torch.rand(n_batches, batch, generator=g) * 360 - 180).to(dev)
    week = torch.randint(0, N_WEEKS + 1, (n_batches, batch), generator=g).to(dev)
    if v['week_float']:
        week = week.float()
    tgt = (torch.rand(n_batches, batch, n_species, generator=g) < 30 / n_species).float().to(dev)
    env = torch.randn(n_batches, batch, n_env, generator=g)
    env[torch.rand(env.shape, generator=g) < 0.05] = float('nan')
    env = env.to(dev)
    amp_dtype = {'fp16': torch.float16, 'bf16': torch.bfloat16}.get(v['amp'])
    scaler = torch.amp.GradScaler(dev.type, enabled=v['amp'] == 'fp16')
    fwd = torch.compile(model) if v['compile'] else model

    def step(i):
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            out = fwd(lat[i], lon[i], week[i], return_env=True)
            parts = total_loss(out, tgt[i], env[i], loss_fn, 1.0, 0.1)
        scaler.scale(parts['loss']).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        return parts['loss']

    sync = torch.cuda.synchronize if dev.type == 'cuda' else (lambda: None)
    t_compile = time.perf_counter()
    for i in range(3):
        step(i % n_batches)  # warm-up (and compilation)
    sync()
    t_compile = time.perf_counter() - t_compile
    if dev.type == 'cuda':
        torch.cuda.reset_peak_memory_stats()
    times = []
    t0 = time.perf_counter()
    for i in range(steps):
        t = time.perf_counter()
        loss = step(i % n_batches)
        if dev.type == 'cuda' and i % 5 == 4:
            sync()
        times.append(time.perf_counter() - t)
    sync()
    dt = time.perf_counter() - t0
    ts = sorted(times)
    med = ts[len(ts) // 2] if dev.type == 'cpu' else dt / steps
    p10 = ts[len(ts) // 10]
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if dev.type == 'cuda'
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    # CPU: median step time (robust to other processes on a shared machine); mean is reported too
    return dict(
        samples_per_s=batch / med,
        ms_per_step=1000 * med,
        mean_samples_per_s=steps * batch / dt,
        p10_samples_per_s=batch / p10,
        peak_mem_mib=peak,
        mem_kind='cuda max_memory_allocated' if dev.type == 'cuda' else 'process peak RSS',
        warmup_s=t_compile,
        final_loss=float(loss),
        params=count_parameters(model),
        torch_threads=torch.get_num_threads(),
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--device', default='cpu', help="cpu, cuda or auto (cuda when available)")
    ap.add_argument('--scales', type=float, nargs='+', default=[0.5, 0.75])
    ap.add_argument('--species', type=int, default=6500)
    ap.add_argument('--n_env', type=int, default=23)
    ap.add_argument('--batch', type=int, default=1024)
    ap.add_argument('--steps', type=int, default=20)
    ap.add_argument('--variants', nargs='*', default=None)
    ap.add_argument('--out', default=str(ROOT / 'bench' / 'results' / 'model_step.json'))
    ap.add_argument('--_single', default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._single:
        spec = json.loads(a._single)
        print(json.dumps(run_one(**spec)))
        return
    import torch

    device = a.device
    if device == 'auto':
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if device == 'cuda' and not torch.cuda.is_available():
        sys.exit('--device cuda: CUDA is not available')
    variants = CUDA_VARIANTS if device == 'cuda' else CPU_VARIANTS
    names = a.variants or list(variants)
    results = []
    info = dict(
        device=device,
        torch=torch.__version__,
        cpu_count=os.cpu_count(),
        batch=a.batch,
        n_species=a.species,
        n_env=a.n_env,
        steps=a.steps,
        gpu=torch.cuda.get_device_name() if device == 'cuda' else None,
        load_avg_at_start=os.getloadavg(),
    )
    print(json.dumps(info))
    for scale in a.scales:
        for name in names:
            spec = dict(
                device=device,
                scale=scale,
                n_species=a.species,
                n_env=a.n_env,
                batch=a.batch,
                steps=a.steps,
                v=variants[name],
            )
            p = subprocess.run(
                [sys.executable, __file__, '--_single', json.dumps(spec)], capture_output=True, text=True
            )
            if p.returncode != 0:
                r = dict(error=(p.stderr.strip().splitlines() or ['?'])[-1][:300])
            else:
                r = json.loads(p.stdout.strip().splitlines()[-1])
            r.update(scale=scale, variant=name, load_avg_1min=os.getloadavg()[0], **variants[name])
            results.append(r)
            if 'error' in r:
                print(f"scale {scale:<5} {name:<18} FAILED: {r['error']}")
            else:
                print(
                    f"scale {scale:<5} {name:<18} {r['samples_per_s']:>10,.0f} samples/s  "
                    f"{r['ms_per_step']:7.1f} ms/step  "
                    f"peak {r['peak_mem_mib']:8.0f} MiB  load {r['load_avg_1min']:.1f}  "
                    f"(mean {r['mean_samples_per_s']:,.0f}/s, p10-step {r['p10_samples_per_s']:,.0f}/s; "
                    f"{r['params']:,} params, {r['torch_threads']} threads)",
                    flush=True,
                )
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix('.json.tmp')
    tmp.write_text(json.dumps(dict(info=info, results=results), indent=1))
    os.replace(tmp, out)
    print('wrote', out)


if __name__ == '__main__':
    main()
