import sys; import os; sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nb import md, code, write

cells = [
md(r"""
# Dense retrieval

Dense retrieval gives each text **one vector** and scores a query against a passage by the
inner product of their vectors (paper Sec. 3.2). The encoder turns a query $q$ into last
hidden states $\mathbf{H}_q$, one row per token. M3 keeps the row of the special first token
[CLS] and normalises it:

$$
e_q = \mathrm{norm}(\mathbf{H}_q[0]), \qquad e_p = \mathrm{norm}(\mathbf{H}_p[0]), \qquad
s_{dense} = \langle e_p, e_q \rangle .
$$

This chapter computes each piece: what the [CLS] state is, why the normalisation turns the
inner product into a cosine, how one query is scored against many passages at once, and how
the top-$k$ passages fall out of one matrix product.
"""),
code(r"""
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from m3ref import M3Model, scores
from m3ref.book import load_model, show

model = load_model()
tok = model.tokenizer
"""),
md(r"""
## [CLS] pooling

The tokenizer wraps every text as `<s> ... </s>`. The first token `<s>` plays the role of
BERT's [CLS] token: it stands for no word of the text. At every layer its state attends to
all tokens, so training can make its last hidden state $\mathbf{H}[0]$ a summary of the whole
text. Taking that one row as the text's vector is called *[CLS] pooling*. Other embedding
models average all rows instead (mean pooling). M3 uses [CLS], and so does the official code
(`pooling_method='cls'`).
"""),
code(r"""
query = "Why does Mars look red?"
ids = tok(query)["input_ids"]
print(list(enumerate(tok.convert_ids_to_tokens(ids))))
"""),
md(r"""
Position 0 holds `<s>`. One forward pass of the encoder gives one hidden state per position,
and dense retrieval keeps only the first:
"""),
code(r"""
batch = model.collate([ids])
with torch.no_grad():
    H = model.encoder(**batch).last_hidden_state  # (1, L, d)
print("H:", tuple(H.shape), "  H[0]:", tuple(H[0, 0].shape))
print("first 4 entries of H[0]:", np.round(H[0, 0, :4].numpy(), 4))
"""),
md(r"""
## Normalisation

The [CLS] state is divided by its length, so every embedding lies on the unit sphere:

$$
e = \mathrm{norm}(\mathbf{H}[0]) = \frac{\mathbf{H}[0]}{\lVert \mathbf{H}[0] \rVert_2} .
$$

In `M3Model.forward`, the lines `dense = hidden[:, 0]` and `F.normalize(dense, dim=-1)` do this:
"""),
code(r"""
show(M3Model.forward)
"""),
md(r"""
By hand, in two dimensions: $\mathbf{H}[0] = (3, 4)$ has length $\sqrt{9 + 16} = 5$, so
$e = (3/5, 4/5) = (0.6, 0.8)$, and $0.6^2 + 0.8^2 = 0.36 + 0.64 = 1$.
"""),
code(r"""
e = F.normalize(torch.tensor([3.0, 4.0]), dim=-1)
assert torch.allclose(e, torch.tensor([0.6, 0.8]))
print("e =", [round(v, 4) for v in e.tolist()], " length", round(float(e.norm()), 4))
"""),
md(r"""
The same with the model, in numpy: take row 0 of the hidden states, divide by its norm,
and compare with what `model.encode(...).dense` returns.
"""),
code(r"""
h0 = H[0, 0].numpy()
e_numpy = h0 / np.linalg.norm(h0)
e_encode = model.encode([query]).dense[0]
assert np.allclose(e_numpy, e_encode, atol=1e-5)
print("norm of encode().dense:", f"{np.linalg.norm(e_encode):.4f}")
"""),
md(r"""
## The dense score is a cosine

The dense score is the inner product of two normalised vectors:

$$
s_{dense} = \langle e_p, e_q \rangle = \sum_k e_p[k]\, e_q[k] .
$$

`scores.s_dense` takes a batch of queries and a batch of passages:
"""),
code(r"""
show(scores.s_dense)
"""),
md(r"""
The cosine of the angle between two vectors is
$\cos(a, b) = \langle a, b \rangle / (\lVert a \rVert \, \lVert b \rVert)$. For unit vectors
both lengths are 1, so the inner product **is** the cosine, and $s_{dense}$ lies in
$[-1, 1]$. The length of a raw vector no longer counts, only its direction.

A hand example in two dimensions shows why this matters. The query's raw [CLS] state is
$q = (3, 4)$; four passages have raw states $p_1 = (4, 3)$, $p_2 = (0, 2)$, $p_3 = (10, 0)$,
$p_4 = (-3, -4)$.

| passage | raw $\langle q, p \rangle$ | $e_p$ | $s_{dense} = \langle e_q, e_p \rangle$ with $e_q = (0.6, 0.8)$ |
|---|---|---|---|
| $p_1$ | $3 \cdot 4 + 4 \cdot 3 = 24$ | $(0.8, 0.6)$ | $0.48 + 0.48 = 0.96$ |
| $p_2$ | $0 + 4 \cdot 2 = 8$ | $(0, 1)$ | $0 + 0.8 = 0.8$ |
| $p_3$ | $3 \cdot 10 + 0 = 30$ | $(1, 0)$ | $0.6 + 0 = 0.6$ |
| $p_4$ | $-9 - 16 = -25$ | $(-0.6, -0.8)$ | $-0.36 - 0.64 = -1$ |

The raw inner product ranks $p_3$ first only because $p_3$ is long. After normalisation,
$p_1$, the passage pointing most nearly in the query's direction, comes first.
"""),
code(r"""
q_raw = torch.tensor([[3.0, 4.0]])
p_raw = torch.tensor([[4.0, 3.0], [0.0, 2.0], [10.0, 0.0], [-3.0, -4.0]])
raw = (q_raw @ p_raw.T)[0]
s = scores.s_dense(F.normalize(q_raw, dim=-1), F.normalize(p_raw, dim=-1))[0]
assert torch.allclose(raw, torch.tensor([24.0, 8.0, 30.0, -25.0]))
assert torch.allclose(s, torch.tensor([0.96, 0.8, 0.6, -1.0]))
assert torch.allclose(s, F.cosine_similarity(q_raw, p_raw))  # the inner product of unit vectors is the cosine
print("raw ranking:   ", ["p%d" % (i + 1) for i in raw.argsort(descending=True).tolist()])
print("cosine ranking:", ["p%d" % (i + 1) for i in s.argsort(descending=True).tolist()])
"""),
md(r"""
On the left, the raw vectors; on the right, the same vectors normalised onto the unit circle,
where only the angle to the query remains.
"""),
code(r"""
fig, axes = plt.subplots(1, 2, figsize=(7, 3.2))
names = ["p1", "p2", "p3", "p4"]
for ax, (title, qv, pv) in zip(axes, [("raw states", q_raw, p_raw),
                                      ("normalised: cosine", F.normalize(q_raw, dim=-1), F.normalize(p_raw, dim=-1))]):
    lim = float(pv.abs().max()) * 1.15
    if title.startswith("normalised"):
        t = np.linspace(0, 2 * np.pi, 200)
        ax.plot(np.cos(t), np.sin(t), color="0.8", lw=1)
    for v, name in zip(pv, names):
        ax.annotate("", xy=v.tolist(), xytext=(0, 0), arrowprops=dict(arrowstyle="->", color="tab:blue"))
        ax.text(float(v[0]) * 1.05, float(v[1]) * 1.05, name, color="tab:blue", fontsize=9)
    ax.annotate("", xy=qv[0].tolist(), xytext=(0, 0), arrowprops=dict(arrowstyle="->", color="tab:red", lw=2))
    ax.text(float(qv[0, 0]) * 1.05, float(qv[0, 1]) * 1.05, "q", color="tab:red", fontsize=9)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.axhline(0, color="0.9", lw=0.8)
    ax.axvline(0, color="0.9", lw=0.8)
    ax.set_title(title, fontsize=10)
plt.tight_layout()
plt.show()
"""),
md(r"""
## One query, many passages: a matrix product

Stack the normalised query vectors as the rows of $E_Q$ ($B \times d$) and the passage
vectors as the rows of $E_P$ ($N \times d$). All $B \cdot N$ scores come from one matrix product,

$$
S = E_Q E_P^\top, \qquad S_{ij} = \langle e_{q_i}, e_{p_j} \rangle ,
$$

and the top-$k$ passages of query $i$ are the $k$ largest entries of row $i$. This is what
`s_dense` computes by default. With `pairwise=True` it scores aligned pairs
$(q_i, p_i)$ instead and returns the diagonal of $S$.

By hand, with the four normalised passages above and two queries
$e_{q_1} = (0.6, 0.8)$ and $e_{q_2} = (1, 0)$:

$$
S = \begin{pmatrix} 0.6 & 0.8 \\ 1 & 0 \end{pmatrix}
    \begin{pmatrix} 0.8 & 0 & 1 & -0.6 \\ 0.6 & 1 & 0 & -0.8 \end{pmatrix}
  = \begin{pmatrix} 0.96 & 0.8 & 0.6 & -1 \\ 0.8 & 0 & 1 & -0.6 \end{pmatrix} .
$$

Top-2 of $q_1$: $p_1$ (0.96), $p_2$ (0.8). Top-2 of $q_2$: $p_3$ (1), $p_1$ (0.8).
The pairs $(q_1, p_1)$ and $(q_2, p_2)$ score $0.96$ and $0$, the diagonal.
"""),
code(r"""
E_Q = torch.tensor([[0.6, 0.8], [1.0, 0.0]])
E_P = F.normalize(p_raw, dim=-1)
S = scores.s_dense(E_Q, E_P)
assert torch.allclose(S, torch.tensor([[0.96, 0.8, 0.6, -1.0], [0.8, 0.0, 1.0, -0.6]]), atol=1e-6)
top = torch.topk(S, k=2, dim=1)
assert top.indices.tolist() == [[0, 1], [2, 0]]
pairs = scores.s_dense(E_Q, E_P[:2], pairwise=True)
assert torch.allclose(pairs, S[:, :2].diagonal())
for i in range(2):
    print(f"q{i + 1}: top-2", [f"p{j + 1} ({v:.2f})" for j, v in zip(top.indices[i].tolist(), top.values[i].tolist())])
print("pairwise:", [round(v, 2) for v in pairs.tolist()])
"""),
md(r"""
> A real index works the same way: the corpus is encoded once into $E_P$ and each query costs
> one matrix-vector product plus a top-$k$. The official evaluation scripts use a flat
> inner-product index (faiss `Flat`), which is exactly this product. Approximate indexes
> trade some exactness for speed.

## With the model

Four English questions and their four answer passages from `data_samples/`: every query is
scored against every passage. The numpy product of the `encode` outputs, `scores.s_dense` on
tensors, and the `"dense"` entry of `compute_score` must agree.
"""),
code(r"""
import json, os
from m3ref.tiny import SOURCE_DIR  # data_samples/source

rows = [json.loads(line) for line in open(os.path.join(SOURCE_DIR, "en.jsonl"), encoding="utf-8")][:4]
queries = [r["query"] for r in rows]
passages = [r["passage"] for r in rows]
eq, ep = model.encode(queries).dense, model.encode(passages).dense
S_numpy = eq @ ep.T  # (4, 4)
S_torch = scores.s_dense(torch.from_numpy(eq), torch.from_numpy(ep)).numpy()
S_pairs = model.compute_score([(q, p) for q in queries for p in passages])["dense"]
assert np.allclose(S_numpy, S_torch, atol=1e-6)
assert np.allclose(S_numpy.ravel(), S_pairs, atol=1e-5)
for q in queries:
    print(q)
print(f"scores between {S_numpy.min():.4f} and {S_numpy.max():.4f}")
print("top-1 passage of each query:", S_numpy.argmax(1).tolist(), " (right answer: [0, 1, 2, 3])")
assert 0.5 < S_numpy.min() and S_numpy.max() < 0.85  # all positive, none near 1
assert (S_numpy.argmax(1) == np.arange(4)).sum() == 1  # only the last query finds its answer
"""),
md(r"""
For comparison, the cosine of two random directions in $d = 128$ dimensions is close to 0:
its mean is 0 and its standard deviation about $1/\sqrt{128} \approx 0.088$.
"""),
code(r"""
g = torch.Generator().manual_seed(0)
a, b = F.normalize(torch.randn(2, 1000, 128, generator=g), dim=-1)
cos = (a * b).sum(-1)
print(f"1000 pairs of random unit vectors: cosine std {cos.std():.3f}, largest cosine {cos.max():.2f}")
assert abs(cos.mean()) < 0.01 and 0.08 < cos.std() < 0.1
assert cos.max() < S_numpy.min()  # every model score is above all 1000 random ones
"""),
md(r"""
> The model is **untrained**, and the scores show it. The [CLS] vectors of different texts
> differ, so the scores spread from about 0.60 to 0.79, but the differences come from random
> weights, not from meaning: only the last query ranks its own answer first. All sixteen
> scores are above the largest of 1000 random cosines, so the eight vectors share a large
> common part. Training (chapters 5 to 7) is what makes the [CLS] state follow the
> meaning of the text. The computation above is exactly the one the real BGE-M3 does; only
> the weights differ.
>
> The tiny model's random weights are drawn with a standard deviation of 0.2
> (`initializer_range`), not XLM-R's 0.02. With 0.02, the [CLS] vector of this untrained
> 2-layer encoder is nearly the same for every text (cosine about 0.9999), and the dense
> score could hardly tell texts apart (see `m3ref/tiny.py`).

## Summary

* Dense retrieval represents a text by one vector: the last hidden state of the first token
  `<s>` ([CLS] pooling), L2-normalised.
* For unit vectors the inner product is the cosine, so $s_{dense} \in [-1, 1]$ and the length of the raw state does not count.
* Scoring $B$ queries against $N$ passages is one matrix product $E_Q E_P^\top$. Top-$k$ is the $k$ largest entries of each row.
* `scores.s_dense`, `model.encode(...).dense` and `compute_score(...)["dense"]` agree with a few lines of numpy.

## Exercises

1. For unit vectors, show that $\lVert e_q - e_p \rVert^2 = 2 - 2\, s_{dense}$. What does this mean for ranking by Euclidean distance?
2. Add the passage $p_5 = (-4, 3)$ to the hand example. What is its score for $q_1$ and for $q_2$, and where does it rank?
3. Compute the mean of the rows of `H` over the real tokens (mean pooling) for the four queries and passages of the model section, normalise, and compare the range of the scores and the top-1 list with those of [CLS] pooling. Why is this not a statement about retrieval quality?
4. `s_dense(q, p, pairwise=True)` needs `q` and `p` of the same length. Which entries of the full matrix does it return, and why is it cheaper?

```{admonition} Solutions
:class: dropdown

1. $\lVert e_q - e_p \rVert^2 = \lVert e_q \rVert^2 + \lVert e_p \rVert^2 - 2 \langle e_q, e_p \rangle = 2 - 2\, s_{dense}$. The distance falls as the score rises, so ranking by smallest distance gives the same order as ranking by largest score.
2. $e_{p_5} = (-0.8, 0.6)$. For $q_1$: $0.6 \cdot (-0.8) + 0.8 \cdot 0.6 = 0$, fourth of five, between $p_3$ (0.6) and $p_4$ (-1). For $q_2$: $1 \cdot (-0.8) + 0 \cdot 0.6 = -0.8$, below $p_4$ ($-0.6$), so it ranks last.
3. Mean pooling: `m = batch["attention_mask"][..., None]; v = (H * m).sum(1) / m.sum(1)`, then `F.normalize`. On the untrained model the scores come out higher (about 0.73 to 0.89), with about the same spread, and the top-1 list changes (two of the four queries find their answer). Both poolings use the same random weights here: a different or even a better-looking list on four queries says nothing about how either pooling retrieves after training.
4. The diagonal $S_{ii} = \langle e_{q_i}, e_{p_i} \rangle$. It costs $B \cdot d$ multiplications instead of $B \cdot N \cdot d$.
```
"""),
]
write(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "01_dense.ipynb"), cells)
