"""An alias table and common names in another language through ingest → train → export → Predictor."""

from __future__ import annotations

import json

import polars as pl
import pytest
from conftest import exit_code

from geosdm.birdnet import export_birdnet
from geosdm.config import TrainConfig
from geosdm.core import WEEK_COLS, demo_parquet
from geosdm.export import export_model
from geosdm.gbif import write_dwca
from geosdm.ingest import ingest
from geosdm.inputs import read_columns
from geosdm.predict import Predictor
from geosdm.synthetic import synthetic_records
from geosdm.trainer import train


@pytest.fixture(scope='module')
def flow(tmp_path_factory, one_thread):
    d = tmp_path_factory.mktemp('names')
    demo = read_columns(demo_parquet(), columns=['h3_index'] + WEEK_COLS)
    tax = pl.read_csv(demo_parquet().with_name('combined_taxonomy.csv'))
    old = tax['species_code'][0]  # its records carry an old name, which only the alias table knows
    recs = tax.with_columns(
        pl.when(pl.col('species_code') == old)
        .then(pl.lit('Oldus namus'))
        .otherwise('scientificName')
        .alias('scientificName')
    )
    z = write_dwca(d / 'recs.zip', synthetic_records(demo, 60_000, taxonomy=recs, seed=3))
    tax.with_columns(commonName_de='Der ' + pl.col('commonName'), taxonomy_version=pl.lit('demo v2')).write_csv(
        d / 'birds_taxonomy.csv'
    )
    (d / 'birds_aliases.csv').write_text(f'alias,species_code\nOldus namus,{old}\n')
    ingest(z, d / 'out' / 'combined.parquet', grid=demo_parquet(), taxonomy=d / 'birds_taxonomy.csv')
    cfg = dict(model_scale=0.25, num_epochs=1, min_obs_per_species=5, batch_size=512, device='cpu', seed=1)
    train(TrainConfig(data_path=str(d / 'out' / 'combined.parquet'), checkpoint_dir=str(d / 'ck'), **cfg))
    return d, old


def test_ingest_matches_the_alias_and_keeps_the_languages(flow):
    d, old = flow
    out = pl.read_csv(d / 'out' / 'combined_taxonomy.csv')
    row = out.filter(pl.col('species_code') == old)
    assert row.height == 1 and row['commonName_de'][0].startswith('Der ')  # records under the old name kept
    assert set(out['taxonomy_version']) == {'demo v2'}
    assert (d / 'out' / 'combined_aliases.csv').read_text().splitlines() == ['alias,species_code', f'oldus namus,{old}']


def test_checkpoint_export_and_predictor_agree(flow):
    d, old = flow
    ck = d / 'ck' / 'checkpoint_best.pt'
    pt = Predictor(ck, device='cpu')
    assert pt.names.taxonomy_version == 'demo v2' and pt.index('Oldus namus') == pt.index(old)
    assert pt.names.languages['de'][pt.index(old)].startswith('Der ')
    (d / 'always.csv').write_text(f'{pt.sci_names[1]}\n')
    export_model(ck, d / 'exp', formats=['onnx'], always=[pt.sci_names[1]])
    export_birdnet(ck, d / 'bn', always=d / 'always.csv')
    for onnx in (d / 'exp' / 'geomodel.onnx', d / 'bn' / 'geomodel.onnx'):
        px = Predictor(onnx, device='cpu')
        assert px.index('Oldus namus') == pt.index(old) and px.names.taxonomy_version == 'demo v2'
        assert px.names.always == [pt.sci_names[1]]
        meta = json.loads(onnx.with_name(onnx.name + '.json').read_text())
        assert meta['languages'] == ['de'] and meta['calibration']['levels'] == pt.calibration.levels
        pt.names.always = [pt.sci_names[1]]  # given at export time: stored with the model
        for week in (0, 20):
            for mode in ('species', 'global'):
                a = pt.species_list(40.0, -100.0, week, mode=mode, lang='de')
                b = px.species_list(40.0, -100.0, week, mode=mode, lang='de')
                assert [r[:3] for r in a] == [r[:3] for r in b] and len(a) > 1
                assert all(abs(x[3] - y[3]) < 1e-5 for x, y in zip(a, b))
        pt.names.always = []
    assert (d / 'exp' / 'geomodel_labels_de.txt').read_text().split('\t')[2].startswith('Der ')
    bn = (d / 'bn' / 'labels.txt').read_text().splitlines()
    assert bn[0].split('\t') == [pt.vocab[0], pt.sci_names[0], pt.common_names[0]] and len(bn) == pt.n_species
    assert (d / 'bn' / 'labels_de.txt').read_text().splitlines()[0].split('\t')[2] == 'Der ' + pt.common_names[0]


def test_birdnet_layout_from_the_command_line(flow, capsys):
    "geosdm_export --layout birdnet: one input `input` (batch, 3), one output `probabilities`, the checkpoint's values."
    import numpy as np
    import onnxruntime as ort

    from geosdm.cli import export_main

    d, _ = flow
    ck = d / 'ck' / 'checkpoint_best.pt'
    argv = [
        '--checkpoint',
        str(ck),
        '--outdir',
        str(d / 'cli_bn'),
        '--layout',
        'birdnet',
        '--formats',
        'onnx',
        'onnx_fp16',
    ]
    assert export_main(argv) == 0
    assert 'labels.txt' in capsys.readouterr().out
    pt = Predictor(ck, device='cpu')
    x = np.array([[40.0, -100.0, 20.0], [21.3, -157.8, 0.0], [45.0, -75.0, -1.0], [-90.0, 180.0, 48.0]], np.float32)
    want = pt.predict(x[:, 0], x[:, 1], np.maximum(x[:, 2], 0))
    for name, tol in (('geomodel.onnx', 1e-5), ('geomodel_fp16.onnx', 2e-3)):
        s = ort.InferenceSession(str(d / 'cli_bn' / name), providers=['CPUExecutionProvider'])
        assert [(i.name, i.shape[1]) for i in s.get_inputs()] == [('input', 3)]
        assert [o.name for o in s.get_outputs()] == ['probabilities']
        got = s.run(['probabilities'], {'input': x})[0]
        assert got.dtype == np.float32 and np.abs(got - want).max() <= tol
    assert exit_code(export_main, [*argv[:4], '--layout', 'birdnet', '--common_species', '5']) == 2
