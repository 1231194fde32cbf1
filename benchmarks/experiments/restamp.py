"""Re-stamp book/results/experiments.json after a change to the evaluation that moves no number.

The fingerprint (fingerprint.py) ties the stored results to the code that made them, so an edit to
m3ref's evaluation modules or to the runner's evaluation worker makes them stale, and regenerating
them retrains every model: hours on the 2-core CPU. When such an edit should change no number (a
faster re-ranking, a cache), this command checks that it does not, and only then re-stamps:

    python benchmarks/experiments/restamp.py --corpus CORPUS --base REV [--runs-dir DIR] [--jobs 2]

1. REV must hold the code that made the results (its files give the stored fingerprint), and the
   change from REV to the working tree must leave the training side as it was: the configs, the
   corpus builder, the training code (`FP.training_digest`) and every function of the runner but
   its evaluation worker `eval_one`, the orchestration and `init_model`. The untrained model that
   `init_model` builds now (with data_samples/build_m3_mini.py, which the runner uses for nothing
   else) must be the stored one, byte for byte (its `model_key`).
2. REV's evaluation worker and the working tree's evaluate the models that need no training, on
   the runner's test sets (every benchmark, the BM25 baseline): the untrained m3-mini and the
   shipped one. Every output must be equal to the bit: scores, intervals, each query's values.
3. Then the fingerprint and the evaluation keys are rewritten (and the source digest of chapter
   12's dense-stage sweep, whose worker must be unchanged), and a record of the check (REV, the
   files changed, the models, the machine) is appended to the results' `restamps`.

The check covers every code path of the evaluation on two models, not the thirty trained ones: it
is for refactors. An edit meant to change a number regenerates the results (run_experiments.py).
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


def training_side(root: Path) -> dict:
    """Digests of everything but the evaluation: what must not change for a re-stamp."""
    fp = FP.fingerprint(root)
    return {"configs": fp["configs"], "data": fp["data"], "training code": FP.training_digest(root),
            "the runner but eval_one and init_model": FP.runner_digest(
                (root / FP.RUNNER).read_text(encoding="utf-8"), FP.ORCHESTRATION + ("eval_one", "init_model"))}


def refused(base: Path, root: Path, stored: dict) -> list:
    """Why REV and the working tree cannot be re-stamped one onto the other ([] when they can)."""
    problems = []
    if FP.fingerprint(base) != stored["fingerprint"]:
        problems.append("the base revision's files do not give the stored fingerprint (it did not make the results)")
    was, now = training_side(base), training_side(root)
    problems += [f"{part} changed" for part in was if was[part] != now[part]]
    return problems


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


def worker_env(tree: Path, threads: int) -> dict:
    """The environment of an evaluation worker of `tree`: its m3ref first on the path, the runner's threads."""
    n = str(threads)
    return {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n,
            "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}


def check_imports(tree: Path) -> None:
    """Stop unless a worker of `tree` imports `tree`'s m3ref (not an installed copy)."""
    where = subprocess.run([R.PY, "-c", "import m3ref; print(m3ref.__file__)"], env=worker_env(tree, 1), cwd=tree,
                           check=True, capture_output=True, text=True).stdout.strip()
    if not Path(where).resolve().is_relative_to(tree.resolve()):
        raise SystemExit(f"error: {tree}'s evaluation would import m3ref from {where}")


def evaluate_with(tree: Path, model: Path, out: Path, sets: Path, benchmarks: dict, threads: int) -> tuple:
    """The evaluation worker of `tree` (its runner and its m3ref) on `model`, as the runner calls it
    (`run_experiments.timed`, but with `tree`'s m3ref on the path). -> (its output, its CPU seconds)"""
    cmd = [R.PY, str(tree / FP.RUNNER), "--eval-one", str(model), "--out", str(out), "--sets", str(sets),
           "--benchmarks", json.dumps(benchmarks), "--baseline"]
    with open(out.with_suffix(".log"), "w") as log:
        proc = subprocess.Popen(cmd, cwd=tree, env=worker_env(tree, threads), stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"failed: {' '.join(cmd)}; see {out.with_suffix('.log')}")
    return json.loads(out.read_text()), round(usage.ru_utime + usage.ru_stime, 1)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", required=True, help="the output directory of data_samples/build_corpus.py")
    ap.add_argument("--base", required=True, help="the git revision whose code made the stored results")
    ap.add_argument("--runs-dir", default=str(FP.ROOT / "runs" / "experiments"),
                    help="where the runner's test sets are (built if missing)")
    ap.add_argument("--jobs", type=int, default=2, help="evaluations at once (default 2)")
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
        if R.model_key(untrained) != stored["untrained"]["key"]["model"]:
            raise SystemExit("error: cannot re-stamp: the untrained model built now is not the stored one "
                             f"(model_key {R.model_key(untrained)[:12]}). Regenerate instead: {FP.REGENERATE}")
        runs.mkdir(parents=True, exist_ok=True)
        eval_cfg = R.load_yaml(R.CONFIG_DIR / "eval.yaml")
        models = {"untrained": untrained, "m3-mini (shipped)": SHIPPED}
        sets, benchmarks = R.eval_sets(corpus, runs, eval_cfg), R.benchmarks_for({}, eval_cfg, "untrained")
        threads = max(1, (os.cpu_count() or 1) // args.jobs)
        tasks = [(name, side, tree) for name in models for side, tree in (("base", base), ("now", FP.ROOT))]
        for tree in (base, FP.ROOT):
            check_imports(tree)
        t0 = time.time()
        with ThreadPoolExecutor(args.jobs) as pool:
            outs = dict(zip(tasks, pool.map(lambda t: evaluate_with(
                t[2], models[t[0]], work / f"{t[0].split()[0]}-{t[1]}.json", sets, benchmarks, threads), tasks)))
        cpu = {task: outs[task][1] for task in tasks}
        outs = {task: outs[task][0] for task in tasks}
        checked = {}
        for name, model in models.items():
            diff = different(outs[name, "base", base], outs[name, "now", FP.ROOT])
            if diff:
                raise SystemExit(f"error: the evaluation of {name} changed: " + "; ".join(diff)
                                 + f". The edit moves numbers: regenerate instead: {FP.REGENERATE}")
            checked[name] = {"model": R.model_key(model),
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
