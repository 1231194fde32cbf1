"""m3ref.metrics: hand-computed values (trec_eval conventions: linear gains, log2(rank+1))."""
import math

import pytest

from m3ref.errors import M3Error
from m3ref.metrics import score_run

RUN = {"q1": {"d2": 0.9, "d1": 0.8, "d3": 0.7, "d4": 0.6}}  # ranking d2, d1, d3, d4


def test_ndcg_binary():
    qrels = {"q1": {"d1": 1, "d3": 1}}
    # DCG@3 = 0/log2(2) + 1/log2(3) + 1/log2(4); IDCG@3 = 1/log2(2) + 1/log2(3)
    expected = (1 / math.log2(3) + 1 / math.log2(4)) / (1 + 1 / math.log2(3))  # 0.6934
    got = score_run(RUN, qrels, ["ndcg@3", "ndcg@1"])
    assert got["ndcg@3"] == pytest.approx(expected, abs=1e-9)
    assert got["ndcg@1"] == 0.0  # d2 is not relevant


def test_recall_and_precision_at_k():
    qrels = {"q1": {"d1": 1, "d4": 1, "d9": 1}}  # d9 is never retrieved
    got = score_run(RUN, qrels, ["recall@2", "recall@4", "recall@100", "p@2"])
    assert got["recall@2"] == pytest.approx(1 / 3)  # only d1 in the top 2
    assert got["recall@4"] == pytest.approx(2 / 3)  # d1, d4
    assert got["recall@100"] == pytest.approx(2 / 3)
    assert got["p@2"] == pytest.approx(1 / 2)


def test_success_is_any_hit_in_top_k():  # MKQA's QA-style Recall@k
    qrels = {"q1": {"d1": 1, "d4": 1, "d9": 1}, "q2": {"d7": 1}}
    got = score_run(RUN, qrels, ["success@1", "success@2", "recall@2"])
    assert got["success@1"] == 0.0  # d2 first, not relevant
    assert got["success@2"] == 0.5  # q1: d1 at rank 2 -> 1; q2 absent -> 0
    assert got["recall@2"] == pytest.approx(1 / 6)  # (1/3 + 0) / 2


def test_graded_relevance_uses_linear_gain():
    run = {"q1": {"b": 2.0, "a": 1.0}}  # ranking b, a
    qrels = {"q1": {"a": 2, "b": 1, "c": 0}}  # grade 0 is judged non-relevant
    # DCG = 1/log2(2) + 2/log2(3); IDCG = 2/log2(2) + 1/log2(3)   (gain = grade, not 2^g - 1)
    expected = (1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3))  # 0.8597
    assert score_run(run, qrels, ["ndcg@10"])["ndcg@10"] == pytest.approx(expected, abs=1e-9)
    assert score_run(run, qrels, ["recall@1"])["recall@1"] == pytest.approx(1 / 2)


def test_missing_query_counts_as_zero():  # trec_eval -c
    qrels = {"q1": {"d2": 1}, "q2": {"x": 1}}
    run = {"q1": {"d2": 1.0}, "q3": {"x": 1.0}}  # q2 absent; q3 has no qrels and is ignored
    got = score_run(run, qrels, ["ndcg@10", "recall@100", "mrr"])
    assert got == {"ndcg@10": 0.5, "recall@100": 0.5, "mrr": 0.5}  # (1 + 0) / 2


def test_ties_broken_by_docid_descending():
    qrels = {"q1": {"a": 1}}
    run = {"q1": {"a": 1.0, "b": 1.0, "c": 1.0}}  # trec_eval order: c, b, a
    got = score_run(run, qrels, ["mrr", "ndcg@1", "ndcg@3", "mrr@2", "mrr@3"])
    assert got["mrr"] == pytest.approx(1 / 3)
    assert got["ndcg@1"] == 0.0
    assert got["ndcg@3"] == pytest.approx(1 / math.log2(4))  # IDCG = 1
    assert got["mrr@2"] == 0.0 and got["mrr@3"] == pytest.approx(1 / 3)


def test_map_and_integer_ids():
    run = {1: {10: 3.0, 11: 2.0, 12: 1.0}}  # ids need not be strings
    qrels = {1: {10: 1, 12: 1}}
    # AP = (P@1 + P@3) / 2 = (1 + 2/3) / 2
    assert score_run(run, qrels, ["map"])["map"] == pytest.approx(5 / 6)


def test_unknown_metric_is_a_user_error():
    with pytest.raises(M3Error, match="unknown metric"):
        score_run(RUN, {"q1": {"d1": 1}}, ["f1"])


def test_per_query_values_and_their_mean():
    from m3ref.metrics import per_query
    qrels = {"q1": {"d1": 1}, "q2": {"d9": 1}}  # q2's document is never retrieved
    got = per_query(RUN, qrels, ["recall@2", "ndcg@10"])
    assert got["recall@2"] == {"q1": 1.0, "q2": 0.0}
    assert got["ndcg@10"]["q1"] == pytest.approx(1 / math.log2(3))  # d1 at rank 2
    assert score_run(RUN, qrels, ["recall@2"])["recall@2"] == 0.5  # a missing query counts as 0


def test_bootstrap_interval_of_the_mean():
    from m3ref.metrics import bootstrap_ci
    assert bootstrap_ci([0.7] * 20) == (pytest.approx(0.7), pytest.approx(0.7))  # no spread, no interval
    values = [0.0, 1.0] * 200  # mean 0.5, standard error 0.025: a 95% interval of about +-0.05
    lo, hi = bootstrap_ci(values)
    assert lo < 0.5 < hi and 0.08 < hi - lo < 0.12
    assert bootstrap_ci(values, seed=1) != (lo, hi) and bootstrap_ci(values) == (lo, hi)  # seeded
    # several languages: the interval of the average of their means
    lo2, hi2 = bootstrap_ci([[1.0] * 30, [0.0, 1.0] * 100])
    assert lo2 < 0.75 < hi2 and hi2 - lo2 < hi - lo


def test_paired_test_tells_a_real_difference_from_noise():
    from m3ref.metrics import paired_test
    a = {f"q{i}": 0.5 + 0.1 * (i % 3 == 0) for i in range(300)}  # A wins by 0.1 on a third of the queries
    b = {f"q{i}": 0.5 for i in range(300)}
    t = paired_test(a, b)
    assert t["diff"] == pytest.approx(0.1 / 3, rel=1e-9) and t["p"] < 0.001 and t["ci"][0] > 0
    same = paired_test(b, dict(b))
    assert same["diff"] == 0 and same["p"] == 1.0
    noise = paired_test({q: v + (0.01 if i % 2 else -0.01) for i, (q, v) in enumerate(b.items())}, b)
    assert noise["p"] > 0.5 and noise["ci"][0] < 0 < noise["ci"][1]
    with pytest.raises(M3Error, match="different queries"):
        paired_test(a, {"q0": 1.0})


def test_chance_levels_by_hand():
    from m3ref.metrics import chance
    qrels = {"q": {"d1": 1, "d9": 0}}  # one relevant document among 4
    # a random ranking puts d1 at each rank with probability 1/4: E[DCG@2] = (1 + 1/log2(3)) / 4, IDCG@2 = 1
    assert chance(qrels, 4, "ndcg@2") == pytest.approx((1 + 1 / math.log2(3)) / 4)
    assert chance(qrels, 4, "recall@2") == 0.5 and chance(qrels, 4, "recall@10") == 1.0
    assert chance({"q": {"a": 1, "b": 1}}, 4, "success@2") == pytest.approx(1 - (2 / 4) * (1 / 3))  # 5/6
    assert chance({"q": {"a": 1, "b": 1}}, 4, "success@3") == 1.0
    with pytest.raises(M3Error, match="no formula"):
        chance(qrels, 4, "map")
