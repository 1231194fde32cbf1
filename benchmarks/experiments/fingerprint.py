"""Fingerprint of what produced book/results/experiments.json.

Four parts, each a SHA-256:
- configs: every YAML file in configs/experiments/ (bytes);
- data:    every file under data_samples/train/, data_samples/eval/ and data_samples/tokenizer/ (bytes);
- source:  every .py file of the m3ref package, parsed, with docstrings removed, as `ast.dump`
           (so edits to comments and docstrings do not make the results stale);
- runner:  the .py files of benchmarks/experiments/, the same way.
"""
from __future__ import annotations

import ast
import hashlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REGENERATE = "python benchmarks/experiments/run_experiments.py"


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


def code_digest(src: str) -> str:
    """Hash of Python source without comments, docstrings and layout."""
    return hashlib.sha256(ast.dump(_strip_docstrings(ast.parse(src))).encode()).hexdigest()


def _files(root: Path, patterns) -> list[Path]:
    return sorted({f for p in patterns for f in root.glob(p) if f.is_file() and "__pycache__" not in f.parts})


def _hash_files(files, digest) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.relative_to(ROOT).as_posix().encode() + b"\0" + digest(f).encode() + b"\n")
    return h.hexdigest()


def fingerprint(root: Path = ROOT) -> dict:
    """{part: sha256} for the four parts."""
    raw = lambda f: hashlib.sha256(f.read_bytes()).hexdigest()  # noqa: E731
    code = lambda f: code_digest(f.read_text(encoding="utf-8"))  # noqa: E731
    return {
        "configs": _hash_files(_files(root, ["configs/experiments/*.yaml"]), raw),
        "data": _hash_files(_files(root, ["data_samples/train/**/*", "data_samples/eval/**/*", "data_samples/tokenizer/*"]), raw),
        "source": _hash_files(_files(root, ["m3ref/**/*.py"]), code),
        "runner": _hash_files(_files(root, ["benchmarks/experiments/*.py"]), code),
    }
