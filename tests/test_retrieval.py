"""m3ref.retrieval against brute force: every search equals its formula computed pair by pair."""
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from m3ref.errors import M3Error
from m3ref.retrieval import (MULTIVEC_WEIGHTS, Encoded, Index, mine_hard_negatives, rerank, search_all,
                             search_bm25, search_dense, search_dense_sparse, search_multivec, search_sparse)
from m3ref.scores import lexical_match

D, V = 8, 50  # embedding size, vocabulary of the random lexical weights


def random_side(rng, n, prefix, max_len=6):
    """n random texts encoded: unit dense vectors, sparse dicts, ColBERT vectors of varied lengths."""
    dense = rng.normal(size=(n, D)).astype(np.float32)
    dense /= np.linalg.norm(dense, axis=1, keepdims=True)
    sparse = [{int(t): float(rng.random()) for t in rng.choice(V, rng.integers(0, 6), replace=False)}
              for _ in range(n)]
    colbert = []
    for _ in range(n):
        c = rng.normal(size=(rng.integers(1, max_len + 1), D)).astype(np.float32)
        colbert.append(c / np.linalg.norm(c, axis=1, keepdims=True))
    return Encoded([f"{prefix}{i}" for i in range(n)], dense, sparse, colbert)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return random_side(rng, 7, "q"), random_side(rng, 40, "p")


def dense_of(q, p, i, j):
    return float(q.dense[i] @ p.dense[j])


def mul_of(q, p, i, j):  # mean over query vectors of the max over real passage vectors
    return float((q.colbert[i] @ p.colbert[j].T).max(axis=1).mean())


def check_top(run_q, scores, k):
    """run_q holds the k best of `scores` {docid: score} with the same values."""
    best = sorted(scores.values(), reverse=True)[:k]
    assert sorted(run_q.values(), reverse=True) == pytest.approx(best, rel=1e-6, abs=1e-6)
    for doc, s in run_q.items():
        assert s == pytest.approx(scores[doc], rel=1e-6, abs=1e-6)


def test_dense_equals_brute_force(data):
    q, p = data
    run = search_dense(q, Index(p), k=5, batch_size=3)
    assert list(run) == q.ids
    for i, qid in enumerate(q.ids):
        assert len(run[qid]) == 5
        check_top(run[qid], {pid: dense_of(q, p, i, j) for j, pid in enumerate(p.ids)}, 5)


def test_faiss_flat_gives_the_same_run(data):
    pytest.importorskip("faiss")
    q, p = data
    exact, flat = search_dense(q, Index(p), k=5), search_dense(q, Index(p, use_faiss=True), k=5)
    for qid in q.ids:
        assert flat[qid] == pytest.approx(exact[qid], abs=1e-6)


def test_sparse_index_equals_lexical_match(data):
    q, p = data
    index = Index(p)
    lex = index.lexical_scores(q.sparse).numpy()  # (B, N)
    brute = np.array([[lexical_match(a, b) for b in p.sparse] for a in q.sparse])
    assert (brute > 0).sum() > 20  # the random data does share tokens
    np.testing.assert_allclose(lex, brute, rtol=1e-12, atol=0)
    run = search_sparse(q, index, k=10, batch_size=2)
    for i, qid in enumerate(q.ids):
        positive = {pid: brute[i, j] for j, pid in enumerate(p.ids) if brute[i, j] > 0}
        assert len(run[qid]) == min(10, len(positive))  # only passages sharing a token
        check_top(run[qid], positive, 10)


def test_query_token_outside_corpus_vocabulary(data):
    _, p = data
    q = Encoded(["a"], np.zeros((1, D), np.float32), [{V + 100: 1.0, 3: 2.0}])
    brute = [lexical_match(q.sparse[0], b) for b in p.sparse]
    np.testing.assert_allclose(Index(p).lexical_scores(q.sparse).numpy()[0], brute, rtol=1e-12)


def test_multivec_reranks_dense_top_k(data):
    q, p = data
    index = Index(p)
    dense = search_dense(q, index, k=12)
    run = search_multivec(q, index, k=12)
    for i, qid in enumerate(q.ids):
        assert set(run[qid]) == set(dense[qid])  # same candidates, new scores
        for pid, s in run[qid].items():
            assert s == pytest.approx(mul_of(q, p, i, p.ids.index(pid)), abs=1e-5)


def test_mul_scores_chunking_is_invisible(data):
    q, p = data
    index = Index(p)
    cand = list(range(len(p.ids)))[::-1]  # any order
    one = index.mul_scores(q.colbert[0], cand, budget=10_000).numpy()
    many = index.mul_scores(q.colbert[0], cand, budget=7).numpy()  # ~1-2 passages per chunk
    brute = [mul_of(q, p, 0, j) for j in cand]
    np.testing.assert_allclose(one, brute, atol=1e-5)
    np.testing.assert_allclose(many, brute, atol=1e-5)


def test_rerank_once_equals_each_search(data):
    # multi-vec and all share one re-ranking pass in evaluation; each run is what its own search gives
    q, p = data
    index = Index(p)
    w = (0.15, 0.5, 0.35)
    both = rerank(q, index, {"multivec": MULTIVEC_WEIGHTS, "all": w}, k=10, batch_size=4)
    assert both == {"multivec": search_multivec(q, index, k=10, batch_size=4),
                    "all": search_all(q, index, weights=w, k=10, batch_size=4)}


def test_all_equals_weighted_formula(data):
    q, p = data
    w = (0.15, 0.5, 0.35)
    index = Index(p)
    dense = search_dense(q, index, k=10)
    run = search_all(q, index, weights=w, k=10, batch_size=4)
    for i, qid in enumerate(q.ids):
        assert set(run[qid]) == set(dense[qid])
        for pid, s in run[qid].items():
            j = p.ids.index(pid)
            expected = (w[0] * dense_of(q, p, i, j) + w[1] * lexical_match(q.sparse[i], p.sparse[j])
                        + w[2] * mul_of(q, p, i, j))
            assert s == pytest.approx(expected, abs=1e-5)


def test_dense_sparse_union_and_formula(data):
    q, p = data
    w = (0.2, 0.8)
    index = Index(p)
    k = 4
    dense, sparse = search_dense(q, index, k=k), search_sparse(q, index, k=k)
    run = search_dense_sparse(q, index, weights=w, k=k)
    for i, qid in enumerate(q.ids):
        assert set(run[qid]) == set(dense[qid]) | set(sparse[qid])  # the union, nothing else
        for pid, s in run[qid].items():
            j = p.ids.index(pid)
            expected = w[0] * dense_of(q, p, i, j) + w[1] * lexical_match(q.sparse[i], p.sparse[j])
            assert s == pytest.approx(expected, abs=1e-6)  # both sides exact, even if found by one


def test_multivec_needs_colbert_vectors(data):
    q, p = data
    with pytest.raises(M3Error, match="ColBERT"):
        search_multivec(q, Index(Encoded(p.ids, p.dense, p.sparse)), k=3)


class WordTokenizer:
    """Stands in for the HF tokenizer: one id per lower-cased word."""
    def __init__(self):
        self.vocab = {}

    def __call__(self, texts, **kwargs):
        return {"input_ids": [[self.vocab.setdefault(w, len(self.vocab)) for w in t.lower().split()]
                              for t in texts]}


def test_bm25_matches_lucene_formula():
    docs = ["the cat sat", "the dog", "a cat and a cat", "nothing here at all"]
    queries = ["cat", "dog the", "zebra"]
    run = search_bm25(["q0", "q1", "q2"], queries, ["d0", "d1", "d2", "d3"], docs, WordTokenizer(),
                      k1=0.9, b=0.4)
    n, avgdl = 4, sum(len(d.split()) for d in docs) / 4
    tf = [dict((w, d.split().count(w)) for w in d.split()) for d in docs]

    def bm25(query, j):  # Lucene: idf = ln(1 + (N - df + .5)/(df + .5)), tf / (tf + k1 (1 - b + b dl/avgdl))
        score = 0.0
        for w in query.split():
            df = sum(w in t for t in tf)
            if w in tf[j]:
                norm = 0.9 * (1 - 0.4 + 0.4 * len(docs[j].split()) / avgdl)
                score += math.log(1 + (n - df + 0.5) / (df + 0.5)) * tf[j][w] / (tf[j][w] + norm)
        return score

    assert set(run["q0"]) == {"d0", "d2"} and set(run["q1"]) == {"d0", "d1"}
    assert run["q2"] == {}  # no shared term: nothing retrieved
    for qid, query in zip(["q0", "q1"], queries):
        for did, s in run[qid].items():
            assert s == pytest.approx(bm25(query, int(did[1])), rel=1e-5)


class FakeModel:
    """Dense encoder with fixed vectors: passage "p{i}" has cosine (1 - i/20) with every query."""
    calls = 0

    def encode(self, texts, batch_size, max_length, return_dense, return_sparse, return_colbert):
        vecs = []
        for t in texts:
            if t.startswith("p"):
                c = 1 - int(t[1:]) / 20
                vecs.append([c, math.sqrt(1 - c * c)])
            else:
                vecs.append([1.0, 0.0])
        return SimpleNamespace(dense=np.array(vecs, dtype=np.float32))


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_mine_hard_negatives(tmp_path):
    rows = [{"query": "q a", "pos": ["p3"], "neg": ["p9"], "pos_scores": [1.0], "neg_scores": [0.1], "prompt": "x"},
            {"query": "q b", "pos": ["p0", "p5"], "neg": []}]
    write_rows(tmp_path / "train.jsonl", rows)
    corpus = [f"p{i}" for i in range(12)]  # dense ranking for every query: p0, p1, ..., p11
    n = mine_hard_negatives(FakeModel(), tmp_path / "train.jsonl", tmp_path / "out.jsonl",
                            corpus=corpus, rank_range=(2, 7), n_neg=3, seed=1)
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert n == 2 and len(out) == 2
    assert out[0]["query"] == "q a" and out[0]["pos"] == ["p3"] and out[0]["prompt"] == "x"
    assert "neg_scores" not in out[0] and "pos_scores" not in out[0]  # no longer match the new negatives
    assert len(out[0]["neg"]) == 3 and set(out[0]["neg"]) <= {"p2", "p4", "p5", "p6"}  # ranks 2..6 - pos
    assert len(out[1]["neg"]) == 3 and set(out[1]["neg"]) <= {"p2", "p3", "p4", "p6"}
    again = tmp_path / "again.jsonl"
    mine_hard_negatives(FakeModel(), tmp_path / "train.jsonl", again, corpus=corpus, rank_range=(2, 7),
                        n_neg=3, seed=1)
    assert again.read_text() == (tmp_path / "out.jsonl").read_text()  # seeded


def test_mine_tops_up_and_default_corpus(tmp_path):
    write_rows(tmp_path / "train.jsonl", [{"query": "q", "pos": ["p1"], "neg": ["p2", "p3", "p4"]}])
    mine_hard_negatives(FakeModel(), tmp_path / "train.jsonl", tmp_path / "out.jsonl",
                        rank_range=(3, 10), n_neg=3)
    neg = json.loads((tmp_path / "out.jsonl").read_text())["neg"]
    # corpus = file texts p1..p4; ranks 3.. hold only p4; topped up with the rest, never p1
    assert "p4" in neg and sorted(neg) == ["p2", "p3", "p4"]


def test_mine_writes_nothing_on_error(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"query": "q", "pos": ["p1"]}\nnot json\n')
    out = tmp_path / "out.jsonl"
    with pytest.raises(M3Error, match="train.jsonl:2"):
        mine_hard_negatives(FakeModel(), tmp_path / "train.jsonl", out, corpus=["p1", "p2"])
    assert list(tmp_path.iterdir()) == [tmp_path / "train.jsonl"]

    class Broken(FakeModel):
        def encode(self, *a, **kw):
            raise RuntimeError("out of memory")

    write_rows(tmp_path / "train.jsonl", [{"query": "q", "pos": ["p1"]}])
    with pytest.raises(RuntimeError):
        mine_hard_negatives(Broken(), tmp_path / "train.jsonl", out, corpus=["p1", "p2"])
    assert not out.exists()


# --------------------------------------------------------------------------- the CLI, end to end

def write_miracl(root, lang, n_docs=10):
    """A MIRACL-layout set where the relevant passage of query i is the query text itself."""
    texts = [f"{w} river {i} mountain story" for i, w in enumerate(
        ["apple", "stone", "cloud", "music", "garden", "winter", "paper", "light", "silver", "forest"])]
    base = root / "miracl"
    for sub in (f"miracl-corpus-v1.0-{lang}", f"miracl-v1.0-{lang}/topics", f"miracl-v1.0-{lang}/qrels"):
        (base / sub).mkdir(parents=True)
    write_rows(base / f"miracl-corpus-v1.0-{lang}" / "docs-0.jsonl",
               [{"docid": f"{lang}{i}#0", "title": "", "text": t} for i, t in enumerate(texts[:n_docs])])
    (base / f"miracl-v1.0-{lang}/topics/topics.miracl-v1.0-{lang}-dev.tsv").write_text(
        "".join(f"q{i}\t{texts[i]}\n" for i in range(4)))
    (base / f"miracl-v1.0-{lang}/qrels/qrels.miracl-v1.0-{lang}-dev.tsv").write_text(
        "".join(f"q{i} Q0 {lang}{i}#0 1\nq{i} Q0 {lang}{i + 1}#0 0\n" for i in range(4)))


@pytest.mark.slow
def test_evaluate_cli_end_to_end(tiny_dir, tmp_path, capsys):
    from m3ref.evaluate import main
    write_miracl(tmp_path / "data", "es")
    write_miracl(tmp_path / "data", "zh")
    out = tmp_path / "scores.json"
    main(["--model", tiny_dir, "--data", str(tmp_path / "data"), "--benchmark", "miracl",
          "--langs", "all", "--batch-size", "4", "--json", str(out)])  # all = es, zh
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("miracl ndcg@10") and lines[1].split() == ["Method", "es", "zh", "Avg"]
    cells = {line[:13].strip(): [v.split("±") for v in line[13:].split()] for line in lines[2:]}
    rows = {k: [float(v) for v, _ in c] for k, c in cells.items()}
    half = {k: [float(h) for _, h in c] for k, c in cells.items()}
    assert list(rows) == ["BM25", "Dense", "Sparse", "Multi-vec", "Dense+Sparse", "All"]
    # the relevant passage is the query itself: cosine 1 and ColBERT 1 put it first, every time
    assert rows["Dense"] == [100.0] * 3 and rows["Multi-vec"] == [100.0] * 3 and half["Dense"] == [0.0] * 3
    result = json.loads(out.read_text())
    for method, name in [("sparse", "Sparse"), ("all", "All"), ("bm25", "BM25")]:
        s, ci = result["scores"][method], result["ci"][method]
        assert rows[name] == [round(100 * s[c]["ndcg@10"], 1) for c in ("es", "zh", "avg")]
        assert s["avg"]["recall@100"] == pytest.approx((s["es"]["recall@100"] + s["zh"]["recall@100"]) / 2)
        assert all(ci[c]["ndcg@10"][0] <= s[c]["ndcg@10"] <= ci[c]["ndcg@10"][1] for c in ("es", "zh", "avg"))
        per = result["per_query"][method]["es"]["ndcg@10"]
        assert s["es"]["ndcg@10"] == pytest.approx(sum(per.values()) / len(per))
    # paired comparison of two saved evaluations: the run against itself differs by 0 everywhere
    main(["--compare", str(out), str(out)])
    compared = capsys.readouterr().out.strip().splitlines()
    assert compared[0] == "miracl ndcg@10: A - B x100 [95% interval] p" and len(compared) == 1 + 6 * 2
    assert all("+0.0 [+0.0, +0.0]  p=1.000" in line for line in compared[1:])


@pytest.mark.parametrize("args, message", [
    (["--data", "/no/such/dir", "--langs", "es"], "error: no data directory at /no/such/dir"),
    (["--langs", "es,xx"], "error: unknown language 'xx' for miracl in "),
    (["--langs", "es", "--methods", "dense,colbert"], "error: unknown method 'colbert'"),
    (["--langs", "es", "--weights", "all=1,2"], "error: bad --weights 'all=1,2'"),
    (["--langs", "es"], "error: no checkpoint directory at /no/model"),
])
def test_evaluate_cli_user_errors(tmp_path, capsys, args, message):
    from m3ref.evaluate import main
    write_miracl(tmp_path, "es")
    base = ["--model", "/no/model", "--data", str(tmp_path), "--benchmark", "miracl"]
    with pytest.raises(SystemExit) as exc:
        main(base + args)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(message) and "\n" not in err  # one line, no traceback


def test_shared_corpus_is_encoded_once(tiny_model):  # MKQA: one corpus, every language
    from m3ref.evaluate import run_methods
    calls, encode = [], tiny_model.encode
    tiny_model.encode = lambda texts, **kw: calls.append(len(texts)) or encode(texts, **kw)
    corpus = {f"d{i}": {"title": "", "text": f"passage number {i}"} for i in range(5)}
    cache = {}
    first = run_methods(tiny_model, corpus, {"q": "number 3"}, ["dense", "all"], "mkqa", cache=cache)
    again = run_methods(tiny_model, corpus, {"q": "number 3"}, ["dense", "all"], "mkqa", cache=cache)
    assert calls == [5, 1, 1]  # corpus, queries, queries
    assert again == first
    run_methods(tiny_model, {"x": {"title": "", "text": "other"}}, {"q": "q"}, ["dense"], cache=cache)
    assert calls[3:] == [1, 1] and len(cache) == 1  # a new corpus replaces the old one
    run_methods(tiny_model, corpus, {"q": "q"}, ["dense"], "mkqa", max_passage_length=16, cache=cache)
    run_methods(tiny_model, corpus, {"q": "q"}, ["dense"], "mkqa", max_passage_length=16, mcls_stride=2, cache=cache)
    assert calls[5:] == [5, 1, 5, 1]  # the same passages read another way are encoded again


def test_lexical_matrix_places_every_weight_and_drops_ids_outside_the_vocabulary():
    from m3ref.retrieval import lexical_matrix
    m = lexical_matrix([{}, {3: 0.5, 9: 1.0}, {"1": 2.0, 0: 0.25}], vocab_size=5)  # 9 >= V; str ids as from JSON
    assert m.shape == (3, 5) and m.dtype == np.float64
    assert m.toarray().tolist() == [[0, 0, 0, 0, 0], [0, 0, 0, 0.5, 0], [0.25, 2.0, 0, 0, 0]]
    assert lexical_matrix([], 4).shape == (0, 4)
    assert lexical_matrix([{}, {3: 0.5, 9: 1.0}]).shape == (2, 10)  # no vocab_size: one past the largest id
    assert lexical_matrix([{}, {}]).shape == (2, 1) and lexical_matrix([]).shape == (0, 1)  # as an empty index
