import sys; import os; sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nb import md, code, write

cells = [
md(r"""
# Multi-vector retrieval

Multi-vector retrieval keeps **one vector per token** and lets every query token look for
its best match in the passage, as ColBERT does (paper Sec. 3.2). The token vectors come from
a second head $\mathbf{W}_{mul}$ on the last hidden states, without the [CLS] position:

$$
E_q = \mathrm{norm}(\mathbf{W}_{mul}^\top \mathbf{H}_q[1{:}]), \qquad
E_p = \mathrm{norm}(\mathbf{W}_{mul}^\top \mathbf{H}_p[1{:}]) .
$$

The score is the mean, over the $N_q$ query tokens, of each token's best similarity in the passage:

$$
s_{mul} = \frac{1}{N_q} \sum_{i=1}^{N_q} \max_{j=1}^{N_p} E_q[i] \cdot E_p[j] .
$$

This is *late interaction*: query and passage are encoded separately, as in dense retrieval,
and only their token vectors interact, at scoring time. This chapter computes the vectors,
the score, the masks that keep padding out, one place where the official batched scorer
departs from the definition, and a picture of the token alignment.
"""),
code(r"""
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from m3ref import M3Config, M3Model, scores
from m3ref.book import load_model, show

model = load_model()
tok = model.tokenizer
"""),
md(r"""
## One vector per token

$$
E = \mathrm{norm}(\mathbf{W}_{mul}^\top \mathbf{H}[1{:}])
$$

`colbert_linear` is $\mathbf{W}_{mul}$, a square linear layer (with bias) in BGE-M3. In
`M3Model.forward`, the line `colbert = self.colbert_linear(hidden[:, 1:]) * colbert_mask[..., None]`
drops position 0, the [CLS] state, which is the dense embedding (chapter 1). It keeps the
final `</s>`, as the official code does, and sets padded positions to zero vectors. Then
`F.normalize` gives each real token a unit vector; the zero vectors of padding stay zero.
"""),
code(r"""
show(M3Model.forward)
"""),
md(r"""
By hand from the hidden states, for one query: one vector per token after `<s>`, each of length 1.
"""),
code(r"""
query = "Why is Mars red?"
ids = model.tokenize([query], 512)[0]
batch = model.collate([ids])
with torch.no_grad():
    H = model.encoder(**batch).last_hidden_state  # (1, L, d)
    E = F.normalize(model.colbert_linear(H[0, 1:]), dim=-1)  # (L-1, d)
E_encode = model.encode([query]).colbert[0]
assert np.allclose(E.numpy(), E_encode, atol=1e-5)
print("tokens:", tok.convert_ids_to_tokens(ids))
print("E:", E_encode.shape, "  lengths:", np.round(np.linalg.norm(E_encode, axis=1), 4).tolist())
"""),
md(r"""
## The score

$$
s_{mul} = \frac{1}{N_q} \sum_{i=1}^{N_q} \max_{j} E_q[i] \cdot E_p[j]
$$

`scores.s_mul` takes padded batches of token vectors with their masks. It computes every
token-to-token similarity with one `einsum`, the max over passage tokens, and the mean over
real query tokens:
"""),
code(r"""
show(scores.s_mul)
"""),
md(r"""
A hand example in two dimensions. The query has two token vectors $a = (1, 0)$ and
$b = (0, 1)$; the passage has three, $c = (0, 1)$, $d = (0.8, -0.6)$, $e = (-1, 0)$.

| query token | $\cdot\, c$ | $\cdot\, d$ | $\cdot\, e$ | max |
|---|---|---|---|---|
| $a$ | 0 | 0.8 | $-1$ | 0.8 (at $d$) |
| $b$ | 1 | $-0.6$ | 0 | 1 (at $c$) |

$s_{mul} = (0.8 + 1) / 2 = 0.9$. The score is not symmetric. With the passage as the query,
$c$, $d$, $e$ find their best matches $b$ (1), $a$ (0.8) and $b$ (0), and the mean is
$(1 + 0.8 + 0) / 3 = 0.6$.
"""),
code(r"""
a, b = [1.0, 0.0], [0.0, 1.0]
c, d, e = [0.0, 1.0], [0.8, -0.6], [-1.0, 0.0]
q_vecs, p_vecs = torch.tensor([[a, b]]), torch.tensor([[c, d, e]])  # (1, 2, 2), (1, 3, 2)
q_mask, p_mask = torch.ones(1, 2), torch.ones(1, 3)
print(q_vecs[0] @ p_vecs[0].T)
s = scores.s_mul(q_vecs, p_vecs, q_mask, p_mask)
s_swapped = scores.s_mul(p_vecs, q_vecs, p_mask, q_mask)
assert torch.allclose(s, torch.tensor([[0.9]])) and torch.allclose(s_swapped, torch.tensor([[0.6]]))
print(f"s_mul(q, p) = {s.item():.2f}   s_mul(p, q) = {s_swapped.item():.2f}")
"""),
md(r"""
## Padding masks

A batch holds texts of different lengths, so shorter texts are padded to the longest with
zero vectors, and a mask marks the real tokens (1) and the padding (0). The two masks do
different jobs:

* the **query mask** removes padded query tokens from the sum and sets $N_q$ to the number of real query tokens;
* the **passage mask** keeps padded passage positions out of the max: `s_mul` fills their similarities with $-\infty$.

Hand example: a second passage $p_2 = (c)$ of one token is padded to three positions, and a
second query $q_2 = (a)$ of one token is padded to two. The scores must equal those of the
unpadded texts:

* $s_{mul}(q_1, p_2) = (a \cdot c + b \cdot c) / 2 = (0 + 1) / 2 = 0.5$;
* $s_{mul}(q_2, p_1) = \max(0, 0.8, -1) / 1 = 0.8$;
* $s_{mul}(q_2, p_2) = a \cdot c = 0$.
"""),
code(r"""
pad = [0.0, 0.0]
Q = torch.tensor([[a, b], [a, pad]])  # (2, 2, 2)
P = torch.tensor([[c, d, e], [c, pad, pad]])  # (2, 3, 2)
Q_mask = torch.tensor([[1, 1], [1, 0]])
P_mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
S = scores.s_mul(Q, P, Q_mask, P_mask)  # (2 queries, 2 passages)
# the reference: loop over the unpadded texts
ref = torch.tensor([[(Q[i][Q_mask[i].bool()] @ P[j][P_mask[j].bool()].T).max(1).values.mean().item()
                     for j in range(2)] for i in range(2)])
assert torch.allclose(S, ref) and torch.allclose(S, torch.tensor([[0.9, 0.5], [0.8, 0.0]]))
assert torch.allclose(scores.s_mul(Q, P, Q_mask, P_mask, pairwise=True), S.diagonal())
print(S)
"""),
md(r"""
## The official batched scorer takes its max over padding

FlagEmbedding scores batches with one `einsum` over the padded tensors, then a max over
passage positions **without** the passage mask (`compute_colbert_score`, used in training and
in `compute_score`). Padded positions hold zero vectors, whose similarity to any query token
is 0. So in a padded passage each query token's max is at least 0.

This changes the score exactly when a query token's similarities to all real passage tokens
are negative. Hand example: a one-token query $f = (-0.6, -0.8)$ and the passage $p_2 = (c)$,
with $f \cdot c = -0.8$.

* Definition (paper): $s_{mul} = -0.8$.
* Official, when $p_2$ is padded to three positions because it shares a batch with $p_1$: $\max(-0.8, 0, 0) = 0$.
* Official, when $p_2$ is scored alone (no padding): $-0.8$.
* For $p_1$ (the longest, never padded) both agree: $\max(f \cdot c, f \cdot d, f \cdot e) = \max(-0.8, 0, 0.6) = 0.6$.

So the official score of a pair can depend on which other passages share its batch.
`m3ref` follows the definition by default. `max_over_padding=True` (`s_mul`),
`M3Config(colbert_max_over_padding=True)` (training) and
`compute_score(..., colbert_max_over_padding=True)` reproduce the official scorer.
"""),
code(r"""
f = [-0.6, -0.8]
Qf, Qf_mask = torch.tensor([[f]]), torch.tensor([[1]])
paper = scores.s_mul(Qf, P, Qf_mask, P_mask)
official = scores.s_mul(Qf, P, Qf_mask, P_mask, max_over_padding=True)
official_alone = scores.s_mul(Qf, P[1:, :1], Qf_mask, P_mask[1:, :1], max_over_padding=True)
assert torch.allclose(paper, torch.tensor([[0.6, -0.8]]))
assert torch.allclose(official, torch.tensor([[0.6, 0.0]]))
assert torch.allclose(official_alone, torch.tensor([[-0.8]]))
print(f"definition:          p1 {paper[0, 0]:.2f}  p2 {paper[0, 1]:.2f}")
print(f"official, batched:   p1 {official[0, 0]:.2f}  p2 {official[0, 1]:.2f}")
print(f"official, p2 alone:          p2 {official_alone[0, 0]:.2f}")
"""),
md(r"""
The switch on the model. `compute_score` pads the passages of a batch together, as the
official code does:
"""),
code(r"""
pairs = [("Why is Mars red?", "Mars looks red because rusty iron dust covers its surface."),
         ("Why is Mars red?", "Rust."),
         ("How far is the Sun?", "About 150 million kilometres.")]
definition = np.array(model.compute_score(pairs)["colbert"])
official = np.array(model.compute_score(pairs, colbert_max_over_padding=True)["colbert"])
alone = np.array([model.compute_score(p, colbert_max_over_padding=True)["colbert"] for p in pairs])
assert np.allclose(alone, definition, atol=1e-6)  # without padding the two scorers agree
# they can differ only where some query token has no positive similarity in its passage
out = model.encode([t for p in pairs for t in p], return_dense=False, return_sparse=False)
worst = min(float((out.colbert[2 * k] @ out.colbert[2 * k + 1].T).max(1).min()) for k in range(len(pairs)))
assert worst < 0 or np.allclose(official, definition, atol=1e-6)
print("definition:", np.round(definition, 4).tolist())
print("official:  ", np.round(official, 4).tolist())
print(f"smallest best-match similarity of any query token: {worst:.2f}")
print("training config with the official scorer:", M3Config.official(colbert_max_over_padding=True).colbert_max_over_padding)
"""),
md(r"""
> On the untrained model every query token has a best match with a positive similarity here,
> so the two scorers agree. The difference appears only when a query token has no positive
> similarity anywhere in a padded passage, and then it moves the score by at most that
> token's share of the mean. It is small, but it makes a score depend on its batch. `m3ref`
> keeps the switch so that parity with FlagEmbedding can be tested both ways.

## Token alignment

The heatmap shows every similarity $E_q[i] \cdot E_p[j]$ between the tokens of a query (rows)
and a passage (columns). The box in each row marks the passage token that the max picks;
$s_{mul}$ is the mean of the boxed values. `</s>` is a token like the others; `<s>` is absent.
"""),
code(r"""
q_text, p_text = pairs[0]
out = model.encode([q_text, p_text], return_dense=False, return_sparse=False)
sim = out.colbert[0] @ out.colbert[1].T  # (N_q, N_p)
q_tokens = tok.convert_ids_to_tokens(model.tokenize([q_text], 512)[0])[1:]
p_tokens = tok.convert_ids_to_tokens(model.tokenize([p_text], 512)[0])[1:]
best = sim.argmax(1)
assert abs(sim.max(1).mean() - model.compute_score(pairs[0])["colbert"]) < 1e-5

fig, ax = plt.subplots(figsize=(7.5, 3.2))
im = ax.imshow(sim, cmap="viridis", vmin=min(0.0, float(sim.min())), vmax=1.0, aspect="auto")
for i, j in enumerate(best):
    ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", lw=1.5))
ax.set_xticks(range(len(p_tokens)), p_tokens, rotation=70, fontsize=7)
ax.set_yticks(range(len(q_tokens)), [f"{t}  {sim[i].max():.2f}" for i, t in enumerate(q_tokens)], fontsize=7)
ax.set_title(f"query x passage token similarities (s_mul = {sim.max(1).mean():.3f})", fontsize=9)
fig.colorbar(im, ax=ax, fraction=0.03)
plt.tight_layout()
plt.show()
print("best match per query token:", {q: p_tokens[j] for q, j in zip(q_tokens, best)})
# the remark below states these facts about this untrained model
assert "▁red" in q_tokens and "▁red" in p_tokens
assert p_tokens[best[q_tokens.index("▁red")]] != "▁red"
assert sim.max(1).min() > 0.5
"""),
md(r"""
> The model is **untrained**, so the alignment is not about meaning. A query token's best
> match is close to arbitrary. Even `▁red`, which occurs in both texts, does not pick its
> twin. All similarities are high (every best match is above 0.5) because the untrained
> vectors share a large common direction. The trained BGE-M3 aligns identical words,
> paraphrases and translations, which is what makes multi-vector retrieval strong.

## Re-ranking without padding

In retrieval, $s_{mul}$ re-ranks the dense top-200 of a query (chapter 4). Padding 200 passages of
different lengths into one tensor wastes work on the padding. `retrieval.Index` stores every
passage's vectors back to back instead, and `scores.s_mul_packed` scores a query against a run of
them: one matrix product for all similarities, then a maximum per passage (a segment max) and the
mean over the query tokens. It is the same number as the masked `s_mul`:
"""),
code(r"""
from m3ref.scores import s_mul, s_mul_packed

show(s_mul_packed)
texts = [p for _, p in pairs]
enc = model.encode(texts, return_dense=False, return_sparse=False)
q_vecs = torch.as_tensor(model.encode(pairs[0][0], return_dense=False, return_sparse=False).colbert)  # (N_q, d)
flat = torch.as_tensor(np.concatenate(enc.colbert))  # (T, d): the passages one after another
lengths = torch.tensor([len(c) for c in enc.colbert])
packed = s_mul_packed(q_vecs, flat, lengths)  # (N,)
padded = torch.nn.utils.rnn.pad_sequence([torch.as_tensor(c) for c in enc.colbert], batch_first=True)
masked = s_mul(q_vecs[None], padded, torch.ones(1, len(q_vecs)), torch.arange(padded.shape[1])[None] < lengths[:, None])[0]
print("packed:", packed.numpy().round(4))
print("masked:", masked.numpy().round(4))
assert torch.allclose(packed, masked, atol=1e-6)
"""),
md(r"""
## Summary

* Every token after [CLS], `</s>` included, gets a unit vector $E = \mathrm{norm}(\mathbf{W}_{mul}^\top \mathbf{H}[1{:}])$.
* $s_{mul}$ averages, over the query tokens, each token's best similarity in the passage. It is not symmetric.
* Masks keep padding out: padded query tokens leave the mean, padded passage positions leave the max.
* The official batched scorer takes its max over padding too, so a query token never scores below 0 in a padded passage and the score can depend on the batch. `colbert_max_over_padding=True` reproduces it.

## Exercises

1. In the first hand example, replace $e$ by $e' = (0.6, 0.8)$. What is $s_{mul}$ now?
2. Why does the official batched scorer agree with the definition for the longest passage of each batch?
3. The score divides by $N_q$ but not by $N_p$. What happens to $s_{mul}$ when a passage is made longer by appending more tokens?
4. Compute $s_{mul}$ for the heatmap's pair with `pairwise=True` from `model.embed`, and check it against the heatmap title.

```{admonition} Solutions
:class: dropdown

1. Row $a$: $\max(0, 0.8, 0.6) = 0.8$; row $b$: $\max(1, -0.6, 0.8) = 1$. Still $(0.8 + 1)/2 = 0.9$: the new token is nobody's best match.
2. The longest passage has no padding in that batch, so there is no zero vector for the max to pick.
3. It can only stay the same or grow: every max runs over a superset of tokens. Long passages therefore have an advantage that the score does not correct for.
4. `q, p = model.embed([q_text]), model.embed([p_text])`, then `scores.s_mul(q.colbert, p.colbert, q.colbert_mask, p.colbert_mask, pairwise=True)`; it equals the mean of the row maxima up to about 1e-6.
```
"""),
]
write(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "03_multivector.ipynb"), cells)
