"""geosdm_filter on files in BirdNET Analyzer's published formats: exact output, a Raven round trip, folders and a
places table, and bad input (one line on stderr, exit 2, nothing written)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import exit_code
from lists_support import world_and_model

from geosdm.cli_filter import filter_main
from geosdm.predict import Predictor

CSV_HEAD = 'Start (s),End (s),Scientific name,Common name,Confidence,File,lat,lon,week\n'
RAVEN_HEAD = (
    'Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tLow Freq (Hz)\tHigh Freq (Hz)\tCommon Name\t'
    'Species Code\tConfidence\tBegin Path\tFile Offset (s)\n'
)


@pytest.fixture(scope='module')
def model(tmp_path_factory, one_thread):
    d = tmp_path_factory.mktemp('filter')
    _, ck = world_and_model(d, n_species=30, epochs=2)
    return ck, Predictor(ck, device='cpu')


def num(x: float) -> str:
    "How the filter writes a number (4 decimals)."
    return str(round(float(x), 4))


def test_exact_output(model, tmp_path, capsys):
    "Synonyms, an unknown name, always-plausible labels and a row without a place, in a BirdNET CSV."
    ck, pr = model
    p = pr.predict([40.0], [-100.0], [21])[0]
    t = pr.thresholds([40.0], [-100.0])[0]
    hi, lo = int(np.argmax(p / t)), int(np.argmin(p / t))
    (tmp_path / 'always.csv').write_text('label\nHomo sapiens_Human vocal\nDog\n')
    (tmp_path / 'extra_aliases.csv').write_text(f'alias,species_code\nAvis vetus,{pr.vocab[lo]}\n')
    rows = [
        f'0.0,3.0,{pr.sci_names[hi]},{pr.common_names[hi]},0.91,a.wav,40.0,-100.0,21',
        '3.0,6.0,Oldus namus,Old,0.8,a.wav,40.0,-100.0,21',  # the model's own alias for species 0
        '6.0,9.0,Avis vetus,Old bird,0.7,a.wav,40.0,-100.0,21',  # an alias given to the filter
        '9.0,12.0,Homo sapiens,Human vocal,0.6,a.wav,40.0,-100.0,21',
        '12.0,15.0,Canis familiaris,Dog,0.5,a.wav,40.0,-100.0,21',
        '15.0,18.0,Nonesuch bird,Nonesuch,0.4,a.wav,40.0,-100.0,21',
        f'18.0,21.0,{pr.sci_names[hi]},{pr.common_names[hi]},0.3,a.wav,,,21',
    ]
    src = tmp_path / 'a.BirdNET.results.csv'
    src.write_text(CSV_HEAD + '\n'.join(rows) + '\n')
    before = src.read_bytes()
    code = filter_main(
        [str(src), '--checkpoint', str(ck), '--device', 'cpu', '--always', str(tmp_path / 'always.csv')]
        + ['--aliases', str(tmp_path / 'extra_aliases.csv'), '--score']
    )
    assert code == 0
    out = capsys.readouterr().out
    assert '7 detections' in out and 'not in the model: Nonesuch bird (1)' in out
    assert src.read_bytes() == before  # never over its input

    def judged(i, conf):
        from geosdm.calibrate import combined_score

        side = 'above' if p[i] >= t[i] else 'below'
        score = num(combined_score(conf, float(p[i]), float(t[i])))
        reason = f'{side} the species threshold {round(float(t[i]), 3)} at week 21'
        return f'{num(p[i])},{str(p[i] >= t[i]).lower()},{reason},{score}'

    want = [
        CSV_HEAD.rstrip('\n') + ',geo_p,geo_keep,geo_reason,geo_score',
        f'{rows[0]},{judged(hi, 0.91)}',
        f'{rows[1]},{judged(0, 0.8)}',
        f'{rows[2]},{judged(lo, 0.7)}',
        f'{rows[3]},,true,always plausible,',
        f'{rows[4]},,true,always plausible,',
        f'{rows[5]},,true,not in the model,',
        f'{rows[6]},,true,no place,',
    ]
    assert (tmp_path / 'a.BirdNET.results.geo.csv').read_text().splitlines() == want
    assert p[hi] >= t[hi] and p[lo] < t[lo]  # one kept and one rejected, as the file says


def test_raven_round_trip(model, tmp_path):
    "A Raven table comes back with its own columns untouched; filtering the output again changes nothing."
    ck, pr = model
    lines = [
        f'{i + 1}\tSpectrogram 1\t1\t{3.0 * i:.1f}\t{3.0 * i + 3:.1f}\t0\t15000\t{pr.common_names[i]}\t'
        f'{pr.vocab[i]}\t0.{9 - i}000\trec.wav\t{3.0 * i:.1f}'
        for i in range(5)
    ]
    src = tmp_path / 'rec.BirdNET.selection.table.txt'
    src.write_text(RAVEN_HEAD + '\n'.join(lines) + '\n')
    args = ['--checkpoint', str(ck), '--device', 'cpu', '--lat', '40', '--lon', '-100', '--date', '2024-05-22']
    assert exit_code(filter_main, [str(src), *args]) == 0
    out = tmp_path / 'rec.BirdNET.selection.table.geo.txt'
    got = out.read_text().splitlines()
    assert got[0] == RAVEN_HEAD.rstrip('\n') + '\tgeo_p\tgeo_keep\tgeo_reason'
    assert [g.split('\t')[:12] for g in got[1:]] == [ln.split('\t') for ln in lines]
    p = pr.predict([40.0], [-100.0], [20])[0]
    assert [g.split('\t')[12] for g in got[1:]] == [num(p[i]) for i in range(5)]
    again = tmp_path / 'again.txt'
    assert exit_code(filter_main, [str(out), *args, '-o', str(again)]) == 0
    assert again.read_text() == out.read_text()


def test_folder_and_places(model, tmp_path, capsys):
    ck, pr = model
    d = tmp_path / 'in' / 'site1'
    d.mkdir(parents=True)
    for k in range(3):
        (d / f'r{k}.BirdNET.results.csv').write_text(
            'Start (s),End (s),Scientific name,Common name,Confidence,File\n'
            f'0.0,3.0,{pr.sci_names[k]},{pr.common_names[k]},0.9,r{k}.wav\n'
        )
    (tmp_path / 'in' / 'notes.txt').write_text('not a result file\n')
    (tmp_path / 'places.csv').write_text('file,lat,lon,week\nr0.wav,40,-100,20\nr1.wav,45,-90,30\n')
    code = filter_main(
        [str(tmp_path / 'in'), '--checkpoint', str(ck), '--device', 'cpu', '--places', str(tmp_path / 'places.csv')]
        + ['-o', str(tmp_path / 'out')]
    )
    assert code == 0
    assert 'ran on 2 (place, week)' in capsys.readouterr().out
    reason = lambda k: (tmp_path / 'out' / 'site1' / f'r{k}.BirdNET.results.csv').read_text().split(',')[-1].strip()
    assert reason(0).endswith('at week 20') and reason(1).endswith('at week 30') and reason(2) == 'no place'
    assert not (tmp_path / 'out' / 'notes.txt').exists()


BAD = {
    'missing column': ('Start (s),End (s),Scientific name,Common name,lat\n0,3,A b,Ab,1\n', 'no Confidence column'),
    'confidence': (CSV_HEAD + '0,3,A b,Ab,1.2,a.wav,40,-100,20\n', "row 2: Confidence '1.2' is not a number in [0, 1]"),
    'not a result file': ('hello,world\n1,2\n', 'not a BirdNET Analyzer CSV'),
    'latitude': (CSV_HEAD + '0,3,A b,Ab,0.5,a.wav,95,-100,20\n', 'row 2: latitude 95 is out of range'),
}


@pytest.mark.parametrize('kind', [*BAD, 'unreadable'])
def test_bad_input(model, tmp_path, kind):
    "One line on stderr naming the problem, exit status 2, and nothing written (the good file beside it neither)."
    ck, pr = model
    good = tmp_path / 'good.BirdNET.results.csv'
    good.write_text(CSV_HEAD + f'0,3,{pr.sci_names[0]},x,0.5,a.wav,40,-100,20\n')
    bad = tmp_path / 'bad.BirdNET.results.csv'
    if kind == 'unreadable':
        bad.write_bytes(b'\x89PNG\r\n\x1a\n\x00\xff\xfe' * 20)
        words = 'cannot read it'
    else:
        bad.write_text(BAD[kind][0])
        words = BAD[kind][1]
    r = subprocess.run(
        [sys.executable, '-c', 'import sys; from geosdm.cli_filter import filter_main; sys.exit(filter_main())']
        + [str(good), str(bad), '--checkpoint', str(ck), '--device', 'cpu', '-o', str(tmp_path / 'out')],
        capture_output=True,
        text=True,
        env={'OMP_NUM_THREADS': '1', 'PATH': '/usr/bin:/bin'},
    )
    assert r.returncode == 2, r.stderr
    assert r.stderr.count('\n') == 1 and r.stderr.startswith('geosdm_filter: error: ') and words in r.stderr
    assert not (tmp_path / 'out').exists() and sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [good.name, bad.name]
    )


def test_flags_are_checked_first(model, tmp_path, capsys):
    f = tmp_path / 'x.csv'
    f.write_text(CSV_HEAD)
    ck = ['--checkpoint', str(model[0])]
    for args, words in (
        ([*ck, '--lat', '40'], 'give --lat and --lon together'),
        ([*ck, '--week', '49'], '--week 49'),
        ([*ck, '--date', '22/05/2024'], 'YYYY-MM-DD'),
        ([*ck, '--lists', 'species', '--threshold', '0.2'], 'with --lists global'),
        (['--checkpoint', str(tmp_path / 'none.pt')], 'no such file'),
    ):
        assert exit_code(filter_main, [str(f), *args]) == 2
        err = capsys.readouterr().err
        assert err.splitlines()[-1].startswith('geosdm_filter: error: ') and words in err, err
