"""Multi-vector (ColBERT) re-ranking throughput: documents scored per second.

The paper's multi-vector retrieval re-ranks the dense top-200 by s_mul (m3ref.retrieval.RERANK_K).
m3ref: `Index.mul_scores(query vectors, candidates)`, which gathers the candidates' vectors
(stored back to back, no padding) and scores them with one matrix product and a segment max
(`m3ref.scores.s_mul_packed`). Reference: FlagEmbedding's
`colbert_score(q, p)`, one (query, document) pair per call, over the same candidates.

Synthetic ColBERT vectors with a fixed seed: documents of log-normal length around 200
tokens (16 to 2048), queries of 8 to 32 tokens, L2-normalised rows, dimension = the model's
hidden size (1024 for BGE-M3 in full mode).
"""
from __future__ import annotations

import numpy as np

try:
    from . import common as C
except ImportError:  # run as a script
    import common as C

SIZES = {
    "quick": dict(n_docs=2000, n_queries=8, k=200, dim=128, repeat=5),
    "full": dict(n_docs=2000, n_queries=50, k=200, dim=1024, repeat=5),  # ~1.6 GB of vectors
}


def _vectors(rng, n_tokens: int, dim: int) -> np.ndarray:
    v = rng.standard_normal((n_tokens, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def run(mode: str = "quick", sizes: dict = None) -> dict:
    from FlagEmbedding import BGEM3FlagModel

    from m3ref.retrieval import Encoded, Index

    s = {**SIZES[mode], **(sizes or {})}
    rng = np.random.default_rng(3)
    lengths = np.clip(rng.lognormal(np.log(200), 0.6, s["n_docs"]).astype(int), 16, 2048)
    docs = [_vectors(rng, int(n), s["dim"]) for n in lengths]
    queries = [_vectors(rng, int(n), s["dim"]) for n in rng.integers(8, 33, s["n_queries"])]
    cands = [rng.choice(s["n_docs"], size=s["k"], replace=False).tolist() for _ in queries]
    index = Index(Encoded([str(i) for i in range(len(docs))], np.zeros((len(docs), 1), np.float32),
                          [{} for _ in docs], docs))
    bare = BGEM3FlagModel.__new__(BGEM3FlagModel)
    bare.pool = None
    out = {}

    def ours():
        out["m3ref"] = [index.mul_scores(q, c) for q, c in zip(queries, cands)]

    def theirs():
        out["flag"] = [[float(bare.colbert_score(q, docs[j])) for j in c] for q, c in zip(queries, cands)]

    # each side's warm-up call sets how many calls make a round of about a second: single calls of a few
    # hundredths of a second put two idle runs' ratios 23 % apart
    number = {"flag": C.calls_per_round(theirs), "m3ref": C.calls_per_round(ours)}
    times = C.compare_times({"flag": theirs, "m3ref": ours}, repeat=s["repeat"], warmup=0, number=number)
    n = s["n_queries"] * s["k"]
    diff = max(float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b)).max())
               for a, b in zip(out["m3ref"], out["flag"]))
    return {
        "multivector_rerank_docs_per_s": n / times["median"]["m3ref"],
        "multivector_rerank_flag_docs_per_s": n / times["median"]["flag"],
        **C.spread("multivector_rerank_vs_flagembedding", C.ratios(times, "flag", "m3ref")),
        "multivector_rerank_vs_flagembedding_cpu": C.ratio(times, "flag", "m3ref", "cpu"),
        "multivector_max_abs_diff": diff,
        "multivector_dim": float(s["dim"]),
    }


if __name__ == "__main__":
    import json
    import sys
    print(json.dumps(run(sys.argv[1] if len(sys.argv) > 1 else "quick"), indent=1))
