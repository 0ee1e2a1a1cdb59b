"""The docs site (.ci/docs.py): every notebook a page in reading order, the console scripts' --help, nothing loaded
from outside the site; then every page opened in headless Chromium: no console errors, no failed or outside
requests, the notebook's charts drawn, every link inside the site leads to a page (and anchor) that exists."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / '.ci'))
import docs  # noqa: E402  (.ci/docs.py)
from chromium import browser, find_chromium  # noqa: E402  (.ci/chromium.py)

NOTEBOOKS = sorted(p for p in (ROOT / 'nbs').glob('*.ipynb') if not p.name.startswith(('.', '_')))


@pytest.fixture(scope='module')
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp('docs') / 'site'
    docs.build(out)
    return out


def nav_hrefs(page: Path) -> list[str]:
    nav = re.search(r'<nav class="side">(.*?)</nav>', page.read_text(encoding='utf-8'), re.S)
    assert nav, f'{page.name} has no nav'
    return re.findall(r'<li><a href="([^"]+)"', nav.group(1))  # in nav order


def chart_outputs(nb: Path) -> int:
    "Image outputs of the notebook's shown cells (the charts its page must draw)."
    cells = json.loads(nb.read_text(encoding='utf-8'))['cells']
    shown = [
        c for c in cells if c['cell_type'] == 'code' and not re.search(r'^#\|\s*hide\b', ''.join(c['source']), re.M)
    ]
    return sum(any(k.startswith('image/') for k in o.get('data', {})) for c in shown for o in c.get('outputs', []))


def test_every_notebook_is_a_page_in_reading_order(site):
    stems = [p.stem for p in NOTEBOOKS]
    order = ['index'] + [s for s in stems if s != 'index'] if 'index' in stems else stems
    assert nav_hrefs(site / 'index.html') == ['index.html', 'scripts.html'] + [f'nbs/{s}.html' for s in order]
    for s in stems:
        assert (site / 'nbs' / f'{s}.html').is_file()
        assert len(nav_hrefs(site / 'nbs' / f'{s}.html')) == len(stems) + 2  # the nav is on every page
    readme = (site / 'index.html').read_text(encoding='utf-8')
    title = re.search(r'^#\s+(.+)$', (ROOT / 'README.md').read_text(encoding='utf-8'), re.M).group(1)
    assert re.search(rf'<h1 id="[^"]*">{re.escape(title)}', readme)  # README.md is the front page


def test_scripts_page_has_every_console_script(site):
    tomllib = pytest.importorskip('tomllib')
    scripts = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']['scripts']
    page = (site / 'scripts.html').read_text(encoding='utf-8')
    assert scripts and all(f'usage: {name}' in page for name in scripts)


def test_pages_load_nothing_from_outside(site):
    for page in site.rglob('*.html'):
        text = page.read_text(encoding='utf-8')
        assert '<script' not in text.lower(), page
        for tag in re.findall(r'<(?:img|link|iframe|source|video|audio|embed|object)\b[^>]*>', text, re.I):
            assert not re.search(r'(src|href|data)="(https?:)?//', tag), f'{page.name}: {tag[:200]}'
    css = (site / 'style.css').read_text()
    assert 'url(' not in css and '@import' not in css


def tiny_repo(root: Path) -> Path:
    "A repository with a README, two notebooks (one chart, one hidden cell) and a data file, as the site sees it."
    md = lambda text: {'cell_type': 'markdown', 'metadata': {}, 'source': text}
    code = lambda text, outputs=(): {'cell_type': 'code', 'metadata': {}, 'source': text, 'outputs': list(outputs)}
    svg = {
        'output_type': 'display_data',
        'metadata': {},
        'data': {'image/svg+xml': '<svg xmlns="http://www.w3.org/2000/svg"/>'},
    }
    text = {'output_type': 'execute_result', 'metadata': {}, 'data': {'text/plain': 'shown <3'}}
    notebooks = {
        '00_a': [md('# First\n\nOn to [the second](01_b.ipynb#usage), [home](../README.md), [data](../data/x.csv).'),
                 code('#| export\ndef f(): ...', [text]), code('#| hide\nsecret = 1', [svg]), code('f()', [svg])],
        '01_b': [md('# Second\n\n## Usage\n\n$p_{is} = \\sigma(x)$, `$HOME` stays code, [gone](02_c.ipynb).')],
    }  # fmt: skip
    (root / 'nbs').mkdir(parents=True)
    for stem, cells in notebooks.items():
        nb = {'cells': cells, 'metadata': {}, 'nbformat': 4, 'nbformat_minor': 5}
        (root / 'nbs' / f'{stem}.ipynb').write_text(json.dumps(nb))
    (root / 'data').mkdir()
    (root / 'data' / 'x.csv').write_text('a,b\n1,2\n')
    (root / 'README.md').write_text('# tiny\n\nSee [the first notebook](nbs/00_a.ipynb).\n')
    (root / 'pyproject.toml').write_text('[project]\nname = "tiny"\n\n[project.scripts]\n')
    return root


def test_links_become_links_between_pages(tmp_path):
    root = tiny_repo(tmp_path / 'repo')
    info = docs.build(tmp_path / 'site', root)
    site = tmp_path / 'site'
    readme, a, b = [(site / p).read_text() for p in ('index.html', 'nbs/00_a.html', 'nbs/01_b.html')]
    assert 'href="nbs/00_a.html"' in readme
    assert all(h in a for h in ('href="01_b.html#usage"', 'href="../index.html"', 'href="../files/data/x.csv"'))
    assert (site / 'files' / 'data' / 'x.csv').read_text() == 'a,b\n1,2\n'  # a linked file is copied in
    assert 'id="usage"' in b and 'href="02_c.ipynb"' in b  # a link to no notebook stays, and is reported
    assert info['warnings'] == ['nbs/01_b.ipynb links to 02_c.ipynb, which is no page and no file of the repository']
    assert 'secret' not in a and a.count('<img class="chart"') == 1 == info['charts']  # hidden cells stay hidden
    assert 'shown &lt;3' in a and '#| export' not in a and 'exported' in a
    assert '<sub>is</sub>' in b and 'σ' in b and '<code>$HOME</code>' in b  # math outside code only


def test_build_never_replaces_a_folder_it_did_not_build(tmp_path):
    (tmp_path / 'notes.txt').write_text('mine')
    with pytest.raises(FileExistsError):
        docs.build(tmp_path)
    assert (tmp_path / 'notes.txt').read_text() == 'mine'


# what every page reports once loaded: its anchors, its links (resolved) and its charts (drawn or not)
PAGE_STATE = """(() => ({
  ids: [...document.querySelectorAll('[id]')].map(e => e.id),
  links: [...document.querySelectorAll('a[href]')].map(a => a.href),
  nav: document.querySelectorAll('nav.side li a').length,
  charts: [...document.querySelectorAll('img.chart')].map(i => i.complete && i.naturalWidth > 0),
}))()"""


def page_problems(url: str, events: list[dict], base: str) -> list[str]:
    "Console errors, uncaught exceptions, failed requests and requests to anything outside the site."
    out, urls = [], {}
    for e in events:
        m, p = e['method'], e.get('params', {})
        if m == 'Runtime.consoleAPICalled' and p.get('type') in ('error', 'assert'):
            out.append(f'console {p["type"]}: {[a.get("value", a.get("description")) for a in p.get("args", [])]}')
        elif m == 'Runtime.exceptionThrown':
            out.append(f'exception: {p["exceptionDetails"].get("text")}')
        elif m == 'Log.entryAdded' and p['entry'].get('level') == 'error':
            out.append(f'log error: {p["entry"].get("text")} {p["entry"].get("url", "")}')
        elif m == 'Network.loadingFailed':
            out.append(f'request failed: {p.get("errorText")} {urls.get(p.get("requestId"), "")}')
        elif m == 'Network.requestWillBeSent':
            req = urls[p.get('requestId')] = p['request']['url']
            if not (req.startswith(base) or req.startswith('data:')):
                out.append(f'request outside the site: {req}')
    return [f'{url[len(base) :]}: {x}' for x in out]


@pytest.mark.skipif(find_chromium() is None, reason='no Chromium installed (apt-get install -y chromium)')
def test_every_page_in_chromium(site):
    pytest.importorskip('websockets', reason='the websockets package (comes with marimo) drives Chromium')
    base = site.resolve().as_uri() + '/'
    pages = sorted(site.rglob('*.html'))
    states, problems = {}, []
    with browser(find_chromium()) as cdp:
        for domain in ('Page', 'Runtime', 'Log', 'Network'):
            cdp.call(f'{domain}.enable')
        for page in pages:
            url = page.resolve().as_uri()
            cdp.events.clear()
            cdp.call('Page.navigate', url=url)
            cdp.wait_event('Page.loadEventFired')
            states[url] = cdp.eval(PAGE_STATE)
            problems += page_problems(url, cdp.events, base)
    n_pages = len(docs.notebook_paths(ROOT / 'nbs')) + 2
    for url, st in states.items():
        name = url[len(base) :]
        if st['nav'] != n_pages:
            problems.append(f'{name}: the nav has {st["nav"]} pages, not {n_pages}')
        if not all(st['charts']):
            problems.append(f'{name}: {st["charts"].count(False)} of {len(st["charts"])} charts not drawn')
        for link in st['links']:
            target, _, anchor = link.partition('#')
            if not target.startswith(base):
                continue  # a page elsewhere on the web: a link, not a request
            if not Path(unquote(target[len('file://') :])).is_file():
                problems.append(f'{name}: link to {link[len(base) :]}, which is no file of the site')
            elif anchor and target in states and anchor not in states[target]['ids']:
                problems.append(f'{name}: link to {link[len(base) :]}, which has no anchor #{anchor}')
    for nb in NOTEBOOKS:
        st = states[(site / 'nbs' / f'{nb.stem}.html').resolve().as_uri()]
        if len(st['charts']) != chart_outputs(nb):
            problems.append(
                f'nbs/{nb.stem}.html shows {len(st["charts"])} charts; the notebook has {chart_outputs(nb)}'
            )
    assert not problems, '\n'.join(problems)
    assert sum(len(st['charts']) for st in states.values()) == sum(chart_outputs(nb) for nb in NOTEBOOKS)
