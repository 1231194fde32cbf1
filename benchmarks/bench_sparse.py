"""Lexical (sparse) retrieval: m3ref's inverted index vs FlagEmbedding's per-pair matching.

Corpus: synthetic lexical-weight dicts, as `encode` returns them (one {token id: weight} per
document), drawn with a fixed seed: document lengths (distinct terms) log-normal around 60,
queries around 8 terms, token ids Zipf-distributed (s = 1.1) over XLM-R's 250,002 ids, weights
uniform in (0, 0.35] (the range of BGE-M3's lexical weights). The query terms are drawn from
the same distribution, so frequent ids have long postings lists.

* FlagEmbedding: `BGEM3FlagModel.compute_lexical_matching_score(q, d)` for every
  (query, document) pair, then a top-10 sort per query, on the dicts it produces
  (`str(token id)` keys, `numpy.float32` values). The call is a method that does not touch
  the model, so the benchmark calls it on a bare instance without loading weights.
* m3ref: `m3ref.retrieval.Index` (a CSR postings matrix token -> documents) and
  `search_sparse` (sparse query matrix x postings, top-k). Index construction is timed
  separately; the ratio is query time against the per-pair loop, as an index is built once.

Agreement: the share of queries whose top-10 document sets are identical.
"""
from __future__ import annotations

import numpy as np

try:
    from . import common as C
except ImportError:  # run as a script
    import common as C

SIZES = {
    "quick": dict(n_docs=20_000, n_queries=50, repeat=3),
    "full": dict(n_docs=100_000, n_queries=100, repeat=3),
}
VOCAB = 250_002


def synthetic_weights(n: int, mean_terms: float, seed: int) -> list:
    """n dicts {token id: weight}: Zipf ids over the XLM-R vocabulary, weights in (0, 0.35]."""
    rng = np.random.default_rng(seed)
    sizes = np.clip(rng.lognormal(np.log(mean_terms), 0.5, n).astype(int), 1, 2000)
    ranks = np.arange(4, VOCAB)  # ids 0-3 are the special tokens encode drops
    p = 1.0 / (ranks - 3.0) ** 1.1
    p /= p.sum()
    perm = rng.permutation(ranks)  # frequent ids spread over the id range
    draws = perm[rng.choice(len(ranks), size=int(sizes.sum()), p=p)]
    weights = rng.uniform(0.0, 0.35, size=len(draws)).astype(np.float32) + np.float32(1e-4)
    out, start = [], 0
    for k in sizes:
        ids, first = np.unique(draws[start:start + k], return_index=True)
        out.append(dict(zip(ids.tolist(), weights[start + first].astype(float).tolist())))
        start += k
    return out


def _flag_scorer():
    """FlagEmbedding's `compute_lexical_matching_score`, bound to an instance built without weights."""
    from FlagEmbedding import BGEM3FlagModel
    bare = BGEM3FlagModel.__new__(BGEM3FlagModel)
    bare.pool = None  # what __del__ looks at
    return bare.compute_lexical_matching_score


def flag_topk(score, queries: list, docs: list, k: int = 10) -> list:
    """Every (query, document) pair through the official per-pair function, then top-k."""
    out = []
    for q in queries:
        s = np.array([score(q, d) for d in docs], dtype=np.float64)
        top = np.argsort(-s, kind="stable")[:k]
        out.append([int(j) for j in top if s[j] > 0])
    return out


def run(mode: str = "quick", sizes: dict = None) -> dict:
    import time

    from m3ref.retrieval import Encoded, Index, search_sparse

    s = {**SIZES[mode], **(sizes or {})}
    docs = synthetic_weights(s["n_docs"], 60, seed=1)
    queries = synthetic_weights(s["n_queries"], 8, seed=2)
    # the official encode's output format: str keys, numpy.float32 values
    flag_docs = [{str(t): np.float32(w) for t, w in d.items()} for d in docs]
    flag_queries = [{str(t): np.float32(w) for t, w in q.items()} for q in queries]
    score = _flag_scorer()

    ids = [str(i) for i in range(len(docs))]
    dummy = np.zeros((len(docs), 1), np.float32)
    t0 = time.perf_counter()
    index = Index(Encoded(ids, dummy, docs))
    build_s = time.perf_counter() - t0
    q_enc = Encoded([f"q{i}" for i in range(len(queries))], np.zeros((len(queries), 1), np.float32), queries)

    result = {}

    def theirs():
        result["flag"] = flag_topk(score, flag_queries, flag_docs)

    def ours():
        result["m3ref"] = search_sparse(q_enc, index, k=10)

    times = C.compare_times({"flag": theirs, "m3ref": ours}, repeat=s["repeat"], warmup=0)
    agree = 0
    for i, top in enumerate(result["flag"]):
        mine = [int(d) for d, _ in sorted(result["m3ref"][f"q{i}"].items(), key=lambda kv: -kv[1])]
        agree += set(mine) == set(top)
    t_flag, t_ours = times["median"]["flag"], times["median"]["m3ref"]
    return {
        "sparse_retrieval_vs_flagembedding": C.ratio(times, "flag", "m3ref"),
        "sparse_retrieval_vs_flagembedding_cpu": C.ratio(times, "flag", "m3ref", "cpu"),
        "sparse_retrieval_vs_flagembedding_incl_index_build": t_flag / (t_ours + build_s),
        "sparse_top10_agreement": agree / len(queries),
        "sparse_flag_s": t_flag,
        "sparse_m3ref_query_s": t_ours,
        "sparse_m3ref_index_build_s": build_s,
        "sparse_n_docs": float(len(docs)),
        "sparse_n_queries": float(len(queries)),
    }


if __name__ == "__main__":
    import json
    import sys
    print(json.dumps(run(sys.argv[1] if len(sys.argv) > 1 else "quick"), indent=1))
