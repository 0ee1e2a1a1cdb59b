"""A production-size world with a known, sparse truth: the whole globe at H3 resolution 4 (287,525 cells, land and
sea, the cells the BirdNET geomodel paper trains on), 12,000 species, about 70 M labels, and the same world as about
73 M GBIF-like occurrence records (parquet and Darwin Core Archive).

    python bench/scale_world.py                                   # bench/results/scale_world/ (see below)
    python bench/scale_world.py --out /tmp/w --res 2 --species 300 --no-dwca   # a small one (seconds)

Cost: about 230 CPU seconds and 5.6 GB peak RSS (world.json has `cpu_s`, `seconds` per step and `peak_rss_mb`):
2 to 4 min on an idle 2-core machine; on a shared one the wall time grows with the load.

Why a generator of its own: `geosdm.simulate` keeps a dense truth (cells x weeks x species: 166 G values here)
and `geosdm.synthetic.synthetic_records` + `geosdm.gbif.write_dwca` made 0.21 M records/s into an archive (6 M
records in 29 s), so 70 M records alone would take about 6 min. This script reuses `geosdm.planet` for the ground
(the real res-4 cells and coasts, the seven environmental columns with the real grids' nulls, cities) and
`geosdm.worldfiles.combined_table` for the training file; species, truth, effort, observation and records are
vectorised here:

- species: residents (tropics-weighted centres), migrants (a breeding and a wintering range, a weekly curve that
  moves them), small-range endemics, seabirds (ranges over the sea) and the 18 watchlist birds at their islands;
  a range is every cell within 1.5 radii of the centre whose suitability (distance, temperature, land cover,
  elevation niche) is at least `MIN_SUIT`;
- truth, sparse: `truth_ranges.parquet` (species_code, h3_index, breeding, winter suitabilities) and
  `truth_species.parquet` (p_max, detectability, and 48 weekly values `winter_weight`, `amp`). The true
  reporting rate of species s in cell c at week w is
  min(0.99, p_max[s] * amp[s, w] * ((1 - winter_weight[s, w]) * breeding[s, c] + winter_weight[s, w] * winter[s, c]))
  (`truth_p`), zero for cells outside the species' range;
- effort: checklists per cell-week, dense in North America, Europe and a few other regions and around cities,
  sparse elsewhere, a third of remote land never visited, little at sea, more in the northern summer;
- labels: species s is on the list of (c, w) with probability 1 - (1 - p * detectability)^checklists; plus 1 %
  false positives (species drawn by prevalence), listed in `false_positives.parquet`;
- records: every label becomes at least one record, about 4 % more are duplicates in other checklists, and a
  quarter of those duplicates are spoiled (absent, fossil, (0, 0), uncertain, no date, genus, 1950), so that
  ingesting them gives back the combined parquet exactly. Checklists of about 19 species at one of eight
  hotspots per cell, on a date of the week's days, by one of 50 observers of the cell. The Darwin Core Archive's
  `occurrence.txt` is deflated in parallel chunks (valid zip64; `geosdm.gbif.write_dwca` deflates in one thread).
  The columns are `geosdm.synthetic`'s less occurrenceID and individualCount (per-row text that ingest never
  reads); the parquet's `recordedby` is text, not the snapshots' list.

Files (the layout of `data/demo`): combined.parquet (GeoParquet), combined_taxonomy.csv, truth_ranges.parquet,
truth_species.parquet, false_positives.parquet, effort.parquet, test_cells.txt, records.parquet (the cloud
snapshots' lower-case columns), records_dwca.zip, world.json (parameters, counts, seconds, peak RSS).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import time
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from geosdm.core import N_WEEKS, WATCHLIST, atomic_path, atomic_write, write_json
from geosdm.geo import EARTH_RADIUS_KM
from geosdm.planet import ISLAND_GROUPS, WATCHLIST_GROUPS, make_environment, make_grid
from geosdm.worldfiles import ENV_COLUMNS, combined_table

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / 'results' / 'scale_world'
MIN_SUIT = 0.02  # a cell is in a species' range where its suitability is at least this
WEEKS = np.arange(1, N_WEEKS + 1)
DENSE = [  # (lon_min, lat_min, lon_max, lat_max, effort factor): where the observers are
    (-128, 25, -65, 52, 12.0),
    (-11, 36, 30, 62, 12.0),
    (-160, 55, -130, 66, 3.0),
    (68, 8, 90, 32, 2.0),
    (129, 30, 146, 45, 5.0),
    (119, 21, 123, 26, 5.0),
    (140, -39, 154, -25, 6.0),
    (-86, 7, -77, 11, 5.0),
    (18, -35, 32, -24, 3.0),
    (166, -47, 179, -34, 4.0),
    (-50, -30, -38, -15, 2.5),
    (98, 0, 106, 8, 3.0),
]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def chord(km) -> np.ndarray:
    "Chord length on the unit sphere of a great-circle distance in km."
    return 2 * np.sin(np.asarray(km) / (2 * EARTH_RADIUS_KM))


# ---------------------------------------------------------------- the ground


def ground(res: int, seed: int, n_cities: int):
    "geosdm.planet's grid (every cell of `res` but the ~600 crossing the antimeridian) and environment."
    g = make_grid(res, None)
    city_idx, latent, reported = make_environment(g, n_cities, np.random.default_rng(seed))
    return g, city_idx, latent, reported


# ---------------------------------------------------------------- species


def invent_names(n: int, rng) -> tuple[list[str], list[str]]:
    "`n` unique binomials (about 12 species per genus) and English names."
    syl = 'ba ca da fe gi ha ki la me no pa qui ra si ta vu xe zo lo mi ne ro su ti phy thra chi pto stri gla'.split()
    gen_end, sp_end = (
        ['us', 'a', 'is', 'ax', 'ops', 'ornis', 'iza', 'ura'],
        ['ensis', 'ata', 'us', 'ii', 'icola', 'ina'],
    )
    ns = len(syl)
    genera = rng.permutation(ns * ns * len(gen_end))
    epithets = rng.permutation(ns * ns * len(sp_end))
    sci = []
    for i in range(n):
        g, e = genera[(i // 12) % len(genera)], epithets[i % len(epithets)]
        gname = (syl[g // (ns * len(gen_end))] + syl[(g // len(gen_end)) % ns] + gen_end[g % len(gen_end)]).capitalize()
        sci.append(f'{gname} {syl[e // (ns * len(sp_end))]}{syl[(e // len(sp_end)) % ns]}{sp_end[e % len(sp_end)]}')
    adj = (
        'Lesser Greater Rufous Crested Spotted Olive Ashy Golden Dusky Streaked Pale Northern Southern Mountain '
        'Marsh Forest Desert Painted Slaty Scaly Barred Cinnamon Sooty Plain Tufted Collared Masked Azure Buff'
    ).split()
    noun = (
        'Warbler Finch Thrush Tanager Wren Sparrow Flycatcher Kingfisher Hawk Owl Dove Heron Swift Vireo Pipit Lark '
        'Rail Tern Plover Jay Woodpecker Hummingbird Seedeater Shrike Petrel Antbird Babbler Bulbul Sunbird Parrot'
    ).split()
    k = rng.permutation(len(adj) * len(adj) * len(noun))[:n]
    a, b, c = k // (len(adj) * len(noun)), (k // len(noun)) % len(adj), k % len(noun)
    com = [f'{adj[x]} {noun[z]}' if x == y else f'{adj[x]} {adj[y]} {noun[z]}' for x, y, z in zip(a, b, c)]
    if len(set(com)) < n:  # more species than word combinations: number them
        com = [f'{c} {i}' for i, c in enumerate(com)]
    return sci, com


def _seasons(kind, lat0, rng) -> tuple[np.ndarray, np.ndarray]:
    "Per species and week: the migrants' wintering weight (0 = all on the breeding range) and the reporting amplitude."
    n = len(kind)
    w_mid = np.where(lat0 >= 0, 3.0, 27.0) + rng.normal(0, 1.5, n)  # mid-winter week
    fw = np.clip(0.5 + 0.8 * np.cos(2 * np.pi * (WEEKS[None] - w_mid[:, None]) / N_WEEKS), 0, 1)
    fw[kind != 'migrant'] = 0.0
    amp = 1 + rng.uniform(0, 0.3, n)[:, None] * np.cos(2 * np.pi * (WEEKS[None] - rng.uniform(1, 49, n)[:, None]) / 48)
    amp = np.where((kind == 'migrant')[:, None], 1 - 0.5 * 4 * fw * (1 - fw), amp)  # fewer reports on passage
    return fw.astype(np.float32), amp.astype(np.float32)


def _pick(weights, k, rng) -> np.ndarray:
    return rng.choice(len(weights), k, p=weights / weights.sum())


def _watchlist(g, rng) -> dict:
    "The watchlist birds at their islands (the crane migrates), where the grid has them."
    rows = []
    for code, grp in WATCHLIST_GROUPS.items():
        if grp == 'whooping_crane':
            if min(g.crane) >= 0:
                rows.append((code, 'migrant', g.crane[0], g.crane[1], 350.0, 350.0))
        elif max(g.anchors[grp]) >= 0:
            o = next(i for i in g.anchors[grp] if i >= 0)
            r = max(ISLAND_GROUPS[grp][1], 60.0)
            rows.append((code, 'endemic', o, o, r, r))
    return dict(zip(('codes', 'kind', 'origin', 'winter', 'rb', 'rw'), map(list, zip(*rows)))) if rows else {}


def make_species(g, latent, n_species: int, rng) -> dict:
    "Kinds, centres, radii, niches, names and seasons of `n_species` species (arrays, ordered by code)."
    wl = _watchlist(g, rng)
    n_wl = len(wl.get('codes', []))
    n = n_species - n_wl
    kind = rng.choice(['resident', 'migrant', 'endemic', 'seabird'], n, p=[0.66, 0.25, 0.05, 0.04])
    lat, land = g.lat, g.land
    coast = g.habitable & (g.land_frac < 0.8)
    origin = np.empty(n, np.int64)
    for k, w in (
        ('resident', land * (0.3 + 1.5 * np.exp(-((lat / 22) ** 2)))),
        ('migrant', land * np.exp(-(((np.abs(lat) - 48) / 10) ** 2))),
        ('endemic', land * (0.2 + np.exp(-((lat / 25) ** 2)))),
        ('seabird', coast * 1.0),
    ):
        m = kind == k
        origin[m] = _pick(w, m.sum(), rng)
    winter = origin.copy()
    mig = np.flatnonzero(kind == 'migrant')
    wlat = np.sign(lat[origin[mig]]) * (np.abs(lat[origin[mig]]) - rng.uniform(15, 45, len(mig)))
    wlon = (g.lon[origin[mig]] + rng.normal(0, 12, len(mig)) + 180) % 360 - 180
    from scipy.spatial import cKDTree

    from geosdm.geo import unit_xyz

    hab = np.flatnonzero(land)
    winter[mig] = hab[cKDTree(g.xyz[hab]).query(unit_xyz(wlat, wlon))[1]]
    rb = np.clip(900 * np.exp(rng.normal(0, 0.7, n)), 80, 4000)
    rb[kind == 'migrant'] = np.clip(1200 * np.exp(rng.normal(0, 0.5, (kind == 'migrant').sum())), 200, 4000)
    rb[kind == 'endemic'] = rng.uniform(30, 150, (kind == 'endemic').sum())
    rw = np.where(kind == 'migrant', np.clip(rb * np.exp(rng.normal(-0.2, 0.4, n)), 150, 4000), rb)
    sci, com = invent_names(n, rng)
    codes = [f'sp{i:05d}' for i in range(n)]
    if n_wl:
        codes += wl['codes']
        sci += [WATCHLIST[c][0] for c in wl['codes']]
        com += [WATCHLIST[c][1] for c in wl['codes']]
        kind = np.r_[kind, wl['kind']]
        origin, winter = np.r_[origin, wl['origin']].astype(np.int64), np.r_[winter, wl['winter']].astype(np.int64)
        rb, rw = np.r_[rb, wl['rb']], np.r_[rw, wl['rw']]
    return _niches(g, latent, codes, sci, com, kind, origin, winter, rb, rw, rng)


def _niches(g, latent, codes, sci, com, kind, origin, winter, rb, rw, rng) -> dict:
    "Niche, detectability and season of every species; everything sorted by code."
    n = len(codes)
    T, E, LC = latent['temperature_c'], latent['elevation_m'], latent['landcover_class'].astype(int)
    pref = np.where(rng.random((n, 17)) < 0.25, rng.uniform(0.3, 1.0, (n, 17)), 0.12).astype(np.float32)
    pref[np.arange(n), LC[origin] - 1] = 1.0
    pref[np.arange(n), LC[winter] - 1] = 1.0
    water = (rng.random(n) < 0.12) | (kind == 'seabird')
    pref[:, 16] = np.where(water, 1.0, 0.05)
    pref[water, 10] = 1.0
    wide = np.isin(kind, ['endemic', 'seabird'])
    sp = dict(
        codes=np.array(codes),
        sci=np.array(sci),
        com=np.array(com),
        kind=np.asarray(kind),
        origin=origin,
        winter=winter,
        rb=rb,
        rw=rw,
        Tb=T[origin] + rng.normal(0, 1.0, n),
        Tw=T[winter] + rng.normal(0, 1.0, n),
        sdT=np.where(wide, 30.0, rng.uniform(3, 9, n)),
        Ec=E[origin],
        sdE=np.where((rng.random(n) < 0.33) & ~wide, rng.uniform(300, 1500, n), np.inf),
        pref=pref,
        p_max=np.where(kind == 'endemic', rng.uniform(0.3, 0.8, n), np.exp(rng.uniform(np.log(0.03), np.log(0.8), n))),
        det=rng.uniform(0.3, 1.0, n),
    )
    sp['winter_weight'], sp['amp'] = _seasons(np.asarray(kind), g.lat[origin], rng)
    order = np.argsort(sp['codes'], kind='stable')
    return {k: v[order] for k, v in sp.items()}


# ---------------------------------------------------------------- ranges (the sparse truth)


def _suitability(g, latent, sp, s, cells, centre, radius, T0) -> np.ndarray:
    "Suitability of species `s` (repeated per candidate) in `cells` for a range around `centre`."
    T, E, LC = latent['temperature_c'], latent['elevation_m'], latent['landcover_class'].astype(int)
    d = np.arccos(np.clip((g.xyz[cells] * g.xyz[centre]).sum(1), -1, 1)) * EARTH_RADIUS_KM
    z = (
        (d / radius) ** 4
        + 0.5 * ((T[cells] - T0) / sp['sdT'][s]) ** 2
        + 0.5 * ((E[cells] - sp['Ec'][s]) / sp['sdE'][s]) ** 2
    )
    return (np.exp(-z) * sp['pref'][s, LC[cells] - 1]).astype(np.float32)


def _range_part(g, latent, sp, trees, which: str, batch: int = 500) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    "(species, cell, suitability) of every species' breeding ('b') or wintering ('w') range."
    centre = sp['origin'] if which == 'b' else sp['winter']
    radius, T0 = (sp['rb'], sp['Tb']) if which == 'b' else (sp['rw'], sp['Tw'])
    sea = sp['kind'] == 'seabird'
    out_s, out_c, out_v = [], [], []
    for on_sea, (tree, idx) in trees.items():
        sel = np.flatnonzero(sea == on_sea)
        if which == 'w':
            sel = sel[sp['kind'][sel] == 'migrant']
        for i in range(0, len(sel), batch):
            sb = sel[i : i + batch]
            hits = tree.query_radius(g.xyz[centre[sb]], chord(1.5 * radius[sb]))
            s = np.repeat(sb, [len(h) for h in hits])
            c = idx[np.concatenate(hits)] if len(s) else np.zeros(0, np.int64)
            v = _suitability(g, latent, sp, s, c, centre[s], radius[s], T0[s])
            keep = (v >= MIN_SUIT) | (c == centre[s])
            out_s.append(s[keep].astype(np.int32))
            out_c.append(c[keep].astype(np.int32))
            out_v.append(np.maximum(v[keep], MIN_SUIT))
    return np.concatenate(out_s), np.concatenate(out_c), np.concatenate(out_v)


def make_ranges(g, latent, sp) -> SimpleNamespace:
    """The sparse truth: (species, cell, breeding, winter) rows sorted by cell then species; residents have
    winter = breeding."""
    from sklearn.neighbors import KDTree

    hab, every = np.flatnonzero(g.habitable), np.arange(len(g.cells))
    trees = {False: (KDTree(g.xyz[hab]), hab), True: (KDTree(g.xyz), every)}
    bs, bc, bv = _range_part(g, latent, sp, trees, 'b')
    ws, wc, wv = _range_part(g, latent, sp, trees, 'w')
    mig = sp['kind'][bs] == 'migrant'
    n_sp = len(sp['codes'])
    key = np.r_[bc.astype(np.int64) * n_sp + bs, wc.astype(np.int64) * n_sp + ws]
    u, inv = np.unique(key, return_inverse=True)
    b, w = np.zeros(len(u), np.float32), np.zeros(len(u), np.float32)
    b[inv[: len(bs)]] = bv
    w[inv[: len(bs)][~mig]] = bv[~mig]  # residents: one range for the whole year
    w[inv[len(bs) :]] = wv
    return SimpleNamespace(cell=(u // n_sp).astype(np.int32), species=(u % n_sp).astype(np.int32), b=b, w=w)


def truth_p(sp, species, cell_b, cell_w, week) -> np.ndarray:
    "True reporting rate of `species` at `week` (1..48) in cells whose breeding/winter suitabilities are given."
    fw, amp = sp['winter_weight'][species, week - 1], sp['amp'][species, week - 1]
    return np.minimum(0.99, sp['p_max'][species] * amp * ((1 - fw) * cell_b + fw * cell_w)).astype(np.float32)


# ---------------------------------------------------------------- effort and observation


def make_effort(g, city_idx, res: int, scale: float, rng) -> np.ndarray:
    "Checklists per (cell, week): int32 (cells, 48)."
    from geosdm.geo import in_boxes

    n, land = len(g.cells), g.land
    region = np.ones(n)
    for b in DENSE:
        region[in_boxes(g.lat, g.lon, [b[:4]])] = np.maximum(region[in_boxes(g.lat, g.lon, [b[:4]])], b[4])
    from scipy.spatial import cKDTree

    amp = np.exp(rng.normal(2.5, 1.0, len(city_idx))) * region[city_idx]
    hot = np.zeros(n)
    tree = cKDTree(g.xyz)
    for c, a, r in zip(city_idx, amp, rng.uniform(40, 140, len(city_idx))):
        near = np.asarray(tree.query_ball_point(g.xyz[c], chord(3 * r)), np.int64)
        d = np.arccos(np.clip(g.xyz[near] @ g.xyz[c], -1, 1)) * EARTH_RADIUS_KM
        hot[near] += a * np.exp(-((d / r) ** 2))
    bg = np.exp(rng.normal(-2.0, 1.4, n)) * region
    remote = land & (hot < 0.05) & (region < 2) & (rng.random(n) < 0.35)
    lam = (bg * ~remote + hot) * np.where(land, 1.0, np.where(g.land_frac > 0, 0.3 * g.land_frac, 0.002))
    lam *= scale * 7.0 ** (4 - res)  # per cell: area grows 7x per coarser resolution
    season = 1 + 0.4 * np.sign(g.lat)[:, None] * np.cos(2 * np.pi * (WEEKS[None] - 19) / N_WEEKS)
    return rng.poisson(lam[:, None] * season * rng.gamma(2.0, 0.5, (n, N_WEEKS))).astype(np.int32)


def _observe_chunk(args) -> tuple[np.ndarray, np.ndarray]:
    "Labels (range row, week) of a run of range rows; each chunk has its own random stream."
    rows, rg, tab, eff, seed = args
    cell, s = rg.cell[rows], rg.species[rows]
    lo, hi = eff.off[cell], eff.off[cell + 1]
    cnt = hi - lo
    t = np.repeat(np.arange(len(rows), dtype=np.int32), cnt)
    pos = np.arange(len(t), dtype=np.int64) + np.repeat(lo - (np.cumsum(cnt) - cnt), cnt)
    week = eff.week[pos]
    j = s[t] * N_WEEKS + week
    p = np.minimum(tab.b[j] * rg.b[rows][t] + tab.w[j] * rg.w[rows][t], 0.99) * tab.det[s][t]
    hit = np.random.default_rng(seed).random(len(p), dtype=np.float32) < -np.expm1(eff.n[pos] * np.log1p(-p))
    return rows[t[hit]], week[hit]


def observe(rg, sp, effort: np.ndarray, seed: int, false_pos: float, chunk: int = 20_000) -> SimpleNamespace:
    "Labels as sorted int64 keys (cell * 48 + week - 1) * n_species + species, and which are false positives."
    n_sp = len(sp['codes'])
    ec, ew = np.nonzero(effort)
    eff = SimpleNamespace(
        off=np.r_[0, np.cumsum(np.bincount(ec, minlength=effort.shape[0]))].astype(np.int64),
        week=ew.astype(np.int32),  # 0-based
        n=effort[ec, ew].astype(np.float32),
    )
    pa_ = (sp['p_max'][:, None] * sp['amp']).astype(np.float32)
    tab = SimpleNamespace(
        b=(pa_ * (1 - sp['winter_weight'])).ravel(),
        w=(pa_ * sp['winter_weight']).ravel(),
        det=sp['det'].astype(np.float32),
    )
    starts = range(0, len(rg.cell), chunk)
    seeds = np.random.SeedSequence(seed).spawn(len(starts) + 1)
    jobs = ((np.arange(a, min(a + chunk, len(rg.cell))), rg, tab, eff, seeds[i]) for i, a in enumerate(starts))
    with ThreadPoolExecutor(2) as ex:
        parts = list(ex.map(_observe_chunk, jobs))
    rows = np.concatenate([p[0] for p in parts])
    week = np.concatenate([p[1] for p in parts]).astype(np.int64)
    del parts
    key = np.sort((rg.cell[rows].astype(np.int64) * N_WEEKS + week) * n_sp + rg.species[rows])
    del rows, week
    rng = np.random.default_rng(seeds[-1])
    cw = key // n_sp
    head = np.flatnonzero(np.r_[True, cw[1:] != cw[:-1]])
    n_fp = rng.poisson(false_pos / (1 - false_pos) * np.diff(np.r_[head, len(key)]))
    fp = np.unique(np.repeat(cw[head], n_fp) * n_sp + _pick(sp['p_max'], n_fp.sum(), rng))
    del cw
    at = np.searchsorted(key, fp)
    fp = fp[key[np.minimum(at, len(key) - 1)] != fp]  # not already a true label
    at = np.searchsorted(key, fp)
    false = np.zeros(len(key) + len(fp), bool)
    false[at + np.arange(len(fp))] = True
    return SimpleNamespace(key=np.insert(key, at, fp), false=false, n_species=n_sp)


# ---------------------------------------------------------------- world files


def week_major(obs, n_cells: int) -> tuple[np.ndarray, np.ndarray]:
    "CSR of the labels per week then cell: offsets int64 (48, n_cells + 1) and species int32 (sorted in a list)."
    n_sp = obs.n_species
    cw = obs.key // n_sp
    order = np.argsort((cw % N_WEEKS).astype(np.int8), kind='stable')  # cell-major → week-major, cells stay sorted
    species = (obs.key[order] % n_sp).astype(np.int32)
    cnt = np.bincount((cw % N_WEEKS) * n_cells + cw // N_WEEKS, minlength=N_WEEKS * n_cells).reshape(N_WEEKS, n_cells)
    offs = np.c_[np.zeros(N_WEEKS, np.int64), np.cumsum(cnt, 1)] + np.r_[0, np.cumsum(cnt.sum(1))[:-1]][:, None]
    return offs.astype(np.int64), species


def _pq(table: pa.Table, path: Path):
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression='zstd')


def write_world_files(out: Path, g, reported, sp, rg, obs, effort, test, log=print) -> None:
    "combined.parquet (+ taxonomy), the sparse truth, the false positives, the effort and the test cells."
    env = pl.DataFrame(
        {'h3_index': g.cells, **{c: pl.Series(c, reported[c], pl.Float64).fill_nan(None) for c in ENV_COLUMNS}}
    )
    offs, species = week_major(obs, len(g.cells))
    world = SimpleNamespace(
        cells=pl.DataFrame({'h3_index': g.cells}),
        env=env,
        codes=sp['codes'].tolist(),
        obs_offsets=offs,
        obs_species=species,
    )
    _pq(combined_table(world), out / 'combined.parquet')
    del offs, species, world
    log('combined.parquet')
    tax = pl.DataFrame({'species_code': sp['codes'], 'scientificName': sp['sci'], 'commonName': sp['com']})
    atomic_write(out / 'combined_taxonomy.csv', lambda f: tax.write_csv(f))
    codes, cells = pa.array(sp['codes']), pa.array(g.cells)
    o = np.argsort(rg.species.astype(np.int16 if len(codes) < 32768 else np.int32), kind='stable')  # radix sort
    _pq(
        pa.table(
            {
                'species_code': _dict(rg.species[o], codes),
                'h3_index': _dict(rg.cell[o], cells),
                'breeding': rg.b[o],
                'winter': rg.w[o],
            }
        ),
        out / 'truth_ranges.parquet',
    )
    del o
    log('truth_ranges.parquet')
    fl = lambda a: pa.FixedSizeListArray.from_arrays(pa.array(a.ravel()), N_WEEKS)
    _pq(
        pa.table(
            {
                'species_code': codes,
                'scientificName': sp['sci'],
                'commonName': sp['com'],
                'kind': sp['kind'],
                'p_max': sp['p_max'],
                'detectability': sp['det'],
                'breeding_cell': cells.take(pa.array(sp['origin'])),
                'winter_cell': cells.take(pa.array(sp['winter'])),
                'breeding_radius_km': sp['rb'],
                'winter_radius_km': sp['rw'],
                'winter_weight': fl(sp['winter_weight']),
                'amp': fl(sp['amp']),
            }
        ),
        out / 'truth_species.parquet',
    )
    fk = obs.key[obs.false]
    cw = fk // obs.n_species
    _pq(
        pa.table(
            {
                'h3_index': cells.take(pa.array(cw // N_WEEKS)),
                'week': pa.array((cw % N_WEEKS + 1).astype(np.int32)),
                'species_code': codes.take(pa.array(fk % obs.n_species)),
            }
        ),
        out / 'false_positives.parquet',
    )
    eff = {'h3_index': g.cells, 'lat': g.lat, 'lon': g.lon} | {f'week_{w}': effort[:, w - 1] for w in WEEKS}
    _pq(pa.table(eff), out / 'effort.parquet')
    atomic_write(out / 'test_cells.txt', ''.join(c + '\n' for c in g.cells[test]))


def test_blocks(g, frac: float, rng) -> np.ndarray:
    "Land cells of random whole H3 resolution-0 blocks (about `frac` of the land), none holding a named island."
    import h3

    parent = np.array([h3.get_base_cell_number(c) for c in g.cells])
    anchors = {parent[i] for grp in g.anchors.values() for i in grp if i >= 0}
    test = np.zeros(len(g.cells), bool)
    for b in rng.permutation(np.unique(parent[g.land])):
        if test.sum() >= frac * g.land.sum():
            break
        if b not in anchors:
            test |= g.land & (parent == b)
    return test


# ---------------------------------------------------------------- records


_DAYS = np.array([31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])
Y0, Y1 = 1950, 2025  # eventDate strings for these years (1950: the spoiled 'old' records)
BAD_KINDS = ('absent', 'fossil', 'zero_coordinates', 'uncertain', 'year_only', 'genus', 'old')
PER_EVENT, N_HOTSPOTS, N_OBSERVERS = 19, 8, 50


def _dates() -> pa.Array:
    "Every 'YYYY-MM-DD' of Y0..Y1 at index (y - Y0) * 372 + (m - 1) * 31 + d - 1, then the bare years."
    y, m, d = np.meshgrid(np.arange(Y0, Y1), np.arange(1, 13), np.arange(1, 32), indexing='ij')
    full = [f'{a}-{b:02d}-{c:02d}' for a, b, c in zip(y.ravel(), m.ravel(), d.ravel())]
    return pa.array(full + [str(a) for a in range(Y0, Y1)])


def _dict(idx, values) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(pa.array(np.asarray(idx, np.int32)), values)


def _const(n: int, value: str) -> pa.DictionaryArray:
    return _dict(np.zeros(n, np.int32), pa.array([value]))


def hotspot_points(cells_int: np.ndarray, lat: np.ndarray, lon: np.ndarray, res: int, rng) -> tuple:
    "N_HOTSPOTS points (5 decimals) inside each cell: (n, N_HOTSPOTS) latitudes and longitudes; misses → centre."
    import h3
    import polars_h3 as plh3

    r = 0.35 * h3.average_hexagon_edge_length(res, 'km') * np.sqrt(rng.random((len(lat), N_HOTSPOTS))) / 111.2
    b = rng.random((len(lat), N_HOTSPOTS)) * 2 * np.pi
    la = np.round(np.clip(lat[:, None] + r * np.cos(b), -89.99999, 89.99999), 5)
    lo = lon[:, None] + r * np.sin(b) / np.maximum(np.cos(np.radians(lat[:, None])), 0.05)
    lo = np.round((lo + 180) % 360 - 180, 5)
    got = (
        pl.DataFrame({'a': la.ravel(), 'b': lo.ravel()})
        .select(plh3.latlng_to_cell('a', 'b', res, return_dtype=pl.UInt64))
        .to_series()
        .to_numpy()
        .reshape(la.shape)
    )
    miss = got != cells_int[:, None]
    la[miss] = np.broadcast_to(np.round(lat, 5)[:, None], la.shape)[miss]
    lo[miss] = np.broadcast_to(np.round(lon, 5)[:, None], lo.shape)[miss]
    return la, lo


def _checklists(cw: np.ndarray, nev: np.ndarray, spots: tuple, cell_pos: np.ndarray, rng) -> dict:
    "Per checklist of the chunk: hotspot latitude/longitude, year, month, day, observer, uncertainty."
    ecw = np.repeat(cw, nev)
    cell, week = ecw // N_WEEKS, ecw % N_WEEKS + 1
    j = rng.integers(0, N_HOTSPOTS, len(ecw))
    month, part = (week - 1) // 4 + 1, (week - 1) % 4
    lo = part * 7 + 1
    hi = np.where(part < 3, lo + 6, _DAYS[month - 1])
    n = len(ecw)
    return dict(
        lat=spots[0][cell_pos[cell], j],
        lon=spots[1][cell_pos[cell], j],
        year=rng.integers(2010, 2025, n),
        month=month,
        day=lo + (rng.random(n) * (hi - lo + 1)).astype(np.int64),
        observer=cell * N_OBSERVERS + rng.integers(0, N_OBSERVERS, n),
        unc=np.where(rng.random(n) < 0.5, np.nan, np.round(rng.uniform(5, 5000, n))),
    )


def record_chunk(key, n_sp, ev0: int, id0: int, g, cells_int, res, names, extra: float, bad: float, rng) -> tuple:
    "The records of the labels `key` (whole cells, sorted): checklists numbered from `ev0`, gbifIDs from `id0`."
    cw, s = key // n_sp, key % n_sp
    head = np.flatnonzero(np.r_[True, cw[1:] != cw[:-1]])
    loc = np.cumsum(np.r_[True, cw[1:] != cw[:-1]]) - 1  # cell-week of each label, 0..
    cnt = 1 + rng.poisson(extra, len(key))
    nev = np.maximum(1, np.ceil(np.bincount(loc, weights=cnt) / PER_EVENT)).astype(np.int64)
    base = np.r_[0, np.cumsum(nev)[:-1]]
    t = np.repeat(np.arange(len(key)), cnt)
    rank = np.arange(len(t)) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    e = base[loc[t]] + (rng.integers(0, 1 << 30, len(key))[t] + rank) % nev[loc[t]]
    o = np.argsort(e, kind='stable')
    t, rank, e = t[o], rank[o], e[o]
    ucell = np.unique(cw[head] // N_WEEKS)
    cell_pos = np.zeros(len(g.cells), np.int64)
    cell_pos[ucell] = np.arange(len(ucell))
    ev = _checklists(
        cw[head], nev, hotspot_points(cells_int[ucell], g.lat[ucell], g.lon[ucell], res, rng), cell_pos, rng
    )
    ev = {k: v[e] for k, v in ev.items()}
    kind = np.where((rank > 0) & (rng.random(len(t)) < bad), rng.integers(0, len(BAD_KINDS), len(t)), -1)
    return _table(ev, s[t], e + ev0, id0, kind, names), int(nev.sum())


def _table(ev: dict, s: np.ndarray, event: np.ndarray, id0: int, kind: np.ndarray, names: dict) -> pa.Table:
    "GBIF occurrence columns of the records (species index `s`, checklist `event`), spoiled where `kind` >= 0."
    n, k = len(s), lambda name: kind == BAD_KINDS.index(name)
    lat, lon, year, unc = ev['lat'].copy(), ev['lon'].copy(), ev['year'].copy(), ev['unc'].copy()
    lat[k('zero_coordinates')], lon[k('zero_coordinates')] = 0.0, 0.0
    unc[k('uncertain')] = 50_000.0
    year[k('old')] = 1950
    no_date = k('year_only')
    date = np.where(no_date, 75 * 372 + year - Y0, (year - Y0) * 372 + (ev['month'] - 1) * 31 + ev['day'] - 1)
    uev, iev = np.unique(event, return_inverse=True)
    uobs, iobs = np.unique(ev['observer'], return_inverse=True)
    key = pa.array(s + 1, pa.int64())
    return pa.table(
        {
            'gbifID': pa.array(np.arange(id0, id0 + n), pa.int64()),
            'datasetKey': _const(n, '4fa7b334-ce0d-4e88-aaae-2e0c138d049e'),
            'basisOfRecord': _dict(k('fossil'), names['basis']),
            'occurrenceStatus': _dict(k('absent'), names['status']),
            'eventID': _dict(iev, pa.array([f'S{x}' for x in uev])),
            'recordedBy': _dict(iobs, pa.array([f'obsr{x}' for x in uobs])),
            'eventDate': _dict(date, names['dates']),
            'year': pa.array(year, pa.int32()),
            'month': pa.array(ev['month'], pa.int32(), mask=no_date),
            'day': pa.array(ev['day'], pa.int32(), mask=no_date),
            'decimalLatitude': lat,
            'decimalLongitude': lon,
            'coordinateUncertaintyInMeters': pa.array(unc, pa.float64(), from_pandas=True),
            'kingdom': _const(n, 'Animalia'),
            'class': _const(n, 'Aves'),
            'taxonRank': _dict(k('genus'), names['rank']),
            'scientificName': _dict(s, names['authored']),
            'species': _dict(s, names['sci']),
            'taxonKey': key,
            'speciesKey': pa.array(s + 1, pa.int64(), mask=k('genus')),
            'license': _const(n, 'CC_BY_4_0'),
        }
    )


def record_chunks(obs, g, res: int, sp, extra: float, bad: float, seed: int, chunk: int = 1_000_000):
    "Arrow tables of about `chunk` labels' records each (whole cells), in cell and checklist order."
    import h3

    n_sp, per_cell = obs.n_species, N_WEEKS * obs.n_species
    cells_int = np.array([h3.str_to_int(c) for c in g.cells], np.uint64)
    names = dict(
        basis=pa.array(['HUMAN_OBSERVATION', 'FOSSIL_SPECIMEN']),
        status=pa.array(['PRESENT', 'ABSENT']),
        rank=pa.array(['SPECIES', 'GENUS']),
        dates=_dates(),
        sci=pa.array(sp['sci']),
        authored=pa.array([f'{x} Synth, 2024' for x in sp['sci']]),
    )
    cuts = [0]
    while cuts[-1] < len(obs.key):
        t = cuts[-1] + chunk
        cuts.append(
            len(obs.key)
            if t >= len(obs.key)
            else int(np.searchsorted(obs.key, (obs.key[t] // per_cell + 1) * per_cell))
        )
    seeds = np.random.SeedSequence([seed, 7]).spawn(len(cuts))
    ev0, id0 = 0, 1
    for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):
        rng = np.random.default_rng(seeds[i])
        tb, n_ev = record_chunk(obs.key[a:b], n_sp, ev0, id0, g, cells_int, res, names, extra, bad, rng)
        ev0, id0 = ev0 + n_ev, id0 + tb.num_rows
        yield tb


# ---------------------------------------------------------------- the record files


def _deflate(data: bytes) -> bytes:
    "One raw deflate block run, ended on a byte boundary (sync flush): such runs concatenate into one stream."
    c = zlib.compressobj(1, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)


class ParallelDwca:
    "A Darwin Core Archive zip (meta.xml + occurrence.txt) whose occurrence.txt is deflated in parallel chunks."

    def __init__(self, path: Path, terms: list[str], threads: int = 2):
        from geosdm.gbif import meta_xml

        self.zf = zipfile.ZipFile(path, 'w', zipfile.ZIP_DEFLATED)
        self.zf.writestr('meta.xml', meta_xml(terms))
        self.zi = zipfile.ZipInfo('occurrence.txt', date_time=time.localtime()[:6])
        self.zi.compress_type = zipfile.ZIP_DEFLATED
        self.zi.CRC = self.zi.file_size = self.zi.compress_size = 0
        self.zi.header_offset = self.zf.fp.tell()
        self.zf.fp.write(self.zi.FileHeader(zip64=True))  # rewritten with the sizes and CRC at the end
        self.pool, self.pending, self.crc, self.size, self.csize = ThreadPoolExecutor(threads), [], 0, 0, 0

    def write(self, text: bytes):
        self.crc, self.size = zlib.crc32(text, self.crc), self.size + len(text)
        self.pending.append(self.pool.submit(_deflate, text))
        while len(self.pending) > 2:
            self._put(self.pending.pop(0).result())

    def _put(self, data: bytes):
        self.zf.fp.write(data)
        self.csize += len(data)

    def close(self):
        for f in self.pending:
            self._put(f.result())
        self._put(b'\x03\x00')  # an empty final block ends the stream
        self.pool.shutdown()
        zi, fp = self.zi, self.zf.fp
        zi.CRC, zi.file_size, zi.compress_size = self.crc, self.size, self.csize
        end = fp.tell()
        fp.seek(zi.header_offset)
        fp.write(zi.FileHeader(zip64=True))
        fp.seek(end)
        self.zf.filelist.append(zi)
        self.zf.NameToInfo[zi.filename] = zi
        self.zf.start_dir = end
        self.zf.close()


def write_records(tables, parquet: Path | None, dwca: Path | None) -> dict:
    """Write record tables as snapshot-style parquet (lower-case columns, zstd) and/or a DwC-A zip; rows and
    seconds spent waiting on each."""
    rows, writer, arch, secs = 0, None, None, {'generate': 0.0, 'parquet': 0.0, 'dwca': 0.0}
    with atomic_path(parquet) if parquet else _null() as ptmp, atomic_path(dwca) if dwca else _null() as ztmp:
        t = time.perf_counter()
        for tb in tables:
            secs['generate'] += time.perf_counter() - t
            t = time.perf_counter()
            if parquet:
                snap = tb.rename_columns([c.lower() for c in tb.column_names])
                writer = writer or pq.ParquetWriter(ptmp, snap.schema, compression='zstd')
                writer.write_table(snap, row_group_size=1 << 22)  # one row group per chunk
            secs['parquet'] += time.perf_counter() - t
            t = time.perf_counter()
            if dwca:
                arch = arch or ParallelDwca(ztmp, tb.column_names)
                buf = io.BytesIO()
                pl.from_arrow(tb).write_csv(
                    buf, separator='\t', include_header=rows == 0, null_value='', quote_style='never'
                )
                arch.write(buf.getvalue())
            secs['dwca'] += time.perf_counter() - t
            rows += tb.num_rows
            t = time.perf_counter()
        if writer:
            writer.close()
        t = time.perf_counter()
        if arch:
            arch.close()
        secs['dwca'] += time.perf_counter() - t
    return {'records': rows, 'seconds': {k: round(v, 1) for k, v in secs.items()}}


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


# ---------------------------------------------------------------- the whole world


def make_world(
    out,
    res: int = 4,
    n_species: int = 12_000,
    effort: float = 1.4,
    records: float = 1.04,
    bad: float = 0.25,
    false_pos: float = 0.01,
    seed: int = 0,
    n_cities: int | None = None,
    parquet: bool = True,
    dwca: bool = True,
    chunk: int = 1_000_000,
    log=None,
) -> dict:
    "Generate the world into `out`; returns its summary (also written to world.json)."
    out, log = Path(out), log or (lambda m: print(m, flush=True))
    out.mkdir(parents=True, exist_ok=True)
    t0, secs, rng, load0 = time.perf_counter(), {}, np.random.default_rng(seed), os.getloadavg()[0]

    def lap(name):
        secs[name] = round(time.perf_counter() - t0 - sum(secs.values()), 1)
        log(f'{name}: {secs[name]} s (peak RSS {peak_rss_mb():,.0f} MB)')

    g, city_idx, latent, reported = ground(res, seed, n_cities if n_cities is not None else (400 if res >= 4 else None))
    lap('ground')
    sp = make_species(g, latent, n_species, rng)
    lap('species')
    rg = make_ranges(g, latent, sp)
    lap('ranges')
    eff = make_effort(g, city_idx, res, effort, rng)
    lap('effort')
    obs = observe(rg, sp, eff, seed + 1, false_pos)
    lap('observe')
    test = test_blocks(g, 0.05, rng)
    write_world_files(
        out, g, reported, sp, rg, obs, eff, test, lambda f: log(f'  {f}: {time.perf_counter() - t0:.1f} s')
    )
    lap('world_files')
    rec = {'records': 0, 'seconds': {}}
    if parquet or dwca:
        chunks = record_chunks(obs, g, res, sp, records - 1, bad, seed + 2, chunk)
        rec = write_records(
            chunks, out / 'records.parquet' if parquet else None, out / 'records_dwca.zip' if dwca else None
        )
        lap('records')
    summary = world_summary(g, sp, rg, obs, eff, test, rec, res, seed, effort, records, bad, false_pos, len(city_idx))
    summary['seconds'] = secs | {'total': round(time.perf_counter() - t0, 1), 'records_parts': rec['seconds']}
    summary['peak_rss_mb'] = round(peak_rss_mb())
    ru = resource.getrusage(resource.RUSAGE_SELF)
    summary['cpu_s'] = round(ru.ru_utime + ru.ru_stime, 1)  # all threads: the wall time on an idle 2-core machine
    summary['load_avg'] = [round(load0, 2), round(os.getloadavg()[0], 2)]  # is about half of this or more
    write_json(out / 'world.json', summary)
    return summary


def world_summary(g, sp, rg, obs, eff, test, rec, res, seed, effort, records, bad, false_pos, n_cities) -> dict:
    "Parameters and counts of the world."
    cw = np.unique(obs.key // obs.n_species)
    kinds, n_k = np.unique(sp['kind'], return_counts=True)
    lists = np.diff(np.r_[np.flatnonzero(np.r_[True, np.diff(obs.key // obs.n_species) != 0]), len(obs.key)])
    return {
        'generator': 'bench/scale_world.py',
        'grid': f'h3_res{res}',
        'res': res,
        'seed': seed,
        'effort_scale': effort,
        'records_per_label': records,
        'spoiled_share_of_duplicates': bad,
        'false_pos': false_pos,
        'n_cities': n_cities,
        'cells': len(g.cells),
        'land_cells': int(g.land.sum()),
        'cells_with_records': int(len(np.unique(cw // N_WEEKS))),
        'cell_weeks_with_records': int(len(cw)),
        'checklists': int(eff.sum()),
        'species': len(sp['codes']),
        'species_observed': int(len(np.unique(obs.key % obs.n_species))),
        'kinds': dict(zip(kinds.tolist(), n_k.tolist())),
        'range_rows': int(len(rg.cell)),
        'labels': int(len(obs.key)),
        'false_positive_labels': int(obs.false.sum()),
        'list_length_mean': round(float(lists.mean()), 2),
        'list_length_median': float(np.median(lists)),
        'records': rec['records'],
        'test_cells': int(test.sum()),
        'watchlist_present': [c for c in WATCHLIST if c in set(sp['codes'])],
    }


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.split('\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument('--out', default=str(DEFAULT_OUT))
    ap.add_argument('--res', type=int, default=4, help='H3 resolution (4: 287,525 cells; 2: 5,882 for tests)')
    ap.add_argument('--species', type=int, default=12_000)
    ap.add_argument('--effort', type=float, default=1.4, help='multiplies the checklists (labels grow with it)')
    ap.add_argument('--records', type=float, default=1.04, help='records per label')
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--no-records', action='store_true', help='neither records.parquet nor the DwC-A')
    ap.add_argument('--no-dwca', action='store_true')
    a = ap.parse_args(argv)
    s = make_world(
        a.out,
        a.res,
        a.species,
        a.effort,
        a.records,
        seed=a.seed,
        parquet=not a.no_records,
        dwca=not (a.no_records or a.no_dwca),
    )
    print(json.dumps(s, indent=1))


if __name__ == '__main__':
    main()
