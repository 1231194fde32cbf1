"""The built book, opened in a real browser (headless Chromium), checked for what a reader
sees: every page renders with a title, its math is typeset by the local MathJax, its images
load, tables are tables, figures have captions and alt text, links lead somewhere, the
bibliography is there, and no raw Markdown or test marker shows through.

`make test` builds the book before running pytest. Run alone: `make book` first; without a
built book this module is skipped.
"""
import os
import re
import shutil
from html.parser import HTMLParser
from urllib.parse import unquote, urlsplit

import pytest
import yaml

BOOK = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "book")
HTML = os.path.join(BOOK, "_build", "html")

pytestmark = pytest.mark.skipif(
    not os.path.isfile(os.path.join(HTML, "index.html")),
    reason="book/_build/html is missing: build the book first (`make book`; `make test` does it)")


def pages():
    """Every page of the table of contents, in reading order."""
    toc = yaml.safe_load(open(os.path.join(BOOK, "_toc.yml")))
    files = [toc["root"]]
    for part in toc.get("parts", []):
        files += [c["file"] for c in part["chapters"]]
    return files


# What the browser reports for one page, after MathJax has finished. The page's content is
# `article.bd-article` (the theme's header, sidebar and launch buttons are outside it).
COLLECT = r"""
const root = document.querySelector('article.bd-article') || document.querySelector('main') || document.body;
const prose = root.cloneNode(true);  // the text a reader reads as prose: no code, no typeset math
prose.querySelectorAll('pre, code, script, style, .highlight, mjx-container, .MathJax, .math')
     .forEach(e => e.remove());
const isFile = s => /(^|\/)[^\s\/]+\.(png|svg|jpe?g|gif)$/i.test((s || '').trim());
return {
  title: (document.querySelector('main h1') || {}).textContent || '',
  mjx: document.querySelectorAll('mjx-container').length,
  merror: document.querySelectorAll('mjx-merror').length,
  images: Array.from(root.querySelectorAll('img')).map(i => ({
      src: i.getAttribute('src'), alt: (i.getAttribute('alt') || '').trim(),
      loaded: i.complete && i.naturalWidth > 0, inFigure: !!i.closest('figure'), altIsFile: isFile(i.getAttribute('alt'))})),
  figures: Array.from(root.querySelectorAll('figure')).map(f => ({
      caption: ((f.querySelector('figcaption') || {}).textContent || '').trim(),
      alts: Array.from(f.querySelectorAll('img')).map(i => (i.getAttribute('alt') || '').trim())})),
  tables: root.querySelectorAll('table').length,
  pipeRows: Array.from(prose.querySelectorAll('p, li, dd'))
      .map(p => p.textContent)
      .filter(t => /(^|\n)\s*\|[^\n]*\|\s*(\n|$)/.test(t) || /\|\s*[-\u2013\u2014:]+\s*\|/.test(t))
      .map(t => t.trim().slice(0, 120)),
  proseText: prose.textContent,
  pageText: document.body.textContent,
  links: Array.from(document.querySelectorAll('a[href]')).map(a => a.href),
  citations: Array.from(root.querySelectorAll('.citation, [role="doc-biblioentry"]')).map(c => c.textContent.trim()),
};
"""


@pytest.fixture(scope="module")
def browser():
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        pytest.fail("Chromium is missing: `make chromium` installs Debian's chromium and chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--allow-file-access-from-files"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def seen(browser):
    """Open every page once; what the reader sees, per page (or the error that stopped it)."""
    from selenium.webdriver.support.ui import WebDriverWait
    out = {}
    for page in pages():
        path = os.path.join(HTML, f"{page}.html")
        if not os.path.isfile(path):
            out[page] = {"error": f"{page}.html was not built"}
            continue
        html = open(path, encoding="utf-8").read()
        try:
            browser.get("file://" + path)
            if re.search(r"\\\(|\\\[|\$\$|class=\"math", html):  # wait for MathJax to typeset
                WebDriverWait(browser, 30).until(lambda d: d.execute_script(
                    "return window.MathJax && MathJax.startup && MathJax.startup.promise && "
                    "document.querySelectorAll('mjx-container').length > 0"))
                browser.execute_async_script(
                    "const done = arguments[arguments.length - 1]; MathJax.startup.promise.then(() => done(true));")
            info = browser.execute_script(COLLECT)
        except Exception as exc:  # one broken page must not hide what the others show
            out[page] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        info["source"] = html
        out[page] = info
    return out


def _page(seen, page):
    info = seen[page]
    assert "error" not in info, info.get("error")
    return info


def _report(bad):
    return "\n".join(f"  {page}: {what}" for page, what in bad)


# ---------------------------------------------------------------- per page: it renders

@pytest.mark.parametrize("page", pages())
def test_page_renders_with_math_and_images(seen, page):
    info = _page(seen, page)
    html = info["source"]
    assert "cdn.jsdelivr" not in html and "mathjax/tex-mml-chtml.js" in html  # local MathJax only
    assert info["title"].strip(), "no page title rendered"
    if re.search(r"\\\(|\\\[|\$\$|class=\"math", html):  # every formula became an <mjx-container>
        assert info["mjx"] > 0 and info["merror"] == 0
    broken = [i["src"] for i in info["images"] if not i["loaded"]]
    assert not broken, f"images that did not load: {broken}"


def test_nothing_is_loaded_from_the_network():
    """Scripts, styles and images come from the book itself: it reads offline."""
    bad = []
    for page in pages():
        path = os.path.join(HTML, f"{page}.html")
        html = open(path, encoding="utf-8").read() if os.path.isfile(path) else ""
        for tag, attr, url in re.findall(r"<(script|link|img|iframe)\b[^>]*?\b(src|href)=\"(https?:)?//", html):
            bad.append((page, f"<{tag} {attr}=...> points to the network"))
    assert not bad, "\n" + _report(bad)


# ---------------------------------------------------------------- across pages: what a reader sees

def test_tables_render_as_tables(seen):
    """A Markdown table that was not parsed shows as `| a | b |` lines in a paragraph."""
    bad = [(page, row) for page in pages() for row in _page(seen, page)["pipeRows"]]
    assert not bad, "raw Markdown table text instead of a <table>:\n" + _report(bad)


def test_every_figure_has_a_caption_and_alt_text(seen):
    """A {figure} has a caption and its image a real alt text (a file name is not one)."""
    bad = []
    for page in pages():
        for fig in _page(seen, page)["figures"]:
            if not fig["caption"]:
                bad.append((page, f"a figure without a caption (alt {fig['alts']})"))
            for alt in fig["alts"]:
                if not alt or re.search(r"\.(png|svg|jpe?g|gif)$", alt, re.I):
                    bad.append((page, f"figure '{fig['caption'][:50]}' has no alt text"))
    assert not bad, "\n" + _report(bad)


def test_every_plot_has_a_caption_and_alt_text(seen):
    bad = []
    for page in pages():
        for img in _page(seen, page)["images"]:
            if img["inFigure"]:
                continue
            if not img["alt"] or img["altIsFile"]:
                bad.append((page, f"{os.path.basename(img['src'] or '')}: alt text {img['alt']!r}, no caption"))
    assert not bad, "images a reader cannot be told about:\n" + _report(bad)


def test_no_raw_markdown_or_tex_in_the_prose(seen):
    """Outside code blocks and typeset math, no `**`, no code fences, no `$$`, no `\\(`."""
    bad = []
    for page in pages():
        text = _page(seen, page)["proseText"]
        for token in ("**", "```", "$$", "\\(", "\\["):
            i = text.find(token)
            if i >= 0:
                bad.append((page, f"{token!r} in ...{' '.join(text[max(0, i - 40):i + 40].split())}..."))
    assert not bad, "\n" + _report(bad)


def test_no_test_markers_show(seen):
    """nbval's markers are for the test run, not for the reader."""
    bad = [(page, "NBVAL marker in the page") for page in pages() if "NBVAL" in _page(seen, page)["pageText"]]
    assert not bad, "\n" + _report(bad)


class _Ids(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids = set()

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("id", "name") and value:
                self.ids.add(value)


def test_internal_links_resolve(seen):
    """Every link to a file of the book points to a file that exists, and to an anchor in it."""
    ids, bad = {}, []
    root = os.path.realpath(HTML)
    for page in pages():
        for href in _page(seen, page)["links"]:
            url = urlsplit(href)
            if url.scheme != "file":
                continue  # http(s) and mailto: the launch buttons, DOIs, the paper
            path = os.path.realpath(unquote(url.path))
            if not path.startswith(root):
                bad.append((page, f"{href} leaves the book"))
                continue
            if not os.path.exists(path):
                bad.append((page, f"{href}: no such file"))
                continue
            if url.fragment and path.endswith(".html"):
                if path not in ids:
                    parser = _Ids()
                    parser.feed(open(path, encoding="utf-8").read())
                    ids[path] = parser.ids
                if unquote(url.fragment) not in ids[path]:
                    bad.append((page, f"{href}: no anchor #{url.fragment}"))
    assert not bad, "\n" + _report(sorted(set(bad)))


def test_bibliography_renders(seen):
    bib = open(os.path.join(BOOK, "references.bib"), encoding="utf-8").read()
    keys = re.findall(r"^@\w+\{([^,]+),", bib, re.M)
    entries = _page(seen, "references")["citations"]
    assert len(entries) == len(keys), f"{len(entries)} entries rendered, {len(keys)} in references.bib"
    assert all(len(e) > 30 for e in entries), "an empty bibliography entry"
    unresolved = [(page, "an unresolved citation") for page in pages()
                  if re.search(r"\[\?\]|\?\?", _page(seen, page)["proseText"])]
    assert not unresolved, "\n" + _report(unresolved)


def test_launch_buttons_open_each_chapter_from_the_repository(seen):
    """Binder and Colab open the page's own notebook in the repository of _config.yml, and
    Binder has the folder it builds its image from (binder/postBuild installs m3ref)."""
    config = yaml.safe_load(open(os.path.join(BOOK, "_config.yml")))
    repo = urlsplit(config["repository"]["url"]).path.strip("/")
    branch, book = config["repository"]["branch"], config["repository"]["path_to_book"]
    bad = []
    for page in pages():
        if not os.path.isfile(os.path.join(BOOK, f"{page}.ipynb")):
            continue  # front and back matter are plain pages, without a notebook to launch
        links = _page(seen, page)["links"]
        for want in (f"https://mybinder.org/v2/gh/{repo}/{branch}?urlpath=lab/tree/{book}/{page}.ipynb",
                     f"https://colab.research.google.com/github/{repo}/blob/{branch}/{book}/{page}.ipynb"):
            if want not in links:
                bad.append((page, f"no launch link {want}"))
    assert not bad, "\n" + _report(bad)
    post_build = os.path.join(os.path.dirname(BOOK), "binder", "postBuild")
    assert os.access(post_build, os.X_OK) and "pip install --no-cache-dir --no-deps -e ." in open(post_build).read()
