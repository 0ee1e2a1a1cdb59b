"""geosdm_ingest at the edges: malformed meta.xml, archives as publishers ship them, old downloads, taxonomy
duplicates, outputs that would overwrite an input or be empty, and env columns that cannot blow up.

The command runs as a subprocess, as a user runs it: exit 2 means one line on stderr, never a traceback, and every
file written before is left byte-identical."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from test_ingest import COLS, GRID, RECORDS, SHUFFLED, TAXONOMY, VERNACULAR

from geosdm.core import GeoSDMDataError
from geosdm.gbif import write_dwca
from geosdm.inputs import encode_env, read_columns, read_taxonomy

CLI = 'import sys; from geosdm.cli import ingest_main; sys.exit(ingest_main())'


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-c', CLI, *map(str, args)], capture_output=True, text=True, timeout=300)


def one_line_error(r: subprocess.CompletedProcess, *words) -> str:
    "Assert exit 2 with one stderr line naming `words`, no traceback; return that line."
    err = r.stderr.strip()
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert 'Traceback' not in r.stderr and len(err.splitlines()) == 1, r.stderr[-2000:]
    assert err.startswith('geosdm_ingest: error:'), err
    for w in words:
        assert w in err, (w, err)
    return err


def snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope='module')
def base(tmp_path_factory):
    "The 20 hand-made records of test_ingest as an archive's members, a grid, a taxonomy and the reference result."
    d = tmp_path_factory.mktemp('edges')
    frame = pl.DataFrame(RECORDS, schema=COLS, orient='row')
    z = write_dwca(d / 'ref.zip', frame, VERNACULAR, order=SHUFFLED)
    pl.DataFrame({'h3_index': GRID, 'elevation_m': [float(i) for i in range(len(GRID))]}).write_parquet(
        d / 'grid.parquet'
    )
    (d / 'taxonomy.csv').write_text(TAXONOMY)
    r = cli(z, '-o', d / 'ref' / 'c.parquet', *opts(d))
    assert r.returncode == 0, r.stderr
    with zipfile.ZipFile(z) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    return d, members, frame, read_columns(d / 'ref' / 'c.parquet')


def opts(d):
    return ['--grid', d / 'grid.parquet', '--taxonomy', d / 'taxonomy.csv', '--drop_unmatched', '--classes', 'aves']


def same_as_reference(base, src, name):
    d, _, _, expect = base
    r = cli(src, '-o', d / name / 'c.parquet', *opts(d))
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'Kept 6 records' in r.stdout, r.stdout
    assert read_columns(d / name / 'c.parquet').equals(expect)
    return r


def write_zip(path, members: dict) -> Path:
    with zipfile.ZipFile(path, 'w', zipfile.ZIP_DEFLATED) as zf:
        for n, b in members.items():
            zf.writestr(n, b)
    return path


# -- malformed meta.xml: one line naming the file and the problem --------------------------------------------------

BAD_META = {
    'non-numeric index': (lambda m: m.replace(b'<field index="1"', b'<field index="one"'), 'index'),
    'no fields': (lambda m: m.split(b'<field ')[0] + b'</core></archive>', 'no <field>'),
    'id index out of range': (lambda m: m.replace(b'<id index="3"/>', b'<id index="99"/>'), '99'),
}


@pytest.mark.parametrize('case', list(BAD_META))
@pytest.mark.parametrize('packaging', ['zip', 'folder'])
def test_malformed_meta_xml_is_one_line(base, tmp_path, case, packaging):
    d, members, _, _ = base
    fix, word = BAD_META[case]
    bad = dict(members, **{'meta.xml': fix(members['meta.xml'])})
    assert bad['meta.xml'] != members['meta.xml']
    if packaging == 'zip':
        src = write_zip(tmp_path / 'bad.zip', bad)
    else:
        src = tmp_path / 'bad'
        src.mkdir()
        for n, b in bad.items():
            (src / n).write_bytes(b)
    one_line_error(cli(src, '-o', tmp_path / 'c.parquet', '--resolution', '3'), 'meta.xml', word)
    assert not (tmp_path / 'c.parquet').exists()


def test_meta_xml_declared_encoding_is_honoured(base, tmp_path):
    "A meta.xml in ISO-8859-1 that says so in its XML header (with a non-ASCII character) is read."
    d, members, _, _ = base
    text = members['meta.xml'].decode()
    latin = '<?xml version="1.0" encoding="ISO-8859-1"?>\n<!-- Données de référence -->\n' + text
    z = write_zip(tmp_path / 'latin.zip', dict(members, **{'meta.xml': latin.encode('latin-1')}))
    assert b'\xe9' in zipfile.ZipFile(z).read('meta.xml')
    same_as_reference(base, z, 'latin_zip')
    folder = tmp_path / 'latin'
    zipfile.ZipFile(z).extractall(folder)
    same_as_reference(base, folder, 'latin_folder')


# -- packaging as shipped --------------------------------------------------------------------------------------------


def test_zip_with_an_enclosing_folder_and_hidden_entries(base, tmp_path):
    d, members, _, _ = base
    junk = {'__MACOSX/': b'', '__MACOSX/0012345-000/._occurrence.txt': b'\x00\x05\x16\x07junk', '.DS_Store': b'\x00'}
    wrapped = {f'0012345-000/{n}': b for n, b in members.items()} | junk | {'0012345-000/._meta.xml': b'\x00junk'}
    same_as_reference(base, write_zip(tmp_path / 'wrapped.zip', wrapped), 'wrapped')


def test_folder_holding_one_unpacked_archive_folder(base, tmp_path):
    d, members, _, _ = base
    inner = tmp_path / 'outer' / '0012345-000'
    inner.mkdir(parents=True)
    for n, b in members.items():
        (inner / n).write_bytes(b)
    (tmp_path / 'outer' / '.DS_Store').write_bytes(b'\x00')
    same_as_reference(base, tmp_path / 'outer', 'outer')


@pytest.mark.parametrize('suffix', ['.tar.gz', '.tgz'])
def test_tar_gz_archives(base, tmp_path, suffix):
    d, members, _, _ = base
    path = tmp_path / f'dwca{suffix}'
    with tarfile.open(path, 'w:gz') as tf:
        for n, b in [('._occurrence.txt', b'\x00junk')] + sorted(members.items(), reverse=True):
            info = tarfile.TarInfo(f'export/{n}')
            info.size = len(b)
            tf.addfile(info, io.BytesIO(b))
    same_as_reference(base, path, f'tar{suffix}')


def test_simple_download_zip_with_macosx_entries(base, tmp_path):
    d, _, frame, _ = base
    z = write_zip(
        tmp_path / 'simple.zip',
        {'0001.csv': frame.write_csv(separator='\t', quote_style='never'), '__MACOSX/._0001.csv': b'\x00junk'},
    )
    same_as_reference(base, z, 'simple_macosx')


def test_comma_separated_quoted_simple_download(base, tmp_path):
    "A simple download written with commas and quotes, lower-case header: the delimiter and quoting are detected."
    d, _, frame, _ = base
    quoted = frame.rename({c: c.lower() for c in frame.columns}).with_columns(
        pl.col('scientificname').str.replace(' L.', ', 1758', literal=True)  # a comma inside a quoted field
    )
    p = tmp_path / 'occurrence.csv'
    p.write_text(quoted.write_csv(separator=',', quote_style='always'))
    assert p.read_text().startswith('"gbifid","decimallatitude"')
    same_as_reference(base, p, 'comma')
    z = write_zip(tmp_path / 'comma.zip', {'0001.csv': p.read_bytes()})
    same_as_reference(base, z, 'comma_zip')


def test_old_download_without_species_key(base, tmp_path):
    "No speciesKey: keyed by the scientific name reduced to its species (--rank species) or by taxonKey (taxon)."
    d, _, frame, _ = base
    old = frame.drop('speciesKey', 'species')
    p = tmp_path / 'old.txt'
    p.write_text(old.write_csv(separator='\t', quote_style='never'))
    r = cli(p, '-o', tmp_path / 'sp' / 'c.parquet', '--resolution', '3', '--dedup', 'none')
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((tmp_path / 'sp' / 'c_report.json').read_text())
    assert rep['key']['used'] == 'scientificName' and rep['key']['records'] == 18  # two are named 'Accipiter L.'
    out = read_columns(tmp_path / 'sp' / 'c.parquet')
    codes = set(out.select(pl.col('week_17').explode()).drop_nulls().to_series())
    assert codes == {'Accipiter nisus', 'Corvus corone'}  # the subspecies record (Accipiter nisus L.) is merged
    r = cli(p, '-o', tmp_path / 'tx' / 'c.parquet', '--resolution', '3', '--rank', 'taxon', '--dedup', 'none')
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((tmp_path / 'tx' / 'c_report.json').read_text())
    assert rep['key']['used'] == 'taxonKey' and rep['key']['records'] == 20


def test_archive_without_coordinates_or_dates_is_one_line(base, tmp_path):
    d, _, frame, _ = base
    for drop, word in [(['decimalLatitude', 'decimalLongitude'], 'decimalLatitude'), (['month', 'day'], 'month')]:
        z = write_dwca(tmp_path / f'no_{word}.zip', frame.drop(drop))
        one_line_error(cli(z, '-o', tmp_path / 'c.parquet', '--resolution', '3'), 'missing', word)


# -- taxonomy duplicates ---------------------------------------------------------------------------------------------


def test_taxonomy_duplicate_codes(tmp_path):
    head = 'species_code,taxonKey,sci_name,com_name,species_code,class_name\n'
    p = tmp_path / 'clash.csv'
    p.write_text(
        head + 'amerob,1,Turdus migratorius,American Robin,amerob,aves\nx,2,X x,,x,aves\n'
        'amerob,3,Turdus merula,Blackbird,amerob,aves\n'
    )
    with pytest.raises(GeoSDMDataError, match=r"amerob.*lines 2 and 4"):
        read_taxonomy(p)
    p.write_text(head + 'amerob,1,Turdus migratorius,American Robin,amerob,aves\n' * 2)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        assert read_taxonomy(p) == {'amerob': ('Turdus migratorius', 'American Robin')}
    assert len(w) == 1 and 'amerob' in str(w[0].message)


def test_ingest_taxonomy_one_name_two_codes(base, tmp_path):
    "For ingest a taxonomy maps names to codes: several names to one code merge; one name to two codes is an error."
    d, members, _, _ = base
    z = write_zip(tmp_path / 'a.zip', members)
    tax = tmp_path / 'tax.csv'
    tax.write_text(TAXONOMY + 'eurspa2,5,Accipiter nisus,Sparrowhawk,eurspa2,aves\n')
    one_line_error(cli(z, '-o', tmp_path / 'c.parquet', '--resolution', '3', '--taxonomy', tax), 'Accipiter nisus')


# -- output rules ----------------------------------------------------------------------------------------------------


def test_output_over_an_input_is_refused(base, tmp_path):
    d, _, frame, _ = base
    snap = tmp_path / 'snap.parquet'
    frame.rename({c: c.lower() for c in frame.columns}).write_parquet(snap)
    (tmp_path / 'link.parquet').symlink_to(snap)
    grid = tmp_path / 'grid.parquet'
    grid.write_bytes((d / 'grid.parquet').read_bytes())
    before = snapshot(tmp_path)
    one_line_error(cli(snap, '-o', snap, '--resolution', '3'), 'input')
    one_line_error(cli(tmp_path / 'link.parquet', '-o', tmp_path / '.' / 'snap.parquet', '--resolution', '3'), 'input')
    one_line_error(cli(snap, '-o', grid, '--grid', grid), 'grid')
    tax = tmp_path / 'c_taxonomy.csv'
    tax.write_text(TAXONOMY)
    before = snapshot(tmp_path)
    one_line_error(cli(snap, '-o', tmp_path / 'c.parquet', '--resolution', '3', '--taxonomy', tax), 'taxonomy')
    assert snapshot(tmp_path) == before


def test_empty_result_is_an_error_and_keeps_earlier_output(base, tmp_path):
    d, members, _, _ = base
    z = write_zip(tmp_path / 'a.zip', members)
    out = tmp_path / 'out'
    assert cli(z, '-o', out / 'c.parquet', *opts(d)).returncode == 0
    before = snapshot(out)
    assert set(before) == {'c.parquet', 'c_taxonomy.csv', 'c_manifest.csv', 'c_report.json'}
    err = one_line_error(cli(z, '-o', out / 'c.parquet', *opts(d)[:-1], 'avess'), 'class')
    assert 'allow_empty' in err
    assert snapshot(out) == before
    r = cli(z, '-o', tmp_path / 'e' / 'c.parquet', *opts(d)[:-1], 'avess', '--allow_empty')
    assert r.returncode == 0 and 'Kept 0 records' in r.stdout


def test_a_failed_report_leaves_the_earlier_set(base, tmp_path):
    "The report cannot be written (a folder is in its way): no new parquet beside the old taxonomy and manifest."
    d, members, _, _ = base
    z = write_zip(tmp_path / 'a.zip', members)
    out = tmp_path / 'out'
    assert cli(z, '-o', out / 'c.parquet', *opts(d)).returncode == 0
    (out / 'c_report.json').unlink()
    (out / 'c_report.json').mkdir()
    before = snapshot(out)
    one_line_error(cli(z, '-o', out / 'c.parquet', '--resolution', '3'), 'c_report.json')
    assert snapshot(out) == before
    assert not [p for p in out.iterdir() if p.name.endswith('.tmp')]


# -- env columns that cannot blow up ---------------------------------------------------------------------------------


def test_categorical_with_too_many_classes_is_continuous():
    "5000 distinct 'landcover_class' values would be a 5000-wide one-hot: treated as continuous, with one warning."
    rng = np.random.default_rng(0)
    v = rng.permutation(5000).astype(np.float64) / 7
    fr = pl.DataFrame({'landcover_class': v, 'elevation_m': rng.normal(size=5000)})
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        env, names, st = encode_env(fr, fr.columns)
    assert env.shape == (5000, 2) and names == ['landcover_class', 'elevation_m']
    assert 'landcover_class' in st['continuous'] and st['categorical'] == {}
    msg = ' '.join(str(x.message) for x in w)
    assert 'landcover_class' in msg and '5000' in msg
    assert abs(float(np.nanmean(env[:, 0]))) < 1e-6  # standardised like any continuous column


def test_publisher_archive_with_event_date_defaults_and_latin1(base, tmp_path):
    """An IPT-style archive: dates as eventDate only, basisOfRecord given once as a field default, the core file in
    ISO-8859-1 (as its <core encoding> says): the same result as the GBIF zip."""
    d, members, frame, expect = base
    pub = frame.with_columns(
        pl.concat_str(['year', 'month', 'day'], separator='-').fill_null(pl.col('year')).alias('eventDate'),
        pl.col('recordedBy').str.replace('obs1', 'Zoë'),
    )
    assert pub['basisOfRecord'].value_counts().height == 2  # one fossil: the others' value becomes the default
    pub = pub.filter(pl.col('basisOfRecord') == 'HUMAN_OBSERVATION').drop('year', 'month', 'day', 'basisOfRecord')
    cols = pub.columns
    meta = members['meta.xml'].decode()
    head = meta[: meta.index('<field ')].replace('encoding="UTF-8"', 'encoding="ISO-8859-1"', 1)
    idx = next(i for i, c in enumerate(cols) if c == 'gbifID')
    head = head.replace(
        head[head.index('<id index=') : head.index('/>', head.index('<id index=')) + 2], f'<id index="{idx}"/>'
    )
    fields = ''.join(f'<field index="{i}" term="http://rs.tdwg.org/dwc/terms/{c}"/>' for i, c in enumerate(cols))
    fields += '<field default="HUMAN_OBSERVATION" term="http://rs.tdwg.org/dwc/terms/basisOfRecord"/>'
    text = pub.write_csv(separator='\t', quote_style='never')
    z = write_zip(
        tmp_path / 'ipt.zip',
        {'meta.xml': head + fields + '</core></archive>', 'occurrence.txt': text.encode('latin-1')},
    )
    assert 'Zoë'.encode('latin-1') in zipfile.ZipFile(z).read('occurrence.txt')
    r = cli(z, '-o', tmp_path / 'o' / 'c.parquet', *opts(d))
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((tmp_path / 'o' / 'c_report.json').read_text())
    drops = {s['filter']: s['dropped'] for s in rep['filters']}
    assert rep['rows_read'] == 19 and drops['basis'] == 0 and drops['date'] == 2 and rep['rows_kept'] == 6
    assert read_columns(tmp_path / 'o' / 'c.parquet').equals(expect)


def test_corrupt_zip_is_one_line(tmp_path):
    "A zip whose occurrence file is damaged in the middle (bad CRC) is one line naming it, whatever reads it."
    from geosdm.core import WEEK_COLS, demo_parquet
    from geosdm.synthetic import synthetic_records

    demo = read_columns(demo_parquet(), columns=['h3_index'] + WEEK_COLS)
    z = write_dwca(tmp_path / 'big.zip', synthetic_records(demo, 50_000))
    raw, info = bytearray(z.read_bytes()), zipfile.ZipFile(z).getinfo('occurrence.txt')
    mid = info.header_offset + 100 + info.compress_size // 2
    raw[mid : mid + 64] = bytes(b ^ 0xFF for b in raw[mid : mid + 64])
    (tmp_path / 'bad.zip').write_bytes(bytes(raw))
    one_line_error(cli(tmp_path / 'bad.zip', '-o', tmp_path / 'c.parquet', '--resolution', '3'), 'occurrence.txt')
    assert not (tmp_path / 'c.parquet').exists()
