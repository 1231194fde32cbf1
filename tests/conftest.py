"""Shared fixtures: one tiny M3 checkpoint per test session (built offline in seconds)."""
import json
import os
import shutil
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(scope="session")
def tiny_dir():
    """Path of an untrained tiny checkpoint in the official BGE-M3 layout.

    Built once per content hash of the sample texts and builder (m3ref.book.tiny_model_dir),
    shared with the notebooks; tests never write into it.
    """
    from m3ref.book import tiny_model_dir
    return tiny_model_dir(seed=0)


@pytest.fixture()
def tiny_model(tiny_dir):
    """A fresh M3Model on CPU in eval mode, loaded from `tiny_dir`."""
    from m3ref import M3Model
    return M3Model.from_pretrained(tiny_dir, device="cpu")


@pytest.fixture(scope="module")
def dropout_dir(tiny_dir, tmp_path_factory):
    """The tiny checkpoint with XLM-R's dropout 0.1 (the tiny model has none): for tests where
    dropout masks, and so the restored RNG states, must be reproduced."""
    path = tmp_path_factory.mktemp("dropout") / "model"
    shutil.copytree(tiny_dir, path)
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    (path / "config.json").write_text(json.dumps(cfg))
    return str(path)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread is as fast, and far faster on a busy machine.
    Modules opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(items):
    """Markers for what cannot carry a decorator: nbval's notebook cells, and the browser test."""
    for item in items:
        if item.path.suffix == ".ipynb" or item.path.name == "test_book_html.py":
            item.add_marker(pytest.mark.book)
            item.add_marker(pytest.mark.slow)
