"""Authoring helper (not part of the repo): build a notebook from a list of cells.

Usage (each chNN.py writes book/NN_*.ipynb; run it, then `make notebooks` or nbconvert on that file):
    from nb import md, code, write
    write("book/01_dense.ipynb", [md("# Title ..."), code("import m3ref"), ...])
Then execute:  .venv/bin/jupyter nbconvert --to notebook --execute --inplace \
                 --ExecutePreprocessor.record_timing=False book/01_dense.ipynb
"""
import nbformat


def md(text):
    return nbformat.v4.new_markdown_cell(text.strip("\n"))


def code(src, tags=()):
    cell = nbformat.v4.new_code_cell(src.strip("\n"))
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def write(path, cells):
    nb = nbformat.v4.new_notebook()
    nb.cells = cells
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nbformat.write(nb, path)
