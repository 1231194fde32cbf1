import sys; import os; sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nb import md, code, write

cells = [
md(r"""
# Hybrid ranking

One forward pass of M3 gives all three scores of chapters 1 to 3, so they can be combined
at almost no extra cost. The paper ranks candidates by a weighted sum (Sec. 3.2):

$$
s_{rank} = w_1 \cdot s_{dense} + w_2 \cdot s_{lex} + w_3 \cdot s_{mul} .
$$

The same sum with the weights $(1, 0.3, 1)$ is the ensemble score $s_{inter}$ that teaches
the three methods during training (Sec. 3.3, chapter 6). This chapter computes the sum,
compares it with the weighted *average* that the official `compute_score` returns, shows on
a hand-made example how the weights decide the winner, and lists the weights used in the
paper's experiments.
"""),
code(r"""
import matplotlib.pyplot as plt
import numpy as np
import torch

from m3ref import M3Config, scores
from m3ref.book import load_model, show

model = load_model()
"""),
md(r"""
## The weighted sum

$$
s_{rank} = w_1 \cdot s_{dense} + w_2 \cdot s_{lex} + w_3 \cdot s_{mul}
$$

`scores.s_inter` is this sum; it works on numbers, numpy arrays and tensors of any shape:
"""),
code(r"""
show(scores.s_inter)
"""),
md(r"""
A hand-made example: one query and four passages whose three scores disagree. Passage A is
the dense favourite, B the lexical one, C the multi-vector one, and D is good at everything
without winning anything.

| passage | $s_{dense}$ | $s_{lex}$ | $s_{mul}$ | $s_{rank}$ with $w = (1, 0.3, 1)$ |
|---|---|---|---|---|
| A | **0.80** | 0.05 | 0.60 | $0.80 + 0.015 + 0.60 = 1.415$ |
| B | 0.55 | **0.60** | 0.58 | $0.55 + 0.18 + 0.58 = 1.31$ |
| C | 0.60 | 0.10 | **0.75** | $0.60 + 0.03 + 0.75 = 1.38$ |
| D | 0.70 | 0.30 | 0.66 | $0.70 + 0.09 + 0.66 = 1.45$ |

With these weights D wins, although none of the three methods ranks it first.
"""),
code(r"""
names = ["A", "B", "C", "D"]
dense = torch.tensor([0.80, 0.55, 0.60, 0.70])
lex = torch.tensor([0.05, 0.60, 0.10, 0.30])
mul = torch.tensor([0.60, 0.58, 0.75, 0.66])
s_rank = scores.s_inter(dense, lex, mul, weights=(1.0, 0.3, 1.0))
assert torch.allclose(s_rank, torch.tensor([1.415, 1.31, 1.38, 1.45]))
print("s_rank:", [f"{n} {v:.3f}" for n, v in zip(names, s_rank.tolist())])
print("ranking:", [names[i] for i in s_rank.argsort(descending=True).tolist()])
"""),
md(r"""
## The official weighted average: same ranking, other scale

The official `compute_score` does not return the sum. It divides by the sum of the weights:

$$
s_{avg} = \frac{w_1 \cdot s_{dense} + w_2 \cdot s_{lex} + w_3 \cdot s_{mul}}{w_1 + w_2 + w_3} = \frac{s_{rank}}{w_1 + w_2 + w_3} .
$$

`scores.weighted_average` is that formula:
"""),
code(r"""
show(scores.weighted_average)
"""),
md(r"""
For fixed weights the divisor is one positive number, here $1 + 0.3 + 1 = 2.3$, so every
score shrinks by the same factor and the order cannot change: A $1.415 / 2.3 = 0.6152$,
B $1.31 / 2.3 = 0.5696$, C $1.38 / 2.3 = 0.6$, D $1.45 / 2.3 = 0.6304$. Only the scale
differs. The average stays in the range of the individual scores, which makes it easier to
read; the sum is what the paper writes. A threshold on the score (for example "keep
passages above 0.6") must be converted between the two.
"""),
code(r"""
s_avg = scores.weighted_average((dense, lex, mul), (1.0, 0.3, 1.0))
assert torch.allclose(s_avg, s_rank / 2.3)
assert torch.allclose(s_avg, torch.tensor([0.6152, 0.5696, 0.6, 0.6304]), atol=1e-4)
assert s_avg.argsort().tolist() == s_rank.argsort().tolist()
print("s_avg: ", [f"{n} {v:.4f}" for n, v in zip(names, s_avg.tolist())])
print("ranking:", [names[i] for i in s_avg.argsort(descending=True).tolist()])
"""),
md(r"""
## How the weights change the winner

Each method alone picks its own favourite, and the mixtures pick others:
"""),
code(r"""
settings = {"dense only (1, 0, 0)": (1, 0, 0), "lexical only (0, 1, 0)": (0, 1, 0),
            "multi-vector only (0, 0, 1)": (0, 0, 1), "dense+sparse (1, 0.3, 0)": (1, 0.3, 0),
            "all (1, 0.3, 1)": (1, 0.3, 1), "all (1, 1, 1)": (1, 1, 1),
            "MLDR dense+sparse (0.2, 0.8, 0)": (0.2, 0.8, 0), "MLDR all (0.15, 0.5, 0.35)": (0.15, 0.5, 0.35)}
top1 = {}
for label, w in settings.items():
    s = scores.s_inter(dense, lex, mul, w)
    top1[label] = names[int(s.argmax())]
    print(f"{label:>32}: top-1 {top1[label]}   scores " + " ".join(f"{v:.3f}" for v in s.tolist()))
assert [top1[k] for k in settings] == ["A", "B", "C", "A", "D", "B", "B", "B"]
"""),
md(r"""
Multiplying all three weights by the same positive number changes no ranking (the argument
of the average above), so only the ratios $w_2 / w_1$ and $w_3 / w_1$ matter. The map fixes
$w_1 = 1$ and colours each pair $(w_2, w_3)$ by the passage that comes first. The crosses
mark three settings: $(1, 0.3, 1)$, the README example $(0.4, 0.2, 0.4)$, which is
$(1, 0.5, 1)$ after dividing by 0.4, and `compute_score`'s default $(1, 1, 1)$. The two MLDR
settings have $w_2 / w_1 = 4$ and $3.3$, far to the right, where B wins.
"""),
code(r"""
from matplotlib.colors import ListedColormap

w2_grid = np.linspace(0, 1.2, 121)
w3_grid = np.linspace(0, 2.4, 121)
S = np.stack([dense.numpy(), lex.numpy(), mul.numpy()], axis=1)  # (4 passages, 3 scores)
winner = np.array([[np.argmax(S @ np.array([1.0, w2, w3])) for w2 in w2_grid] for w3 in w3_grid])
colors = ["tab:blue", "tab:orange", "tab:green", "tab:purple"]

fig, ax = plt.subplots(figsize=(6.2, 3.4))
ax.imshow(winner, origin="lower", extent=(0, 1.2, 0, 2.4), aspect="auto",
          cmap=ListedColormap(colors), vmin=-0.5, vmax=3.5, interpolation="nearest")
for w2, w3, label in [(0.3, 1.0, "(1, 0.3, 1)"), (0.5, 1.0, "(0.4, 0.2, 0.4)"), (1.0, 1.0, "(1, 1, 1)")]:
    ax.plot(w2, w3, "kx")
    ax.annotate(label, (w2, w3), textcoords="offset points", xytext=(4, 4), fontsize=8)
ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=c) for c in colors], labels=[f"top-1 {n}" for n in names],
          loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
ax.set_xlabel("w2 / w1 (lexical)")
ax.set_ylabel("w3 / w1 (multi-vector)")
ax.set_title("winner of s_rank, w1 = 1", fontsize=10)
plt.tight_layout()
plt.show()
assert set(np.unique(winner).tolist()) == {0, 1, 2, 3}  # every passage wins somewhere
"""),
md(r"""
> The lexical score is not normalised (chapter 2): it can exceed 1 and varies more from
> query to query than the two cosine-based scores. So a weight is not only a vote of
> confidence in a method; it also sets the scale of its score against the others. That is
> one reason why the lexical weight is usually the smallest.

## The weights in the paper's experiments

The paper does not score a whole corpus with $s_{rank}$. Each method first retrieves
candidates, and the combination re-ranks them. The weights and where they come from, as
read in the official repository (FlagEmbedding) and the paper:

| where | $w_1, w_2, w_3$ | source |
|---|---|---|
| MIRACL (paper Sec. 4), Dense+Sparse and All | 1, 0.3, (0 or 1) | The paper's setting for MIRACL. The official repository has no M3 script for MIRACL; the paper's footnotes describe Dense+Sparse as re-ranking the union of both top-1000 lists by the combined score, Multi-vec as re-ranking the dense top-200, and All as the sum of all three. |
| MKQA evaluation script | 1, 0.3 (Dense+Sparse); 1, 0.3, 1 (All) | `research/C_MTEB/MKQA` in FlagEmbedding; All re-ranks the dense top-100. |
| MLDR evaluation script | 0.2, 0.8 (Dense+Sparse); 0.15, 0.5, 0.35 (All) | `research/C_MTEB/MLDR`; All re-ranks the dense top-200. |
| training ensemble $s_{inter}$ | 1, 0.3, 1 | FlagEmbedding's `ensemble_score`, hard-coded; `M3Config.ensemble_weights` here (chapter 6). |
| `compute_score` default | 1, 1, 1 | FlagEmbedding's `BGEM3FlagModel.compute_score`, and `M3Model.compute_score` here. |

On long documents (MLDR) the lexical score gets the largest weight: exact term matches are
strong evidence in a long text, and the paper's MLDR results have the lexical method ahead
of dense retrieval (nDCG@10 62.2 against 52.5).
"""),
code(r"""
print("training ensemble weights, M3Config():", M3Config().ensemble_weights)
assert M3Config.official().ensemble_weights == M3Config.paper().ensemble_weights == (1.0, 0.3, 1.0)
"""),
md(r"""
## `compute_score` on the model

`model.compute_score(pairs, weights=(w_dense, w_sparse, w_colbert))` scores aligned
(query, passage) pairs, like the official `BGEM3FlagModel.compute_score`. It returns five
lists: the three scores, and two weighted averages. `"sparse+dense"` uses only the first two
weights, $(w_1 s_{dense} + w_2 s_{lex}) / (w_1 + w_2)$.
"""),
code(r"""
pairs = [("Why is Mars red?", "Mars looks red because rusty iron dust covers its surface."),
         ("Why is Mars red?", "Mars has two small moons, Phobos and Deimos."),
         ("Why is Mars red?", "Der Mars ist rot, weil Eisenoxid seinen Staub färbt."),
         ("Why is Mars red?", "Red sky at night, sailor's delight.")]
w = (1.0, 0.3, 1.0)
out = model.compute_score(pairs, weights=w)
print(list(out))
for key, values in out.items():
    print(f"{key:>22}: " + "  ".join(f"{v:.4f}" for v in values))
d, s, c = (np.array(out[k]) for k in ("dense", "sparse", "colbert"))
assert np.allclose(out["sparse+dense"], (w[0] * d + w[1] * s) / (w[0] + w[1]), atol=1e-6)
assert np.allclose(out["colbert+sparse+dense"], scores.weighted_average((d, s, c), w), atol=1e-6)
s_rank = scores.s_inter(d, s, c, w)
assert np.allclose(s_rank / sum(w), out["colbert+sparse+dense"], atol=1e-6)
assert (np.argsort(-s_rank) == np.argsort(-np.array(out["colbert+sparse+dense"]))).all()
print("ranking by s_rank:", np.argsort(-s_rank).tolist())
assert np.ptp(s) > 5 * np.ptp(d) and s.max() > 1 > d.max() and s[3] == 0
query_ids = set(model.tokenizer(pairs[0][0])["input_ids"]) - set(model.ignore_ids)
assert not query_ids & set(model.tokenizer(pairs[3][1])["input_ids"])  # the fourth passage shares no token
"""),
md(r"""
> These scores come from the **untrained** model, so the ranking means nothing about the
> passages. The checks show the mechanism: the averages are the weighted sums divided by
> the weight sum, and they rank the passages exactly as $s_{rank}$ does. Notice the scales:
> the four dense scores lie within about 0.14 of each other, while the lexical scores run
> from 0 to above 1. The lexical score is built only from shared tokens, even with random
> weights: the pieces of "Mars" occur in the first three passages and `▁red` only in the
> first, while the fourth passage's "Red" is cut into other pieces (`▁Re`, `d`), so it shares
> no token with the query and its lexical score is 0.

## Summary

* $s_{rank} = w_1 s_{dense} + w_2 s_{lex} + w_3 s_{mul}$ (`scores.s_inter`); the same function is the training ensemble with $w = (1, 0.3, 1)$.
* The official `compute_score` returns the weighted *average* $s_{rank} / \sum w$: the same ranking on another scale.
* Only the ratios of the weights matter for a ranking. On a small example, each method and each mixture can pick a different winner.
* The paper's experiments re-rank candidates with 1, 0.3, 1 (MIRACL, MKQA) and 0.2, 0.8 or 0.15, 0.5, 0.35 (MLDR's evaluation scripts).

## Exercises

1. With $w = (1, 0.3, 1)$, how large must B's lexical score become for B to win?
2. Show that the weighted average with weights $(2, 0.6, 2)$ gives the same numbers as with $(1, 0.3, 1)$. Does the weighted sum?
3. Compare the `"sparse+dense"` value of `compute_score` with `weights=(1, 0.3, 1)` and with `weights=(1, 0.3, 0)`. Why are they equal?
4. In the map, where do the regions of A and C meet on the axis $w_2 = 0$? Compute the boundary by hand.

```{admonition} Solutions
:class: dropdown

1. B needs $0.55 + 0.3\, s_{lex} + 0.58 > 1.45$ (D's score), that is $s_{lex} > 0.32 / 0.3 \approx 1.067$.
2. The average divides by $4.6$ instead of $2.3$ and the numerator doubles, so it is unchanged. The sum doubles: same ranking, twice the scale.
3. `"sparse+dense"` uses only $w_1$ and $w_2$: $(w_1 s_{dense} + w_2 s_{lex}) / (w_1 + w_2)$. The third weight only enters `"colbert+sparse+dense"`.
4. With $w_2 = 0$: A scores $0.80 + 0.60\, w_3$, C scores $0.60 + 0.75\, w_3$, D scores $0.70 + 0.66\, w_3$. A beats C while $w_3 < 0.2 / 0.15 \approx 1.33$. D never wins on this axis: at $w_3 = 1.33$, A and C both score 1.6 and D 1.58, and beyond that C leads D because $C - D = 0.09\, w_3 - 0.1 > 0$. So A wins below $w_3 \approx 1.33$ and C above.
```
"""),
]
write(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "04_hybrid.ipynb"), cells)
