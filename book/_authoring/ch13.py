import sys; import os; sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nb import md, code, write

cells = [
md(r"""
# Speed and memory against the official code

`benchmarks/` measures `m3ref` against FlagEmbedding 1.4.2 on the same weights and inputs. Each figure
is a ratio of two measurements taken side by side in one run, so a slow or busy machine affects
both sides. This chapter plots the stored results of `python benchmarks/run.py --quick --threads 1`
on a 2-core CPU. `benchmarks/RESULTS.md` describes each method, and why a ratio can
differ from the paper's GPU figures.

> These are our measurements on a CPU with the tiny model, not claims of the paper. The
> targets come from this project's issue tracker, not from the paper.
"""),
code(r"""
import json
import pathlib

import matplotlib.pyplot as plt

ROOT = pathlib.Path("..").resolve()
results = json.loads((ROOT / "benchmarks" / "results_quick.json").read_text())
meta = json.loads((ROOT / "benchmarks" / "results_quick.meta.json").read_text())
machine = meta.get("machine", {})
print("measured:", meta["started"])
print("machine:", {k: machine[k] for k in ("cpu", "nproc", "torch", "FlagEmbedding", "torch_threads")})
"""),
md(r"""
## The targets

Each target says by how much `m3ref` should beat the official code. For a *factor* (≥), higher is better:
it is their time or memory divided by ours, or our batch divided by the plain one. For an *overhead* or a
*share* (≤), lower is better.
"""),
code(r"""
TARGETS = {  # key: (direction, target, what)
    "encode_vs_flagembedding": (">=", 1.5, "encode time, FlagEmbedding / m3ref"),
    "encode_overhead_vs_bare_encoder": ("<=", 1.10, "encode time, m3ref / bare encoder"),
    "lexical_train_memory_vs_flagembedding": (">=", 10.0, "training peak memory at 250k vocab, FlagEmbedding / m3ref"),
    "padding_share_grouped": ("<=", 0.05, "padding share, length-grouped batches, as the trainer encodes them"),
    "max_batch_ratio_8k": (">=", 20.0, "max batch at 8k tokens, sub-batches with one checkpoint each / plain"),
    "sparse_retrieval_vs_flagembedding": (">=", 100.0, "sparse retrieval time, per-pair loop / inverted index"),
}
met = {}
print(f"{'measure':<40} {'target':>9} {'ours':>9}  met")
for key, (direction, target, what) in TARGETS.items():
    value = results[key]
    met[key] = value >= target if direction == ">=" else value <= target
    print(f"{key:<40} {direction}{target:>7g} {value:>9.3g}  {'yes' if met[key] else 'no'}")
print()
print(f"{'padding share':34}{'grouped':>9}{'random':>9}")
for label, suffix in (("sorted sub-batches (the trainer)", ""), ("whole batches, one encoder call", "_whole_batch")):
    print(f"{label:34}{results['padding_share_grouped' + suffix]:9.3f}{results['padding_share_random' + suffix]:9.3f}")
print(f"{'encoder calls per run':34}{results['encoder_calls_grouped']:9.0f}{results['encoder_calls_random']:9.0f}")
print()
print(f"{'max batch, x the plain batch':34}" + "".join(f"{t:>7}" for t in ("1k", "4k", "8k")))
for label, key in (("one checkpoint per sub-batch", "max_batch_ratio_{}"),
                   ("a checkpoint per layer (official)", "max_batch_ratio_layer_ckpt_{}")):
    print(f"{label:34}" + "".join(f"{results[key.format(t)]:7.1f}" for t in ("1k", "4k", "8k")))
"""),
md(r"""
The figure puts every measure on one scale: how far it is from its target. A bar
past the dashed line meets the target.
"""),
code(r"""
names, progress = [], []
for key, (direction, target, what) in TARGETS.items():
    value = results[key]
    names.append(key.replace("_vs_flagembedding", "").replace("_", " "))
    progress.append(value / target if direction == ">=" else target / value)
fig, ax = plt.subplots(figsize=(6.5, 3))
colors = ["tab:green" if p >= 1 else "tab:orange" for p in progress]
ax.barh(names, progress, color=colors)
ax.axvline(1.0, color="black", linestyle="--", linewidth=1)
ax.set_xscale("log")
ax.set_xticks([0.3, 1, 3, 10], ["0.3", "1", "3", "10"])
ax.xaxis.set_minor_formatter(plt.NullFormatter())
ax.set_xlabel("measured / target (factor) or target / measured (overhead, share); log scale")
ax.set_title("m3ref against its targets (>= 1 meets the target)", fontsize=10)
plt.tight_layout()
plt.show()
"""),
md(r"""
## Reading the results

All six targets are met in the stored run. The overhead above the bare encoder is the closest (1.08 against 1.10):
it is measured inside each `encode` call, which removes the drift between rounds, and on this 2-layer model
tokenization alone takes about 3 % of the call. Each benchmark runs in a fresh process: run after the other
benchmarks in one process, the same code measured 1.10.

* **Encode speed.** `encode` caps the padded tokens of a batch (`length_batches`), and FlagEmbedding also runs its
  first batch twice to probe the batch size.
* **Overhead above the bare encoder.** Hooks time the encoder inside each `encode` call, and the figure is the whole
  call over the encoder's share of it (the paired-rounds cross-check, encode against a separate bare-encoder run, is
  printed below). `encode` runs only the heads that were asked for, and the ColBERT head only on real tokens. What is
  left is tokenization (the largest part), the heads' linear layers, collation and building the outputs: costs per
  token that do not grow with the encoder. For BGE-M3 the encoder costs about 1,000 times more per token than this
  2-layer, 128-wide model, and the same overhead would be far below 1 %.
* **Lexical training memory.** `m3ref` never builds the (batch, length, vocabulary) tensor (chapter 2).
* **Padding.** The key measures what the trainer encodes: length-grouped batches, whose texts `batching.encode`
  sorts by length before it cuts the `auto` sub-batches (chapter 8). Padding whole batches, grouping alone leaves
  more (printed above); chapter 12 compares grouped and random batches.
* **Max batch at 8k tokens.** With one checkpoint per sub-batch, a text keeps only its inputs and outputs until the
  backward pass, so the largest batch grows far beyond the plain one. With a checkpoint per layer, the way the
  official code does it, each text keeps 24 layer inputs, and the ratio stays near 15: with PyTorch's SDPA attention a
  layer keeps only about 18 times its input for the backward pass. The paper's 130 / 6 ≈ 21.7 at 8,192 tokens came
  from a baseline that stored full attention matrices.
* **Sparse retrieval.** One sparse matrix product replaces the per-pair dictionary loop. Counting the time to build
  the index, the gain is smaller (`sparse_retrieval_vs_flagembedding_incl_index_build`).
"""),
code(r"""
print(f"overhead in the call: median {results['encode_overhead_vs_bare_encoder']:.3f}, "
      f"rounds {results['encode_overhead_in_call_min']:.3f}-{results['encode_overhead_in_call_max']:.3f}")
print(f"paired rounds (cross-check): {results['encode_overhead_paired_rounds']:.3f}")
print(f"share of the call: tokenization {results['encode_tokenize_share']:.3f}, "
      f"heads' linear layers {results['encode_heads_share']:.3f}")
"""),
code(r"""
assert all(met.values()), met
# the prose above: 1.08 against 1.10, tokenization about 3 % of the call
assert round(results["encode_overhead_vs_bare_encoder"], 2) == 1.08
assert 0.025 <= results["encode_tokenize_share"] < 0.035
assert results["padding_share_grouped_whole_batch"] > results["padding_share_grouped"]
assert results["max_batch_ratio_layer_ckpt_8k"] < 20 < results["max_batch_ratio_8k"]
assert results["sparse_retrieval_vs_flagembedding_incl_index_build"] < results["sparse_retrieval_vs_flagembedding"]
print("checked")
"""),
md(r"""
## Summary

* Every benchmark is a ratio measured in one run, against FlagEmbedding on the same weights, or against the plain code path.
* `m3ref` meets all six targets on this CPU. The overhead (1.08 against 1.10) has the least room, mostly tokenization on a tiny encoder. Two of them depend on choices the official code does not make: sorting
  texts before cutting sub-batches, and one checkpoint per sub-batch instead of one per layer.
* On a GPU, `python benchmarks/run.py --full` runs the same measures at BGE-M3's size in bf16.

## Exercises

1. Why is each benchmark a ratio measured in one run, and not a time compared with a fixed number?
2. Which single change in `m3ref` makes the lexical training memory independent of the vocabulary size?

```{admonition} Solutions
:class: dropdown

1. A busy or slower machine slows both sides of a ratio alike, but not a fixed threshold. Timed asserts in tests would fail at random.
2. `scores.s_lex` computes in the space of the token ids present in the batch (chapter 2), instead of scattering into a (batch, length, vocabulary) tensor.
```
"""),
]
write(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "13_benchmarks.ipynb"), cells)
