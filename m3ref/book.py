"""Small helpers shared by the book's chapters: show package code, load the model quietly.

The one switch: set the environment variable M3REF_REAL_MODEL=1 (needs the Hugging Face
hub) and every chapter runs on the real `BAAI/bge-m3` instead of the tiny model built here.
The stored outputs are those of the tiny model.
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


def load_model(seed: int = 0, device: str | None = None):
    """`BAAI/bge-m3` when M3REF_REAL_MODEL=1, otherwise the tiny model built offline."""
    from .model import M3Model
    quiet()
    if REAL_MODEL:
        return M3Model.from_pretrained(HUB_ID, device=device)
    return M3Model.from_pretrained(tiny_model_dir(seed), device=device or "cpu")
