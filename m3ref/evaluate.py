"""Evaluate a checkpoint the way the paper does (Sec. 4.1-4.2, Tables 1-3).

    python -m m3ref.evaluate --model CKPT --data data_samples/eval --benchmark miracl --langs es,zh

Per language, the corpus and the queries are encoded once with all three heads; every
method then ranks the corpus from those encodings (`m3ref.retrieval`) and trec_eval scores
the runs (`m3ref.metrics`). The table has one row per method and one column per language
plus the average, in the paper's metric: nDCG@10 for MIRACL and MLDR, Recall@100 for MKQA,
x100 with one decimal, each with the half-width of its 95 % bootstrap interval over queries.
MKQA's Recall@k is QA-style (a question is found when a top-k passage contains an answer):
success@k on the answer-matched qrels of `m3ref.eval_data`.

    python -m m3ref.evaluate --compare A.json B.json

compares two saved evaluations (`--json`) query by query: the difference of every figure,
its 95 % interval and a paired randomisation test (`metrics.paired_test`).
Book: the experiments chapter.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys

import numpy as np
from tqdm.auto import tqdm

from . import retrieval as R
from .errors import M3Error, cli_errors, os_error_message, writing
from .eval_data import HUB_LANGS, load_eval
from .metrics import bootstrap_ci, paired_test, per_query

# Where a language's queries sit in a data directory laid out like the hub (see m3ref.data).
LOCAL_LANG = {"miracl": r"miracl-v1\.0-(\w+)", "mldr": r"mldr-v1\.0-(\w+)",
              "mkqa": r"MKQA_\w+-data/(\w+)\.jsonl"}
METRICS = {  # the first one is the table's metric; MKQA's QA-style Recall@k is success@k
    "miracl": ("ndcg@10", "recall@100"),
    "mkqa": ("success@100", "success@20"),
    "mldr": ("ndcg@10", "recall@100"),
}
MAX_PASSAGE_LENGTH = {"miracl": 512, "mkqa": 512, "mldr": 8192}  # official eval scripts
METHODS = {"bm25": "BM25", "dense": "Dense", "sparse": "Sparse", "multivec": "Multi-vec",
           "dense+sparse": "Dense+Sparse", "all": "All"}  # row names of the paper's tables


def passage_text(doc: dict) -> str:
    """Title and text joined by a space, as in the official evaluation."""
    return f"{doc.get('title') or ''} {doc.get('text') or ''}".strip()


def run_methods(model, corpus: dict, queries: dict, methods, benchmark="miracl", weights=None,
                batch_size=32, max_query_length=512, max_passage_length=None, mcls_stride=None,
                progress=None, cache=None) -> dict:
    """Encode `corpus` and `queries` once and return {method: run} for every method.

    `cache` (a dict) keeps the encoded corpus for the next call with the same passages and
    encoding arguments: MKQA searches one English corpus with the questions of every language.
    """
    weights = {**R.HYBRID_WEIGHTS[benchmark], **(weights or {})}
    max_passage_length = max_passage_length or MAX_PASSAGE_LENGTH[benchmark]
    if not corpus:
        raise M3Error("the corpus is empty: no document to rank")
    if not queries:
        raise M3Error("no queries to search with")
    pids, qids = list(corpus), list(queries)
    texts = [passage_text(corpus[p]) for p in pids]
    colbert = any(m in ("multivec", "all") for m in methods)
    encoded = [m for m in methods if m != "bm25"]
    if encoded:
        cache = {} if cache is None else cache
        key = (tuple(pids), tuple(texts), colbert, max_passage_length, batch_size, mcls_stride)  # exact: no hash collision
        if key not in cache:
            cache.clear()  # keep one corpus at a time
            cache[key] = R.Index(R.Encoded.from_model(model, pids, texts, max_passage_length, batch_size,
                                                  mcls_stride, colbert))
        index = cache[key]
        q = R.Encoded.from_model(model, qids, [queries[i] for i in qids], max_query_length, batch_size,
                             None, colbert)
    if progress is not None:
        progress.update()
    # multi-vec and all re-rank the same dense top-k: score the candidates once for both
    reranked = R.rerank(q, index, {m: R.MULTIVEC_WEIGHTS if m == "multivec" else weights["all"]
                                   for m in methods if m in ("multivec", "all")}) if colbert else {}
    runs = {}
    for method in methods:
        if method == "bm25":
            runs[method] = R.search_bm25(qids, [queries[i] for i in qids], pids, texts, model.tokenizer)
        elif method == "dense":
            runs[method] = R.search_dense(q, index)
        elif method == "sparse":
            runs[method] = R.search_sparse(q, index)
        elif method in ("multivec", "all"):
            runs[method] = reranked[method]
        elif method == "dense+sparse":
            runs[method] = R.search_dense_sparse(q, index, weights["dense+sparse"])
        if progress is not None:
            progress.update()
    return runs


def evaluate_model(model, benchmark: str, langs, methods, data_dir, weights=None, batch_size=32,
                   max_query_length=512, max_passage_length=None, mcls_stride=None,
                   show_progress=True, split=None, cache=None) -> dict:
    """Scores of every method on every language, as the paper's tables.

    Returns {"benchmark", "metrics", "langs", "methods",
             "scores": {method: {lang or "avg": {metric: value in [0, 1]}}},
             "ci": the same shape, [low, high] 95 % bootstrap intervals over queries,
             "per_query": {method: {lang: {metric: {qid: value}}}}}.
    `weights` overrides the hybrid weights, e.g. {"all": (0.15, 0.5, 0.35)}. `cache` (a dict)
    keeps the last encoded corpus for the next call on the same model (`run_methods`).
    """
    benchmark, langs, methods = check_args(benchmark, langs, methods, data_dir)
    check_numbers(batch_size, max_query_length, max_passage_length, mcls_stride)
    metrics = METRICS[benchmark]
    per, cache = {m: {} for m in methods}, {} if cache is None else cache
    with tqdm(total=len(langs) * (1 + len(methods)), desc=benchmark, disable=not show_progress,
              file=sys.stderr) as bar:
        for lang in langs:
            bar.set_postfix_str(lang)
            corpus, queries, qrels = load_eval(benchmark, lang, data_dir, split)
            queries = {q: t for q, t in queries.items() if q in qrels}  # only judged queries count
            runs = run_methods(model, corpus, queries, methods, benchmark, weights, batch_size,
                               max_query_length, max_passage_length, mcls_stride, bar, cache)
            for method, run in runs.items():
                per[method][lang] = per_query(run, qrels, metrics)
    return {"benchmark": benchmark, "split": split, "metrics": list(metrics), "langs": langs,
            "methods": methods, **summarise(per, langs, metrics), "per_query": per}


def summarise(per: dict, langs, metrics) -> dict:
    """Means and 95 % bootstrap intervals from per-query values; "avg" is the mean of the
    languages' means (the paper's Avg column), its interval resampling each language."""
    scores, ci = {}, {}
    for method, by_lang in per.items():
        scores[method], ci[method] = {}, {}
        for lang in langs:
            scores[method][lang] = {k: float(np.mean(list(by_lang[lang][k].values()))) for k in metrics}
            ci[method][lang] = {k: list(bootstrap_ci(list(by_lang[lang][k].values()))) for k in metrics}
        scores[method]["avg"] = {k: float(np.mean([scores[method][lang][k] for lang in langs])) for k in metrics}
        ci[method]["avg"] = {k: list(bootstrap_ci([list(by_lang[lang][k].values()) for lang in langs]))
                             for k in metrics}
    return {"scores": scores, "ci": ci}


def compare(a: dict, b: dict, metric: str | None = None) -> str:
    """Paired comparison of two evaluations of the same sets, per method and language:
    A - B (x100), its 95 % interval and the randomisation p-value."""
    metric = metric or a["metrics"][0]
    if (a["benchmark"], a["langs"]) != (b["benchmark"], b["langs"]):
        raise M3Error("--compare: the two evaluations are not of the same benchmark and languages")
    lines = [f"{a['benchmark']} {metric}: A - B x100 [95% interval] p"]
    for method in [m for m in a["methods"] if m in b["methods"]]:
        for lang in a["langs"]:
            t = paired_test(a["per_query"][method][lang][metric], b["per_query"][method][lang][metric])
            lo, hi = t["ci"]
            lines.append(f"{METHODS[method]:<13}{lang:>6} {100 * t['diff']:+6.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"
                         f"  p={t['p']:.3f}  ({t['queries']} queries)")
    return "\n".join(lines)


def check_args(benchmark, langs, methods, data_dir):
    """Validate user choices; raise M3Error with one line naming the bad value."""
    if benchmark not in HUB_LANGS:
        raise M3Error(f"unknown benchmark {benchmark!r}: choose one of {', '.join(HUB_LANGS)}")
    langs = [lang.strip() for lang in ([langs] if isinstance(langs, str) else langs) if lang.strip()]
    methods = [m.strip() for m in ([methods] if isinstance(methods, str) else methods) if m.strip()]
    for m in methods:
        if m not in METHODS:
            raise M3Error(f"unknown method {m!r}: choose from {','.join(METHODS)}")
    known = available_langs(benchmark, data_dir)
    for lang in langs:
        if lang not in known:
            raise M3Error(f"unknown language {lang!r} for {benchmark} in {data_dir}: choose from "
                          f"{','.join(known) or 'none found'}")
    if not langs or not methods:
        raise M3Error("give at least one language and one method")
    return benchmark, langs, methods


def check_numbers(batch_size=32, max_query_length=512, max_passage_length=None, mcls_stride=None) -> None:
    """The integer options of an evaluation, checked before any model or data is loaded."""
    for flag, value, low, optional in (("--batch-size", batch_size, 1, False),
                                       ("--max-query-length", max_query_length, 2, False),
                                       ("--max-passage-length", max_passage_length, 2, True),
                                       ("--mcls-stride", mcls_stride, 0, True)):
        if value is None and optional:
            continue
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
            hint = " (0 or left out: MCLS off)" if flag == "--mcls-stride" else ""
            raise M3Error(f"{flag} must be an integer >= {max(low, 1)}{hint}, got {value!r}")


def check_writable(path: str, flag: str = "--json") -> None:
    """Fail now, not after a long evaluation, when `path` cannot be written."""
    probe = f"{path}.tmp"
    try:
        with open(probe, "w", encoding="utf-8"):
            pass
        os.remove(probe)
    except OSError as exc:
        raise M3Error(f"cannot write {flag} {path}: {os_error_message(OSError(exc.errno, exc.strerror))}") from None


def read_result(path: str) -> dict:
    """A saved evaluation (`--json`), checked enough to compare."""
    try:
        with open(path, encoding="utf-8") as f:
            result = json.load(f)
    except json.JSONDecodeError as exc:
        raise M3Error(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    except UnicodeDecodeError:
        raise M3Error(f"{path}: not a UTF-8 JSON file") from None
    keys = ("benchmark", "langs", "methods", "metrics", "per_query")
    if not isinstance(result, dict) or any(k not in result for k in keys):
        raise M3Error(f"{path}: not a saved evaluation (python -m m3ref.evaluate ... --json {path})")
    return result


def available_langs(benchmark: str, data_dir, alias: bool = True) -> list[str]:
    """The languages of `benchmark` on the hub ('hub') or in a local data directory.

    With `alias`, MKQA also lists zh, another name for zh_cn.
    """
    if str(data_dir) == "hub":
        langs = list(HUB_LANGS[benchmark])
    elif not os.path.isdir(data_dir):
        raise M3Error(f"no data directory at {data_dir}")
    else:
        root = os.path.join(data_dir, benchmark)
        paths = (os.path.relpath(f, root) for f in glob.glob(os.path.join(root, "**"), recursive=True))
        langs = sorted({m.group(1) for f in paths if (m := re.fullmatch(LOCAL_LANG[benchmark], f))})
    return langs + ["zh"] if alias and benchmark == "mkqa" and "zh_cn" in langs else langs


def format_table(result: dict, metric: str | None = None) -> str:
    """Rows = methods, columns = languages + Avg; values x100 with one decimal, then +- the
    half-width of the 95 % interval when the result has intervals."""
    metric = metric or result["metrics"][0]
    cols = result["langs"] + ["avg"]
    ci = result.get("ci")
    width = 11 if ci else 7
    lines = [f"{result['benchmark']} {metric}" + (" (+- half of the 95% interval over queries)" if ci else ""),
             f"{'Method':<13}" + "".join(f"{c.capitalize() if c == 'avg' else c:>{width}}" for c in cols)]
    for method in result["methods"]:
        row = result["scores"][method]
        cells = []
        for c in cols:
            cell = f"{100 * row[c][metric]:.1f}"
            if ci:
                lo, hi = ci[method][c][metric]
                cell += f"±{50 * (hi - lo):.1f}"
            cells.append(f"{cell:>{width}}")
        lines.append(f"{METHODS[method]:<13}" + "".join(cells))
    return "\n".join(lines)


def parse_weights(specs) -> dict:
    """['all=0.15,0.5,0.35', 'dense+sparse=0.2,0.8'] -> {'all': (0.15, 0.5, 0.35), ...}"""
    out = {}
    for spec in specs or []:
        name, _, values = spec.partition("=")
        size = {"dense+sparse": 2, "all": 3}.get(name.strip())
        try:
            w = tuple(float(v) for v in values.split(","))
        except ValueError:
            w = ()
        if size is None or len(w) != size:
            raise M3Error(f"bad --weights {spec!r}: use dense+sparse=W_D,W_S or all=W_D,W_S,W_M")
        out[name.strip()] = w
    return out


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m m3ref.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="checkpoint directory (official BGE-M3 layout) or hub id")
    p.add_argument("--data", help="directory of evaluation sets (e.g. data_samples/eval), or 'hub' to download")
    p.add_argument("--benchmark", choices=sorted(HUB_LANGS),
                   help="miracl (nDCG@10), mkqa (QA Recall@100 = success@100) or mldr (nDCG@10)")
    p.add_argument("--langs", help="comma-separated languages, e.g. en,zh, or 'all' (every language in --data)")
    p.add_argument("--split", help="dev or test (default: the benchmark's own: miracl dev, mkqa and mldr test)")
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"comma-separated rows of the table, any of {','.join(METHODS)} "
                        "(default: all six)")
    p.add_argument("--batch-size", type=int, default=32,
                   help="texts per encoder forward pass (default: 32)")
    p.add_argument("--max-query-length", type=int, default=512,
                   help="query tokens kept (default: 512)")
    p.add_argument("--max-passage-length", type=int, default=None,
                   help="passage tokens kept (default: 8192 for mldr, 512 otherwise)")
    p.add_argument("--mcls-stride", type=int, default=None,
                   help="MCLS for long passages: one extra [CLS] every N tokens "
                        "(paper App. B.2; e.g. 256; default: off)")
    p.add_argument("--weights", action="append", metavar="METHOD=W,...",
                   help="hybrid weights, repeatable: dense+sparse=W_D,W_S and/or all=W_D,W_S,W_M "
                        "(default: the paper's per benchmark; miracl/mkqa 1,0.3[,1], "
                        "mldr 0.2,0.8 and 0.15,0.5,0.35)")
    p.add_argument("--json", metavar="OUT",
                   help="also write all scores (every metric, per query too) to this JSON file")
    p.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"),
                   help="instead of evaluating: compare two saved evaluations query by query")
    args = p.parse_args(argv)
    with cli_errors():
        if args.compare:
            a, b = (read_result(f) for f in args.compare)
            print(compare(a, b))
            return
        missing = [f"--{k}" for k in ("model", "data", "benchmark", "langs") if getattr(args, k) is None]
        if missing:
            raise M3Error(f"{', '.join(missing)} required (or --compare A.json B.json)")
        from .assets import resolve_path
        args.data = resolve_path(args.data)  # data_samples/eval: the shipped sample from any directory
        langs = args.langs.split(",")
        if args.langs == "all":
            langs = available_langs(args.benchmark, args.data, alias=False)
        check_args(args.benchmark, langs, args.methods.split(","), args.data)
        check_numbers(args.batch_size, args.max_query_length, args.max_passage_length, args.mcls_stride)
        weights = parse_weights(args.weights)
        if args.json:
            check_writable(args.json)
        from .model import M3Model
        model = M3Model.from_pretrained(args.model)
        result = evaluate_model(model, args.benchmark, langs, args.methods.split(","), args.data,
                                weights, args.batch_size, args.max_query_length,
                                args.max_passage_length, args.mcls_stride, split=args.split)
        print(format_table(result))
        if args.json:
            tmp = f"{args.json}.tmp"
            try:
                with writing(args.json):
                    with open(tmp, "w", encoding="utf-8") as f:
                        json.dump({**result, "model": args.model, "weights": weights}, f, indent=1)
                    os.replace(tmp, args.json)
            except M3Error:  # the table is printed; leave no half-written file behind
                if os.path.exists(tmp):
                    os.remove(tmp)
                raise


if __name__ == "__main__":
    main()
