"""Padding share of training batches: length-grouped (m3ref.batching) vs random batches.

The training path of `m3ref.train`: `load_train_data` -> `make_buckets` (one bucket per
`*_len-lo-hi` file) -> `BucketSampler` (each batch from one bucket, Table-9 batch sizes) ->
`groups_of` (query + G passages) -> `M3Model.tokenize` / `collate` (pad to the longest text).
"Random" batches use the same batch sizes, in the same order, over the same examples pooled
from all buckets and shuffled, so the only difference is the grouping by length.

padding share = padding tokens / all tokens that go through the encoder, over whole epochs.

* `padding_share_grouped` / `padding_share_random`: grouping alone, as the paper describes it.
  Each (queries, passages) tensor of a batch is padded to its longest text and goes through the
  encoder in one call.
* `padding_share_sorted_grouped` / `padding_share_sorted_random`: what m3ref's trainer runs with
  split-batch on (`sub_batch_size: auto`, as in configs/bge-m3-gpu.yaml):
  `m3ref.batching.split_batch_forward` sorts the texts of a tensor by length, cuts them into
  sub-batches and trims each one to its own longest text. Sorting is m3ref's addition; with it,
  random batches pad little too, but they need many more, smaller encoder calls
  (`encoder_calls_*`).
* `padding_share_grouped_sub_batch_unsorted`: `auto` sub-batches cut in input order (the
  official split-batch).

`batching_throughput_grouped_vs_random` times every `throughput_every`-th batch of the first
epoch of each through the sorted sub-batch path (forward only, a 1-layer encoder of width 32, on
CPU), `throughput_repeat` alternating rounds: random time / grouped time.
"""
from __future__ import annotations

import random

import torch

try:
    from . import common as C
except ImportError:  # run as a script
    import common as C

from m3ref.config import BATCH_SIZE_TABLES  # noqa: E402

TABLE9 = BATCH_SIZE_TABLES["table9"]  # paper Table 9 / legacy per-GPU fine-tuning sizes (G = 8)

SIZES = {
    "quick": dict(data=C.FINETUNE_DIR, group_size=8, query_max_len=512, passage_max_len=8192, epochs=3,
                  sub_batch_size="auto", throughput_repeat=11, throughput_every=10),
    "full": dict(data=C.FINETUNE_DIR, group_size=8, query_max_len=512, passage_max_len=8192, epochs=20,
                 sub_batch_size="auto", throughput_repeat=5, throughput_every=1),
}


def _share(batches, sub_batch_size=None, sort=False) -> float:
    """Padding tokens / all tokens when each batch (a list of length lists: the query tensor,
    the passage tensor) is right-padded to its longest text (or per sub-batch; `sort`: the
    texts of a tensor sorted by length before they are cut into sub-batches)."""
    pad = total = 0
    for tensors in batches:
        for lens in tensors:
            lens = sorted(lens, reverse=True) if sort else lens
            step = sub_batch_size or len(lens)
            if step == "auto":  # m3ref.batching.encode: the legacy table on the padded length
                from m3ref.batching import auto_sub_batch_size
                step = auto_sub_batch_size(max(lens))
            for i in range(0, len(lens), step):
                chunk = lens[i:i + step]
                total += len(chunk) * max(chunk)
                pad += len(chunk) * max(chunk) - sum(chunk)
    return pad / total if total else 0.0


def _calls(batches, sub_batch_size) -> int:
    """Encoder calls (sub-batches) needed for `batches`, as `_share` cuts them."""
    from m3ref.batching import auto_sub_batch_size
    calls = 0
    for tensors in batches:
        for lens in tensors:
            step = auto_sub_batch_size(max(lens)) if sub_batch_size == "auto" else sub_batch_size or len(lens)
            calls += -(-len(lens) // step)
    return calls


def run(mode: str = "quick", sizes: dict = None) -> dict:
    from m3ref.batching import BucketSampler, batch_size_for, make_buckets
    from m3ref.data import load_train_data
    from m3ref.train import groups_of

    s = {**SIZES[mode], **(sizes or {})}
    model = C.m3_model(C.encoder_config(32, 1, 2, len(C.tokenizer()))).eval()  # 1 layer of width 32
    buckets = make_buckets(load_train_data(s["data"]), model.tokenizer)
    names, los, rows = zip(*buckets)
    cache = {}  # (text, max_len) -> token ids, each text tokenized once

    def token_ids(texts, max_len):
        todo = [t for t in dict.fromkeys(texts) if (t, max_len) not in cache]
        if todo:
            cache.update({(t, max_len): ids for t, ids in zip(todo, model.tokenize(todo, max_len, warn=False))})
        return [cache[(t, max_len)] for t in texts]

    def lengths(texts, max_len):
        return [len(ids) for ids in token_ids(texts, max_len)]

    # cap each bucket's batch at its size: the sample files hold 10 long examples per bucket
    sizes_per_bucket = [min(batch_size_for(lo, TABLE9), len(r)) for lo, r in zip(los, rows)]
    sampler = BucketSampler([len(r) for r in rows], sizes_per_bucket, seed=0)
    pooled = [(b, i) for b, r in enumerate(rows) for i in range(len(r))]
    grouped, shuffled = [], []
    texts = {"grouped": [], "random": []}  # the first epoch's batches, for the throughput
    rng = random.Random(0)
    for epoch in range(s["epochs"]):
        order = pooled[:]
        rng.shuffle(order)
        order = order * 2  # the sampler fills incomplete batches up, so an epoch can hold more
        pos = 0
        for _ in range(len(sampler)):
            batch = next(sampler)
            qs, ps, _ = groups_of(rows[batch.bucket], batch, s["group_size"], seed=0)
            grouped.append([lengths(qs, s["query_max_len"]),
                            lengths([t for g in ps for t in g], s["passage_max_len"])])
            if epoch == 0:
                texts["grouped"].append([(qs, s["query_max_len"]), ([t for g in ps for t in g], s["passage_max_len"])])
            # the random batch: as many examples, drawn from every bucket
            take = order[pos:pos + len(batch.indices)]
            pos += len(take)
            qs, ps = [], []
            for b, i in take:
                q, g, _ = groups_of(rows[b], batch._replace(bucket=b, indices=[i]), s["group_size"], seed=0)
                qs += q
                ps += [t for grp in g for t in grp]
            shuffled.append([lengths(qs, s["query_max_len"]), lengths(ps, s["passage_max_len"])])
            if epoch == 0:
                texts["random"].append([(qs, s["query_max_len"]), (ps, s["passage_max_len"])])
    sub = s["sub_batch_size"]

    # Throughput: the first epoch's batches through the trainer's encode path (forward only,
    # inference mode), on a 1-layer encoder of width 32; real tokens per second.
    from m3ref.batching import split_batch_forward
    collated = {k: [model.collate(token_ids(t, n)) for batch in v[::s["throughput_every"]]
                    for t, n in batch] for k, v in texts.items()}

    def encoder_pass(kind):
        def fn():
            with torch.inference_mode():
                for b in collated[kind]:
                    split_batch_forward(model, b, sub)
        return fn
    passes = {k: encoder_pass(k) for k in collated}
    # a grouped pass is many times shorter than a random one: each side's rounds last about two seconds
    # (single calls and 5 rounds put two idle runs' ratios 10.4 % apart; 1 s rounds, 11.9 %)
    number = {k: C.calls_per_round(f, 2.0) for k, f in passes.items()}
    speed = C.compare_times(passes, repeat=s["throughput_repeat"], warmup=0, number=number)
    real = {k: sum(int(b["attention_mask"].sum()) for b in v) for k, v in collated.items()}
    whole = {"grouped": _share(grouped), "random": _share(shuffled)}
    return {
        "padding_share_grouped": whole["grouped"],
        "padding_share_random": whole["random"],
        "padding_share_sorted_grouped": _share(grouped, sub, sort=True),
        "padding_share_sorted_random": _share(shuffled, sub, sort=True),
        "padding_share_grouped_sub_batch_unsorted": _share(grouped, sub),
        # the same figures under their earlier names (book chapter 12 reads these)
        "padding_share_grouped_whole_batch": whole["grouped"],
        "padding_share_random_whole_batch": whole["random"],
        "encoder_calls_grouped": float(_calls(grouped, sub)),
        "encoder_calls_random": float(_calls(shuffled, sub)),
        **C.spread("batching_throughput_grouped_vs_random", C.ratios(speed, "random", "grouped")),
        "batching_tokens_per_s_grouped": real["grouped"] / speed["median"]["grouped"],
        "batching_tokens_per_s_random": real["random"] / speed["median"]["random"],
        "padding_batches": float(len(grouped)),
        "padding_buckets": float(len(rows)),
    }


if __name__ == "__main__":
    import json
    import sys
    print(json.dumps(run(sys.argv[1] if len(sys.argv) > 1 else "quick"), indent=1))
