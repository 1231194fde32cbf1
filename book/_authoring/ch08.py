import sys; import os; sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nb import md, code, write

cells = [
md(r"""
# Efficient batching

M3 trains on texts from a few tokens up to 8192 tokens. The paper's Sec. 3.4 ("Efficient
Batching") makes this affordable with three measures:

1. **length grouping**: each batch is drawn from texts of similar length, so little compute
   goes into padding. Short texts get big batches, long ones small batches (Table 9);
2. **one shared random seed** on all GPUs, so that at each step all of them draw from the same
   length group (load balance);
3. **split-batch**: a batch is encoded in sub-batches with gradient checkpointing, and the
   embeddings are gathered afterwards. The paper's Table 10 shows how much larger a batch
   then fits on one GPU.

This chapter measures each one on the sample data and on the tiny model. All three live in
`m3ref.batching`.
"""),
code(r"""
import json
import random
import shutil
import tempfile
import weakref
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
import yaml

from m3ref import M3Config, M3Model
from m3ref.batching import (BucketSampler, auto_sub_batch_size, batch_size_for, bucket_bounds,
                            enable_checkpointing, encode, make_buckets)
from m3ref.book import load_model, show, tiny_model_dir
from m3ref.data import load_train_data
from m3ref.tiny import SOURCE_DIR
from m3ref.train import TrainConfig, batch_loss

torch.set_num_threads(1)  # tiny tensors: one thread is as fast, and kinder to a busy machine
DATA = Path(SOURCE_DIR).parent  # data_samples/
model = load_model()
"""),
md(r"""
## Padding waste

A batch is a rectangle: every text is padded to the longest one. For a batch of texts of
lengths $\ell_1, \dots, \ell_B$ tokens, the share of the computed tokens that is padding is

$$
\text{padding share} = 1 - \frac{\sum_{i=1}^{B} \ell_i}{B \cdot \max_i \ell_i}
$$

**By hand.** Lengths $(100, 200, 300, 4000)$: $1 - 4600 / (4 \cdot 4000) = 1 - 0.2875 = 0.7125$.
One long document makes 71% of the batch padding. Lengths $(100, 200, 300, 250)$:
$1 - 850 / 1200 = 0.2917$.
"""),
code(r"""
def padding_share(lengths):
    return 1 - sum(lengths) / (len(lengths) * max(lengths))

print(f"{padding_share([100, 200, 300, 4000]):.4f}  {padding_share([100, 200, 300, 250]):.4f}")
assert abs(padding_share([100, 200, 300, 4000]) - 0.7125) < 1e-12
assert abs(padding_share([100, 200, 300, 250]) - (1 - 850 / 1200)) < 1e-12
"""),
md(r"""
The fine-tuning sample mixes 670 short examples with 70 long documents of 1,000 to 8,000
tokens, which is the length mix the paper's grouping is made for. The official data is split
into one file per length range (`split_data_by_length.py`, edges 0/500/1000/2000/.../7000),
and `make_buckets` turns each `*_len-{lo}-{hi}` file into one bucket. The length of an
example is the token count of its longest text (query, positives, negatives), as the official
script counts it. We count with the tiny model's tokenizer and check that every example lies
inside its file's range:
"""),
code(r"""
show(make_buckets)
"""),
code(r"""
finetune = load_train_data(DATA / "train" / "finetune")
buckets = make_buckets(finetune, model.tokenizer)
lengths = []  # per bucket: the length of each example in tokens
for name, lo, rows in buckets:
    texts = [[r["query"], *r["pos"], *r["neg"]] for r in rows]
    ids = model.tokenizer([t for group in texts for t in group])["input_ids"]
    sizes = iter(len(x) for x in ids)
    lengths.append([max(next(sizes) for _ in group) for group in texts])
    low, high = bucket_bounds(name)
    assert all(low <= n < high for n in lengths[-1])
    print(f"{name:20} {len(rows):4d} examples, {min(lengths[-1]):5d} to {max(lengths[-1]):5d} tokens")
"""),
md(r"""
Now one epoch in batches of 4, two ways. **Random**: shuffle all 740 examples together and
cut them into batches. **Grouped**: `BucketSampler` (next section), where each batch comes
from one bucket.
"""),
code(r"""
B = 4
everything = [n for bucket in lengths for n in bucket]
order = list(range(len(everything)))
random.Random(0).shuffle(order)
random_batches = [[everything[i] for i in order[k:k + B]] for k in range(0, len(order), B)]

sampler = BucketSampler([len(b) for b in lengths], [B] * len(lengths), seed=0)
grouped_batches = [[lengths[b.bucket][i] for i in b.indices] for b in (next(sampler) for _ in range(len(sampler)))]

result = {}
for name, batches in (("random", random_batches), ("grouped", grouped_batches)):
    computed = sum(len(b) * max(b) for b in batches)
    real = sum(sum(b) for b in batches)
    result[name] = (batches, computed, real)
    print(f"{name:8} {len(batches):3d} batches, {computed:9,d} tokens computed, {real:9,d} real, "
          f"padding share {1 - real / computed:.3f}")
"""),
code(r"""
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
bins = np.linspace(0, 1, 21)
for name, color in (("random", "tab:red"), ("grouped", "tab:blue")):
    ax1.hist([padding_share(b) for b in result[name][0]], bins=bins, alpha=0.6, color=color, label=name)
ax1.set_xlabel("padding share of a batch")
ax1.set_ylabel("batches")
ax1.set_title("Per batch (batch size 4)")
ax1.legend()
names = list(result)
real = np.array([result[n][2] for n in names]) / 1e6
pad = np.array([result[n][1] - result[n][2] for n in names]) / 1e6
ax2.bar(names, real, color="tab:green", label="real tokens")
ax2.bar(names, pad, bottom=real, color="tab:gray", label="padding")
ax2.set_ylabel("million tokens per epoch")
ax2.set_title("One epoch of the fine-tuning sample")
ax2.legend()
fig.tight_layout()
plt.show()
"""),
md(r"""
With random batches, about one batch in three holds a long document, and its short
companions are padded to thousands of tokens: two thirds of the computed tokens are padding.
Grouped by length, the padding share drops to about 5%, and the epoch costs less than half
as many token positions. The cost of attention grows with the square of the padded length,
so the real saving is larger still.

> The grouped epoch has a few more real tokens: a bucket whose size does not divide into
> batches is filled up with its first examples (below). The tiny training config also truncates
> passages to 64 tokens, so in `configs/tiny.yaml` the long buckets only matter for their
> batch sizes. The measurement here uses the full lengths, as the paper trains up to 8192.

## Batch size per bucket (paper Table 9)

Short texts leave memory for many of them, long texts for few. So each bucket has its own
batch size. The size is looked up in a table keyed by the lower edge of a length range: the
entry with the largest key not above the bucket's lower edge $\ell$ applies,

$$
b(\ell) = T\big[\max\{k \in \mathrm{keys}(T) : k \le \ell\}\big]
$$
"""),
code(r"""
show(batch_size_for)
"""),
md(r"""
**By hand.** $T = \{0: 48, 500: 32, 1000: 20\}$ and $\ell = 700$: the keys up to 700 are 0
and 500, the largest is 500, so $b = 32$. For $\ell = 1000$ the key 1000 itself applies: 20.
"""),
code(r"""
T = {0: 48, 500: 32, 1000: 20}
print(batch_size_for(700, T), batch_size_for(1000, T), batch_size_for(0, T))
assert (batch_size_for(700, T), batch_size_for(1000, T), batch_size_for(0, T)) == (32, 20, 48)
"""),
md(r"""
The GPU config holds the per-GPU sizes of the legacy official code (80 GB GPUs, $G = 8$).
Times 24 GPUs, they give the fine-tuning column of Table 9, from 1,152 down to 192. The
unsupervised stage ($G = 1$) used 700 down to 104 per GPU on 96 GPUs: 67,200 down to 9,984.
The tiny config uses 4 and 2 per process:
"""),
code(r"""
gpu = yaml.safe_load((DATA.parent / "configs" / "bge-m3-gpu.yaml").read_text())["batch_size"]
tiny = yaml.safe_load((DATA.parent / "configs" / "tiny.yaml").read_text())["batch_size"]
print(f"{'bucket (tokens)':>16} {'per GPU':>8} {'x 24 GPUs':>10} {'tiny.yaml':>10}")
edges = [0, 500, 1000, 2000, 3000, 4000, 5000, 6000, 7000]
for lo, hi in zip(edges, edges[1:] + ["inf"]):
    b = batch_size_for(lo, gpu)
    print(f"{f'{lo}-{hi}':>16} {b:8d} {24 * b:10,d} {batch_size_for(lo, tiny):10d}")
print("unsupervised stage, total:", f"{700 * 96:,d}", "down to", f"{104 * 96:,d}")
assert 24 * batch_size_for(0, gpu) == 1152 and 24 * batch_size_for(7000, gpu) == 192
"""),
md(r"""
## One seed for all ranks

With several GPUs (ranks, chapter 9), every rank must draw from the *same* bucket at the
same step. A rank that got a batch of 8,000-token documents would otherwise make the
others wait at the next gradient synchronisation. The paper fixes the random seed across
devices for this. `BucketSampler` builds the plan of an epoch from the seed alone:
each bucket's examples are shuffled and cut into *global* batches of $W \cdot b$ examples
($W$ ranks, per-rank size $b$), and the list of global batches is shuffled. Every rank
builds the same plan, takes the same global batch at each step, and keeps its own slice:

$$
\text{rank } r \text{ gets examples } [\, r b,\ (r+1) b \,) \text{ of the global batch}
$$
"""),
code(r"""
show(BucketSampler._plan_for, BucketSampler.__next__)
"""),
md(r"""
**By hand.** One bucket of 10 examples, $b = 2$, $W = 2$: global batches of 4. Since
$10 = 2 \cdot 4 + 2$, the last global batch is short by 2 and is filled up with the first 2
examples of the epoch's order (the official code drops it instead, `drop_last=True`). So
there are 3 steps, each rank gets 2 examples per step, and 2 examples are seen twice.
"""),
code(r"""
ranks = [BucketSampler([10], [2], world_size=2, rank=r, seed=0) for r in range(2)]
steps = [[next(s) for s in ranks] for _ in range(len(ranks[0]))]
for k, (a, b) in enumerate(steps):
    print(f"step {k}: rank 0 {a.indices}, rank 1 {b.indices}")
seen = [i for a, b in steps for i in a.indices + b.indices]
assert len(steps) == 3 and len(seen) == 12 and set(seen) == set(range(10))
"""),
md(r"""
On the fine-tuning sample, with the tiny config's sizes (4 per rank for short texts, 2 for
texts of 1,000 tokens or more), two simulated ranks:
"""),
code(r"""
sizes = [batch_size_for(lo, tiny) for _, lo, _ in buckets]
counts = [len(r) for _, _, r in buckets]
rank0, rank1 = (BucketSampler(counts, sizes, world_size=2, rank=r, seed=0) for r in (0, 1))
long_steps = 0
for step in range(len(rank0)):
    a, b = next(rank0), next(rank1)
    assert a.bucket == b.bucket and not set(a.indices) & set(b.indices)
    long_steps += buckets[a.bucket][1] >= 1000
    if step < 4 or (buckets[a.bucket][1] >= 1000 and long_steps <= 3):  # the first steps, the first long ones
        print(f"step {step:3d}: {buckets[a.bucket][0]:19} rank 0 {str(a.indices):22} rank 1 {b.indices}")
print(f"{len(rank0)} steps per epoch, every one with the same bucket on both ranks")
other = BucketSampler(counts, sizes, world_size=2, rank=0, seed=1)
first = next(other)
print(f"seed 1, step   0: {buckets[first.bucket][0]:19} rank 0 {first.indices}")
"""),
md(r"""
Same bucket at every step, disjoint examples. A different seed gives a different plan, so
the seed must be the one setting that all ranks share. `m3ref.train` passes the config's
`seed` to every rank. The sampler's state is just (epoch, position), which a checkpoint
stores for an exact resume (chapter 9).

## Split-batch with gradient checkpointing

Training needs the activations of the forward pass for the backward pass. For a batch of
$B$ texts of $L$ tokens, they grow as $B \cdot L$ (and $B \cdot L^2$ for attention), which is
what limits the batch size for long texts. The paper combines two tricks (Fig. 3):

* **gradient checkpointing** keeps only the input of each transformer layer and recomputes
  the layer's inside during the backward pass;
* **sub-batches**: the batch is encoded a few texts at a time, and the embeddings are
  concatenated before the loss. The loss still sees the whole batch, in-batch negatives included.

Both change the memory, not the result. Every text's embeddings $e_i = f_\theta(x_i)$ depend
on that text alone, so the gradient of the batch loss is a sum over texts,

$$
\nabla_\theta \mathcal{L} = \sum_{i=1}^{N} \frac{\partial \mathcal{L}}{\partial e_i}\,\frac{\partial e_i}{\partial \theta}
$$

and it does not matter in which groups the $e_i$ are computed. The package switches on
checkpointing for the encoder and encodes in sub-batches. It first sorts the texts of the batch
by length, so each sub-batch holds texts of similar length and is cut to its own longest text.
`Embeddings.cat` pads the parts again, and `select` puts the rows back in input order. On the
long-document mix of `benchmarks/bench_padding.py`, sorting takes the padding of length-grouped
batches from 10% to under 2% of the encoded tokens (chapter 13):
"""),
code(r"""
show(enable_checkpointing, encode)
"""),
md(r"""
**Checked numerically.** Three queries with two passages each, the full loss of chapter 6.
Once in one pass, once in sub-batches of 2 texts with checkpointing. To compare exactly,
we copy the tiny model with dropout switched off (dropout masks would differ between the
two runs) and compute in float64. A forward hook on the first layer's feed-forward block
counts how often it runs: 5 sub-batches (queries 2 + 1, passages 2 + 2 + 2, longest texts first), each computed
twice because checkpointing recomputes it in the backward pass.
"""),
code(r"""
nodrop = tempfile.mkdtemp()
shutil.copytree(tiny_model_dir(), nodrop, dirs_exist_ok=True)
config = json.loads(open(f"{nodrop}/config.json").read())
config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
open(f"{nodrop}/config.json", "w").write(json.dumps(config))
exact = M3Model.from_pretrained(nodrop, device="cpu").double().train()

queries = ["why is the sky blue", "capital of France", "how do bees make honey"]
passages = [["Rayleigh scattering of sunlight makes the sky look blue.", "Paris is big."],
            ["Paris is the capital and largest city of France.", "Bees live in hives."],
            ["Bees turn nectar into honey in the hive.", "Blue whales."]]

def loss_and_grads(sub_batch_size):
    cfg = TrainConfig(train_data=".", query_max_len=16, passage_max_len=32, sub_batch_size=sub_batch_size)
    exact.zero_grad(set_to_none=True)
    out = batch_loss(exact, queries, passages, None, cfg, M3Config(), step=0)
    out["L_final"].backward()
    return out, {n: p.grad.clone() for n, p in exact.named_parameters() if p.grad is not None}

full, full_grads = loss_and_grads(None)
enable_checkpointing(exact)
calls = []
exact.encoder.encoder.layer[0].intermediate.register_forward_hook(lambda *args: calls.append(1))
split, split_grads = loss_and_grads(2)
diff = max((full_grads[n] - split_grads[n]).abs().max().item() for n in full_grads)
print(f"L_final: full batch {full['L_final'].item():.10f}, sub-batches {split['L_final'].item():.10f}")
print(f"{len(full_grads)} parameter tensors; largest gradient difference below 1e-10: {diff < 1e-10}")
print("feed-forward calls of layer 0:", len(calls))
assert abs(full["L_final"].item() - split["L_final"].item()) < 1e-10 and diff < 1e-10 and len(calls) == 10
shutil.rmtree(nodrop)
"""),
md(r"""
The same loss to 10 decimals, and the same gradient for every parameter up to float64
rounding. The test suite checks the same in float32 (`tests/test_batching.py`).

### What it saves: saved activations

How much memory does it save? PyTorch lets us watch every tensor that autograd saves for the
backward pass: `torch.autograd.graph.saved_tensors_hooks(pack, unpack)` calls `pack` for each
one. We count the bytes of the distinct storages that are live at any time (not the weights,
which exist anyway). A weak reference tells us when autograd frees a saved tensor. The peak
of this count is the activation memory of one training step.

> One detail of the measurement. `enable_checkpointing` uses PyTorch's non-reentrant
> checkpointing, which installs saved-tensor hooks of its own. Hooks do not nest (the innermost
> one wins), so it hides the tensors it keeps from ours. The re-entrant variant keeps the
> same things, each layer's input and the recomputed inside of one layer at a time, through
> ordinary saved tensors. So we measure with the re-entrant variant.
"""),
code(r"""
param_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}

class Saved:  # what autograd stores instead of the tensor; freed when autograd drops it
    def __init__(self, tensor):
        self.tensor = tensor

class SavedBytes:
    # Live bytes of distinct storages saved for backward (weights excluded), and the peak.
    def __init__(self):
        self.refs, self.now, self.peak = {}, 0, 0

    def pack(self, tensor):
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key in param_storages:
            return tensor
        if key not in self.refs:
            self.refs[key] = [0, storage.nbytes()]
            self.now += storage.nbytes()
            self.peak = max(self.peak, self.now)
        self.refs[key][0] += 1
        saved = Saved(tensor)
        weakref.finalize(saved, self.release, key)
        return saved

    def release(self, key):
        self.refs[key][0] -= 1
        if self.refs[key][0] == 0:
            self.now -= self.refs.pop(key)[1]

    def unpack(self, saved):
        return saved.tensor if isinstance(saved, Saved) else saved


def peak_mib(batch_size, length=128, sub_batch_size=None):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, len(model.tokenizer) - 1, (batch_size, length), generator=g)  # (B, L)
    ids[:, 0] = model.tokenizer.cls_token_id
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    meter = SavedBytes()
    with torch.autograd.graph.saved_tensors_hooks(meter.pack, meter.unpack):
        e = encode(model, batch, sub_batch_size)
        (e.dense.sum() + e.weights.sum() + e.colbert.sum()).backward()
    model.zero_grad(set_to_none=True)
    assert meter.now == 0  # everything saved was freed by the backward pass
    return meter.peak / 2**20

batch_sizes = [2, 4, 8, 16, 32]
model.train()
memory = {"plain": [peak_mib(b) for b in batch_sizes]}
model.encoder.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})
memory["checkpointing"] = [peak_mib(b) for b in batch_sizes]
memory["checkpointing + sub-batches of 2"] = [peak_mib(b, sub_batch_size=2) for b in batch_sizes]
print(f"{'batch size':32}" + "".join(f"{b:8d}" for b in batch_sizes))
for name, values in memory.items():
    print(f"{name:32}" + "".join(f"{v:8.1f}" for v in values) + "  MiB")
"""),
code(r"""
fig, ax = plt.subplots(figsize=(6, 3.2))
for (name, values), marker in zip(memory.items(), "osD"):
    ax.plot(batch_sizes, values, marker=marker, label=name)
ax.set_xlabel("batch size (texts of 128 tokens)")
ax.set_ylabel("peak saved activations (MiB)")
ax.set_title("Tiny model (2 layers), one forward + backward, CPU")
ax.legend()
fig.tight_layout()
plt.show()
"""),
md(r"""
All three grow linearly with the batch size, at very different rates. Without checkpointing,
both layers keep all their inside activations, about 4 MiB per text of 128 tokens. The
$L \times L$ attention maps are the largest part. With checkpointing, only the layer inputs are kept, plus
one layer's inside at a time while it is recomputed: half as much, because the tiny model has
only 2 layers. Sub-batches shrink that recomputed part to 2 texts, whatever the batch size.
What still grows is the small part that every text keeps: its layer inputs and its output
embeddings.
"""),
code(r"""
slope = {name: (v[-1] - v[-2]) / (batch_sizes[-1] - batch_sizes[-2]) for name, v in memory.items()}
for name, s in slope.items():
    print(f"{name:32} {s:.3f} MiB per extra text")
ratio = memory["plain"][-1] / memory["checkpointing + sub-batches of 2"][-1]
print(f"at batch size {batch_sizes[-1]}: {ratio:.1f} times less")
assert memory["plain"][-1] > memory["checkpointing"][-1] > memory["checkpointing + sub-batches of 2"][-1]
"""),
md(r"""
> This is a measurement of saved activations on a CPU, for a model with 2 layers of width
> 128. The paper's Table 10 measures something else: the largest batch that fits on a GPU,
> for the full model (24 layers of width 1024), without and with split-batch. There it is
> 262 → 855 texts at 1,024 tokens, 25 → 258 at 4,096 and 6 → 130 at 8,192: 3.3, 10 and 22
> times larger. The gain grows with the length because the attention maps grow with $L^2$, and
> checkpointing drops them from all 24 layers but one. Our 2-layer model can save at most a
> factor of about 2 from checkpointing alone, which is what we measured.

**One checkpoint per sub-batch.** Per-layer checkpointing still keeps the input of every layer
for every text until the backward pass: for BGE-M3, 24 vectors of width 1024 per token. With
`gradient_checkpointing: sub_batch` in a config, `encode(..., checkpoint_sub_batches=True)`
puts one checkpoint around each sub-batch's whole pass instead. A text then keeps only its
inputs and its output embeddings, and one sub-batch at a time is recomputed with all of its
activations. The compute is the same as with per-layer checkpoints: every layer runs twice. The
gradients are the same too (`tests/test_batching.py` checks both modes against the full batch).
Chapter 13 measures the largest batch that fits at 1k, 4k and 8k tokens in both modes.

The legacy official code picked the sub-batch size from the padded length, for an 80 GB GPU.
`sub_batch_size: auto` in a config uses that table:
"""),
code(r"""
for length in (128, 512, 1024, 2048, 4096, 8192):
    print(f"padded length {length:5d}: sub-batches of {auto_sub_batch_size(length)}")
"""),
md(r"""
## Summary

* Grouping by length cuts the padding of an epoch of the fine-tuning sample from about two
  thirds of the computed tokens to about 5%.
* Each length bucket has its own batch size. On the paper's 24 GPUs, the legacy per-GPU sizes
  48 … 8 give Table 9's fine-tuning batches 1,152 … 192.
* `BucketSampler` builds each epoch's plan from one shared seed. All ranks draw the same
  bucket at each step and take disjoint slices of one global batch.
* Sub-batches with gradient checkpointing give the same loss and gradients as one full
  pass. The activation memory then grows far more slowly with the batch size, which is what
  makes Table 10's large batches of long texts possible.

## Exercises

1. In the hand example of the padding share, which single length change brings the first batch's padding share below 0.1?
2. With `drop_last=True`, how many steps does the 10-example bucket give with $b = 2$, $W = 2$, and which examples are never seen in that epoch?
3. Measure `peak_mib(16, length=256)` with and without checkpointing. Why does the plain run grow by more than a factor of 2 over `length=128`?
4. Why must the sampler shuffle the list of global batches, and not just each bucket?

```{admonition} Solutions
:class: dropdown

1. None: with three texts of 100 to 300 tokens, the share is at least $1 - (100 + 200 + 300 + 300)/(4 \cdot 300) = 0.25$ even when the long text is cut to 300 tokens. Below 0.1 needs similar lengths for all four texts, which is what length grouping provides.
2. $\lfloor 10/4 \rfloor = 2$ steps. The last two examples of the epoch's shuffled order are never seen in that epoch. A new epoch reshuffles, so they are seen later.
3. The attention maps of each layer are $L \times L$ per head: doubling $L$ quadruples them, while the other activations double. Checkpointing keeps only layer inputs ($\propto L$) plus one layer's inside, so it grows more slowly.
4. Without that shuffle, all batches of one bucket would come one after the other: the model would see only short texts for a long time, then only long ones. Each phase would pull the model its own way.
```
"""),
]
write(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "08_efficient_batching.ipynb"), cells)
