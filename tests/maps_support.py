"""A tiny trained model shared by test_maps.py, test_evaluate.py and test_apps.py (trained once per pytest session),
and the fixtures that load it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TINY_BBOX = (-135.0, 25.0, -95.0, 55.0)  # the western US: holds the us_northwest hold-out box


def tiny_checkpoint(root: Path) -> Path:
    "Train (once) a scale-0.25, 2-epoch model on a small simulated world holding out us_northwest."
    from geosdm.simulate import simulate_world
    from geosdm.trainer import TrainConfig, train

    ck = Path(root) / 'ck' / 'checkpoint_latest.pt'
    if ck.is_file():
        return ck
    world = Path(root) / 'world'
    simulate_world(n_species=30, res=2, bbox=TINY_BBOX, seed=5).write(world)
    train(
        TrainConfig(
            data_path=str(world / 'combined.parquet'),
            checkpoint_dir=str(Path(root) / 'ck'),
            model_scale=0.25,
            num_epochs=2,
            val_every=1,  # both epochs validated: the apps' and plots' tests read a full history
            lr_warmup=0.0,
            lr=3e-3,
            min_obs_per_species=5,
            batch_size=64,  # an epoch is one pass over the samples with records: small batches, enough steps
            holdout_regions=['us_northwest'],
            device='cpu',
        ),
        progress=False,
    )
    return ck


def session_root(tmp_path_factory) -> Path:
    "A directory shared by every test module of this pytest session."
    d = tmp_path_factory.getbasetemp() / 'geosdm_tiny_model'
    d.mkdir(exist_ok=True)
    return d


def isolate_cache(root: Path) -> None:
    "Point geosdm's user cache (land cells, demo model) at the session directory."
    os.environ['GEOSDM_CACHE'] = str(Path(root) / 'cache')


@pytest.fixture(scope='module')
def root(tmp_path_factory):
    "The session directory, with geosdm's user cache pointed into it."
    r = session_root(tmp_path_factory)
    isolate_cache(r)
    return r


@pytest.fixture(scope='module')
def pred(root):
    "A `Predictor` of the tiny model."
    from geosdm.predict import Predictor

    return Predictor(tiny_checkpoint(root), device='cpu')


@pytest.fixture(scope='module')
def prep(pred):
    "The data the tiny model was trained on."
    from geosdm.demo import checkpoint_data

    return checkpoint_data(pred)
