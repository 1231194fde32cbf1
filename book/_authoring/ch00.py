import sys; import os; sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nb import md, code, write

cells = [
md(r"""
# M3-Embedding, computed

This book explains **M3-Embedding** (BGE-M3) by computing it. The model is from Chen et al.,
*M3-Embedding: Multi-Linguality, Multi-Functionality, Multi-Granularity Text Embeddings
Through Self-Knowledge Distillation*, arXiv:2402.03216. Every formula in the paper is one
function of the small package `m3ref`. Each chapter puts the formula in LaTeX, shows the
package code directly below it, works a small example by hand, and asserts that the package
gets the same answer.

The three M's (paper Sec. 1):

* **Multi-linguality**: one model for more than 100 languages, and for retrieval across languages.
* **Multi-functionality**: one encoder pass gives three retrieval functions:
  *dense* retrieval from the [CLS] vector, *lexical* (sparse) retrieval from one weight per
  token, and *multi-vector* retrieval (ColBERT-style late interaction) from one vector per token.
* **Multi-granularity**: inputs from a short sentence up to 8192 tokens.

A fourth idea ties them together. The three scores are summed into an ensemble, and the
ensemble teaches each of the three during training (*self-knowledge distillation*, Sec. 3.3).

> Remarks of ours, as opposed to claims of the paper, are set as quotes like this one.
""""""
"""),
md(r"""
## Road map

| Chapter | Paper | What is computed | `m3ref` |
|---|---|---|---|
| 1 Dense retrieval | Sec. 3.2 | $s_{dense} = \langle e_q, e_p \rangle$ | `scores.s_dense` |
| 2 Lexical retrieval | Sec. 3.2 | $s_{lex} = \sum_{t \in q \cap p} w_{q_t} w_{p_t}$ | `scores.s_lex` |
| 3 Multi-vector retrieval | Sec. 3.2 | $s_{mul} = \frac{1}{N}\sum_i \max_j E_q[i] \cdot E_p[j]$ | `scores.s_mul` |
| 4 Hybrid ranking | Sec. 3.2 | $s_{rank} = w_1 s_{dense} + w_2 s_{lex} + w_3 s_{mul}$ | `scores.s_inter` |
| 5 Contrastive learning | Sec. 3.3 | InfoNCE $\mathcal{L}$ | `losses.info_nce`, `losses.loss_L` |
| 6 Self-knowledge distillation | Sec. 3.3 | $\mathcal{L}'$, $\mathcal{L}_{final}$ | `losses.loss_L_prime`, `losses.loss_final` |
| 7 Data and multi-stage training | Sec. 3.1, 3.4 | unsupervised pairs, fine-tuning, hard negatives | `data`, `retrieval` |
| 8 Efficient batching | Sec. 3.4, Table 10 | length groups, sub-batches | `batching` |
| 9 Multi-GPU training | Sec. 3.4 | cross-device negatives | `distributed`, `train` |
| 10 MCLS | App. B.2 | multiple [CLS] for long documents | `M3Model.encode(mcls_stride=...)` |
"""),
md(r"""
## Running the chapters

Every chapter runs top to bottom on a laptop CPU in about a minute. It uses a **tiny
M3 model** that `m3ref` builds offline: an XLM-RoBERTa encoder with 2 layers of width 128
(BGE-M3 has 24 of width 1024), the same 8192-token position table, the same two heads, and a
tokenizer trained on the ten-language texts in `data_samples/`. Its weights are random until
a chapter trains it, so its scores show *how* M3 computes, not how well the real model retrieves.

* **GPU**: `model.to("cuda")`, and `model.encode(texts, dtype=torch.float16)` for half precision.
* **The real model**: start Jupyter with `M3REF_REAL_MODEL=1`. `load_model()` then returns
  `M3Model.from_pretrained("BAAI/bge-m3")`, the official checkpoint from the Hugging Face hub.
  It is the same code path and the same checkpoint layout. It needs the network and about 2.3 GB.
"""),
code(r"""
import numpy as np
import torch

import m3ref
from m3ref import M3Config, M3Model
from m3ref.book import REAL_MODEL, load_model, show

model = load_model()
cfg = model.encoder.config
print(f"{type(model.encoder).__name__}: {cfg.num_hidden_layers} layers, hidden size {cfg.hidden_size}, "
      f"{cfg.max_position_embeddings - 2} positions, vocabulary {len(model.tokenizer)}")
print("real BAAI/bge-m3:", REAL_MODEL)
"""),
md(r"""
## One pass, three representations

The model is one encoder and two linear heads (paper Fig. 2). `forward` computes all three
representations from the last hidden states $\mathbf{H}$:

* dense: $e = \mathrm{norm}(\mathbf{H}[0])$, the state of the [CLS] token `<s>`;
* lexical: $w_t = \mathrm{ReLU}(\mathbf{W}_{lex}^\top \mathbf{H}[i])$, one weight per token;
* multi-vector: $E = \mathrm{norm}(\mathbf{W}_{mul}^\top \mathbf{H}[1:])$, one vector per token after [CLS].

This is the package's code, shown from the package itself:
"""),
code(r"""
show(M3Model.forward)
"""),
md(r"""
`encode` runs this over many texts. It batches them by length and returns numpy arrays in input order:
"""),
code(r"""
texts = ["Why does Mars look red?",
         "Der rote Planet verdankt seine Farbe dem Eisenoxid in seinem Staub.",
         "火星为什么看起来是红色的？"]
out = model.encode(texts)
print("dense:", out.dense.shape, out.dense.dtype, "norms", np.round(np.linalg.norm(out.dense, axis=1), 4))
print("colbert:", [v.shape for v in out.colbert])
print("lexical terms of text 0:", len(out.sparse[0]))
"""),
md(r"""
The lexical output is a dictionary from token id to weight. A token that occurs twice keeps
its larger weight, and the special tokens `<s>`, `</s>`, `<pad>` and `<unk>` are dropped
(chapter 2). Decoded into tokens:
"""),
code(r"""
tokens = model.tokenizer.convert_ids_to_tokens(list(out.sparse[0]))
print({tok: round(w, 3) for tok, w in zip(tokens, out.sparse[0].values())})
"""),
md(r"""
## Scoring pairs

`compute_score` gives the three scores of each (query, passage) pair and two weighted
averages, as the official `BGEM3FlagModel.compute_score` does (chapter 4):
"""),
code(r"""
pairs = [(texts[0], texts[1]), (texts[0], texts[2])]
scores = model.compute_score(pairs, weights=(0.4, 0.2, 0.4))
for key, values in scores.items():
    print(f"{key:>22}: " + "  ".join(f"{v:.4f}" for v in values))
"""),
md(r"""
> The tiny model is untrained, so these numbers do not yet mean "relevant". Chapters 5 to
> 9 train it on the samples, and the experiments compare the four retrieval methods.

The same function, checked against what `encode` returned: the dense score is the inner product of the two dense vectors.
"""),
code(r"""
assert abs(scores["dense"][0] - float(out.dense[0] @ out.dense[1])) < 1e-5
assert abs(scores["sparse+dense"][0] - (0.4 * scores["dense"][0] + 0.2 * scores["sparse"][0]) / 0.6) < 1e-6
print("checked")
"""),
md(r"""
## Two definitions of the training loss

The paper and the official code agree on the scores but not on every constant of the
loss. `M3Config` has both as presets. Chapter 6 runs both.
"""),
code(r"""
for preset in ("official", "paper"):
    print(M3Config.from_preset(preset).summary())
"""),
md(r"""
## Checkpoints

`M3Model.save_pretrained` writes the official BGE-M3 layout: the encoder's `config.json` and
weights, the tokenizer, `colbert_linear.pt` and `sparse_linear.pt`. FlagEmbedding's
`BGEM3FlagModel` loads a directory written by `m3ref`, and `M3Model.from_pretrained` loads
one written by FlagEmbedding. The test suite checks both directions on the same weights.
"""),
code(r"""
import os, tempfile
with tempfile.TemporaryDirectory() as d:
    model.save_pretrained(d)
    print(sorted(os.listdir(d)))
    again = M3Model.from_pretrained(d, device="cpu")
    assert np.array_equal(again.encode(texts).dense, out.dense)
"""),
md(r"""
## Summary

* M3 is one encoder with three heads. Dense, lexical and multi-vector retrieval all come from one forward pass.
* `m3ref` computes each formula of the paper in one named function. The chapters show that code and check it by hand.
* The tiny offline model has the real architecture and checkpoint layout. `M3REF_REAL_MODEL=1` switches to `BAAI/bge-m3`.

## Exercises

1. Encode the same sentence in two languages. How many lexical terms do the two encodings share?
2. Why does `encode` return one ColBERT vector *fewer* than the number of tokens?
3. Save the model, delete `sparse_linear.pt`, and load it again. What happens, and how do you start fresh heads on purpose?

```{admonition} Solutions
:class: dropdown

1. Compute `set(a.sparse[0]) & set(b.sparse[0])`. Shared subword pieces (names, numbers, cognates) are the only overlap, which is why lexical retrieval is weak across languages.
2. The vector of `[CLS]` is left out: its state is the dense embedding (paper Sec. 3.2). The final `</s>` is kept, as in the official code.
3. `from_pretrained` raises an `M3Error` that names the missing file. `init_heads=True` starts new heads on a plain encoder such as `xlm-roberta-large`.
```
"""),
]
write(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "00_overview.ipynb"), cells)
