"""The demo training run on a quiet machine and beside other CPU-bound processes, for several thread policies.

Usage: python bench/shared_cpu.py [--hogs 0 1 2] [--policies default passive one_thread] [--epochs 12]

Each run is `geosdm_train` on the bundled demo world, as a user runs it, measured with `/usr/bin/time -v` (wall
seconds, CPU seconds, peak RSS). The "hogs" are busy-looping Python processes that stand for other jobs on the
machine. A policy is a set of environment variables given to the run:

- default: what geosdm does by itself (its own thread policy, if any);
- spin: `OMP_WAIT_POLICY=ACTIVE` (OpenMP threads spin while they wait for work);
- passive: `OMP_WAIT_POLICY=PASSIVE` (waiting threads sleep);
- one_thread: `OMP_NUM_THREADS=1`;
- short_spin: `GOMP_SPINCOUNT=10000` (GNU OpenMP threads spin briefly, then sleep).

The fair share of a run beside k hogs on n cores is n / (k + 1) cores, so the slowdown to expect is about
(k + 1) / n for a run that would use all n cores, 1 for k + 1 <= n. Results: bench/results/shared_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
POLICIES = {
    'default': {},
    'spin': {'OMP_WAIT_POLICY': 'ACTIVE'},
    'passive': {'OMP_WAIT_POLICY': 'PASSIVE'},
    'one_thread': {'OMP_NUM_THREADS': '1'},
    'short_spin': {'GOMP_SPINCOUNT': '10000'},
}


def hog() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, '-c', 'while True: pass'])


def run_demo(env_extra: dict, epochs: int) -> dict:
    exe = Path(sys.executable).parent / 'geosdm_train'
    with tempfile.TemporaryDirectory() as d:
        env = {
            k: v for k, v in os.environ.items() if k not in ('OMP_NUM_THREADS', 'OMP_WAIT_POLICY', 'MKL_NUM_THREADS')
        }
        env.update(env_extra, TQDM_DISABLE='1')
        cmd = ['/usr/bin/time', '-v', str(exe), '--checkpoint_dir', d, '--num_epochs', str(epochs)]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-2000:])

    def field(name):
        m = re.search(rf'{re.escape(name)}: ([\d.:]+)', r.stderr)
        return m.group(1) if m else None

    epochs_s = [float(x) for x in re.findall(r'· train ([\d.]+) s', r.stdout)]
    return {
        'wall_s': round(wall, 2),
        'user_s': float(field('User time (seconds)')),
        'system_s': float(field('System time (seconds)')),
        'peak_rss_mb': round(int(field('Maximum resident set size (kbytes)')) / 1024),
        'train_s_per_epoch': epochs_s,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--hogs', nargs='+', type=int, default=[0, 1, 2])
    p.add_argument('--policies', nargs='+', default=['default', 'passive', 'one_thread'], choices=list(POLICIES))
    p.add_argument('--epochs', type=int, default=12)
    p.add_argument('--out', default=str(ROOT / 'results' / 'shared_cpu.json'))
    a = p.parse_args(argv)
    out = {'cores': os.cpu_count(), 'epochs': a.epochs, 'runs': []}
    for k in a.hogs:
        for name in a.policies:
            hogs = [hog() for _ in range(k)]
            try:
                r = run_demo(POLICIES[name], a.epochs)
            finally:
                for h in hogs:
                    h.kill()
            r.update(policy=name, hogs=k)
            out['runs'].append(r)
            print(
                f"{k} other job(s), {name:10s}: {r['wall_s']:7.1f} s wall, {r['user_s']:7.1f} s user, "
                f"{r['system_s']:5.1f} s system, peak {r['peak_rss_mb']} MB",
                flush=True,
            )
    quiet = {r['policy']: r['wall_s'] for r in out['runs'] if r['hogs'] == 0}
    for r in out['runs']:
        if r['policy'] in quiet:
            r['slowdown'] = round(r['wall_s'] / quiet[r['policy']], 2)
    res = Path(a.out)
    res.parent.mkdir(parents=True, exist_ok=True)
    res.write_text(json.dumps(out, indent=1) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
