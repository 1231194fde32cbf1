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

Book: the experiments chapter.
"""
from __future__ import annotations

import re

import pytrec_eval

from m3ref.errors import M3Error

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


def evaluate(run: dict, qrels: dict, metrics=("ndcg@10", "recall@100")) -> dict[str, float]:
    """Mean of each metric over the queries of `qrels` (trec_eval -c).

    run:   {qid: {docid: score}}, higher is better.
    qrels: {qid: {docid: grade}}, grade >= 1 is relevant, higher grades count more in nDCG.
    Returns {metric: mean in [0, 1]}, e.g. {"ndcg@10": 0.68, "recall@100": 0.94}.
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
        per_query = pytrec_eval.RelevanceEvaluator(qrels, {measure}).evaluate(r)
        key = measure.replace(".", "_")
        result[name] = sum(v[key] for v in per_query.values()) / len(qrels)  # absent -> 0
    return result
