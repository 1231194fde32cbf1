"""Each chapter has one source a person edits, book/NN_name.md (MyST text), paired with
book/NN_name.ipynb (the same cells plus their executed outputs). The pair must not drift:
`make notebooks` copies the text into the notebook and re-executes it."""
from pathlib import Path

import pytest

pytestmark = [pytest.mark.book]

jupytext = pytest.importorskip("jupytext")

BOOK = Path(__file__).resolve().parents[1] / "book"
CHAPTERS = sorted(BOOK.glob("[0-9][0-9]_*.md"))


def _cells(nb):
    return [(c.cell_type, c.source.strip(), sorted(c.metadata.get("tags", []))) for c in nb.cells]


def test_every_chapter_is_a_pair():
    notebooks = {p.stem for p in BOOK.glob("[0-9][0-9]_*.ipynb")}
    assert CHAPTERS and {p.stem for p in CHAPTERS} == notebooks


@pytest.mark.parametrize("md", CHAPTERS, ids=lambda p: p.stem)
def test_notebook_matches_its_text(md):
    text, executed = jupytext.read(md), jupytext.read(md.with_suffix(".ipynb"))
    for i, (a, b) in enumerate(zip(_cells(text), _cells(executed))):
        assert a == b, (f"{md.name} and its .ipynb differ at cell {i}: run "
                        f"`.venv/bin/jupytext --update --to ipynb book/{md.name}`, then re-execute it")
    assert len(text.cells) == len(executed.cells), f"{md.name}: cell count differs from its .ipynb"
