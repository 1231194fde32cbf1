"""Files that ship with m3ref: the sample data (`data_samples/`) and the training configs (`configs/`).

In a checkout they sit beside the package (`ROOT/data_samples`, `ROOT/configs`); an installed
wheel carries them inside it (`site-packages/m3ref/data_samples`, `.../m3ref/configs`, see
pyproject.toml). `asset` finds one in either place, so code never builds a path from
`__file__` itself:

    asset("data_samples/tokenizer")   # the tiny model's tokenizer
    asset("configs/tiny.yaml")        # what `m3ref-train --config tiny` reads
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from .errors import M3Error

PACKAGE = Path(__file__).resolve().parent
CHECKOUT = PACKAGE.parent  # the repository root, when m3ref runs from a checkout
SHIPPED = ("data_samples", "configs")  # the top folders of what ships


def _bases() -> list:
    """Where shipped files can be: inside the package (a wheel), then beside it (a checkout,
    recognised by its pyproject.toml, so that a stray site-packages/configs is never taken)."""
    bases = [PACKAGE]
    if (CHECKOUT / "pyproject.toml").is_file():
        bases.append(CHECKOUT)
    return bases


def find_asset(relpath) -> Optional[Path]:
    """The shipped file or directory `relpath` (e.g. "data_samples/eval"), or None."""
    for base in _bases():
        path = base / relpath
        if path.exists():
            return path
    return None


def asset(relpath) -> Path:
    """The shipped file or directory `relpath`; an `M3Error` naming it when it is not there."""
    path = find_asset(relpath)
    if path is None:
        raise M3Error(f"{relpath}: not shipped with this m3ref (looked in {' and '.join(map(str, _bases()))})")
    return path


def asset_path(relpath) -> Path:
    """Where the shipped `relpath` is, or where it would be written in this installation
    (for module-level constants that must not fail on import)."""
    return find_asset(relpath) or _bases()[-1] / relpath


def resolve_path(path):
    """A relative path that does not exist from the current directory but names a shipped
    file (``data_samples/train/finetune``, ``configs/tiny.yaml``) becomes that file's absolute
    path; any other value comes back as it was. So the shipped configs and defaults work from
    any directory, and a local file of the same name always wins."""
    if not isinstance(path, (str, os.PathLike)):
        return path
    text = os.fspath(path)
    if os.path.isabs(text) or os.path.exists(text) or Path(text).parts[:1] not in [(s,) for s in SHIPPED]:
        return path
    found = find_asset(text)
    return str(found) if found is not None else path


def shipped_config(name: str) -> Optional[Path]:
    """A shipped training config by its bare name: "tiny" or "tiny.yaml" -> configs/tiny.yaml."""
    if not name or os.sep in name or "/" in name:
        return None
    for candidate in (name, f"{name}.yaml"):
        found = find_asset(f"configs/{candidate}")
        if found is not None and found.is_file():
            return found
    return None


def shipped_configs() -> list:
    """The names of the shipped training configs (for error messages and --help)."""
    names = set()
    for base in _bases():
        names |= {p.stem for p in (base / "configs").glob("*.yaml")}
    return sorted(names)
