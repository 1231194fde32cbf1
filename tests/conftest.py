"""Shared fixtures: one tiny M3 checkpoint per test session (built offline in seconds)."""
import os
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
    """A fresh M3Model on CPU in eval mode (dropout off), loaded from `tiny_dir`."""
    from m3ref import M3Model
    return M3Model.from_pretrained(tiny_dir, device="cpu")
