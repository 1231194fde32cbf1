"""m3ref.batching: length buckets, the shared-seed sampler, split-batch == full batch (ch. 08)."""
import json
import math

import pytest
import torch

from m3ref.batching import (BucketSampler, auto_sub_batch_size, batch_size_for, bucket_bounds, enable_checkpointing,
                            length_bucket, make_buckets)
from m3ref.config import BATCH_SIZE_TABLES, M3Config
from m3ref.errors import M3Error


pytestmark = pytest.mark.usefixtures("one_thread")


TABLE9 = BATCH_SIZE_TABLES["table9"]  # paper Table 9 / legacy per-GPU fine-tuning sizes (G=8)


def test_bucket_names_and_batch_size_table():
    assert bucket_bounds("msmarco_len-0-500") == (0, 500)
    assert bucket_bounds("mldr_len-7000-inf") == (7000, math.inf)
    assert bucket_bounds("plain") is None
    assert [batch_size_for(lo, TABLE9) for lo in (0, 500, 700, 1000, 7000)] == [48, 32, 32, 20, 8]
    assert batch_size_for(3000, 6) == 6
    assert length_bucket(499) == 0 and length_bucket(500) == 500 and length_bucket(9000) == 7000
    assert auto_sub_batch_size(8192) == 1 and auto_sub_batch_size(128) == 32


def _epoch(sizes, batch_sizes, world, seed=3, drop_last=False):
    """One epoch of every rank's batches: [[Batch of rank 0, Batch of rank 1, ...] per step]."""
    samplers = [BucketSampler(sizes, batch_sizes, world, r, seed, drop_last) for r in range(world)]
    return [[next(s) for s in samplers] for _ in range(len(samplers[0]))]


def test_sampler_same_bucket_disjoint_ranks_full_coverage():
    sizes, bs, world = [10, 7, 3], [2, 1, 1], 2  # 10 % 4, 7 % 2, 3 % 2 leave incomplete batches
    steps = _epoch(sizes, bs, world)
    seen = {b: set() for b in range(len(sizes))}
    for ranks in steps:
        assert len({r.bucket for r in ranks}) == 1  # every rank draws from the same bucket
        b = ranks[0].bucket
        assert all(len(r.indices) == bs[b] for r in ranks)
        assert not set(ranks[0].indices) & set(ranks[1].indices)  # disjoint slices
        for r in ranks:
            seen[b] |= set(r.indices)
    assert all(seen[b] == set(range(n)) for b, n in enumerate(sizes))  # the whole epoch is used


def test_sampler_exactly_once_when_sizes_divide_and_drop_last():
    sizes, bs, world = [8, 6, 2], [2, 1, 1], 2
    used = [(r.bucket, i) for ranks in _epoch(sizes, bs, world) for r in ranks for i in r.indices]
    assert sorted(used) == sorted((b, i) for b, n in enumerate(sizes) for i in range(n))
    steps = _epoch([10, 7, 3], [2, 1, 1], 2, drop_last=True)  # the official rule: 2 + 3 + 1 batches
    assert len(steps) == 6 and all(len(r.indices) == [2, 1, 1][r.bucket] for s in steps for r in s)
    with pytest.raises(M3Error, match="no complete batch"):
        BucketSampler([3], [2], world_size=2, drop_last=True)


def test_sampler_state_resumes_exactly_across_epochs():
    a = BucketSampler([5, 4], [2, 1], world_size=1, seed=7)
    for _ in range(4):
        next(a)
    b = BucketSampler([5, 4], [2, 1], world_size=1, seed=0)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))  # state survives JSON
    for _ in range(2 * len(a) + 1):  # past two epoch boundaries
        assert next(a) == next(b)
    assert a.epoch == 2
    assert next(BucketSampler([50], [5], seed=1)) != next(BucketSampler([50], [5], seed=2))  # the seed matters


def test_make_buckets_by_file_tag_or_token_length():
    class Tok:  # one token per word, as a stand-in tokenizer
        def __call__(self, texts):
            return {"input_ids": [t.split() for t in texts]}
    import datasets
    rows = datasets.Dataset.from_list([{"query": "q", "pos": ["w " * n], "neg": []} for n in (3, 12, 25, 5)])
    buckets = make_buckets({"tagged_len-0-500": rows, "plain": rows}, Tok(), edges=[0, 10, 20])
    assert [(name, lo, len(r)) for name, lo, r in buckets] == [
        ("tagged_len-0-500", 0, 4), ("plain_len-0", 0, 2), ("plain_len-10", 10, 1), ("plain_len-20", 20, 1)]
    assert [r["pos"][0].count("w") for r in buckets[1][2]] == [3, 5]  # views of the rows, in file order


def _loss_and_grads(model, sub_batch_size, checkpointing=False):
    queries = ["why is the sky blue", "capital of France", "how do bees make honey"]
    passages = [["Rayleigh scattering of sunlight makes the sky look blue to us.", "Paris is big."],
                ["Paris is the capital and largest city of France.", "Bees live in hives and dance."],
                ["Bees turn nectar into honey by evaporation and enzymes in the hive.", "Blue whales."]]
    model.zero_grad(set_to_none=True)
    out = model.training_loss(queries, passages, M3Config(), max_query_length=16, max_passage_length=32,
                              sub_batch_size=sub_batch_size, checkpoint_sub_batches=checkpointing == "sub_batch")
    out["L_final"].backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("checkpointing", ["layer", "sub_batch"])
def test_split_batch_with_checkpointing_equals_full_batch(tiny_dir, checkpointing):
    from m3ref import M3Model
    model = M3Model.from_pretrained(tiny_dir, device="cpu").train()
    full, g_full = _loss_and_grads(model, None)
    if checkpointing == "layer":
        enable_checkpointing(model)
    calls = []
    model.encoder.encoder.layer[0].intermediate.register_forward_hook(lambda *_: calls.append(1))
    split, g_split = _loss_and_grads(model, 2, checkpointing)  # 3 queries -> 2 + 1, 6 passages -> 2 + 2 + 2
    assert len(calls) == 2 * 5  # 5 sub-batches, each run again in backward (checkpointing)
    for k in ("L_final", "L_dense", "L_lex", "L_mul", "L_prime"):
        assert split[k].item() == pytest.approx(full[k].item(), rel=1e-5, abs=1e-6), k
    assert g_split.keys() == g_full.keys() and len(g_full) > 30
    for name, g in g_full.items():
        torch.testing.assert_close(g_split[name], g, rtol=1e-4, atol=1e-5, msg=name)


def test_split_batch_sorts_by_length_and_keeps_input_order(tiny_dir):
    from m3ref import M3Model
    from m3ref.batching import split_batch_forward
    model = M3Model.from_pretrained(tiny_dir, device="cpu").eval()
    texts = ["short", "a much longer text with many more words than the others in the batch", "mid length text here",
             "tiny", "another fairly long text, though not the longest of them all"]
    batch = model.collate(model.tokenize(texts, 64))
    calls = []
    model.encoder.register_forward_pre_hook(lambda _m, args, kw: calls.append(kw["input_ids"].shape), with_kwargs=True)
    with torch.no_grad():
        full, split = model(**batch), split_batch_forward(model, batch, sub_batch_size=2)
    lengths = sorted(batch["attention_mask"].sum(1).tolist(), reverse=True)
    # sub-batches hold the 2 longest, the next 2, the shortest: each trimmed to its longest text
    assert [s[1] for s in calls[1:]] == [lengths[0], lengths[2], lengths[4]]
    for name in ("dense", "ids", "colbert", "colbert_mask"):
        torch.testing.assert_close(getattr(split, name), getattr(full, name), rtol=1e-5, atol=1e-5, msg=name)
    real = batch["attention_mask"].bool()  # padding weights are 0 after a split, ReLU(W h_pad) without
    torch.testing.assert_close(split.weights[real], full.weights[real], rtol=1e-5, atol=1e-5)
