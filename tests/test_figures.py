"""The book's diagrams are drawn by book/figures/make_figures.py. The script must run, write
every figure, and give the same bytes twice; the committed SVGs must be what it draws."""
import importlib.util
import os
import re

import pytest

pytest.importorskip("matplotlib")

FIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "book", "figures")


def _load_script():
    spec = importlib.util.spec_from_file_location("make_figures", os.path.join(FIG_DIR, "make_figures.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    script = _load_script()
    first, second = tmp_path_factory.mktemp("a"), tmp_path_factory.mktemp("b")
    names = script.render(str(first))
    assert names == script.render(str(second))
    return script, names, first, second


def test_every_figure_is_written_and_is_an_svg_without_a_date(drawn):
    script, names, first, _ = drawn
    assert sorted(names) == sorted(name + ".svg" for name in script.FIGURES)
    for name in names:
        text = (first / name).read_text(encoding="utf-8")
        assert text.lstrip().startswith("<?xml") and "<svg" in text, name
        assert "<dc:date>" not in text, f"{name} stores a date: re-runs would differ"
        assert len(text) > 10_000, f"{name} looks empty"


def test_drawing_is_deterministic(drawn):
    _, names, first, second = drawn
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), f"{name} differs between two runs"


def test_committed_figures_are_what_the_script_draws(drawn):
    import matplotlib
    _, names, first, _ = drawn
    for name in names:
        path = os.path.join(FIG_DIR, name)
        assert os.path.isfile(path), f"{name} is not committed: run `.venv/bin/python book/figures/make_figures.py`"
        committed = open(path, encoding="utf-8").read()
        made_with = re.search(r"<dc:description>matplotlib ([^<]+)</dc:description>", committed)
        if not made_with or made_with.group(1) != matplotlib.__version__:
            pytest.skip(f"{name} was drawn with another matplotlib ({made_with and made_with.group(1)}, "
                        f"here {matplotlib.__version__}): path coordinates may differ")
        assert committed == (first / name).read_text(encoding="utf-8"), (
            f"book/figures/{name} is stale: run `.venv/bin/python book/figures/make_figures.py`")
