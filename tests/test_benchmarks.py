"""The benchmarks (benchmarks/) at toy sizes: they run, return the documented keys as floats,
and their figures are sane. The real figures come from `benchmarks/run.py --quick`."""
import json
import math
import os
import shutil
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

pytest.importorskip("FlagEmbedding", reason="pip install -r requirements-test.txt")


pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]


def floats(result, keys):
    for k in keys:
        assert isinstance(result[k], float) and math.isfinite(result[k]), k


@pytest.fixture(scope="module")
def small_train_dir(tmp_path_factory):
    """Three length buckets of data_samples' fine-tuning files (a short one cut to 60 rows)."""
    import common as C
    out = tmp_path_factory.mktemp("train")
    with open(os.path.join(C.FINETUNE_DIR, "ft_len-0-500.jsonl"), encoding="utf-8") as f:
        (out / "ft_len-0-500.jsonl").write_text("".join(f.readlines()[:60]), encoding="utf-8")
    for name in ("long_len-1000-2000.jsonl", "long_len-2000-3000.jsonl"):
        shutil.copy(os.path.join(C.FINETUNE_DIR, name), out / name)
    return str(out)


def test_padding_grouped_batches_pad_less_than_random_ones(small_train_dir):
    import bench_padding
    r = bench_padding.run("quick", {"data": small_train_dir, "epochs": 1, "throughput_repeat": 1,
                                    "throughput_every": 5})
    keys = ["padding_share_grouped", "padding_share_random", "padding_share_sorted_grouped",
            "padding_share_sorted_random", "padding_share_grouped_sub_batch_unsorted"]
    floats(r, keys + ["encoder_calls_grouped", "encoder_calls_random", "batching_throughput_grouped_vs_random"])
    assert r["batching_tokens_per_s_grouped"] > 0 and r["batching_tokens_per_s_random"] > 0
    for k in keys:
        assert 0.0 <= r[k] <= 1.0, k
    # grouping alone (whole batches, one encoder call each) is the headline
    assert r["padding_share_grouped"] < r["padding_share_random"]
    assert r["padding_share_grouped"] == r["padding_share_grouped_whole_batch"]
    assert r["padding_share_sorted_grouped"] <= r["padding_share_grouped_sub_batch_unsorted"] <= r["padding_share_grouped"]
    assert r["padding_share_sorted_random"] < r["padding_share_random"]
    assert r["encoder_calls_grouped"] < r["encoder_calls_random"]


def test_padding_share_counts_pad_tokens_of_each_tensor():
    from bench_padding import _share
    assert _share([[[3, 1], [2, 2]]]) == pytest.approx(2 / 10)  # 3+1 padded to 3,3; 2+2 no padding
    assert _share([[[3, 1, 1]]], sub_batch_size=1) == 0.0
    assert _share([[[1, 3, 1, 3]]], sub_batch_size=2) == pytest.approx(4 / 12)  # [1,3] [1,3]
    assert _share([[[1, 3, 1, 3]]], sub_batch_size=2, sort=True) == 0.0  # [3,3] [1,1]
    from bench_padding import _calls
    assert _calls([[[1, 3, 1], [2] * 5]], 2) == 2 + 3


def test_sparse_retrieval_top10_is_exact():
    """m3ref's top-10 equals FlagEmbedding's per-pair loop, the scipy search and brute force."""
    import bench_sparse
    r = bench_sparse.run("quick", {"n_docs": 400, "n_queries": 5, "rounds": 1, "scipy_docs": 600,
                                   "scipy_queries": 6, "qps_docs": [2000], "qps_queries": 6})
    floats(r, ["sparse_retrieval_vs_flagembedding", "sparse_retrieval_vs_scipy", "sparse_retrieval_qps_2k",
               "sparse_m3ref_index_build_s"])
    assert r["sparse_top10_agreement"] == 1.0
    assert r["sparse_scipy_agreement"] == 1.0
    assert r["sparse_exact_topk_2k"] == 1.0
    assert r["sparse_retrieval_vs_flagembedding"] > 0 and r["sparse_retrieval_qps_2k"] > 0


def test_compare_times_records_the_mean_of_several_calls_per_round():
    import time

    import common as C
    calls = {"short": 0, "long": 0}

    def short():
        calls["short"] += 1
        time.sleep(0.002)

    def long():
        calls["long"] += 1
        time.sleep(0.006)

    t = C.compare_times({"short": short, "long": long}, repeat=3, warmup=1, number={"short": 4})
    assert calls == {"short": 1 + 3 * 4, "long": 1 + 3}          # warm-up once, then 4 calls per round
    assert len(t["all"]["short"]) == 3 and 0.002 <= t["median"]["short"] < t["median"]["long"]


def test_sparse_corpus_as_matrix_is_the_corpus_as_dicts():
    """The 1M-document corpus (drawn as arrays) is the same corpus as the dicts of smaller runs."""
    import numpy as np

    import bench_sparse
    from m3ref.retrieval import lexical_matrix
    docs = bench_sparse.synthetic_weights(300, 60, seed=1)
    a = lexical_matrix(docs, bench_sparse.VOCAB)
    b = bench_sparse.synthetic_matrix(300, 60, seed=1)
    assert (a != b).nnz == 0 and np.array_equal(a.indptr, b.indptr)


def test_same_topk_allows_ties_only_at_the_last_score():
    from bench_sparse import same_topk
    assert same_topk([(1, 0.9), (2, 0.5)], [(1, 0.9), (2, 0.5)])
    assert same_topk([(1, 0.9), (2, 0.5)], [(1, 0.9), (3, 0.5)])  # a tie at the 2nd (last) score
    assert not same_topk([(1, 0.9), (2, 0.5)], [(4, 0.9), (2, 0.5)])
    assert not same_topk([(1, 0.9), (2, 0.5)], [(1, 0.9), (2, 0.4)])
    assert not same_topk([(1, 0.9)], [(1, 0.9), (2, 0.5)])


def test_multivector_rerank_scores_equal_flagembedding():
    import bench_multivector
    r = bench_multivector.run("quick", {"n_docs": 60, "n_queries": 2, "k": 10, "dim": 16, "repeat": 1})
    floats(r, ["multivector_rerank_docs_per_s", "multivector_rerank_vs_flagembedding"])
    assert r["multivector_max_abs_diff"] < 1e-5 and r["multivector_rerank_docs_per_s"] > 0


def test_lexical_memory_flagembedding_needs_more_for_the_same_loss():
    import bench_lexical_memory
    vocab = 60_000
    r = bench_lexical_memory.run("quick", {"hidden": 16, "heads": 2, "vocab": vocab, "passage_len": 16,
                                           "query_max_len": 8, "m3ref_batches": [2, 4], "m3ref_check": 6,
                                           "rounds": 1})
    floats(r, ["lexical_train_memory_vs_flagembedding", "lexical_train_time_vs_flagembedding",
               "lexical_train_fit_error", "lexical_train_asymptotic_ratio"])
    assert r["lexical_train_loss_rel_diff"] < 1e-4  # same weights, same batch, same loss
    # FlagEmbedding holds the passages' (texts, L, V) zeros and their scattered copy at once: 8 bytes x V
    # per padded passage token; the queries' (8 tokens per 2 x 16 passage tokens) come and go before
    assert r["lexical_train_bytes_per_token_flag"] >= 8 * vocab * 32 / 40
    assert r["lexical_train_fit_error_flag"] < 0.01  # a further point lies on FlagEmbedding's fitted line
    assert r["lexical_train_memory_vs_flagembedding"] > 1.0
    assert r["lexical_train_target_tokens"] == 48 * 8 * 16 + 48 * 8


def test_lexical_memory_fit_is_bilinear_in_depth_and_tokens():
    from bench_lexical_memory import fit, predict
    true = (5.0, 7.0, 11.0, 13.0)
    pts = {(d, t): predict(true, d, t) for d in (1, 2) for t in (100, 250)}
    assert fit(pts) == pytest.approx(true)
    assert predict(fit(pts), 24, 10_000) == pytest.approx(predict(true, 24, 10_000))


def test_max_batch_split_batch_fits_more_passages():
    import bench_max_batch
    r = bench_max_batch.run("quick", {"widths": [8, 16], "vocab": 8000, "lengths": [1024], "depths": [1, 2]})
    floats(r, ["max_batch_ratio_1k", "max_batch_ratio_1k_vs_plain", "max_batch_ratio_1k_split_layer_vs_ckpt",
               "max_batch_split_1k", "max_batch_ckpt_1k", "max_batch_plain_1k"])
    # a fifth passage lies on the line through the two measured batch sizes, every configuration, every width
    assert r["max_batch_affine_error_1k_w8"] < 0.01 and r["max_batch_affine_error_1k_w16"] < 0.01
    assert r["max_batch_affine_error_1k"] == max(r["max_batch_affine_error_1k_w8"], r["max_batch_affine_error_1k_w16"])
    assert r["max_batch_ratio_1k"] == r["max_batch_ratio_1k_w16"]  # the headline is the widest model
    per = {c: r[f"max_batch_bytes_per_passage_{c}_1k"] for c in ("plain", "ckpt", "split_layer", "split")}
    # a text keeps: its outputs (split) < each layer's input (split_layer <= ckpt) < every activation (plain)
    assert 0 < per["split"] < per["split_layer"] <= per["ckpt"] < per["plain"]
    assert r["max_batch_split_1k"] > r["max_batch_split_layer_1k"] >= r["max_batch_ckpt_1k"] > r["max_batch_plain_1k"] > 0
    assert r["max_batch_ratio_1k"] == pytest.approx(r["max_batch_split_1k"] / r["max_batch_ckpt_1k"])
    assert r["max_batch_ratio_1k_vs_plain"] == pytest.approx(r["max_batch_split_1k"] / r["max_batch_plain_1k"])


def test_max_batch_fit_is_affine_in_depth_and_batch():
    from bench_max_batch import fit
    pts = {(d, n): 10 + 2 * d + n * (3 + 5 * d) for d in (1, 2) for n in (1, 2)}
    a, b = fit(pts, 24)
    assert (a, b) == pytest.approx((10 + 48, 3 + 120))


def test_encode_outputs_match_flagembedding():
    import bench_encode
    r = bench_encode.run("quick", {"n_texts": 40, "max_tokens": 200, "cases": {"tiny": 2}, "rounds": 1,
                                   "round_seconds": {"tiny": 0.2}})
    floats(r, ["encode_vs_flagembedding_tiny", "encode_vs_flagembedding_tiny_same_batch",
               "encode_overhead_vs_bare_encoder_tiny", "encode_overhead_paired_rounds_tiny",
               "encode_flop_model_ratio_tiny"])
    # the encoder's share of the call is part of it: the whole call takes longer
    assert 1 < r["encode_overhead_vs_bare_encoder_tiny_min"] <= r["encode_overhead_vs_bare_encoder_tiny"]
    assert 0 < r["encode_tokenize_share_tiny"] < 1 and 0 < r["encode_heads_share_tiny"] < 1
    assert r["encode_dense_max_abs_diff_tiny"] < 1e-4 and r["encode_colbert_max_abs_diff_tiny"] < 1e-4
    assert r["encode_sparse_keys_equal_tiny"] == 1.0
    assert r["encode_same_batch_dense_max_abs_diff_tiny"] < 1e-4
    assert r["encode_n_texts_tiny"] == 20 and r["encode_flag_batch_size_tiny"] == 128
    assert r["encode_padded_tokens_m3ref_tiny"] >= r["encode_n_tokens_tiny"]
    assert r["encode_padded_tokens_flag_tiny"] > r["encode_padded_tokens_m3ref_tiny"]  # its probe, at least
    # a round times each contender over at least one call, as many as last about round_seconds
    assert all(r[f"encode_calls_per_round_{k}_tiny"] >= 1 for k in ("flag", "m3ref", "m3ref_same"))


def test_encode_length_mix_spans_the_range():
    import common as C
    texts = C.length_mix_texts(60, 10, 400)
    lengths = [len(x) for x in C.tokenizer()(texts)["input_ids"]]
    assert len(texts) == 60 and min(lengths) >= 8 and max(lengths) <= 402
    assert max(lengths) > 200 and min(lengths) < 30  # short and long texts
    assert texts == C.length_mix_texts(60, 10, 400)  # deterministic


def test_encode_sample_keeps_the_length_mix_and_the_batches():
    """Every k-th text of the length-sorted list keeps the length mix. With both batch sizes / k the
    batches are the same, k times thinner (the compute model gives the whole input's ratio); with
    FlagEmbedding's alone / k (what quick mode runs), m3ref pads more and the ratio is understated."""
    import bench_encode as E
    lengths = [10 + (i * 37) % 1990 for i in range(512)]
    texts = [str(n) for n in lengths]
    sub_t, sub_l = E.sample(texts, lengths, 8)
    assert len(sub_t) == 64 and sorted(sub_l, reverse=True) == sorted(lengths, reverse=True)[::8]
    assert E.flag_batches([5, 3, 9], 2) == [(2, 9), (2, 9), (1, 3)]  # the probe first, then the batches
    assert E.flop_ratio(lengths, 384, 256, 32) == pytest.approx(E.flop_ratio(sub_l, 384, 32, 4), rel=0.05)
    assert E.flop_ratio(sub_l, 384, 32, 32) < E.flop_ratio(lengths, 384, 256, 32)


def test_run_compares_two_runs_and_checks_targets():
    import run
    assert run.met("encode_vs_flagembedding", 1.6) and not run.met("encode_vs_flagembedding", 1.4)
    assert run.met("padding_share_grouped", 0.04) and not run.met("padding_share_grouped", 0.2)
    this = {"a": 1.1, "a_min": 1.0, "a_max": 1.2, "b": 3.0}
    st = run.stability(this, {"a": 1.0, "b": 1.0})
    assert list(st) == ["a"] and st["a"]["rel_diff"] == pytest.approx(0.1)
    assert run.is_ratio("encode_vs_flagembedding") and run.is_ratio("encode_overhead_vs_bare_encoder_tiny")
    assert not run.is_ratio("sparse_retrieval_qps_100k")


def test_merge_into_replaces_only_the_rerun_benchmarks(tmp_path):
    """A re-run pair of one benchmark replaces its figures in both stored runs, keeps the others,
    recomputes the differences and records why."""
    import run

    def write(name, figures, meta):
        (tmp_path / f"{name}.json").write_text(json.dumps(figures))
        (tmp_path / f"{name}.meta.json").write_text(json.dumps(meta))

    part = lambda n, x: {p: {n: x} for p in ("seconds", "sizes", "threads", "loadavg")}  # noqa: E731
    stored = {"x_vs_y": 2.0, "x_vs_y_min": 1.9, "x_vs_y_max": 2.1, "encode_vs_flagembedding": 1.0,
              "encode_vs_flagembedding_min": 0.9, "encode_vs_flagembedding_max": 1.1}
    write("B", stored, {**part("sparse", 1), "details": {}, "started": "t1",
                        "previous_run": {"figures": {**stored, "x_vs_y": 2.1, "encode_vs_flagembedding": 1.5}}})
    new = {"encode_vs_flagembedding": 1.6, "encode_vs_flagembedding_min": 1.5, "encode_vs_flagembedding_max": 1.7}
    write("D", new, {**part("encode", 9), "details": {"d": 1}, "started": "t4", "machine": {},
                     "previous_run": {"started": "t3", "figures": {**new, "encode_vs_flagembedding": 1.7}}})
    assert run.merge_into(str(tmp_path / "B.json"), str(tmp_path / "D.json"), "because") == ["encode"]
    figures = json.loads((tmp_path / "B.json").read_text())
    meta = json.loads((tmp_path / "B.meta.json").read_text())
    assert figures["encode_vs_flagembedding"] == 1.6 and figures["x_vs_y"] == 2.0
    assert meta["previous_run"]["figures"]["encode_vs_flagembedding"] == 1.7
    assert meta["previous_run"]["figures"]["x_vs_y"] == 2.1
    assert meta["stability"]["encode_vs_flagembedding"]["rel_diff"] == pytest.approx(abs(1.6 / 1.7 - 1))
    assert meta["seconds"] == {"sparse": 1, "encode": 9} and meta["details"] == {"d": 1}
    assert meta["targets"]["encode_vs_flagembedding"]["met"]
    assert meta["reruns"] == [{"why": "because", "benchmarks": ["encode"], "started": ["t3", "t4"], "machine": {}}]
