"""A small simulated world and a model trained on it without its test cells, for the lists, filter and names tests."""

from __future__ import annotations

from pathlib import Path

import polars as pl


def world_and_model(d: Path, n_species: int = 50, epochs: int = 36, seed: int = 11) -> tuple[Path, Path]:
    """Write a simulated North American world into `d / 'world'` (test cells held out of `train.parquet`, German
    common names, an alias `Oldus namus` for its first species) and train a small model on it; (world, checkpoint)."""
    from geosdm.config import TrainConfig
    from geosdm.simulate import simulate_world
    from geosdm.trainer import train

    w = d / 'world'
    simulate_world(n_species=n_species, res=2, bbox=(-130, 20, -60, 55), seed=seed).write(w)
    test = (w / 'test_cells.txt').read_text().split()
    pl.read_parquet(w / 'combined.parquet').filter(~pl.col('h3_index').is_in(test)).write_parquet(w / 'train.parquet')
    tax = pl.read_csv(w / 'combined_taxonomy.csv')
    tax = tax.with_columns(commonName_de=pl.col('commonName') + ' (de)', taxonomy_version=pl.lit('sim v1'))
    tax.write_csv(w / 'train_taxonomy.csv')
    (w / 'train_aliases.csv').write_text(f'alias,species_code\nOldus namus,{tax["species_code"][0]}\n')
    cfg = TrainConfig(
        data_path=str(w / 'train.parquet'),
        checkpoint_dir=str(d / 'ck'),
        model_scale=0.25,
        num_epochs=epochs,
        patience=0,  # the whole schedule: about the steps of 6 epochs before an epoch meant one pass
        lr=1e-3,
        min_obs_per_species=10,
        batch_size=256,
        device='cpu',
        seed=5,
    )
    train(cfg, progress=False)
    return w, d / 'ck' / 'checkpoint_best.pt'
