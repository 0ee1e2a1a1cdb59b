"""Build the docs site from the notebooks, offline: README.md as the front page, every notebook in nbs/ as a page
with its stored outputs (charts included), and the console scripts' --help.

Usage: python .ci/docs.py [--out _docs]

Open _docs/index.html in a browser. The pages load nothing from outside the site: no scripts at all, one style
sheet, the charts as image files. Links to notebooks (`09_steps.ipynb`, `nbs/09_steps.ipynb`) become links to their
pages; other files of the repository that a page links to are copied into the site. The notebooks are read as they
are (nothing is executed); the console scripts come from pyproject.toml's [project.scripts], so a new one appears
by itself. Needs only Markdown and Pygments (both come with marimo).
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import os
import posixpath
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
MARK = '.geosdm-docs'  # marks a folder this script built, so that a rebuild may replace it
MAX_COPY = 1 << 20  # linked repository files larger than this are not copied into the site
ANSI = re.compile(r'\x1b\[[0-9;?]*[A-Za-z]')
IMAGES = {'image/svg+xml': 'svg', 'image/png': 'png', 'image/jpeg': 'jpg', 'image/gif': 'gif'}


@dataclass
class Page:
    "One page of the site: where it comes from in the repository, where it goes in the site, and its nav entry."

    src: str  # repository path ('README.md', 'nbs/09_steps.ipynb'), '' for a generated page
    href: str  # site path ('index.html', 'nbs/09_steps.html')
    title: str
    label: str  # the short tag before the title in the nav ('09', 'index')
    group: str  # nav group ('' for the top entries)
    body: str = ''
    module: str = ''
    charts: int = 0


@dataclass
class Site:
    "What a build collects on the way: files to copy into the site and links that lead nowhere."

    root: Path
    copies: dict[str, Path] = field(default_factory=dict)  # site path -> repository file
    warnings: list[str] = field(default_factory=list)


# --- pages and links ---------------------------------------------------------------------------------------------


def notebook_paths(nbs: Path) -> list[Path]:
    "The notebooks in reading order: index first, then by file name (00_, 01_, ..., the 9x_ test worlds last)."
    paths = [p for p in nbs.glob('*.ipynb') if not p.name.startswith(('.', '_'))]
    return sorted(paths, key=lambda p: (p.stem != 'index', p.name))


def site_path(repo_path: str) -> str | None:
    "The page a repository file becomes, or None: README.md is the front page, nbs/X.ipynb is nbs/X.html."
    if repo_path == 'README.md':
        return 'index.html'
    if repo_path.startswith('nbs/') and repo_path.endswith('.ipynb') and '/' not in repo_path[4:]:
        return repo_path[: -len('.ipynb')] + '.html'
    return None


def _relink(url: str, src: str, href: str, site: Site) -> str:
    "One link of the page `href` (from the repository file `src`) as it must read in the site."
    parts = urlsplit(url)
    if parts.scheme or parts.netloc or url.startswith(('#', '/', '_img/')) or not parts.path:
        return url
    target = posixpath.normpath(posixpath.join(posixpath.dirname(src), parts.path))
    page = site_path(target)
    if page is None or not (site.root / target).is_file():
        file = site.root / target
        if target.startswith('..') or not file.is_file():
            site.warnings.append(f'{src or href} links to {url}, which is no page and no file of the repository')
            return url
        if file.stat().st_size > MAX_COPY:
            site.warnings.append(f'{src or href} links to {url}, too large to copy into the site')
            return url
        page = 'files/' + target
        site.copies[page] = file
    rel = posixpath.relpath(page, posixpath.dirname(href) or '.')
    return rel + ('#' + parts.fragment if parts.fragment else '')


def relink(body: str, src: str, href: str, site: Site) -> str:
    "Every href/src of a rendered page, pointed at the site's pages and files."

    def one(m: re.Match) -> str:
        url = _relink(html.unescape(m.group(2)), src, href, site)
        return f'{m.group(1)}="{html.escape(url)}"'

    return re.sub(r'\b(href|src)="([^"]*)"', one, body)


def unique_ids(body: str) -> str:
    "Headings of different cells may share a title: number the repeats (and their ¶ links), as anchors must differ."
    seen: dict[str, int] = {}

    def one(m: re.Match) -> str:
        tag, i, inner = m.groups()
        seen[i] = seen.get(i, 0) + 1
        if seen[i] == 1:
            return m.group(0)
        new = f'{i}-{seen[i] - 1}'
        return f'<{tag} id="{new}">' + inner.replace(f'href="#{i}"', f'href="#{new}"') + f'</{tag}>'

    return re.sub(r'<(h[1-6]) id="([^"]+)">(.*?)</\1>', one, body, flags=re.S)


# --- markdown and math -------------------------------------------------------------------------------------------

SYMBOLS = {
    'sum': '∑', 'prod': '∏', 'cdot': '·', 'times': '×', 'le': '≤', 'leq': '≤', 'ge': '≥', 'geq': '≥', 'ne': '≠',
    'neq': '≠', 'approx': '≈', 'in': '∈', 'to': '→', 'infty': '∞', 'pm': '±', 'mid': '|', 'ldots': '…', 'dots': '…',
    'quad': '\u2003', 'qquad': '\u2003\u2003', 'lvert': '|', 'rvert': '|',
}  # fmt: skip
SCRIPT = {'_': 'sub', '^': 'sup'}


def _tex_command(m: re.Match) -> str:
    "One TeX command as text: a symbol, a Greek letter, or its own name (\\log, \\max...)."
    name = m.group(1)
    if name in SYMBOLS:
        return SYMBOLS[name]
    try:
        return unicodedata.lookup(f'GREEK {"CAPITAL" if name[0].isupper() else "SMALL"} LETTER {name.upper()}')
    except KeyError:
        return name


def latex_html(tex: str) -> str:
    "Simple TeX (fractions, sums, Greek, sub- and superscripts, \\text) as HTML: the site loads no MathJax."
    s = html.escape(tex, quote=False).replace('\\{', '\x01').replace('\\}', '\x02')  # literal braces
    s = re.sub(r'\\(?:text|mathrm|operatorname|mathit|mathbf)\{([^{}]*)\}', r'\1', s)
    script = lambda m: f'<{SCRIPT[m[1]]}>{m[2]}</{SCRIPT[m[1]]}>'
    s = re.sub(r'([_^])\{([^{}]*)\}', script, s)
    s = re.sub(r'([_^])(\\[A-Za-z]+|[A-Za-z0-9])', script, s)
    frac = r'\\[dt]?frac\s*(?:\{([^{}]*)\}|(\w))\s*(?:\{([^{}]*)\}|(\w))'
    while re.search(frac, s):
        s = re.sub(
            frac, lambda m: f'<span class="frac"><span>{m[1] or m[2]}</span><span>{m[3] or m[4]}</span></span>', s
        )
    s = re.sub(r'\\(?:left|right|big|Big|bigg|Bigg)\b\s*', '', s)
    s = re.sub(
        r'\\(&amp;|[#%$,;:! _])', lambda m: {'!': '', ',': '\u2009', ';': '\u2009', ':': '\u2009'}.get(m[1], m[1]), s
    )
    s = re.sub(r'\\([A-Za-z]+)', _tex_command, s)
    return s.replace('{', '').replace('}', '').replace('\x01', '{').replace('\x02', '}')


CODE_SPANS = re.compile(r'(```.*?```|~~~.*?~~~|`[^`\n]*`)', re.S)
DISPLAY_MATH = re.compile(r'\$\$(.+?)\$\$', re.S)
INLINE_MATH = re.compile(r'(?<![\\$\w])\$(?![\s$])([^$\n]+?)(?<![\s\\])\$(?![\w$])')


def markdown_html(text: str) -> str:
    "Markdown (tables, fenced code, heading anchors) with $math$ outside code, as HTML."
    import markdown
    from markdown.extensions.toc import slugify_unicode

    maths: list[str] = []

    def keep(m: re.Match, display: bool) -> str:
        tag = 'div' if display else 'span'
        maths.append(f'<{tag} class="math">{latex_html(m.group(1).strip())}</{tag}>')
        return f'GEOSDMMATH{len(maths) - 1}X'

    parts = CODE_SPANS.split(text)
    for i in range(0, len(parts), 2):
        parts[i] = INLINE_MATH.sub(lambda m: keep(m, False), DISPLAY_MATH.sub(lambda m: keep(m, True), parts[i]))
    md = markdown.Markdown(
        extensions=['tables', 'fenced_code', 'codehilite', 'toc', 'sane_lists'],
        extension_configs={
            'codehilite': {'guess_lang': False, 'css_class': 'highlight'},
            'toc': {'slugify': slugify_unicode, 'permalink': '¶'},
        },
    )
    out = md.convert(''.join(parts))
    return re.sub(r'GEOSDMMATH(\d+)X', lambda m: maths[int(m.group(1))], out)


def code_html(src: str, lexer: str = 'python') -> str:
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import get_lexer_by_name

    return highlight(src, get_lexer_by_name(lexer), HtmlFormatter(cssclass='highlight'))


# --- notebooks ---------------------------------------------------------------------------------------------------


def _text(v) -> str:
    return ''.join(v) if isinstance(v, list) else (v or '')


def directives(src: str) -> tuple[dict[str, str], str]:
    "A code cell's leading `#| key: value` lines (nbdev and Quarto) and the source without them."
    opts, lines = {}, src.splitlines()
    while lines and lines[0].startswith('#|'):
        key, _, value = lines.pop(0)[2:].strip().partition(' ')
        key, _, v2 = key.partition(':')
        opts[key.strip()] = (v2 + ' ' + value).strip()
    return opts, '\n'.join(lines).strip('\n')


def output_html(out: dict, page: Page, images: dict[str, bytes]) -> str:
    "One stored output: images become files of the site (counted as charts); tables and text as they were shown."
    kind = out.get('output_type')
    if kind == 'stream':
        name = out.get('name', 'stdout')
        return f'<pre class="stream {name}">{html.escape(ANSI.sub("", _text(out.get("text"))))}</pre>'
    if kind == 'error':
        tb = ANSI.sub('', '\n'.join(out.get('traceback') or [f'{out.get("ename")}: {out.get("evalue")}']))
        return f'<pre class="error">{html.escape(tb)}</pre>'
    data = out.get('data', {})
    for mime, ext in IMAGES.items():
        if mime in data:
            raw = _text(data[mime])
            blob = raw.encode() if mime == 'image/svg+xml' else base64.b64decode(raw)
            page.charts += 1
            name = f'{posixpath.basename(page.href)[:-5]}_{page.charts}.{ext}'
            images[name] = blob
            return f'<img class="chart" src="_img/{name}" alt="output {page.charts} of {html.escape(page.title)}">'
    htm = _text(data.get('text/html'))
    if htm and '<script' not in htm.lower():
        return f'<div class="html">{htm}</div>'
    if 'text/markdown' in data:
        return f'<div class="md">{markdown_html(_text(data["text/markdown"]))}</div>'
    if 'text/plain' in data:
        return f'<pre class="plain">{html.escape(ANSI.sub("", _text(data["text/plain"])))}</pre>'
    return ''


def cell_html(cell: dict, page: Page, images: dict[str, bytes]) -> str:
    src = _text(cell.get('source'))
    if cell.get('cell_type') == 'markdown':
        return f'<div class="cell md">{markdown_html(src)}</div>'
    if cell.get('cell_type') != 'code':
        return ''
    opts, code = directives(src)
    if 'default_exp' in opts:
        page.module = opts['default_exp']
    if 'hide' in opts or opts.get('include') == 'false':
        return ''
    shown = [] if opts.get('echo') == 'false' or not code.strip() else [code_html(code)]
    badge = '<span class="badge">exported</span>' if {'export', 'exports', 'exporti'} & set(opts) else ''
    outs = [] if opts.get('output') == 'false' else [output_html(o, page, images) for o in cell.get('outputs', [])]
    outs = [o for o in outs if o]
    if not shown and not outs:
        return ''
    out_html = f'<div class="outputs">{"".join(outs)}</div>' if outs else ''
    return f'<div class="cell code">{badge}{"".join(shown)}{out_html}</div>'


def notebook_page(path: Path, root: Path) -> tuple[Page, dict[str, bytes]]:
    "A notebook as a page: its cells, stored outputs and charts; the title is its first `# heading`."
    nb = json.loads(path.read_text(encoding='utf-8'))
    src = path.relative_to(root).as_posix()
    title = path.stem
    for cell in nb.get('cells', []):
        if cell.get('cell_type') == 'markdown':
            m = re.search(r'^#\s+(.+)$', _text(cell.get('source')), re.M)
            if m:
                title = re.sub(r'[`*]', '', m.group(1)).strip()
                break
    label = re.match(r'\d*', path.stem).group(0) or path.stem
    group = 'Test and benchmark worlds' if path.stem[:1] == '9' else 'Notebooks'
    page = Page(src, site_path(src) or f'nbs/{path.stem}.html', title, label, group)
    images: dict[str, bytes] = {}
    page.body = ''.join(cell_html(c, page, images) for c in nb.get('cells', []))
    return page, images


# --- console scripts ---------------------------------------------------------------------------------------------


def console_scripts(pyproject: Path) -> dict[str, str]:
    "pyproject.toml's [project.scripts]: name -> 'module:function', in file order."
    text = pyproject.read_text(encoding='utf-8')
    m = re.search(r'^\[project\.scripts\]\s*$(.*?)(?=^\[|\Z)', text, re.M | re.S)
    body = m.group(1) if m else ''
    return dict(re.findall(r'^\s*"?([\w.-]+)"?\s*=\s*"([^"]+)"', body, re.M))


HELP = """
import contextlib, importlib, io, json, sys
out = {}
for name, entry in json.loads(sys.argv[1]).items():
    mod, _, fn = entry.partition(':')
    sys.argv, buf, code = [name, '--help'], io.StringIO(), 0
    try:
        with contextlib.redirect_stdout(buf):
            getattr(importlib.import_module(mod), fn)()
    except SystemExit as e:
        code = e.code or 0
    out[name] = [code, buf.getvalue()]
print(json.dumps(out))
"""


def start_helps(scripts: dict[str, str], root: Path) -> subprocess.Popen:
    "Start one child of this Python that runs every script's entry point with --help (the script need not be on PATH)."
    path = os.pathsep.join(filter(None, [str(root), os.environ.get('PYTHONPATH')]))
    env = {**os.environ, 'COLUMNS': '100', 'PYTHONPATH': path}
    cmd = [sys.executable, '-c', HELP, json.dumps(scripts)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=root, env=env)


def finish_helps(proc: subprocess.Popen) -> dict[str, str]:
    "What `NAME --help` printed, for each script; an error if any of them failed."
    stdout, stderr = proc.communicate(timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"the console scripts' --help failed: {stderr.strip()[-2000:]}")
    helps = json.loads(stdout)
    bad = [f'{n} --help exited {c}' for n, (c, _) in helps.items() if c != 0]
    if bad:
        raise RuntimeError('; '.join(bad))
    return {n: text for n, (_, text) in helps.items()}


def scripts_page(scripts: dict[str, str], helps: dict[str, str]) -> Page:
    "The console scripts (pyproject.toml's [project.scripts]) and their --help."
    toc = ''.join(f'<li><a href="#{n}"><code>{n}</code></a></li>' for n in scripts)
    parts = [
        '<h1 id="console-scripts">Console scripts</h1>',
        '<p>Every command that <code>pip install</code> puts on the path, with what its <code>--help</code> says'
        ' (from <code>[project.scripts]</code> in pyproject.toml).</p>',
        f'<ul class="scripts">{toc}</ul>',
    ]
    for name, entry in scripts.items():
        parts.append(f'<h2 id="{name}"><code>{name}</code></h2><p class="entry">entry point <code>{entry}</code></p>')
        parts.append(f'<pre class="help">{html.escape(helps[name])}</pre>')
    return Page('', 'scripts.html', 'Console scripts', '', '', body=''.join(parts))


# --- layout ------------------------------------------------------------------------------------------------------


def nav_html(pages: list[Page], here: Page) -> str:
    base = posixpath.dirname(here.href) or '.'
    items, group = [], None
    for p in pages:
        if p.group != group:
            if group is not None:
                items.append('</ul>')
            if p.group:
                items.append(f'<p class="group">{html.escape(p.group)}</p>')
            items.append('<ul>')
            group = p.group
        cur = ' class="current" aria-current="page"' if p is here else ''
        tag = f'<span class="num">{html.escape(p.label)}</span> ' if p.label else ''
        title = html.escape(p.title)
        items.append(f'<li><a href="{posixpath.relpath(p.href, base)}" title="{title}"{cur}>{tag}{title}</a></li>')
    items.append('</ul>')
    return ''.join(items)


def page_html(pages: list[Page], i: int, project: str) -> str:
    "A whole page: the nav on the left, the page, links to the previous and the next page."
    here = pages[i]
    base = posixpath.dirname(here.href) or '.'
    up = posixpath.relpath('.', base)
    rel = lambda p: posixpath.relpath(p.href, base)
    prev = (
        f'<a class="prev" href="{rel(pages[i - 1])}">← {html.escape(pages[i - 1].title)}</a>' if i else '<span></span>'
    )
    nxt = (
        f'<a class="next" href="{rel(pages[i + 1])}">{html.escape(pages[i + 1].title)} →</a>'
        if i + 1 < len(pages)
        else ''
    )
    module = f'<p class="module">module <code>{project}.{html.escape(here.module)}</code></p>' if here.module else ''
    source = f'<p class="source">source: <code>{html.escape(here.src)}</code></p>' if here.src else ''
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(here.title)} · {project}</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="{up}/style.css">
</head>
<body>
<nav class="side"><a class="brand" href="{up}/index.html">{project}</a>{nav_html(pages, here)}</nav>
<main>
{module}{here.body}
<footer>{source}<p class="pager">{prev}{nxt}</p></footer>
</main>
</body>
</html>
"""


CSS = """
:root { --side: 17rem; --fg: #1d2330; --muted: #5d6778; --line: #e3e6ec; --accent: #1f6f5c; --code: #f6f7f9; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); font: 16px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
a { color: var(--accent); }
nav.side { position: fixed; inset: 0 auto 0 0; width: var(--side); overflow-y: auto; padding: 1rem 0.8rem 2rem;
  border-right: 1px solid var(--line); background: #fafbfc; font-size: 0.9rem; }
nav.side .brand { display: block; font-weight: 700; font-size: 1.3rem; text-decoration: none; margin: 0 0.4rem 0.6rem; }
nav.side ul { list-style: none; margin: 0; padding: 0; }
nav.side li a { display: block; padding: 0.12rem 0.4rem; border-radius: 4px; text-decoration: none; color: var(--fg);
  white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
nav.side li a:hover { background: var(--line); }
nav.side li a.current { background: var(--accent); color: #fff; }
nav.side .num { display: inline-block; min-width: 2.6em; color: var(--muted); font-size: 0.8em; }
nav.side a.current .num { color: #d8efe8; }
nav.side .group { margin: 1rem 0.4rem 0.3rem; color: var(--muted); font-size: 0.75rem; text-transform: uppercase;
  letter-spacing: 0.05em; }
main { margin-left: var(--side); padding: 1.5rem 2.5rem 3rem; max-width: calc(var(--side) + 62rem); }
h1, h2, h3, h4 { line-height: 1.25; }
.headerlink { margin-left: 0.4em; color: var(--line); text-decoration: none; font-size: 0.8em; }
h1:hover .headerlink, h2:hover .headerlink, h3:hover .headerlink, h4:hover .headerlink { color: var(--muted); }
blockquote { margin: 0 0 1rem; padding: 0.1rem 1rem; border-left: 4px solid var(--accent); color: var(--muted); }
code { font: 0.88em/1.45 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
:not(pre) > code { background: var(--code); padding: 0.05em 0.3em; border-radius: 3px; }
pre { overflow-x: auto; padding: 0.6rem 0.8rem; margin: 0.4rem 0; background: var(--code); border-radius: 5px;
  font: 0.85em/1.45 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
table { border-collapse: collapse; margin: 0.6rem 0; font-size: 0.9em; display: block; overflow-x: auto; }
th, td { border: 1px solid var(--line); padding: 0.25rem 0.55rem; vertical-align: top; }
th { background: var(--code); }
.cell.code { position: relative; margin: 0.8rem 0; }
.cell.code .badge { position: absolute; right: 0.5rem; top: 0.35rem; font-size: 0.7rem; color: var(--muted); }
.outputs { padding-left: 0.8rem; border-left: 3px solid var(--line); }
.outputs pre { background: #fff; }
.outputs pre.stderr { background: #fff6e5; }
.outputs pre.error { background: #fdecec; }
img.chart { max-width: 100%; height: auto; display: block; margin: 0.4rem 0; }
.frac { display: inline-flex; flex-direction: column; vertical-align: middle; text-align: center;
  font-size: 0.9em; }
.frac > span:first-child { border-bottom: 1px solid; }
.math { font-family: "Cambria Math", "STIX Two Math", Georgia, serif; font-style: italic; }
div.math { text-align: center; margin: 0.6rem 0; }
p.module { color: var(--muted); margin: 0; }
footer { margin-top: 3rem; border-top: 1px solid var(--line); color: var(--muted); font-size: 0.9em; }
.pager { display: flex; justify-content: space-between; gap: 1rem; }
@media (max-width: 800px) {
  nav.side { position: static; width: auto; border-right: 0; border-bottom: 1px solid var(--line); }
  main { margin-left: 0; padding: 1rem; }
}
"""


# --- build -------------------------------------------------------------------------------------------------------


def stop(proc: subprocess.Popen) -> None:
    "Stop a child we started, if it still runs (the build failed on the way)."
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


def project_name(root: Path) -> str:
    m = re.search(r'^name\s*=\s*"([^"]+)"', (root / 'pyproject.toml').read_text(encoding='utf-8'), re.M)
    return m.group(1) if m else root.name


def render(out: Path, root: Path = ROOT) -> dict:
    "Write the whole site into the (empty) folder `out`; returns what it wrote."
    from pygments.formatters import HtmlFormatter

    site = Site(root)
    readme = root / 'README.md'
    pages = [Page('README.md', 'index.html', 'README', '', '', body=markdown_html(readme.read_text(encoding='utf-8')))]
    scripts = console_scripts(root / 'pyproject.toml')
    helper = start_helps(scripts, root)  # runs while the notebooks render (Pygments takes most of that)
    try:
        notebooks = [notebook_page(path, root) for path in notebook_paths(root / 'nbs')]
        pages.append(scripts_page(scripts, finish_helps(helper)))
    finally:
        stop(helper)
    images: dict[str, dict[str, bytes]] = {}
    for page, imgs in notebooks:
        pages.append(page)
        images[page.href] = imgs
    project = project_name(root)
    for p in pages:
        p.body = unique_ids(relink(p.body, p.src, p.href, site))
    for i, p in enumerate(pages):
        (out / p.href).parent.mkdir(parents=True, exist_ok=True)
        (out / p.href).write_text(page_html(pages, i, project), encoding='utf-8')
        for name, blob in images.get(p.href, {}).items():
            (out / p.href).parent.joinpath('_img').mkdir(exist_ok=True)
            (out / p.href).parent.joinpath('_img', name).write_bytes(blob)
    for dest, file in site.copies.items():
        (out / dest).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, out / dest)
    (out / 'style.css').write_text(CSS + HtmlFormatter(cssclass='highlight').get_style_defs('.highlight'))
    (out / MARK).write_text('built by .ci/docs.py; a rebuild replaces this folder\n')
    return {'pages': len(pages), 'charts': sum(p.charts for p in pages), 'warnings': site.warnings}


def build(out: Path, root: Path = ROOT) -> dict:
    "Build the site next to `out` and move it into place whole; an older site there (and only that) is replaced."
    out = out.resolve()
    if out.exists() and any(out.iterdir()) and not (out / MARK).exists():
        raise FileExistsError(f'{out} exists and is not a site built by this script (no {MARK}); choose another --out')
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{out.name}.', dir=out.parent))
    try:
        info = render(tmp, root)
        old = None
        if out.exists():
            old = out.with_name(f'.{out.name}.old-{os.getpid()}')
            out.rename(old)
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return info


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog='docs', description=__doc__.splitlines()[0])
    p.add_argument('--out', default=str(ROOT / '_docs'), help='folder for the site (default: _docs/)')
    a = p.parse_args(argv)
    t0 = time.time()
    try:
        info = build(Path(a.out))
    except (FileExistsError, RuntimeError, OSError) as e:
        print(f'docs: error: {e}', file=sys.stderr)
        return 2
    for w in info['warnings']:
        print(f'docs: warning: {w}', file=sys.stderr)
    index = Path(a.out).resolve() / 'index.html'
    print(f"docs: {info['pages']} pages, {info['charts']} charts in {time.time() - t0:.1f} s -> {index}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
