"""book/results/experiments.json must match the files that produced it (configs, data, source).

The fingerprint (benchmarks/experiments/fingerprint.py) hashes configs/experiments/*.yaml, the
sample data, the m3ref source with docstrings and comments stripped, and the experiment runner.
"""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "book" / "results" / "experiments.json"
sys.path.insert(0, str(ROOT / "benchmarks" / "experiments"))
import fingerprint as FP  # noqa: E402

pytestmark = [pytest.mark.experiments]

WHAT = {"configs": "configs/experiments/*.yaml or configs/m3-mini/*.yaml", "data": "data_samples/build_corpus.py",
        "source": "the m3ref source code (beyond comments/docstrings)", "runner": "benchmarks/experiments/*.py or data_samples/build_m3_mini.py"}


def test_results_exist():
    assert RESULTS.is_file(), f"{RESULTS.relative_to(ROOT)} is missing; regenerate it: {FP.REGENERATE}"


def test_results_fresh():
    if not RESULTS.is_file():
        pytest.skip("no results file (see test_results_exist)")
    stored = json.loads(RESULTS.read_text())["fingerprint"]
    now = FP.fingerprint()
    changed = [part for part in now if stored.get(part) != now[part]]
    assert not changed, ("book/results/experiments.json is stale: changed since it was produced: "
                         + "; ".join(f"{p} ({WHAT[p]})" for p in changed)
                         + f". Regenerate it (CPU, tens of minutes): {FP.REGENERATE} "
                           "then re-execute book/12_experiments.ipynb")


def test_docstring_edits_do_not_count():
    a = 'def f(x):\n    """Doc."""\n    return x + 1  # comment\n'
    b = 'def f(x):\n    """Other doc,\n    longer."""\n\n    return x + 1\n'
    c = 'def f(x):\n    return x + 2\n'
    assert FP.code_digest(a) == FP.code_digest(b) != FP.code_digest(c)


def test_only_code_that_changes_numbers_counts(tmp_path):
    """A rename in the book helpers or the error types needs no retraining; a change to a loss does."""
    import shutil
    shutil.copytree(ROOT / "m3ref", tmp_path / "m3ref", ignore=shutil.ignore_patterns("__pycache__"))
    before = FP.fingerprint(tmp_path)["source"]
    for name in FP.NOT_NUMBERS:
        path = tmp_path / name
        path.write_text(path.read_text() + "\nrenamed_helper = 1\n")
    assert FP.fingerprint(tmp_path)["source"] == before
    losses = tmp_path / "m3ref" / "losses.py"
    losses.write_text(losses.read_text().replace("(L + L_prime) / config.l_final_divisor",
                                                 "(L + L_prime) / (2 * config.l_final_divisor)"))
    assert FP.fingerprint(tmp_path)["source"] != before


SWEEP = ROOT / "book" / "results" / "dense_stage_dev.json"


def test_dense_stage_sweep_fresh():
    """Chapter 12's dev-split sweep of the dense stage must describe the current m3ref source, its
    own config and the m3-mini configs it reads."""
    sys.path.insert(0, str(ROOT / "benchmarks" / "experiments" / "tuning"))
    import dense_stage_sweep as S
    stale = S.stale(ROOT)
    assert not stale, (f"{SWEEP.relative_to(ROOT)} is stale: changed since it was produced: {', '.join(stale)}. "
                       f"Regenerate it (2-core CPU, about 75 min): {json.loads(SWEEP.read_text())['regenerate']}")
