"""book/results/experiments.json must match the files that produced it (configs, data, source).

The fingerprint (benchmarks/experiments/fingerprint.py) hashes configs/experiments/*.yaml, the
sample data, the m3ref source with docstrings and comments stripped, and the experiment runner.
"""
import json
import sys
from fnmatch import fnmatch
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "book" / "results" / "experiments.json"
sys.path.insert(0, str(ROOT / "benchmarks" / "experiments"))
import fingerprint as FP  # noqa: E402

pytestmark = [pytest.mark.experiments]

WHAT = {"configs": "configs/experiments/*.yaml or configs/m3-mini/*.yaml", "data": "data_samples/build_corpus.py",
        "source": "the m3ref source code (beyond comments/docstrings)", "runner": "benchmarks/experiments/*.py (but for the orchestration, fingerprint.py and restamp.py) or data_samples/build_m3_mini.py"}


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


def test_orchestration_edits_do_not_count(tmp_path):
    """Scheduling, progress and the gathering of results retrain nothing (FP.ORCHESTRATION); the code
    that sets up a training or an evaluation does."""
    import ast
    import shutil
    shutil.copytree(ROOT / "benchmarks" / "experiments", tmp_path / "benchmarks" / "experiments",
                    ignore=shutil.ignore_patterns("__pycache__", "tuning"))
    (tmp_path / "data_samples").mkdir()
    shutil.copy(ROOT / "data_samples" / "build_m3_mini.py", tmp_path / "data_samples")
    runner, own = tmp_path / FP.RUNNER, tmp_path / "benchmarks" / "experiments" / "fingerprint.py"
    before = FP.fingerprint(tmp_path)["runner"]
    src = runner.read_text()
    tree = ast.parse(src)
    assert set(FP.ORCHESTRATION) <= {getattr(n, "name", None) for n in tree.body}, "a name the runner lacks"
    lines = src.splitlines(keepends=True)
    for node in sorted((n for n in tree.body if getattr(n, "name", None) in FP.ORCHESTRATION),
                       key=lambda n: -n.lineno):  # every orchestration body becomes `pass`
        lines[node.body[0].lineno - 1:node.end_lineno] = [" " * node.body[0].col_offset + "pass\n"]
    runner.write_text("".join(lines))
    own.write_text(own.read_text() + "\n_edited = True\n")
    (tmp_path / "benchmarks" / "experiments" / "restamp.py").write_text("def main():\n    return 1\n")
    assert FP.fingerprint(tmp_path)["runner"] == before
    runner.write_text(src.replace("torch.manual_seed(0)", "torch.manual_seed(1)", 1))  # the evaluation worker
    assert FP.fingerprint(tmp_path)["runner"] != before


def test_stored_runs_record_what_the_orchestration_handed_them():
    """What `main` passes to each training and evaluation is stored beside the result; it must be what
    the experiment's config asks for, since main itself is not in the fingerprint."""
    import run_experiments as R
    stored = json.loads(RESULTS.read_text())
    eval_cfg = stored["configs"]["eval"]
    assert set(stored["runs"]) == set(R.experiments())
    for name, seeds in stored["runs"].items():
        cfg = stored["configs"][name]
        assert cfg == R.experiments()[name] and sorted(map(int, seeds)) == sorted(cfg["seeds"])
        for seed, run in seeds.items():
            train, key = run["train_config"], run["eval"]["key"]
            assert train["seed"] == int(seed), (name, seed)
            for field, value in R.recipe_values(name, cfg).items():  # the fields its files state
                if field in R.DATA_KEYS:  # globs of the corpus, resolved to files wherever it lay
                    globs = value if isinstance(value, list) else [value]
                    assert train[field] and all(any(fnmatch(f, "*/" + g) or fnmatch(f, f"*/{g}/*") for g in globs)
                                                for f in train[field]), (name, seed, field)
                else:
                    got = {k: train[field][k] for k in value} if field == "m3" else train[field]
                    assert got == json.loads(json.dumps(value)), (name, seed, field)  # keys as JSON has them
            assert key["benchmarks"] == R.benchmarks_for(cfg, eval_cfg, name) and not key["baseline"], (name, seed)
            assert key["eval"] == eval_cfg and key["source"] == stored["fingerprint"]["source"], (name, seed)
    assert stored["untrained"]["key"]["baseline"]
    assert stored["untrained"]["key"]["benchmarks"] == R.benchmarks_for({}, eval_cfg, "untrained")


SWEEP = ROOT / "book" / "results" / "dense_stage_dev.json"


def test_dense_stage_sweep_fresh():
    """Chapter 12's dev-split sweep of the dense stage must describe the current m3ref source, its
    own config and the m3-mini configs it reads."""
    sys.path.insert(0, str(ROOT / "benchmarks" / "experiments" / "tuning"))
    import dense_stage_sweep as S
    stale = S.stale(ROOT)
    assert not stale, (f"{SWEEP.relative_to(ROOT)} is stale: changed since it was produced: {', '.join(stale)}. "
                       f"Regenerate it (2-core CPU, about 75 min): {json.loads(SWEEP.read_text())['regenerate']}")
