"""The benchmarks (benchmarks/) at toy sizes: they run, return the documented keys as floats,
and their figures are sane. The real figures come from `benchmarks/run.py --quick`."""
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
    r = bench_padding.run("quick", {"data": small_train_dir, "epochs": 1})
    keys = ["padding_share_grouped", "padding_share_random", "padding_share_grouped_whole_batch",
            "padding_share_random_whole_batch", "padding_share_grouped_sub_batch_unsorted"]
    floats(r, keys + ["encoder_calls_grouped", "encoder_calls_random", "batching_throughput_grouped_vs_random"])
    assert r["batching_tokens_per_s_grouped"] > 0 and r["batching_tokens_per_s_random"] > 0
    for k in keys:
        assert 0.0 <= r[k] <= 1.0, k
    assert r["padding_share_grouped_whole_batch"] < r["padding_share_random_whole_batch"]
    assert r["padding_share_grouped"] <= r["padding_share_grouped_sub_batch_unsorted"] <= r["padding_share_grouped_whole_batch"]
    assert r["encoder_calls_grouped"] < r["encoder_calls_random"]


def test_padding_share_counts_pad_tokens_of_each_tensor():
    from bench_padding import _share
    assert _share([[[3, 1], [2, 2]]]) == pytest.approx(2 / 10)  # 3+1 padded to 3,3; 2+2 no padding
    assert _share([[[3, 1, 1]]], sub_batch_size=1) == 0.0
    assert _share([[[1, 3, 1, 3]]], sub_batch_size=2) == pytest.approx(4 / 12)  # [1,3] [1,3]
    assert _share([[[1, 3, 1, 3]]], sub_batch_size=2, sort=True) == 0.0  # [3,3] [1,1]
    from bench_padding import _calls
    assert _calls([[[1, 3, 1], [2] * 5]], 2) == 2 + 3


def test_sparse_retrieval_agrees_with_the_per_pair_loop():
    import bench_sparse
    r = bench_sparse.run("quick", {"n_docs": 400, "n_queries": 5, "repeat": 1})
    floats(r, ["sparse_retrieval_vs_flagembedding", "sparse_top10_agreement", "sparse_m3ref_index_build_s"])
    assert r["sparse_top10_agreement"] == 1.0
    assert r["sparse_retrieval_vs_flagembedding"] > 0


def test_multivector_rerank_scores_equal_flagembedding():
    import bench_multivector
    r = bench_multivector.run("quick", {"n_docs": 60, "n_queries": 2, "k": 10, "dim": 16, "repeat": 1})
    floats(r, ["multivector_rerank_docs_per_s", "multivector_rerank_vs_flagembedding"])
    assert r["multivector_max_abs_diff"] < 1e-5 and r["multivector_rerank_docs_per_s"] > 0


def test_lexical_memory_flagembedding_needs_more_for_the_same_loss():
    import bench_lexical_memory
    r = bench_lexical_memory.run("quick", {"hidden": 16, "layers": 1, "heads": 2, "queries": 2, "group_size": 2,
                                           "query_max_len": 8, "passage_max_len": 16, "repeat": 1, "rss": False,
                                           "vocab": 60_000})
    floats(r, ["lexical_train_memory_vs_flagembedding", "lexical_train_time_vs_flagembedding"])
    assert r["lexical_train_loss_rel_diff"] < 1e-4  # same weights, same batch, same loss
    # FlagEmbedding holds at least the (B*G, L, V) fp32 tensor of the passages
    assert r["lexical_train_peak_bytes_flag"] >= 4 * 16 * 60_000 * 4
    assert r["lexical_train_memory_vs_flagembedding"] > 1.0


def test_max_batch_split_batch_fits_more_passages():
    import bench_max_batch
    r = bench_max_batch.run("quick", {"hidden": 16, "lengths": [1024], "depths": [1, 2],
                                      "configs": list(bench_max_batch.CONFIGS)})
    floats(r, ["max_batch_ratio_1k", "max_batch_ratio_layer_ckpt_1k", "max_batch_split_1k", "max_batch_plain_1k"])
    # a fifth passage lies on the line through the two measured batch sizes, for every configuration
    assert r["max_batch_affine_error_1k"] < 0.01
    per = {c: r[f"max_batch_bytes_per_passage_{c}_1k"] for c in ("plain", "ckpt", "split_layer", "split")}
    # a text keeps: its outputs (split) < each layer's input (split_layer <= ckpt) < every activation (plain)
    assert 0 < per["split"] < per["split_layer"] <= per["ckpt"] < per["plain"]
    assert r["max_batch_split_1k"] > r["max_batch_split_layer_1k"] > r["max_batch_plain_1k"] > 0
    assert r["max_batch_ckpt_1k"] > r["max_batch_plain_1k"]


def test_max_batch_fit_is_affine_in_depth_and_batch():
    from bench_max_batch import fit
    pts = {(d, n): 10 + 2 * d + n * (3 + 5 * d) for d in (1, 2) for n in (1, 2)}
    a, b = fit(pts, 24)
    assert (a, b) == pytest.approx((10 + 48, 3 + 120))


def test_encode_outputs_match_flagembedding():
    import bench_encode
    r = bench_encode.run("quick", {"hidden": 32, "layers": 1, "heads": 2, "n_queries": 6, "n_passages": 6,
                                   "long_tokens": [300], "batch_size": 4, "repeat": 1,
                                   "overhead_repeat": 2})
    floats(r, ["encode_vs_flagembedding", "encode_overhead_vs_bare_encoder", "encode_overhead_paired_rounds"])
    # the encoder's share of the call is part of it: the whole call takes longer
    assert 1 < r["encode_overhead_in_call_min"] <= r["encode_overhead_vs_bare_encoder"] <= r["encode_overhead_in_call_max"]
    assert 0 < r["encode_tokenize_share"] < 1 and 0 < r["encode_heads_share"] < 1
    assert r["encode_dense_max_abs_diff"] < 1e-4 and r["encode_colbert_max_abs_diff"] < 1e-4
    assert r["encode_sparse_keys_equal"] == 1.0
    assert r["encode_padded_tokens_m3ref"] >= r["encode_n_tokens"]
