"""Retrieval with M3's three scores and their hybrids (paper Sec. 3.2 and Sec. 4).

Every `search_*` function returns a run {qid: {docid: score}} that `m3ref.metrics.evaluate`
consumes. The corpus is encoded once (`Encoded`) and indexed once (`Index`):

- dense:        exact top-k of s_dense = <e_q, e_p> by matrix product (faiss Flat if asked).
- sparse:       an inverted index (a CSR matrix token id -> postings); s_lex = sum over shared
                token ids of w_q * w_p, the same number as `scores.lexical_match`.
- multi-vector: the dense top-k (200 in the paper) re-ranked by s_mul.
- dense+sparse: union of the dense and sparse top-1000, re-scored w_d*s_dense + w_s*s_lex.
- all:          the dense top-k re-ranked by w_d*s_dense + w_s*s_lex + w_m*s_mul.
- bm25:         the BM25 baseline row, with `bm25s` over the model's own subword tokens.

`mine_hard_negatives` re-uses dense search for ANCE-style negatives (paper Sec. 3.4 / A.1).
Book: the experiments chapter.
"""
from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

import numpy as np
import scipy.sparse
import torch

from .data import read_train_file, write_jsonl_atomic
from .errors import M3Error
from .scores import s_dense, s_inter, s_mul_packed

# Hybrid weights of the paper (Sec. 4.1-4.2) and the official eval scripts (notes Sec. 4):
# "dense+sparse": (w_dense, w_lex); "all": (w_dense, w_lex, w_mul).
HYBRID_WEIGHTS = {
    "miracl": {"dense+sparse": (1.0, 0.3), "all": (1.0, 0.3, 1.0)},
    "mkqa": {"dense+sparse": (1.0, 0.3), "all": (1.0, 0.3, 1.0)},
    "mldr": {"dense+sparse": (0.2, 0.8), "all": (0.15, 0.5, 0.35)},
}
RERANK_K = 200  # multi-vector / all re-rank the dense top-200 (paper footnotes; MLDR script)
CANDIDATES_K = 1000  # dense+sparse: union of each method's top-1000 (official scripts)


@dataclass
class Encoded:
    """Texts encoded once with all three heads (the output of `M3Model.encode`, plus ids)."""
    ids: list[str]
    dense: np.ndarray  # (N, d) float32, L2-normalised
    sparse: list[dict[int, float]]  # N dicts token id -> weight
    colbert: list[np.ndarray] | None = None  # N arrays (n_i, d)

    @classmethod
    def from_model(cls, model, ids, texts, max_length=512, batch_size=32, mcls_stride=None,
                   colbert=True) -> "Encoded":
        """Run `model.encode` over `texts` (all heads; ColBERT only if `colbert`)."""
        out = model.encode(list(texts), batch_size=batch_size, max_length=max_length,
                           return_dense=True, return_sparse=True, return_colbert=colbert,
                           mcls_stride=mcls_stride)
        return cls([str(i) for i in ids], out.dense, out.sparse, out.colbert if colbert else None)


def lexical_matrix(weights: list[dict[int, float]], vocab_size: int | None = None) -> scipy.sparse.csr_matrix:
    """N dicts {token id: w} -> (N, V) CSR matrix; float64, so sums match `lexical_match`.
    V = `vocab_size` (ids beyond it dropped), or one past the largest id. (numpy reads the ids and
    weights straight from the chained dicts, str ids too, as int() and float() would, without a
    Python call per entry.)"""
    counts = np.fromiter(map(len, weights), dtype=np.int64, count=len(weights))  # (N,)
    n = int(counts.sum())
    cols = np.fromiter(itertools.chain.from_iterable(weights), dtype=np.int64, count=n)  # (n,)
    vals = np.fromiter(itertools.chain.from_iterable(w.values() for w in weights), dtype=np.float64, count=n)  # (n,)
    rows = np.repeat(np.arange(len(weights)), counts)
    if vocab_size is None:
        vocab_size = 1 + int(cols.max()) if n else 1
    keep = cols < vocab_size  # a query id the corpus never uses cannot match
    return scipy.sparse.csr_matrix((vals[keep], (rows[keep], cols[keep])), shape=(len(weights), vocab_size))


class Index:
    """The corpus side: dense matrix, lexical inverted index, ColBERT vectors.

    Queries are scored in batches against the whole corpus, so a batch of B queries holds
    (B, N) scores: lower `batch_size` in the `search_*` functions for very large corpora.
    """

    def __init__(self, corpus: Encoded, use_faiss: bool = False):
        self.ids = corpus.ids
        self.dense = torch.as_tensor(np.asarray(corpus.dense, dtype=np.float32))  # (N, d)
        lexical = lexical_matrix(corpus.sparse)  # (N, V), V = one past the largest token id
        self.vocab_size = lexical.shape[1]
        # Inverted index: row t of the (V, N) CSR matrix is the postings list of token t.
        self.postings = lexical.T.tocsr()  # (V, N)
        # ColBERT vectors of all passages back to back (T, d), passage i at offsets[i]:offsets[i]+lengths[i]
        vecs = [torch.as_tensor(np.asarray(c, dtype=np.float32)) for c in corpus.colbert or []]
        self.colbert_lengths = torch.tensor([len(v) for v in vecs], dtype=torch.long)  # (N,)
        self.colbert_offsets = torch.cumsum(self.colbert_lengths, 0) - self.colbert_lengths  # (N,)
        self.colbert = torch.cat(vecs) if vecs else None
        self._gathered = None  # (at most `budget`, d): the re-ranked candidates' vectors (`mul_scores`)
        self.faiss = None
        if use_faiss:
            import faiss  # optional; exact inner-product search like the official scripts
            self.faiss = faiss.IndexFlatIP(self.dense.shape[1])
            self.faiss.add(self.dense.numpy())

    def __len__(self):
        return len(self.ids)

    def dense_scores(self, q_dense) -> torch.Tensor:
        """s_dense of each query against the whole corpus: (B, d) -> (B, N)."""
        return s_dense(torch.as_tensor(np.asarray(q_dense, dtype=np.float32)), self.dense)

    def lexical_scores(self, q_sparse: list[dict]) -> torch.Tensor:
        """s_lex against the whole corpus: each query token adds w_q * postings[t]. (B, N)"""
        q = lexical_matrix(q_sparse, self.vocab_size)  # (B, V)
        return torch.from_numpy((q @ self.postings).toarray())  # (B, N) float64

    def mul_scores(self, q_vecs: np.ndarray, cand: list[int], budget: int = 1 << 18) -> torch.Tensor:
        """s_mul of one query against passages `cand` (`scores.s_mul_packed`), in chunks of at
        most `budget` passage vectors (one passage longer than that is a chunk alone). -> (len(cand),)

        Each chunk's vectors are copied into one buffer kept for the next query: a new block of this
        size would be fresh memory from the system, whose first touch costs more than the copy.
        """
        if self.colbert is None:
            raise M3Error("the corpus was encoded without ColBERT vectors (colbert=False)")
        q = torch.as_tensor(np.asarray(q_vecs, dtype=np.float32))  # (Lq, d)
        cand = torch.as_tensor(cand, dtype=torch.long)  # (k,)
        lengths, starts = self.colbert_lengths[cand], self.colbert_offsets[cand]  # (k,), (k,)
        out = torch.zeros(len(cand), dtype=torch.float64)
        ends = torch.cumsum(lengths, 0)  # (k,) end of each candidate's vectors in the gathered block
        lo = 0
        while lo < len(cand):
            base = int(ends[lo - 1]) if lo else 0
            hi = max(lo + 1, int(torch.searchsorted(ends, base + budget, right=True)))
            n = lengths[lo:hi]
            # row of every vector of candidates lo..hi-1 in self.colbert
            rows = torch.repeat_interleave(starts[lo:hi] - (ends[lo:hi] - n - base), n) + torch.arange(int(n.sum()))
            if self._gathered is None or len(self._gathered) < len(rows):
                self._gathered = torch.empty(len(rows), self.colbert.shape[1], dtype=self.colbert.dtype)
            vecs = torch.index_select(self.colbert, 0, rows, out=self._gathered[:len(rows)])  # (T, d)
            out[lo:hi] = s_mul_packed(q, vecs, n).double()
            lo = hi
        return out


def _topk(scores: torch.Tensor, k: int) -> list[list[tuple[int, float]]]:
    """Per row, the k best (column, score) pairs, best first. (B, N) -> B lists of min(k, N)"""
    vals, idx = scores.topk(min(k, scores.shape[1]), dim=1)  # (B, k), (B, k)
    return [list(zip(i, v)) for i, v in zip(idx.tolist(), vals.tolist())]


def _batches(n: int, batch_size: int):
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def search_dense(queries: Encoded, index: Index, k: int = CANDIDATES_K, batch_size: int = 64):
    """Dense retrieval: exact top-k by s_dense = <e_q, e_p> (paper Sec. 3.2, Eq. 1)."""
    run = {}
    if index.faiss is not None:
        vals, idx = index.faiss.search(np.asarray(queries.dense, dtype=np.float32), min(k, len(index)))
        for qid, row, val in zip(queries.ids, idx, vals):
            run[qid] = {index.ids[j]: float(v) for j, v in zip(row, val) if j >= 0}
        return run
    for b in _batches(len(queries.ids), batch_size):
        scores = index.dense_scores(queries.dense[b])  # (B, N)
        for qid, top in zip(queries.ids[b], _topk(scores, k)):
            run[qid] = {index.ids[j]: s for j, s in top}
    return run


def search_sparse(queries: Encoded, index: Index, k: int = CANDIDATES_K, batch_size: int = 64):
    """Lexical retrieval: top-k by s_lex over the inverted index (paper Sec. 3.2, Eq. 3).

    Like a Lucene impact index, only passages that share a token with the query are returned.
    (The official script quantises weights to ceil(100 w) for Lucene; we keep exact floats.)
    """
    run = {}
    for b in _batches(len(queries.ids), batch_size):
        scores = index.lexical_scores(queries.sparse[b])  # (B, N)
        for qid, top in zip(queries.ids[b], _topk(scores, k)):
            run[qid] = {index.ids[j]: s for j, s in top if s > 0}
    return run


MULTIVEC_WEIGHTS = (0.0, 0.0, 1.0)  # multi-vector retrieval is re-ranking by s_mul alone


def search_multivec(queries: Encoded, index: Index, k: int = RERANK_K, batch_size: int = 64):
    """Multi-vector retrieval: re-rank the dense top-k by s_mul (paper Sec. 3.2, Eq. 4)."""
    return rerank(queries, index, {"multivec": MULTIVEC_WEIGHTS}, k, batch_size)["multivec"]


def search_all(queries: Encoded, index: Index, weights=(1.0, 0.3, 1.0), k: int = RERANK_K,
               batch_size: int = 64):
    """"All": re-rank the dense top-k by w_d*s_dense + w_s*s_lex + w_m*s_mul (s_rank, Eq. 5).

    The official `compute_score` also divides by w_d + w_s + w_m; that does not change the
    ranking, so we leave it out.
    """
    return rerank(queries, index, {"all": weights}, k, batch_size)["all"]


def rerank(queries: Encoded, index: Index, weightings: dict, k: int = RERANK_K, batch_size: int = 64) -> dict:
    """Re-rank every query's dense top-k by s_rank = w_d*s_dense + w_s*s_lex + w_m*s_mul (Eq. 5),
    once for each {name: (w_d, w_s, w_m)} of `weightings` -> {name: run}. The candidates and their
    three scores are computed once for all the weightings (multi-vec and all share them)."""
    lexical = any(w[1] for w in weightings.values())
    multivec = any(w[2] for w in weightings.values())
    runs = {name: {} for name in weightings}
    for b in _batches(len(queries.ids), batch_size):
        dense = index.dense_scores(queries.dense[b]).double()  # (B, N)
        lex = index.lexical_scores(queries.sparse[b]) if lexical else torch.zeros_like(dense)  # (B, N)
        for i, (qid, top) in enumerate(zip(queries.ids[b], _topk(dense, k))):
            cand = [j for j, _ in top]
            mul = index.mul_scores(queries.colbert[b][i], cand) if multivec else 0.0  # (k,)
            for name, weights in weightings.items():
                score = s_inter(dense[i, cand], lex[i, cand], mul, weights)  # (k,)
                runs[name][qid] = {index.ids[j]: float(s) for j, s in zip(cand, score)}
    return runs


def search_dense_sparse(queries: Encoded, index: Index, weights=(1.0, 0.3), k: int = CANDIDATES_K,
                        batch_size: int = 64):
    """"Dense+Sparse": union of the dense and sparse top-k, scored w_d*s_dense + w_s*s_lex.

    Both scores are computed exactly for every candidate; the official script scored a
    candidate found by only one side with 0 for the other side (notes Sec. 4).
    """
    w_d, w_s = weights
    run = {}
    for b in _batches(len(queries.ids), batch_size):
        dense = index.dense_scores(queries.dense[b]).double()  # (B, N)
        lex = index.lexical_scores(queries.sparse[b])  # (B, N)
        hybrid = (w_d * dense + w_s * lex).numpy()  # (B, N)
        for row, qid, d_top, l_top in zip(hybrid, queries.ids[b], _topk(dense, k), _topk(lex, k)):
            cand = {j for j, _ in d_top} | {j for j, s in l_top if s > 0}
            run[qid] = {index.ids[j]: float(row[j]) for j in cand}
    return run


def search_bm25(qids, query_texts, pids, passage_texts, tokenizer, k: int = CANDIDATES_K,
                k1: float = 0.9, b: float = 0.4):
    """BM25 baseline with `bm25s`, on the subword tokens of the model's own tokenizer.

    The paper's BM25 rows come from Lucene (Pyserini, k1=0.9, b=0.4) with language-specific
    analysers: words, lower-casing, stemming and stop words. Here a "term" is an XLM-R
    SentencePiece id: the same for every script (no word segmenter needed for zh/ja/th), but
    no stemming, no stop-word list, case-sensitive, and rare words split into pieces, so the
    numbers are close to, not equal to, the paper's.
    """
    import bm25s

    def tokens(texts):  # token ids as strings: bm25s treats each one as a term
        ids = tokenizer(list(texts), add_special_tokens=False, truncation=False)["input_ids"]
        return [[str(t) for t in row] for row in ids]

    pids = [str(p) for p in pids]
    retriever = bm25s.BM25(k1=k1, b=b, method="lucene")
    retriever.index(tokens(passage_texts), show_progress=False)
    idx, vals = retriever.retrieve(tokens(query_texts), k=min(k, len(pids)), show_progress=False)
    return {str(q): {pids[j]: float(v) for j, v in zip(row, val) if v > 0}
            for q, row, val in zip(qids, idx, vals)}


def mine_hard_negatives(model, train_jsonl, out_jsonl, corpus=None, rank_range=(2, 200), n_neg=7,
                        seed=0, batch_size=32, max_query_length=512, max_passage_length=512):
    """ANCE-style hard negatives (paper Sec. 3.4 / A.1: 7 negatives mined with the model).

    For each row {"query", "pos", "neg", ...} of `train_jsonl`, retrieve the dense ranking of
    `corpus` (a list of texts; default: every pos and neg text of the file), keep ranks
    rank_range[0] .. rank_range[1]-1 (0-based, like the official `--range_for_sampling 2-200`), drop
    positives and the query itself, sample `n_neg` of them (topped up with random corpus
    passages when too few), and write the rows with the new "neg" to `out_jsonl` in the
    official fine-tuning format. Teacher scores ("pos_scores", "neg_scores") no longer match
    the new negatives and are dropped. The file is written
    atomically: on any error nothing is left at `out_jsonl`. Returns the number of rows.
    """
    lo, hi = rank_range
    rows = read_train_file(train_jsonl, required=("query", "pos"))  # file and line on a bad row
    if corpus is None:  # unique texts in order of first appearance
        corpus = list(dict.fromkeys(t for r in rows for t in r["pos"] + r.get("neg", [])))
    corpus = list(corpus)
    if not corpus:
        raise M3Error(f"{train_jsonl}: the corpus to mine from is empty")

    def encode(texts, max_length):
        return model.encode(texts, batch_size=batch_size, max_length=max_length, return_dense=True,
                            return_sparse=False, return_colbert=False).dense

    p = torch.as_tensor(np.asarray(encode(corpus, max_passage_length), dtype=np.float32))  # (N, d)
    q = torch.as_tensor(np.asarray(encode([r["query"] for r in rows], max_query_length),
                                   dtype=np.float32))  # (B, d)
    ranked = _topk(s_dense(q, p), hi)  # B lists of (passage, score), best first
    rng = random.Random(seed)
    out = []
    for row, top in zip(rows, ranked):
        banned = set(row["pos"]) | {row["query"]}
        cand = [t for t in dict.fromkeys(corpus[j] for j, _ in top[lo:hi]) if t not in banned]
        neg = rng.sample(cand, n_neg) if len(cand) > n_neg else cand
        if len(neg) < n_neg:  # too few in range: random passages, as the official miner does
            pool = [t for t in dict.fromkeys(corpus) if t not in banned and t not in neg]
            neg += rng.sample(pool, min(n_neg - len(neg), len(pool)))
        out.append({**{k: v for k, v in row.items() if k not in ("pos_scores", "neg_scores")}, "neg": neg})
    write_jsonl_atomic(out_jsonl, out)
    return len(out)
