"""Small helpers shared by the book's chapters: show package code, load a model quietly.

Chapters demonstrate on m3-mini, the small M3 trained with the paper's recipe and shipped in
data_samples/m3-mini; `load_model("untrained")` gives the untrained tiny model for what is
about mechanics (shapes, masks, exact equalities). Switches (environment variables):

* M3REF_REAL_MODEL=1: every chapter runs on the real `BAAI/bge-m3` (needs the hub);
* M3REF_BOOK_SEED, M3REF_BOOK_TAU: the knobs an instructor turns in class (the untrained
  model's seed, the temperature of the chapters' losses). The stored outputs use 0 and 0.02;
  the chapters' checks hold for other values too (tests/test_book_knobs.py).
"""
from __future__ import annotations

import glob
import hashlib
import inspect
import os
import shutil
import tempfile

REAL_MODEL = os.environ.get("M3REF_REAL_MODEL") == "1"
HUB_ID = "BAAI/bge-m3"
SEED = int(os.environ.get("M3REF_BOOK_SEED", "0"))
TAU = float(os.environ.get("M3REF_BOOK_TAU", "0.02"))


def show(*objects):
    """Display the source of package functions or classes, so book and code never drift."""
    from IPython.display import Markdown
    source = "\n\n".join(inspect.getsource(o).rstrip() for o in objects)
    return Markdown(f"```python\n{source}\n```")


def quiet():
    """Silence download/loading progress bars and library chatter in notebook outputs."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings
    # tqdm.auto (imported by the hub client) asks for ipywidgets; plain text bars are fine.
    warnings.filterwarnings("ignore", message="IProgress not found")
    import transformers
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _fingerprint(seed: int) -> str:
    """Hash of everything the tiny model is built from (sample texts, shipped tokenizer, the builder,
    and the model and config code that set the heads and the files written)."""
    from . import config, model, tiny
    h = hashlib.sha256(f"{seed}{tiny.texts_digest()}".encode())
    for path in sorted(glob.glob(os.path.join(tiny.TOKENIZER_DIR, "*"))) + [tiny.__file__, model.__file__,
                                                                            config.__file__]:
        with open(path, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:16]


def tiny_model_dir(seed: int = 0) -> str:
    """Directory of the tiny checkpoint for `seed`, built once and cached (M3REF_CACHE or /tmp)."""
    from .tiny import build_tiny_model
    root = os.environ.get("M3REF_CACHE", os.path.join(tempfile.gettempdir(), "m3ref-cache"))
    path = os.path.join(root, f"tiny-{_fingerprint(seed)}")
    if not os.path.isdir(path):
        os.makedirs(root, exist_ok=True)
        tmp = tempfile.mkdtemp(dir=root)
        build_tiny_model(tmp, seed=seed)
        try:
            os.rename(tmp, path)
        except OSError:  # another process built it first
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def load_model(which: str = "m3-mini", device: str | None = None):
    """The model a chapter shows: "m3-mini" (trained, shipped) or "untrained" (the tiny model of
    seed M3REF_BOOK_SEED, built offline); `BAAI/bge-m3` for both when M3REF_REAL_MODEL=1."""
    from .model import M3Model
    from .tiny import MINI_DIR
    quiet()
    if REAL_MODEL:
        return M3Model.from_pretrained(HUB_ID, device=device)
    if which not in ("m3-mini", "untrained"):
        raise ValueError(f"load_model: choose 'm3-mini' or 'untrained', not {which!r}")
    path = MINI_DIR if which == "m3-mini" else tiny_model_dir(SEED)
    return M3Model.from_pretrained(path, device=device or "cpu")
