"""Fingerprint of what produced book/results/experiments.json.

Four parts, each a SHA-256:
- configs: every YAML file in configs/experiments/ and configs/m3-mini/ (bytes);
- data:    the corpus builder, data_samples/build_corpus.py (the corpus itself is built on the
           user's machine; the results record its archive snapshot and input checksums);
- source:  the .py files of the m3ref package that can change the numbers (all but the book
           helpers, the error types and the package's re-exports: NOT_NUMBERS), parsed, with
           docstrings removed, as `ast.dump` (edits to comments and docstrings do not count);
- runner:  the .py files of benchmarks/experiments/ and data_samples/build_m3_mini.py, the same way,
           but for the runner's orchestration (ORCHESTRATION), this file and restamp.py.

`training_digest` is the part of the source that can change a trained checkpoint (all of it but
the evaluation modules): the runner reuses a finished training run only when it is unchanged.
"""
from __future__ import annotations

import ast
import hashlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REGENERATE = "python benchmarks/experiments/run_experiments.py"
# m3ref modules that cannot change a trained model or a score: editing them needs no retraining.
NOT_NUMBERS = ("m3ref/book.py", "m3ref/errors.py", "m3ref/__init__.py")
# m3ref modules that only evaluate: editing them re-evaluates, but does not retrain.
EVALUATION_ONLY = ("m3ref/evaluate.py", "m3ref/eval_data.py", "m3ref/metrics.py", "m3ref/retrieval.py")
# Top-level definitions of the runner that only decide when each subprocess runs, time it, show
# progress and gather the results into one file. They compute no number, and what they hand to a
# training or an evaluation is stored beside its result (each run's train_config, each evaluation's
# key), which tests/test_results_fresh.py checks against the configs. Editing them retrains nothing.
# This file is left out for the same reason: it computes nothing, it only says what is hashed; and so
# is restamp.py, which rewrites the stored digests only after checking that no number moved.
RUNNER = "benchmarks/experiments/run_experiments.py"
NOT_RUNNER = ("benchmarks/experiments/fingerprint.py", "benchmarks/experiments/restamp.py")
ORCHESTRATION = ("main", "Slots", "chain_depths", "run_jobs", "left_to_train", "speed_probe", "claim_run_dir",
                 "cpu_info", "write_results")


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


def runner_digest(src: str, leave_out=ORCHESTRATION) -> str:
    """`code_digest` of the runner without its top-level definitions named in `leave_out`."""
    tree = ast.parse(src)
    tree.body = [n for n in tree.body if getattr(n, "name", None) not in leave_out]
    return hashlib.sha256(ast.dump(_strip_docstrings(tree)).encode()).hexdigest()


def _files(root: Path, patterns, exclude=()) -> list[Path]:
    return sorted({f for p in patterns for f in root.glob(p) if f.is_file() and "__pycache__" not in f.parts
                   and f.relative_to(root).as_posix() not in exclude})


def _hash_files(root: Path, files, digest) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + digest(f).encode() + b"\n")
    return h.hexdigest()


def fingerprint(root: Path = ROOT) -> dict:
    """{part: sha256} for the four parts."""
    raw = lambda f: hashlib.sha256(f.read_bytes()).hexdigest()  # noqa: E731
    code = lambda f: code_digest(f.read_text(encoding="utf-8"))  # noqa: E731
    runner = lambda f: (runner_digest if f.relative_to(root).as_posix() == RUNNER else code_digest)(  # noqa: E731
        f.read_text(encoding="utf-8"))
    return {
        "configs": _hash_files(root, _files(root, ["configs/experiments/*.yaml", "configs/m3-mini/*.yaml"]), raw),
        "data": _hash_files(root, _files(root, ["data_samples/build_corpus.py"]), code),
        "source": _hash_files(root, _files(root, ["m3ref/**/*.py"], NOT_NUMBERS), code),
        "runner": _hash_files(root, _files(root, ["benchmarks/experiments/*.py", "data_samples/build_m3_mini.py"],
                                           NOT_RUNNER), runner),
    }


def training_digest(root: Path = ROOT) -> str:
    """Hash of the m3ref code a training run depends on (not the evaluation modules)."""
    code = lambda f: code_digest(f.read_text(encoding="utf-8"))  # noqa: E731
    return _hash_files(root, _files(root, ["m3ref/**/*.py"], NOT_NUMBERS + EVALUATION_ONLY), code)
