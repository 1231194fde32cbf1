"""Ranking metrics, computed by trec_eval (through `pytrec_eval`).

The paper reports nDCG@10 on MIRACL and MLDR and Recall@100 on MKQA (Sec. 4.1-4.2); the
official evaluation runs `trec_eval -c` on TREC runs (notes Sec. 4), so we call the same C
code through `pytrec_eval` instead of re-implementing the formulas. Two trec_eval rules to
know when reading the numbers:

- `-c`: the mean is over every query of the qrels; a query missing from the run scores 0.
- Ties: documents are ranked by score, then by document id in *descending* string order.

MKQA's "Recall@k" in the paper is QA-style: a question counts as found when *any* top-k
passage contains an answer. That is trec_eval's success@k on answer-derived qrels, not
recall@k (the fraction of relevant passages found).

Every mean comes with its uncertainty: `bootstrap_ci` resamples the queries (a 95 % percentile
interval of the mean), and `paired_test` compares two systems on the same queries (the mean
difference, its bootstrap interval, and a two-sided sign-flip randomisation p-value).

Book: the experiments chapter.
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import pytrec_eval

from .errors import M3Error

_PATTERNS = [  # our metric name -> trec_eval measure
    (r"ndcg@(\d+)", "ndcg_cut.{}"),
    (r"recall@(\d+)", "recall.{}"),
    (r"p@(\d+)", "P.{}"),
    (r"success@(\d+)", "success.{}"),  # 1 if any relevant doc is in the top k
    (r"map@(\d+)", "map_cut.{}"),
    (r"(map)", "map"),
    (r"(ndcg)", "ndcg"),
    (r"(mrr|recip_rank)", "recip_rank"),
    (r"mrr@(\d+)", "recip_rank"),  # recip_rank on the run cut at k
]


def _measure(name: str) -> tuple[str, int | None]:
    """'ndcg@10' -> ('ndcg_cut.10', None); 'mrr@10' -> ('recip_rank', 10) (cut the run at 10)."""
    for pattern, measure in _PATTERNS:
        m = re.fullmatch(pattern, name.lower())
        if m:
            cut = int(m.group(1)) if pattern.startswith("mrr@") else None
            return measure.format(m.group(1)), cut
    raise M3Error(f"unknown metric {name!r} (use ndcg@k, recall@k, success@k, p@k, map, map@k, mrr, mrr@k)")


def _ranked(docs: dict[str, float]) -> list[tuple[str, float]]:
    """Order of trec_eval: score descending, then docid descending."""
    return sorted(docs.items(), key=lambda item: (item[1], item[0]), reverse=True)


def per_query(run: dict, qrels: dict, metrics=("ndcg@10", "recall@100")) -> dict[str, dict[str, float]]:
    """Each metric of each query of `qrels` (trec_eval -c: a query missing from the run scores 0).

    run:   {qid: {docid: score}}, higher is better.
    qrels: {qid: {docid: grade}}, grade >= 1 is relevant, higher grades count more in nDCG.
    Returns {metric: {qid: value in [0, 1]}}.
    """
    qrels = {str(q): {str(d): int(g) for d, g in docs.items()} for q, docs in qrels.items()}
    run = {str(q): {str(d): float(s) for d, s in docs.items()}
           for q, docs in run.items() if str(q) in qrels}
    if not qrels:
        raise M3Error("evaluate: the qrels are empty")
    result = {}
    for name in metrics:
        measure, cut = _measure(name)
        r = run if cut is None else {q: dict(_ranked(d)[:cut]) for q, d in run.items()}
        found = pytrec_eval.RelevanceEvaluator(qrels, {measure}).evaluate(r)
        key = measure.replace(".", "_")
        result[name] = {q: found[q][key] if q in found else 0.0 for q in sorted(qrels)}
    return result


def score_run(run: dict, qrels: dict, metrics=("ndcg@10", "recall@100")) -> dict[str, float]:
    """Mean of each metric over the queries of `qrels` (trec_eval -c), e.g.
    {"ndcg@10": 0.68, "recall@100": 0.94}."""
    return {name: float(np.mean(list(values.values()))) for name, values in per_query(run, qrels, metrics).items()}


def _draws(sizes: Sequence[int], n_boot: int, seed: int) -> list:
    """For each group of `sizes[g]` queries, (n_boot, sizes[g]) indices drawn with replacement."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, n, size=(n_boot, n)) for n in sizes]


def bootstrap_ci(groups, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over queries (Efron & Tibshirani 1993).

    `groups`: one sequence of per-query values, or several (one per language): then each
    language's queries are resampled on their own and the statistic is the average of the
    languages' means, as the paper's "Avg" column. Returns (low, high).
    """
    groups = [np.asarray(groups, float)] if np.ndim(groups[0]) == 0 else [np.asarray(g, float) for g in groups]
    means = np.mean([g[idx].mean(1) for g, idx in zip(groups, _draws([len(g) for g in groups], n_boot, seed))], 0)
    tail = (1 - level) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def paired_test(a: dict, b: dict, n_boot: int = 1000, n_perm: int = 10000, seed: int = 0) -> dict:
    """Is system A better than B on the same queries? a, b: {qid: value} with the same qids.

    Returns the mean difference A - B, its 95 % bootstrap interval, and the two-sided p-value of
    a paired randomisation test: under "no difference" each query's two values are
    exchangeable, so the sign of each difference is flipped at random (Smucker et al. 2007).
    """
    if set(a) != set(b):
        raise M3Error(f"paired_test: the two runs judge different queries ({len(set(a) ^ set(b))} differ)")
    qids = sorted(a)
    diff = np.array([a[q] - b[q] for q in qids])
    observed = abs(diff.mean())
    signs = np.random.default_rng(seed).choice((-1.0, 1.0), size=(n_perm, len(diff)))
    p = (np.sum(np.abs((signs * diff).mean(1)) >= observed - 1e-12) + 1) / (n_perm + 1)
    low, high = bootstrap_ci(diff, n_boot, seed)
    return {"diff": float(diff.mean()), "ci": [low, high], "p": float(p), "queries": len(qids)}


def chance(qrels: dict, n_docs: int, metric: str) -> float:
    """Expected value of `metric` for a random ranking of `n_docs` documents, averaged over the
    queries of `qrels` (binary relevance: grade >= 1): the floor every table is read against.

    With R relevant documents among N, each rank holds a relevant one with probability R/N:
    E[nDCG@k] = (R/N) sum_{i<=k} 1/log2(i+1) / IDCG@k, E[recall@k] = min(k, N)/N, and
    success@k = 1 - C(N-R, k)/C(N, k) (no relevant document in k draws).
    """
    import math
    kind, _, k = metric.lower().partition("@")
    if kind not in ("ndcg", "recall", "success") or not k.isdigit():
        raise M3Error(f"chance: no formula for {metric!r} (ndcg@k, recall@k, success@k)")
    k, values = int(k), []
    for docs in qrels.values():
        r = sum(1 for g in docs.values() if int(g) >= 1)
        if r == 0:
            continue
        top = min(k, n_docs)
        if kind == "ndcg":
            ideal = sum(1 / math.log2(i + 1) for i in range(1, min(r, k) + 1))
            values.append(r / n_docs * sum(1 / math.log2(i + 1) for i in range(1, top + 1)) / ideal)
        elif kind == "recall":
            values.append(top / n_docs)
        else:
            values.append(1 - math.prod((n_docs - r - j) / (n_docs - j) for j in range(top)) if n_docs - r >= top else 1.0)
    if not values:
        raise M3Error("chance: no query has a relevant document")
    return float(np.mean(values))
