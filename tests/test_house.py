"""The shape of the package: import arrows point down the floors, no circles, short modules and functions,
methods written in their class, and the command-line modules load without torch (argument errors answer at once)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / 'geosdm'

# Each module and its floor: a module may import only modules on lower floors (see nbs/index.ipynb).
FLOORS = {
    'core': 0,
    'options': 1,
    'prepared': 1,
    'geo': 1,
    'batches': 1,
    'worldfiles': 2,
    'inputs': 2,
    'labels': 3,
    'archives': 1,
    'gbif': 2,
    'synthetic': 3,
    'losskinds': 2,
    'losses': 4,
    'model': 3,
    'metrics': 3,
    'geoscore': 1,
    'planet': 3,
    'simulate': 4,
    'propagation': 4,
    'data': 5,
    'keyspill': 1,  # the kept records' keys, in order of their cells
    'validation': 5,
    'tally': 3,
    'weeklists': 4,  # the kept records as lists, a few cells at a time
    'ingest': 5,
    'config': 3,
    'names': 3,  # aliases, languages, always-plausible labels
    'calibrate': 4,  # thresholds learned on the validation cells
    'runconfig': 4,
    'checkpoint': 6,
    'evaluate': 6,
    'steps': 6,
    'runlog': 4,
    'trainer': 7,
    'predict': 7,
    'maps': 7,
    'zoom': 7,  # what a map draws at each view, and its values
    'zoommap': 8,  # the apps' zoomable map
    'autotune': 8,
    'demo': 8,
    'plots': 8,
    'birdnet': 7,  # week 0 inside the graph, the BirdNET layout
    'export': 8,  # export runs a Predictor on its files
    'cli': 9,
    'cli_plot': 10,  # geosdm_plot (uses cli.run and cli.check_common)
    'filter': 8,  # geosdm_filter's library: detections, places, verdicts
    'cli_filter': 10,  # geosdm_filter itself (uses cli.run)
}
LAZY_OK = {'cli', 'cli_plot', 'cli_filter'}  # imports after argument parsing: a typo is answered before torch loads
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 500, 60


def modules() -> dict[str, Path]:
    return {p.stem: p for p in PKG.glob('*.py') if p.stem not in ('__init__', '_modidx')}


def imports(path: Path) -> tuple[set[str], set[str]]:
    "geosdm modules imported by `path` at module level, and inside functions."
    top, inner = set(), set()

    def visit(node, in_fn):
        for ch in ast.iter_child_nodes(node):
            fn = in_fn or isinstance(ch, (ast.FunctionDef, ast.AsyncFunctionDef))
            names = []
            if isinstance(ch, ast.ImportFrom):
                mod = ch.module or ''
                if ch.level == 1:
                    names = [mod.split('.')[0]] if mod else [a.name for a in ch.names]
                elif mod.startswith('geosdm.'):
                    names = [mod.split('.')[1]]
                elif mod == 'geosdm':
                    names = [a.name for a in ch.names]
            elif isinstance(ch, ast.Import):
                names = [a.name.split('.')[1] for a in ch.names if a.name.startswith('geosdm.')]
            (inner if fn else top).update(n for n in names if n in modules())
            visit(ch, fn)

    visit(ast.parse(path.read_text()), False)
    return top, inner - top


def test_every_module_has_a_floor():
    assert set(modules()) <= set(FLOORS), (
        f'add these modules to FLOORS (and the index notebook): {set(modules()) - set(FLOORS)}'
    )


@pytest.mark.parametrize('name', sorted(modules()))
def test_imports_point_down(name):
    top, inner = imports(modules()[name])
    assert not (inner and name not in LAZY_OK), f'{name} imports {inner} inside functions'
    up = {m for m in top | inner if FLOORS[m] >= FLOORS[name]}
    assert not up, f'{name} (floor {FLOORS[name]}) imports {up} from the same or a higher floor'


def test_core_imports_nothing_of_ours():
    assert imports(modules()['core']) == (set(), set())


@pytest.mark.parametrize('name', sorted(modules()))
def test_short_rooms(name):
    src = modules()[name].read_text()
    n = sum(1 for ln in src.splitlines() if not ln.startswith('# %% '))  # nbdev's cell markers are not code
    assert n <= MAX_MODULE_LINES, f'{name}.py has {n} lines'
    long = [
        f'{n.name} ({n.end_lineno - n.lineno + 1} lines)'
        for n in ast.walk(ast.parse(src))
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f'{name}.py: functions over {MAX_FUNCTION_LINES} lines: {long}'


def attached_methods(src: str) -> list[str]:
    "`Class.attr` targets of module-level assignments to a class of the same module (`Class.a, Class.b = ...` too)."
    tree = ast.parse(src)
    classes = {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
    found = []
    for n in tree.body:
        if isinstance(n, ast.Assign):
            targets = n.targets
        elif isinstance(n, (ast.AnnAssign, ast.AugAssign)):
            targets = [n.target]
        else:
            continue
        for t in targets:
            for a in t.elts if isinstance(t, (ast.Tuple, ast.List)) else [t]:
                if isinstance(a, ast.Attribute) and isinstance(a.value, ast.Name) and a.value.id in classes:
                    found.append(f'{a.value.id}.{a.attr} (line {n.lineno})')
    return found


def test_attached_methods_are_found():
    src = 'class A:\n    pass\n\n\ndef f(self):\n    pass\n\n\nA.f = f\nA.g, A.h = f, f\nB.x = 1\n'
    assert attached_methods(src) == ['A.f (line 9)', 'A.g (line 10)', 'A.h (line 10)']  # B is not defined here


@pytest.mark.parametrize('name', sorted(modules()))
def test_methods_are_in_their_class(name):
    "A class's methods are written in its body (its notebook cell), not attached after it by assignment."
    found = attached_methods(modules()[name].read_text())
    assert not found, f'{name}.py attaches to its classes after they are defined: {found}'


def test_command_line_loads_without_torch():
    code = (
        'import sys, geosdm.cli, geosdm.cli_plot, geosdm.config; '
        'print(sorted(m for m in ("torch", "polars") if m in sys.modules))'
    )
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == '[]'


def test_notebook_outputs_work_offline():
    "Stored notebook outputs never load scripts from the network (charts are static SVG or inlined)."
    import re

    for nb in sorted((PKG.parent / 'nbs').glob('*.ipynb')):
        text = nb.read_text()
        assert not re.search(r'<script[^>]*\bsrc=\\?["\']?https?://', text) and 'cdn.jsdelivr' not in text, nb.name


def test_notebook_cells_are_short():
    """Exported notebook cells hold one definition each: their median is at most 10 statements.

    Statements, not lines: the formatter spreads one statement over several lines (an import per line, a call's
    arguments one per line), and a cell is no longer to read for that."""
    import json
    import statistics

    sizes = []
    for nb in sorted((PKG.parent / 'nbs').glob('*.ipynb')):
        for c in json.loads(nb.read_text())['cells']:
            lines = ''.join(c['source']).splitlines()
            if c['cell_type'] == 'code' and '#| export' in lines:
                code = '\n'.join(ln for ln in lines if not ln.startswith('#|'))
                sizes.append(sum(isinstance(n, ast.stmt) for n in ast.walk(ast.parse(code))))
    assert len(sizes) > 300 and statistics.median(sizes) <= 10, statistics.median(sizes)


def test_user_facing_text_has_plain_words():
    "Notebooks, apps, modules and the README never send a reader to documents they do not have."
    import re

    bad = re.compile(r"\bthe seeds?\b|\bseed's\b|\bspec §|\bthe reference\b|\breference implementation\b", re.I)
    files = [*(PKG.parent / 'nbs').glob('*.ipynb'), *PKG.rglob('*.py'), PKG.parent / 'README.md']
    hits = [f'{f.name}: {m.group(0)!r}' for f in files for m in bad.finditer(f.read_text())]
    assert not hits, hits


# ---------------------------------------------------------------- one place per idea


def _string_constants(path: Path) -> set[str]:
    return {
        n.value
        for n in ast.walk(ast.parse(path.read_text()))
        if isinstance(n, ast.Constant) and isinstance(n.value, str)
    }


def test_only_the_loss_registry_names_a_loss_kind():
    "A loss kind is named where it is declared (losskinds) and implemented (losses); everything else reads them."
    from geosdm.losskinds import LOSS_KINDS

    hits = {
        name: sorted(set(LOSS_KINDS) & _string_constants(p))
        for name, p in modules().items()
        if name not in ('losskinds', 'losses')
    }
    assert not {k: v for k, v in hits.items() if v}


def test_only_the_option_table_declares_options():
    "Options are rows of the option table: declared in config, or with their loss in losskinds, nowhere else."
    found = {
        name
        for name, p in modules().items()
        for n in ast.walk(ast.parse(p.read_text()))
        if isinstance(n, ast.Call) and getattr(n.func, 'id', None) == 'Option'
    }
    assert found <= {'options', 'config', 'losskinds'}, found


def test_geoscore_parts_are_one_table():
    "No module spells a GeoScore part's history key: the parts come from geoscore.GEOSCORE_PARTS."
    from geosdm.geoscore import GEOSCORE_PARTS

    keys = {f'geoscore_{p.key}' for p in GEOSCORE_PARTS}
    hits = {name: sorted(keys & _string_constants(p)) for name, p in modules().items()}
    assert not {k: v for k, v in hits.items() if v}
    apps = {p.name: sorted(keys & _string_constants(p)) for p in (PKG / 'apps').glob('*.py')}
    assert not {k: v for k, v in apps.items() if v}


def test_readme_glossary_reads_the_geoscore_table():
    from geosdm.geoscore import geoscore_glossary

    assert geoscore_glossary() in (PKG.parent / 'README.md').read_text()


def test_autotune_free_and_fixed_options_come_from_the_table():
    from geosdm import autotune
    from geosdm.config import OPTIONS

    free = autotune._NOT_FIXED
    assert free <= set(OPTIONS)
    assert {n for n, o in OPTIONS.items() if o.effect in ('data', 'training')} - free == set(OPTIONS) - free


def test_every_notebook_is_in_the_index_and_readme_tables():
    "The index notebook's and README's notebook tables name every notebook, and only notebooks that exist."
    import json
    import re

    root = PKG.parent
    nbs = {p.stem for p in (root / 'nbs').glob('[0-9]*.ipynb')}
    index = ''.join(''.join(c['source']) for c in json.loads((root / 'nbs' / 'index.ipynb').read_text())['cells'])
    for where, text in (('index', index), ('README', (root / 'README.md').read_text())):
        named = set(re.findall(r'^\| `(\d\d[a-z]?_[a-z_]+)`', text, re.M))
        assert named == nbs, (where, sorted(nbs - named), sorted(named - nbs))
