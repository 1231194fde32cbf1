"""The built book, opened in a real browser (headless Chromium): every chapter renders,
its math is typeset by the local MathJax, and its figures load.

`make test` builds the book before running pytest. Run alone: `make book` first.
"""
import os
import re
import shutil

import pytest
import yaml

BOOK = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "book")
HTML = os.path.join(BOOK, "_build", "html")


def chapters():
    toc = yaml.safe_load(open(os.path.join(BOOK, "_toc.yml")))
    files = [toc["root"]]
    for part in toc.get("parts", []):
        files += [c["file"] for c in part["chapters"]]
    return files


@pytest.fixture(scope="module")
def browser():
    if not os.path.isdir(HTML):
        pytest.fail("book/_build/html is missing: run `make book` (make test does it first)")
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


@pytest.mark.parametrize("chapter", chapters())
def test_chapter_renders_with_math_and_figures(browser, chapter):
    path = os.path.join(HTML, f"{chapter}.html")
    assert os.path.isfile(path), f"{chapter}.html was not built"
    html = open(path, encoding="utf-8").read()
    assert "cdn.jsdelivr" not in html and "mathjax/tex-mml-chtml.js" in html  # local MathJax only
    browser.get("file://" + path)
    title = browser.execute_script("return document.querySelector('main h1') && document.querySelector('main h1').textContent")
    assert title and title.strip(), "no chapter title rendered"
    from selenium.webdriver.support.ui import WebDriverWait
    has_math = bool(re.search(r"\\\(|\\\[|\$\$|class=\"math", html))
    if has_math:  # MathJax turns every formula into an <mjx-container>, with no error nodes
        WebDriverWait(browser, 30).until(lambda d: d.execute_script(
            "return window.MathJax && MathJax.startup && MathJax.startup.promise && "
            "document.querySelectorAll('mjx-container').length > 0"))
        browser.execute_script("return MathJax.startup.promise")
        assert browser.execute_script("return document.querySelectorAll('mjx-merror').length") == 0
    images = browser.execute_script(
        "return Array.from(document.querySelectorAll('main img')).map(i => [i.src, i.complete && i.naturalWidth > 0])")
    broken = [src for src, ok in images if not ok]
    assert not broken, f"figures that did not load: {broken}"
