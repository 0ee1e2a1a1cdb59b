"""Shared small-world fixtures: hand-made combined parquets (+ taxonomy) written to tmp_path."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import h3
import polars as pl
import pytest

WEEKS = [f'week_{w}' for w in range(1, 49)]
SHARED = Path(__file__).resolve().parents[2] / 'shared' / 'data'
WORLD_A = SHARED / 'world_a' / 'combined.parquet'


def grid_cells(n: int = 40, res: int = 2, lat: float = 50.0, lon: float = 5.0) -> list[str]:
    "The first `n` (sorted) cells of a disk around (lat, lon): a compact patch of land cells."
    k = 1
    while True:
        cells = sorted(h3.grid_disk(h3.latlng_to_cell(lat, lon, res), k))
        if len(cells) >= n:
            return cells[:n]
        k += 1


def default_lists(i: int, w: int) -> list[str]:
    "Species sK is seen in weeks 1..4(K+1) of every cell whose index is a multiple of K % 3 + 1."
    return [f's{k:02d}' for k in range(10) if i % (k % 3 + 1) == 0 and w <= 4 * (k + 1)]


def default_env(cells: list[str]) -> dict[str, list]:
    n = len(cells)
    return {
        'water_fraction': [0.95 if i % 10 == 0 else (None if i % 2 else 0.2) for i in range(n)],
        'urban_fraction': [i / n for i in range(n)],
        'elevation_m': [float(i * i) if i % 7 else None for i in range(n)],
        'temperature_c': [float(10 + i % 5) for i in range(n)],
        'landcover_class': [float(i % 4 + 1) if i % 9 else None for i in range(n)],
        'target_km': [350] * n,
        'h3_resolution': [2] * n,
    }


def write_world(
    d: Path,
    *,
    name: str = 'combined',
    cells: list[str] | None = None,
    n_cells: int = 40,
    lists: Callable[[int, int], list[str]] = default_lists,
    env: dict | None = None,
    taxonomy: str | None = 'dup',
    extra: dict | None = None,
    drop: tuple = (),
    geometry: bool = True,
) -> Path:
    """Write `<d>/<name>.parquet` (+ `<name>_taxonomy.csv` unless taxonomy=None) and return the parquet path.

    taxonomy: 'dup' = the reference's header with species_code twice; 'alt' = primaryId/scientificName/commonName.
    """
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    cells = cells if cells is not None else grid_cells(n_cells)
    n = len(cells)
    cols: dict = {'h3_index': cells}
    if geometry:
        cols['geometry'] = [b'\x01\x03' for _ in range(n)]
    cols.update(default_env(cells) if env is None else env)
    data = {w: [lists(i, k) for i in range(n)] for k, w in enumerate(WEEKS, 1)}
    cols.update(data)
    if extra:
        cols.update(extra)
    for c in drop:
        cols.pop(c)
    schema = {w: pl.List(pl.String) for w in WEEKS if w in cols and not (extra and w in extra)}
    df = pl.DataFrame(cols, schema_overrides=schema)
    path = d / f'{name}.parquet'
    df.write_parquet(path)
    if taxonomy:
        codes = sorted({c for w in WEEKS if w in data for ln in data[w] for c in ln})
        if taxonomy == 'dup':
            lines = ['species_code,taxonKey,sci_name,com_name,species_code,class_name']
            lines += [f'{c},{i},Sci {c},Common {c},{c},aves' for i, c in enumerate(codes)]
        else:
            lines = ['primaryId,scientificName,commonName'] + [f'{c},Sci {c},Common {c}' for c in codes]
        (d / f'{name}_taxonomy.csv').write_text('\n'.join(lines) + '\n')
    return path


TIMING = ('seconds', 'samples_per_s')


def strip(h: dict) -> dict:
    "A training history without its timings (they differ between otherwise identical runs)."
    return {k: v for k, v in h.items() if not any(t in k for t in TIMING)}


def simulated_world(tmp_path_factory) -> Path:
    "The trainer tests' world: 50 simulated species on H3 resolution-2 cells of North America (seed 11)."
    from geosdm.simulate import simulate_world

    d = tmp_path_factory.mktemp('world')
    simulate_world(n_species=50, res=2, bbox=(-130, 20, -60, 55), seed=11).write(d)
    return d / 'combined.parquet'


def trainer_config(world, ck, **kw):
    "A small, quick training run on `world` into checkpoint folder `ck` (options in `kw` override)."
    from geosdm.config import TrainConfig

    cfg = dict(
        data_path=str(world),
        checkpoint_dir=str(ck),
        model_scale=0.25,
        num_epochs=3,
        val_every=1,
        lr_warmup=0.5,
        min_obs_per_species=10,
        batch_size=256,
        device='cpu',
        seed=5,
    )
    return TrainConfig(**{**cfg, **kw})


@pytest.fixture(scope='module')
def one_thread():
    """One torch thread for a module's in-process runs: steady on a busy 2-core machine (no OpenMP spin-waits),
    and bit for bit like the subprocesses, which run with OMP_NUM_THREADS=1."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def exit_code(main, argv) -> int:
    "The exit status of a console entry point called in-process (returned, or raised by argparse)."
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


@pytest.fixture
def world(tmp_path) -> Path:
    "The default 40-cell world with a reference-style taxonomy."
    return write_world(tmp_path)


@pytest.fixture
def world_writer(tmp_path):
    "A function writing custom worlds into tmp_path: world_writer(**kwargs) -> parquet path."

    def make(**kw):
        return write_world(tmp_path, **kw)

    return make
