"""Measure on the DEV split what makes m3-mini's [CLS] learn; write book/results/dense_stage_dev.json.

    python benchmarks/experiments/tuning/dense_stage_sweep.py --corpus CORPUS [--jobs 2]

The variants of configs/tuning/dense_stage.yaml (the format of configs/experiments/) are trained
by the experiment runner's own `train` (the same subprocess, the same reuse of a finished run with
an unchanged config and training code) into RUNS (default runs/tuning/), then evaluated on
subsets of the corpus' dev split: the split that chooses a recipe, so that the test split of
chapter 12 is never tuned on. The untrained m3-mini is evaluated too, with BM25 beside it.
`stale()` says what changed since the results were written (tests/test_results_fresh.py, chapter 12).

This script is not part of the fingerprint of book/results/experiments.json (it lives one folder
below the runner); its output records its own config, the m3ref source digest and the m3-mini
configs it read.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import fingerprint as FP  # noqa: E402
import run_experiments as R  # noqa: E402

CONFIG = FP.ROOT / "configs" / "tuning" / "dense_stage.yaml"
RESULTS = FP.ROOT / "book" / "results" / "dense_stage_dev.json"


def eval_worker(model_dir: str, out: str, sets: str, baseline: bool) -> None:
    """Subprocess: every benchmark of the config on the dev subsets; scores and 95 % intervals."""
    import warnings
    warnings.filterwarnings("ignore")
    import torch
    from m3ref.evaluate import evaluate_model
    from m3ref.model import M3Model
    cfg = R.load_yaml(CONFIG)["eval"]
    torch.manual_seed(0)
    model = M3Model.from_pretrained(model_dir)
    methods = list(cfg["methods"]) + (["bm25"] if baseline else [])
    res = {}
    for bench, langs in cfg["benchmarks"].items():
        data = Path(sets) / ("eval-name-masked" if bench == "mkqa_masked" else "eval")
        r = evaluate_model(model, bench.removesuffix("_masked"), langs, methods, data, show_progress=False,
                           split=cfg["split"])
        res[bench] = {k: r[k] for k in ("metrics", "langs", "methods", "scores", "ci")}
    Path(out).write_text(json.dumps(res))


def evaluate(model_dir: Path, out: Path, sets: Path, baseline: bool) -> dict:
    """Evaluate one checkpoint in a subprocess (`eval_worker`); reuse a stored result only for the same
    weights, sets, evaluation config and code, the worker's included (a variant retrained under its old
    name is re-evaluated)."""
    key = {"model": R.model_key(model_dir), "eval": R.load_yaml(CONFIG)["eval"], "baseline": baseline,
           "sets": json.loads((sets / "done.json").read_text()), "source": FP.fingerprint()["source"],
           "worker": R.worker_digest(Path(__file__), "eval_worker")}
    cmd = [R.PY, __file__, "--eval-one", str(model_dir), "--out", str(out), "--sets", str(sets)] \
        + (["--baseline"] if baseline else [])
    res = R.evaluate_once(out, key, cmd)
    return {k: v for k, v in res.items() if k not in ("key", "eval_cpu_s")}


def recipe_files(variants: dict, root: Path = FP.ROOT) -> dict:
    """{path: sha256} of the m3-mini configs the variants read: the model and each stage's recipe."""
    import hashlib
    names = ["model"] + sorted({v["recipe"] for v in variants.values()})
    return {f"configs/m3-mini/{n}.yaml": hashlib.sha256((root / f"configs/m3-mini/{n}.yaml").read_bytes()).hexdigest()
            for n in names}


def stale(root: Path = FP.ROOT) -> list:
    """What changed since RESULTS was written: this sweep's config, the m3ref code that can change
    a number (training and evaluation), its evaluation worker, or the m3-mini configs it reads;
    [] when it is fresh."""
    stored = json.loads((root / RESULTS.relative_to(FP.ROOT)).read_text())
    config = R.load_yaml(root / CONFIG.relative_to(FP.ROOT))
    checks = (("configs/tuning/dense_stage.yaml", stored["config"] == config),
              ("the m3ref source", stored["source"] == FP.fingerprint(root)["source"]),
              ("its eval_worker", stored.get("worker") == R.worker_digest(root / Path(__file__).relative_to(FP.ROOT),
                                                                       "eval_worker")),
              ("configs/m3-mini/", stored["recipe_files"] == recipe_files(config["variants"], root)))
    return [what for what, same in checks if not same]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", help="the output directory of data_samples/build_corpus.py")
    ap.add_argument("--runs-dir", default=str(FP.ROOT / "runs" / "tuning"))
    ap.add_argument("--jobs", type=int, default=1, help="subprocesses at once (default 1)")
    ap.add_argument("--eval-one", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--sets", help=argparse.SUPPRESS)
    ap.add_argument("--baseline", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(FP.ROOT))
    if args.eval_one:
        return eval_worker(args.eval_one, args.out, args.sets, args.baseline)
    if not args.corpus or not (Path(args.corpus) / "manifest.json").is_file():
        raise SystemExit("error: --corpus must be a directory built by data_samples/build_corpus.py")
    os.chdir(FP.ROOT)
    R.THREADS["per_process"] = max(1, (os.cpu_count() or 1) // args.jobs)
    corpus, runs = Path(args.corpus).resolve(), Path(args.runs_dir).resolve()
    runs.mkdir(parents=True, exist_ok=True)
    cfg = R.load_yaml(CONFIG)
    variants, start = cfg["variants"], time.time()
    for name, v in variants.items():
        if v["init"] != "init" and v["init"] not in variants:
            raise SystemExit(f"{CONFIG}: variant {name!r}: unknown init {v['init']!r}")
    R.init_model(runs, corpus)
    sets = R.eval_sets(corpus, runs, {**cfg["eval"], "mldr_queries": 0, "mldr_corpus": 0})
    records, evals, untrained = R.run_jobs(
        list(variants), lambda name: None if variants[name]["init"] == "init" else variants[name]["init"],
        lambda name: R.train(runs, corpus, name, variants[name], 0, False),
        lambda name: evaluate(R.run_dir(runs, name, 0) / "final", runs / f"{name}-dev-eval.json", sets, False),
        args.jobs, "dense-stage sweep",
        extra=lambda: evaluate(runs / "init", runs / "untrained-dev-eval.json", sets, True))
    import torch
    results = {
        "regenerate": "python benchmarks/experiments/tuning/dense_stage_sweep.py --corpus CORPUS",
        "config": cfg, "source": FP.fingerprint()["source"],
        "worker": R.worker_digest(Path(__file__), "eval_worker"), "recipe_files": recipe_files(variants),
        "eval_sets": json.loads((sets / "done.json").read_text()),
        "untrained": untrained,
        "variants": {n: {"steps": records[n]["steps"], "train_wall_s": records[n]["train_wall_s"],
                         "train_cpu_s": records[n]["train_cpu_s"],
                         "loss_curve": {k: records[n]["loss_curve"][k] for k in ("L_dense", "L_final")},
                         "eval": evals[n]} for n in variants},
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
                    **R.cpu_info(),
                    "jobs": args.jobs, "threads_per_process": R.THREADS["per_process"],
                    "invocation_wall_s": round(time.time() - start, 1)},  # small when finished runs were reused
    }
    R.write_results(RESULTS, results)


if __name__ == "__main__":
    main()
