"""Efficient batching (paper Sec. 3.4 "Efficient Batching", Fig. 3, Tables 9-10; book ch. 08).

Three pieces, each small and tested on its own:

* length buckets: examples are grouped by token length (or by the file they come from,
  `*_len-{lo}-{hi}.jsonl`) and every batch is drawn from one bucket, so little compute is
  spent on padding. Short buckets get bigger batches (`batch_size_for`, Table 9).
* `BucketSampler`: one seed shared by all ranks, so at each step every rank draws from the
  same bucket (the paper's fixed random seed, for load balance); ranks get disjoint slices of
  one global batch, and the sampler's position can be saved for an exact resume.
* `split_batch_forward`: split-batch. A (big) batch is encoded in sub-batches, with gradient
  checkpointing on the encoder, and the outputs are concatenated. Gradients equal those of
  the full batch; activation memory is about that of one sub-batch (Table 10).
"""
from __future__ import annotations

import random
import re
from typing import NamedTuple, Optional, Sequence

import torch
import torch.utils.checkpoint

from .config import LENGTH_EDGES
from .errors import M3Error

_LEN = re.compile(r"_len-(\d+)-(\d+|inf)$")


def bucket_bounds(name: str) -> Optional[tuple[int, float]]:
    """(lo, hi) from a file stem such as `msmarco_len-0-500`; None without a length tag."""
    m = _LEN.search(name)
    return (int(m.group(1)), float(m.group(2))) if m else None


def length_bucket(n_tokens: int, edges: Sequence[int] = LENGTH_EDGES) -> int:
    """Lower edge of the bucket holding a text of `n_tokens` tokens: 700 -> 500."""
    return max(e for e in edges if e <= n_tokens) if n_tokens >= edges[0] else edges[0]


def batch_size_for(lo: int, table) -> int:
    """Per-rank batch size of a bucket starting at `lo` tokens (paper Table 9).

    `table` is one int for every bucket, or {lower length: size}, e.g. {0: 48, 500: 32,
    1000: 20}: the entry with the largest key <= lo applies, so short texts get big batches.
    """
    if isinstance(table, int):
        return table
    keys = [k for k in sorted(table) if k <= lo]
    return table[keys[-1]] if keys else table[min(table)]


def auto_sub_batch_size(length: int) -> int:
    """The legacy official split-batch size for a padded length (memory of an 80 GB GPU)."""
    for min_len, size in ((6000, 1), (5000, 2), (3000, 3), (2000, 5), (1000, 9), (512, 16)):
        if length >= min_len:
            return size
    return 32


def make_buckets(datasets: dict, tokenizer, edges: Sequence[int] = LENGTH_EDGES) -> list:
    """[(name, lower length, rows)]: one bucket per `*_len-{lo}-{hi}` file, as the official
    split files are; a file without a length tag is split by the longest text of each
    example (query, positives, negatives) in tokens, on `edges`. `rows` is the file's
    `datasets.Dataset` (memory-mapped) or a view of it (`select`): row i is `rows[i]`."""
    buckets = []
    for name, ds in datasets.items():
        bounds = bucket_bounds(name)
        if bounds:
            buckets.append((name, bounds[0], ds))
            continue
        groups = {}
        for start in range(0, len(ds), 1000):  # tokenized 1000 examples at a time
            chunk = ds[start:start + 1000]
            for i, (q, pos, neg) in enumerate(zip(chunk["query"], chunk["pos"], chunk["neg"]), start):
                longest = max(len(ids) for ids in tokenizer([q, *pos, *(neg or [])])["input_ids"])
                groups.setdefault(length_bucket(longest, edges), []).append(i)
        buckets += [(f"{name}_len-{lo}", lo, ds.select(idx)) for lo, idx in sorted(groups.items())]
    return buckets


class Batch(NamedTuple):
    epoch: int
    bucket: int  # index into the bucket list
    indices: list  # this rank's example indices inside the bucket


class BucketSampler:
    """Length-grouped batches with one seed shared by all ranks (paper Sec. 3.4).

    Per epoch, each bucket's examples are shuffled and cut into global batches of
    `batch_sizes[b] * world_size`; the list of all batches is then shuffled. Every rank
    builds the same list (same seed), takes the same batch at each step and its own slice
    `[rank*bs : (rank+1)*bs]` of it. A bucket's last, incomplete batch is filled up with its
    first examples of the epoch (so every example is used at least once per epoch, exactly
    once when sizes divide), or dropped with `drop_last=True` as the official code does.

    The state is (epoch, position): `state_dict()` / `load_state_dict()` resume exactly.
    """

    def __init__(self, bucket_sizes: Sequence[int], batch_sizes: Sequence[int], world_size: int = 1,
                 rank: int = 0, seed: int = 0, drop_last: bool = False):
        self.sizes, self.batch_sizes = list(bucket_sizes), list(batch_sizes)
        self.world_size, self.rank, self.seed, self.drop_last = world_size, rank, seed, drop_last
        self.epoch = self.position = 0
        self._plan_epoch, self._plan = None, []
        if not any(self._plan_for(0)):
            raise M3Error(f"no complete batch: buckets of {self.sizes} examples, per-rank batch sizes "
                          f"{self.batch_sizes} x {world_size} ranks (drop_last={drop_last})")

    def _plan_for(self, epoch: int) -> list:
        """[(bucket, global indices)] of one epoch, identical on every rank."""
        if self._plan_epoch != epoch:
            rng = random.Random(f"{self.seed}-{epoch}")
            plan = []
            for b, (n, bs) in enumerate(zip(self.sizes, self.batch_sizes)):
                order, g = list(range(n)), bs * self.world_size  # g = global batch size
                rng.shuffle(order)
                if n % g and not self.drop_last:
                    order += (order * (g // n + 1))[:g - n % g]
                plan += [(b, order[i:i + g]) for i in range(0, len(order) - g + 1, g)]
            rng.shuffle(plan)
            self._plan_epoch, self._plan = epoch, plan
        return self._plan

    def __len__(self) -> int:
        """Batches per epoch."""
        return len(self._plan_for(self.epoch))

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        plan = self._plan_for(self.epoch)
        if self.position >= len(plan):
            self.epoch, self.position = self.epoch + 1, 0
            plan = self._plan_for(self.epoch)
        bucket, indices = plan[self.position]
        self.position += 1
        bs = self.batch_sizes[bucket]
        return Batch(self.epoch, bucket, indices[self.rank * bs:(self.rank + 1) * bs])

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position, self.seed = state["epoch"], state["position"], state["seed"]
        self._plan_epoch = None


def enable_checkpointing(model) -> None:
    """Gradient checkpointing on the encoder: keep layer inputs only, recompute in backward.

    Non-reentrant checkpointing restores the RNG state (same dropout masks) and works with
    inputs that need no grad, so no `enable_input_require_grads()` is needed.
    """
    enc, kwargs = model.encoder, {"use_reentrant": False}
    if hasattr(enc, "activation_checkpointing_enable"):  # transformers >= 5
        enc.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        enc.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def split_batch_forward(model, batch: dict, sub_batch_size=None, checkpoint_sub_batches: bool = False):
    """Encode a collated batch, in sub-batches of `sub_batch_size` rows (split-batch, Fig. 3).

    Rows are sorted by length, longest first, before they are cut into sub-batches, and each
    sub-batch is trimmed to its own longest text: texts of similar length share a sub-batch,
    so little compute goes to padding (book ch. 08). The parts (`model.Embeddings`) are
    joined with `Embeddings.cat` and put back in input order. "auto" picks the size from the padded
    length (`auto_sub_batch_size`). Gradients equal those of one full-batch pass.

    `checkpoint_sub_batches=True` makes each sub-batch's whole forward pass (the whole batch
    without `sub_batch_size`) one checkpoint
    (instead of one per layer, `enable_checkpointing`): only its inputs are kept, and the
    backward pass recomputes it. A text then holds only its outputs until the backward pass,
    plus the full activations of one sub-batch at a time (benchmarks/bench_max_batch.py).
    """
    ids, mask = batch["input_ids"], batch["attention_mask"]  # (N, L)
    if sub_batch_size == "auto":
        sub_batch_size = auto_sub_batch_size(ids.shape[1])
    if not checkpoint_sub_batches and (not sub_batch_size or sub_batch_size >= ids.shape[0]):
        return model(ids, mask)
    sub_batch_size = min(sub_batch_size or ids.shape[0], ids.shape[0])
    lengths = mask.sum(1)  # (N,) right padding: real tokens come first
    order = torch.argsort(lengths, descending=True, stable=True)  # (N,)
    parts = []
    for i in range(0, ids.shape[0], sub_batch_size):
        rows = order[i:i + sub_batch_size]  # (n,)
        length = int(lengths[rows[0]])  # the longest of these rows
        args = (ids[rows, :length], mask[rows, :length])
        if checkpoint_sub_batches and torch.is_grad_enabled():
            parts.append(torch.utils.checkpoint.checkpoint(model, *args, use_reentrant=False))
        else:
            parts.append(model(*args))
    return type(parts[0]).cat(parts, model.tokenizer.pad_token_id).select(torch.argsort(order))
