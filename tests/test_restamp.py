"""benchmarks/experiments/restamp.py: the stored results are re-stamped only over a change to m3ref,
the runner's evaluation worker or its training functions, and only when short trainings and the
evaluation give outputs equal to the bit (checked by the command)."""
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "experiments"))
import fingerprint as FP  # noqa: E402
import restamp as RS  # noqa: E402

pytestmark = [pytest.mark.experiments]
HASHED = ("m3ref", "benchmarks/experiments", "configs/experiments", "configs/m3-mini",
          "data_samples/build_corpus.py", "data_samples/build_m3_mini.py")


def tree(dest: Path) -> Path:
    for part in HASHED:
        src, out = ROOT / part, dest / part
        out.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, out, ignore=shutil.ignore_patterns("__pycache__", "tuning"))
        else:
            shutil.copy(src, out)
    return dest


def edit(path: Path, old: str, new: str) -> str:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, 1))
    return text


def test_what_can_be_restamped_and_what_is_checked_by_training(tmp_path):
    base, now = tree(tmp_path / "base"), tree(tmp_path / "now")
    stored = {"fingerprint": FP.fingerprint(base)}
    assert RS.refused(base, now, stored) == [] and RS.training_changed(base, now) == []
    edit(now / "m3ref" / "retrieval.py", "RERANK_K = 200", "RERANK_K = 100")  # evaluation code: the
    edit(now / FP.RUNNER, "torch.manual_seed(0)", "torch.manual_seed(1)")  # output check decides
    edit(now / "data_samples" / "build_m3_mini.py", "torch.manual_seed(seed)", "torch.manual_seed(seed + 1)")
    edit(now / FP.RUNNER, "seed=0,", "seed=1,")  # init_model: the untrained model's hash decides (main checks it)
    assert RS.refused(base, now, stored) == [] and RS.training_changed(base, now) == []
    for path, old, new, why in (  # the training side: allowed, but only after the training check
            ("m3ref/losses.py", "(L + L_prime) / config.l_final_divisor", "(L + L_prime) / 2", "training code"),
            (FP.RUNNER, "key = {k: v for k, v in config.items() if k != \"output_dir\"}", "key = dict(config)",
             "the runner's training functions")):
        was = edit(now / path, old, new)
        assert RS.refused(base, now, stored) == [] and RS.training_changed(base, now) == [why]
        (now / path).write_text(was)
    for path, old, new, why in (  # what no check covers: refused
            (FP.RUNNER, "if b != \"mldr\" or tag in", "if tag in",
             "the runner but eval_one, init_model and its training functions changed"),
            ("configs/experiments/eval.yaml", "queries: 400", "queries: 300", "configs changed")):
        was = edit(now / path, old, new)
        assert RS.refused(base, now, stored) == [why]
        (now / path).write_text(was)
    assert RS.refused(base, now, {"fingerprint": {**stored["fingerprint"], "source": "0" * 64}})[0].startswith(
        "the base revision's files do not give the stored fingerprint")


def test_the_training_check_cuts_every_experiment_short_from_the_untrained_model():
    import run_experiments as R
    for name, cfg in R.experiments().items():
        cut = RS.short(name, cfg)
        values = R.recipe_values(name, cut)
        assert values["max_steps"] == RS.SHORT_STEPS and values["save_every"] == RS.SHORT_STEPS // 2, name
        for stage in ("dense_steps", "retromae_steps"):  # a stage the experiment trains keeps every step
            assert values.get(stage, 0) == (RS.SHORT_STEPS if R.recipe_values(name, cfg).get(stage) else 0), name
        assert cut.get("init") == (None if cfg.get("backbone") else "init") and "init_seed" not in cut, name
        assert {k: v for k, v in cut.items() if k not in ("train", "init")} == \
            {k: v for k, v in cfg.items() if k not in ("train", "init", "init_seed")}, name


def test_outputs_are_compared_to_the_bit():
    a = {"mldr": {"per_query": {"all": {"en": {"ndcg@10": {"q1": 0.5, "q2": 2.0}}}}}}
    assert RS.different(a, {"mldr": {"per_query": {"all": {"en": {"ndcg@10": {"q1": 0.5, "q2": 2.0}}}}}}) == []
    b = {"mldr": {"per_query": {"all": {"en": {"ndcg@10": {"q1": 0.5, "q2": 2.0000000000000004}}}}}}
    assert RS.different(a, b) == ["/mldr/per_query/all/en/ndcg@10/q2: 2.0 != 2.0000000000000004"]
    assert RS.different({"x": [1, 2]}, {"x": [1, 2], "y": 0}) == ["/y: only on one side"]


def test_a_base_that_is_not_a_commit_is_one_line(tmp_path):
    (tmp_path / "manifest.json").write_text("{}")  # a corpus, as far as the arguments go
    with pytest.raises(SystemExit, match=r"^error: --base no-such-rev: not a commit of this repository$"):
        RS.main(["--corpus", str(tmp_path), "--base", "no-such-rev"])
