"""Re-stamp book/results/experiments.json after a change to the code that moves no number.

The fingerprint (fingerprint.py) ties the stored results to the code that made them, so an edit to
m3ref or to the runner makes them stale, and regenerating them retrains every model: hours on the
2-core CPU. When such an edit should change no number (a faster re-ranking, a cache, a check that
a resume keeps its config), this command checks that it does not, and only then re-stamps:

    python benchmarks/experiments/restamp.py --corpus CORPUS --base REV [--runs-dir DIR] [--jobs 2]

1. REV must hold the code that made the results (its files give the stored fingerprint), and the
   change from REV to the working tree must leave the configs, the corpus builder and the runner's
   other functions as they were: only m3ref, the runner's evaluation worker `eval_one`, its training
   functions (TRAINING), `init_model` and the orchestration may change. The untrained model that
   `init_model` builds now (with data_samples/build_m3_mini.py, which the runner uses for nothing
   else) must be the stored one, byte for byte (its `model_key`).
2. When the training side changed (`FP.training_digest` or TRAINING), REV's runner and the working
   tree's each train every experiment for SHORT_STEPS steps from the untrained model (or its
   backbone), through the runner's own `train`: the same `train_key`, every logged loss and every
   weight of the final checkpoint must be equal to the bit.
3. REV's evaluation worker and the working tree's evaluate the models that need no training, on
   the runner's test sets (every benchmark, the BM25 baseline): the untrained m3-mini and the
   shipped one. Every output must be equal to the bit: scores, intervals, each query's values.
4. Then the fingerprint and the evaluation keys are rewritten (and the source digest of chapter
   12's dense-stage sweep, whose worker must be unchanged), and a record of the check (REV, the
   files changed, the models, the machine) is appended to the results' `restamps`.

The checks cover every code path on a few steps and two models, not the thirty trained ones: they
are for refactors. An edit meant to change a number regenerates the results (run_experiments.py).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fingerprint as FP  # noqa: E402
import run_experiments as R  # noqa: E402

SWEEP_DIR = FP.ROOT / "benchmarks" / "experiments" / "tuning"
SHIPPED = FP.ROOT / "data_samples" / "m3-mini"
# The runner's functions that set up, run and recognise a training (`model_key` names the start
# checkpoint in `train_key`): checked by training with each tree (step 2).
TRAINING = ("timed", "run_dir", "corpus_paths", "backbone_dir", "start_model", "recipe_values", "train_values",
            "model_key", "stored_config", "train_key", "finished_run", "train")
SHORT_STEPS = 8  # steps of each experiment in the training check, a checkpoint every half


def fingerprint_of(tree: Path):
    """`tree`'s own fingerprint.py, which says what that tree's fingerprint leaves out."""
    import importlib.util
    path = tree / Path(FP.__file__).resolve().relative_to(FP.ROOT)  # benchmarks/experiments/fingerprint.py
    spec = importlib.util.spec_from_file_location(f"fingerprint_of_{tree.name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _runner(root: Path, leave_out: tuple) -> str:
    return FP.runner_digest((root / FP.RUNNER).read_text(encoding="utf-8"), leave_out)


def fixed_side(root: Path, orchestration: tuple) -> dict:
    """Digests of what a re-stamp cannot check, so must leave as it was."""
    fp = FP.fingerprint(root)
    return {"configs": fp["configs"], "data": fp["data"],
            "the runner but eval_one, init_model and its training functions":
                _runner(root, orchestration + ("eval_one", "init_model") + TRAINING)}


def training_side(root: Path, orchestration: tuple) -> dict:
    """Digests of what can change a trained checkpoint: a change there needs the training check."""
    return {"training code": FP.training_digest(root),
            "the runner's training functions": _runner(root, orchestration + ("eval_one", "init_model"))}


def orchestration(base: Path) -> tuple:
    """The runner's orchestration in REV or now (a function may have moved in or out of it)."""
    return tuple(sorted(set(FP.ORCHESTRATION) | set(fingerprint_of(base).ORCHESTRATION)))


def refused(base: Path, root: Path, stored: dict) -> list:
    """Why REV and the working tree cannot be re-stamped one onto the other ([] when they can)."""
    problems = []
    if fingerprint_of(base).fingerprint(base) != stored["fingerprint"]:
        problems.append("the base revision's files do not give the stored fingerprint (it did not make the results)")
    orch = orchestration(base)
    was, now = fixed_side(base, orch), fixed_side(root, orch)
    problems += [f"{part} changed" for part in was if was[part] != now[part]]
    return problems


def training_changed(base: Path, root: Path) -> list:
    """What changed on the training side from REV to the working tree ([]: no training check needed)."""
    orch = orchestration(base)
    was, now = training_side(base, orch), training_side(root, orch)
    return [part for part in was if was[part] != now[part]]


def short(name: str, cfg: dict) -> dict:
    """Experiment `cfg` cut to SHORT_STEPS steps (each stage it trains gets them all), started from the
    untrained model unless it has a backbone, with a checkpoint halfway."""
    values = R.recipe_values(name, cfg)
    steps = {"max_steps": SHORT_STEPS, "save_every": SHORT_STEPS // 2}
    steps.update({k: SHORT_STEPS for k in ("dense_steps", "retromae_steps") if values.get(k)})
    out = {**cfg, "train": {**(cfg.get("train") or {}), **steps}}
    if not cfg.get("backbone"):
        out["init"] = "init"
        out.pop("init_seed", None)
    return out


DRIVER = """import json, sys
from pathlib import Path
sys.path.insert(0, "benchmarks/experiments")
import run_experiments as R
runs, corpus, name, cfg = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
R.THREADS["per_process"] = int(sys.argv[5])
R.train(runs, corpus, name, cfg, 0, False)
"""


def weights_digest(model_dir: Path) -> str:
    """SHA-256 of a checkpoint's files but trainer_state.json (which names its run folder)."""
    import hashlib
    h = hashlib.sha256()
    for f in sorted(Path(model_dir).rglob("*")):
        if f.is_file() and f.name != "trainer_state.json":
            h.update(f.relative_to(model_dir).as_posix().encode() + hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def train_with(tree: Path, runs: Path, corpus: Path, name: str, cfg: dict) -> dict:
    """`tree`'s runner trains `cfg` (seed 0) into `runs` in a subprocess, with `tree`'s m3ref.
    -> what the check compares: train_key, steps, loss curve, the final weights' digest."""
    runs.mkdir(parents=True, exist_ok=True)
    cmd = [R.PY, "-c", DRIVER, str(runs), str(corpus), name, json.dumps(cfg), str(R.THREADS["per_process"])]
    log = runs / f"{name}.driver.log"
    R.timed(cmd, log, cwd=tree, env={"PYTHONPATH": str(tree)})
    record = json.loads((R.run_dir(runs, name, 0) / "experiment_record.json").read_text())
    return {"train_key": record["train_key"], "steps": record["steps"], "loss_curve": record["loss_curve"],
            "weights": weights_digest(R.run_dir(runs, name, 0) / "final")}


def check_training(base: Path, untrained: Path, corpus: Path, work: Path, jobs: int) -> dict:
    """Step 2: every experiment, SHORT_STEPS steps, with REV's runner and the working tree's; stop at
    the first difference. -> {experiment: {steps, loss values compared, weights digest}}, one experiment
    of those that train alike when cut short (the same recipe values, heads, backbone and languages)."""
    exps = {}  # cut short and started from the untrained model, several experiments train alike: once each
    for name, cfg in R.experiments().items():
        cut = short(name, cfg)
        alike = json.dumps([R.recipe_values(name, cut)] + [cut.get(k) for k in ("heads", "backbone", "languages")],
                           sort_keys=True)
        if alike not in {a for a, _ in exps.values()}:
            exps[name] = (alike, cut)
    sides = {"base": (base, work / "train-base"), "now": (FP.ROOT, work / "train-now")}
    for _, runs in sides.values():
        shutil.copytree(untrained, runs / "init")  # the stored untrained model, checked by main
    tasks = [(name, side) for name in exps for side in sides]
    with ThreadPoolExecutor(jobs) as pool:
        outs = dict(zip(tasks, pool.map(lambda t: train_with(*sides[t[1]], corpus, t[0], exps[t[0]][1]), tasks)))
    checked = {}
    for name in exps:
        a, b = outs[name, "base"], outs[name, "now"]
        for field in ("train_key", "steps", "loss_curve", "weights"):
            diff = different(a[field], b[field], f"/{name}/{field}")
            if diff:
                raise SystemExit(f"error: the training of {name} changed: " + "; ".join(diff)
                                 + f". The edit moves numbers: regenerate instead: {FP.REGENERATE}")
        checked[name] = {"steps": b["steps"], "loss_values": sum(v is not None for k, vs in b["loss_curve"].items()
                                                                  if k.startswith("L_") for v in vs),
                         "weights": b["weights"]}
    return checked


def different(a, b, path="") -> list:
    """Where two JSON values differ (floats compared exactly), at most 10 places."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{path}/{k}: only on one side" for k in sorted(set(a) ^ set(b), key=str)]
        for k in a.keys() & b.keys():
            out += different(a[k], b[k], f"{path}/{k}")
        return out[:10]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for x, y, i in zip(a, b, range(len(a))) for d in different(x, y, f"{path}[{i}]")][:10]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def per_query_values(result: dict) -> list:
    """Every per-query value of an evaluation output, in a fixed order (benchmark, method, language,
    metric, query)."""
    return [v for bench in sorted(k for k, r in result.items() if isinstance(r, dict) and "per_query" in r)
            for method, langs in sorted(result[bench]["per_query"].items()) for lang, metrics in sorted(langs.items())
            for metric, queries in sorted(metrics.items()) for _, v in sorted(queries.items())]


def check_imports(tree: Path) -> None:
    """Stop unless a worker of `tree` imports `tree`'s m3ref (not an installed copy)."""
    where = subprocess.run([R.PY, "-c", "import m3ref; print(m3ref.__file__)"], env={**os.environ, "PYTHONPATH": str(tree)},
                           cwd=tree, check=True, capture_output=True, text=True).stdout.strip()
    if not Path(where).resolve().is_relative_to(tree.resolve()):
        raise SystemExit(f"error: {tree}'s evaluation would import m3ref from {where}")


def evaluate_with(tree: Path, model: Path, out: Path, sets: Path, benchmarks: dict) -> tuple:
    """The evaluation worker of `tree` (its runner and its m3ref) on `model`, as the runner calls it,
    but with `tree`'s m3ref on the path. -> (its output, its CPU seconds)"""
    cmd = [R.PY, str(tree / FP.RUNNER), "--eval-one", str(model), "--out", str(out), "--sets", str(sets),
           "--benchmarks", json.dumps(benchmarks), "--baseline"]
    cpu = R.timed(cmd, out.with_suffix(".log"), cwd=tree, env={"PYTHONPATH": str(tree)})
    return json.loads(out.read_text()), round(cpu, 1)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", required=True, help="the output directory of data_samples/build_corpus.py")
    ap.add_argument("--base", required=True, help="the git revision whose code made the stored results")
    ap.add_argument("--runs-dir", default=str(FP.ROOT / "runs" / "experiments"),
                    help="where the runner's test sets are (built if missing)")
    ap.add_argument("--jobs", type=int, default=2, help="trainings or evaluations at once (default 2)")
    args = ap.parse_args(argv)
    corpus, runs = Path(args.corpus).resolve(), Path(args.runs_dir).resolve()
    if not (corpus / "manifest.json").is_file():
        raise SystemExit("error: --corpus must be a directory built by data_samples/build_corpus.py")
    if subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{args.base}^{{commit}}"], cwd=FP.ROOT,
                      capture_output=True).returncode:
        raise SystemExit(f"error: --base {args.base}: not a commit of this repository")
    stored = json.loads(R.RESULTS.read_text())
    work = Path(tempfile.mkdtemp(prefix="restamp-"))
    base = work / "base"
    subprocess.run(["git", "worktree", "add", "--detach", str(base), args.base], cwd=FP.ROOT, check=True,
                   capture_output=True)
    try:
        problems = refused(base, FP.ROOT, stored)
        if problems:
            raise SystemExit("error: cannot re-stamp: " + "; ".join(problems) + f". Regenerate instead: {FP.REGENERATE}")
        untrained = R.init_model(work / "runs", corpus)  # as the working tree builds it, afresh
        keys = {"untrained": R.model_key(untrained), "m3-mini (shipped)": R.model_key(SHIPPED)}
        if keys["untrained"] != stored["untrained"]["key"]["model"]:
            raise SystemExit("error: cannot re-stamp: the untrained model built now is not the stored one "
                             f"(model_key {keys['untrained'][:12]}). Regenerate instead: {FP.REGENERATE}")
        runs.mkdir(parents=True, exist_ok=True)
        R.THREADS["per_process"] = max(1, (os.cpu_count() or 1) // args.jobs)
        for tree in (base, FP.ROOT):
            check_imports(tree)
        t0 = time.time()
        changed_training = training_changed(base, FP.ROOT)
        trained = check_training(base, untrained, corpus, work, args.jobs) if changed_training else {}
        train_wall = round(time.time() - t0, 1)
        eval_cfg = R.load_yaml(R.CONFIG_DIR / "eval.yaml")
        models = {"untrained": untrained, "m3-mini (shipped)": SHIPPED}
        sets, benchmarks = R.eval_sets(corpus, runs, eval_cfg), R.benchmarks_for({}, eval_cfg, "untrained")
        tasks = [(name, side, tree) for name in models for side, tree in (("base", base), ("now", FP.ROOT))]
        with ThreadPoolExecutor(args.jobs) as pool:
            outs = dict(zip(tasks, pool.map(lambda t: evaluate_with(
                t[2], models[t[0]], work / f"{t[0].split()[0]}-{t[1]}.json", sets, benchmarks), tasks)))
        cpu = {task: outs[task][1] for task in tasks}
        outs = {task: outs[task][0] for task in tasks}
        checked = {}
        for name in models:
            diff = different(outs[name, "base", base], outs[name, "now", FP.ROOT])
            if diff:
                raise SystemExit(f"error: the evaluation of {name} changed: " + "; ".join(diff)
                                 + f". The edit moves numbers: regenerate instead: {FP.REGENERATE}")
            checked[name] = {"model": keys[name],
                             "per_query_values": len(per_query_values(outs[name, "now", FP.ROOT])),
                             "eval_cpu_s": {"base": cpu[name, "base", base], "now": cpu[name, "now", FP.ROOT]}}
        # does this machine reproduce the stored run? (another kind of CPU orders some near-ties otherwise)
        unlike_stored = sum(a != b for a, b in zip(per_query_values(stored["untrained"]),
                                                   per_query_values(outs["untrained", "base", base])))
        changed = subprocess.run(["git", "diff", "--name-only", args.base, "--", "m3ref", "benchmarks/experiments",
                                  "data_samples/build_m3_mini.py"],
                                 cwd=FP.ROOT, check=True, capture_output=True, text=True).stdout.split()
        now, worker = FP.fingerprint(), R.worker_digest(FP.ROOT / FP.RUNNER, "eval_one")
        record = {"utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "base": subprocess.run(
            ["git", "rev-parse", args.base], cwd=FP.ROOT, check=True, capture_output=True, text=True).stdout.strip(),
            "files_changed": changed, "from": stored["fingerprint"], "checked": checked,
            "training_checked": {"changed": changed_training, "steps": SHORT_STEPS, "experiments": trained,
                                 "wall_s": train_wall},
            "untrained_per_query_values_unlike_the_stored_run": unlike_stored,
            "machine": R.cpu_info(), "wall_s": round(time.time() - t0, 1)}
        for ev in [stored["untrained"]] + [run["eval"] for seeds in stored["runs"].values() for run in seeds.values()]:
            ev["key"].update(source=now["source"], worker=worker)
        stored["fingerprint"] = now
        stored.setdefault("restamps", []).append(record)
        sys.path.insert(0, str(SWEEP_DIR))
        import dense_stage_sweep as S
        sweep = json.loads(S.RESULTS.read_text())
        if S.stale(FP.ROOT) == ["the m3ref source"]:  # its own worker and configs unchanged
            sweep["source"] = now["source"]
            sweep.setdefault("restamps", []).append(record)
            R.write_results(S.RESULTS, sweep)
        R.write_results(R.RESULTS, stored)
        print(json.dumps(record, indent=1))
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=FP.ROOT, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
