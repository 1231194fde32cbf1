import sys; import os; sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nb import md, code, write

cells = [
md(r"""
# Contrastive learning

Chapters 1 to 4 computed the three relevance scores of M3 and their weighted sum. This
chapter trains them. M3 learns each score with the same contrastive loss, InfoNCE, over a
batch of queries and passages (paper Sec. 3.3). Then it adds the four losses into one
objective $\mathcal{L}$. Chapter 6 adds the second half of the objective, self-knowledge
distillation.

The plan of the chapter:

1. InfoNCE for one query, and what the temperature $\tau$ does to it;
2. in-batch negatives: how a batch of $B$ queries with $G$ passages each becomes one score matrix;
3. the combined loss $\mathcal{L}$, and why the lexical loss gets weight 0.1;
4. the full loss of the model on a small batch in four languages;
5. distillation from a teacher's scores, the variant used when the data carry them.
"""),
code(r"""
import json
import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from m3ref import M3Config, losses, scores
from m3ref.book import load_model, show
from m3ref.model import m3_scores
from m3ref.tiny import SOURCE_DIR

DATA = Path(SOURCE_DIR).parent  # data_samples/

torch.set_num_threads(1)  # the tensors of this chapter are small: one thread is faster than several
model = load_model()
""", ),
md(r"""
## InfoNCE

Take a query $q$, its positive passage $p^*$ and a set of negative passages $P'$. Let
$s(q, p)$ be one of the scores: $s_{dense}$, $s_{lex}$, $s_{mul}$, or the ensemble $s_{inter}$.
The loss is the negative log-probability of the positive in a softmax over all the passages:

$$
\mathcal{L}_s = -\log \frac{\exp(s(q, p^*)/\tau)}{\sum_{p \in \{p^*\} \cup P'} \exp(s(q, p)/\tau)}
$$

This is a cross-entropy. The scores divided by $\tau$ are the logits, and the positive is
the correct class. The package computes the logits once, in `m3_scores` (every score divided
by $\tau$), and `info_nce` is PyTorch's cross-entropy, averaged over the queries:
"""),
code(r"""
show(m3_scores, losses.info_nce)
"""),
md(r"""
**By hand.** One query with three passages, the positive first. Their scores are
$s = (0.8, 0.4, 0.2)$, and $\tau = 0.2$. The logits are $s/\tau = (4, 2, 1)$. Divide the
numerator and the denominator by $e^4$:

$$
\mathcal{L} = -\log \frac{e^4}{e^4 + e^2 + e^1} = \log\left(1 + e^{-2} + e^{-3}\right)
= \log(1 + 0.135335 + 0.049787) = \log 1.185122 = 0.169846
$$

The positive gets probability $1/1.185122 = 0.843795$.
"""),
code(r"""
s = torch.tensor([[0.8, 0.4, 0.2]])
tau = 0.2
loss = losses.info_nce(s / tau, torch.tensor([0]))
print(f"L = {loss.item():.6f}")
assert abs(loss.item() - math.log(1 + math.exp(-2) + math.exp(-3))) < 1e-6
assert abs(loss.item() - 0.169846) < 1e-6
"""),
md(r"""
## The temperature

$\tau$ sets how sharp the softmax is. The same three scores give almost equal
probabilities at $\tau = 1$ and nearly all the mass on the positive at $\tau = 0.02$:
"""),
code(r"""
for t in (1.0, 0.2, 0.05, 0.02):
    p = torch.softmax(s / t, dim=-1)[0]
    probs = "  ".join(f"{x:.4f}" for x in p.tolist())
    print(f"tau = {t:<5} p = ({probs})   L = {losses.info_nce(s / t, torch.tensor([0])).item():.6f}")
"""),
md(r"""
The paper does not state $\tau$. The official code uses $\tau = 0.02$ for all three scores
and for their sum (`M3Config.temperature`). All of the scores are divided by the same $\tau$,
including the lexical score, which is not a cosine (see below).

> Why so small? $s_{dense}$ and $s_{mul}$ are cosines, so they lie in $[-1, 1]$. At
> $\tau = 1$ the logits of two passages differ by at most 2, and a positive among many
> negatives can never get much probability. In the right panel below, one positive with
> cosine 0.8 competes with 1000 negatives with cosine 0.4. At $\tau = 1$ the positive gets
> 0.0015, at $\tau = 0.02$ it gets 0.999998. A real batch has thousands of passages: the
> paper's fine-tuning batches hold up to 1152 queries with 8 passages each.
"""),
code(r"""
taus = [1.0, 0.2, 0.05, 0.02]
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3))
width = 0.2
for k, t in enumerate(taus):
    p = torch.softmax(s / t, dim=-1)[0].numpy()
    ax1.bar(np.arange(3) + (k - 1.5) * width, p, width, label=f"tau = {t}")
ax1.set_xticks(range(3), ["positive (0.8)", "neg (0.4)", "neg (0.2)"])
ax1.set_ylabel("softmax probability")
ax1.set_title("Three passages")
ax1.legend(fontsize=8)
grid = np.logspace(np.log10(0.01), 0, 100)
p_pos = 1 / (1 + 1000 * np.exp((0.4 - 0.8) / grid))
ax2.semilogx(grid, p_pos)
ax2.axvline(0.02, color="gray", linestyle="--")
ax2.text(0.022, 0.5, "tau = 0.02", color="gray")
ax2.set_xlabel("tau")
ax2.set_ylabel("p(positive)")
ax2.set_title("One positive (0.8), 1000 negatives (0.4)")
fig.tight_layout()
plt.show()
"""),
code(r"""
p_1000 = lambda t: 1 / (1 + 1000 * math.exp((0.4 - 0.8) / t))
print(f"p(positive) at tau = 1: {p_1000(1.0):.4f}   at tau = 0.02: {p_1000(0.02):.6f}")
assert abs(p_1000(1.0) - 0.0015) < 1e-4 and p_1000(0.02) > 0.99999
"""),
md(r"""
## In-batch negatives and the group layout

A training batch holds $B$ queries. Each query comes with a *group* of $G$ passages: its
positive first, then $G-1$ hard negatives (passages that look relevant but are not). The
$B$ groups are flattened into one list of $B \cdot G$ passages, and every query is scored
against every passage. This gives a $(B, B \cdot G)$ score matrix per score type. Each
query's negatives are its own $G-1$ hard negatives and all $(B-1) \cdot G$ passages of the
other queries, the *in-batch negatives*.

The positive of query $i$ is passage $i \cdot G$ of the flat list, so the target of row $i$ is
column $i \cdot G$:
"""),
code(r"""
show(losses.group_targets)
"""),
md(r"""
**By hand.** With $B = 3$ and $G = 4$, the positives are at columns $0 \cdot 4, 1 \cdot 4,
2 \cdot 4 = 0, 4, 8$. (The `offset` is for cross-device negatives, chapter 9: there the
columns of this device's passages start later.)
"""),
code(r"""
print(losses.group_targets(3, 4).tolist())
assert losses.group_targets(3, 4).tolist() == [0, 4, 8]
"""),
md(r"""
Now a real batch. Four queries from the samples, in English, German, Chinese and Swahili.
Each has its answering passage as positive and the `related` text of its topic as the hard
negative ($G = 2$), so there are $4 \cdot 2 = 8$ passages. Each query is on a different topic, so
no in-batch negative is secretly relevant.
"""),
code(r"""
def sample(lang, topic):
    with open(DATA / "source" / f"{lang}.jsonl", encoding="utf-8") as f:
        return next(row for row in map(json.loads, f) if row["id"] == topic)

rows = [sample("en", "t001"), sample("de", "t002"), sample("zh", "t004"), sample("sw", "t005")]
queries = [r["query"] for r in rows]
passages = [[r["passage"], r["related"]] for r in rows]  # positive first, then the hard negative
B, G = len(queries), len(passages[0])
for r in rows:
    print(f"{r['lang']}: {r['query']}")
print(f"B = {B}, G = {G}, targets = {losses.group_targets(B, G).tolist()}")
"""),
md(r"""
The model scores the batch. The left panel shows the role of every cell of the $(B, B \cdot G)$
matrix. The right panel shows the model's lexical scores $s_{lex}$ (before the division by
$\tau$). A box marks each target. The model is untrained: its weights are random, so none of
its scores is a learned judgement of relevance. The lexical score is the easiest to read
here: it is non-zero only where a query and a passage share tokens.
"""),
code(r"""
with torch.no_grad():
    q = model.embed(queries)
    p = model.embed([t for group in passages for t in group])
    raw = m3_scores(q, p, M3Config(temperature=1.0), model.ignore_ids)  # tau = 1: the raw scores
targets = losses.group_targets(B, G)
roles = np.zeros((B, B * G))
for i in range(B):
    roles[i, i * G:(i + 1) * G] = 1  # own group: hard negative
    roles[i, i * G] = 2  # the positive
labels = [f"q{i} ({r['lang']})" for i, r in enumerate(rows)]
fig, axes = plt.subplots(1, 2, figsize=(10, 2.8))
axes[0].imshow(roles, cmap="Blues", vmin=-0.5, vmax=2)
axes[0].set_title("roles: positive / own hard neg. / in-batch neg.", fontsize=9)
im = axes[1].imshow(raw["s_lex"].numpy(), cmap="viridis")
axes[1].set_title("s_lex of the untrained model", fontsize=9)
fig.colorbar(im, ax=axes[1], fraction=0.025)
for ax in axes:
    ax.set_xticks(range(B * G), [f"p{j}" for j in range(B * G)])
    ax.set_yticks(range(B), labels)
    for i, j in enumerate(targets.tolist()):
        ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    for g in range(1, B):
        ax.axvline(g * G - 0.5, color="white", linewidth=2)
fig.tight_layout()
plt.show()
"""),
code(r"""
print("s_lex (raw):")
print(np.round(raw["s_lex"].numpy(), 3))
zh = model.embed([queries[2]])
for tok_id, w in zip(zh.ids[0].tolist(), zh.weights[0].tolist()):
    token = model.tokenizer.convert_ids_to_tokens(tok_id)
    if tok_id in model.ignore_ids:
        print(f"weight {w:.4f}  {token}  (special, ignored)")
        continue
    found_in = [j for j in range(B * G) if tok_id in p.ids[j].tolist()]
    print(f"weight {w:.4f}  {token}  found in passages {found_in}")
    assert w > 0 and set(found_in) <= {4, 5}  # at most the two Chinese passages
assert (raw["s_lex"][2, 4:6] > 0).all() and (raw["s_lex"][2, :4] == 0).all() and (raw["s_lex"][2, 6:] == 0).all()
assert raw["s_lex"].argmax(1).tolist() == targets.tolist()  # every row's largest lexical score is its positive
"""),
md(r"""
Row 2, the Chinese query, is 0 outside its own group. The tiny tokenizer cuts it into four
pieces. `▁太阳系最大的行星` ("the largest planet of the solar system") is one piece that occurs
in no passage: the positive writes 太阳系中最大的行星, which the tokenizer cuts differently.
`哪` and `个` occur in no passage either. Only `是` ("is") occurs, in the two Chinese passages,
so it alone makes the scores of columns 4 and 5.

In every row the largest lexical score is at the target: each positive shares more with its
query than any other passage does. That is word overlap weighted by a random head, not a
learned judgement: the queries and their answers simply share words.

**InfoNCE over a batch, by hand.** Two queries, $G = 2$, so the targets are columns 0 and 2.
The logits (scores already divided by $\tau$) are

$$
\begin{pmatrix} 2 & 0 & 0 & 0 \\ 0 & 0 & 1 & 0 \end{pmatrix}
$$

Row 0: $-\log \frac{e^2}{e^2 + 3} = \log(1 + 3e^{-2}) = \log 1.406006 = 0.340753$.
Row 1: $-\log \frac{e}{e + 3} = \log(1 + 3/e) = \log 2.103638 = 0.743668$.
The loss is their mean, $(0.340753 + 0.743668)/2 = 0.542211$.
"""),
code(r"""
logits = torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
loss = losses.info_nce(logits, losses.group_targets(2, 2))
print(f"L = {loss.item():.6f}")
assert abs(loss.item() - (math.log(1 + 3 * math.exp(-2)) + math.log(1 + 3 / math.e)) / 2) < 1e-6
assert abs(loss.item() - 0.542211) < 1e-6
"""),
md(r"""
## Four losses, one objective

InfoNCE is applied four times, to $s_{dense}$, $s_{lex}$, $s_{mul}$ and to their ensemble
$s_{inter} = w_1 s_{dense} + w_2 s_{lex} + w_3 s_{mul}$ (chapter 4; the official code uses
$w = (1, 0.3, 1)$). The four losses are combined with weights $\lambda$ (paper Sec. 3.3):

$$
\mathcal{L} = \frac{\lambda_1 \mathcal{L}_{dense} + \lambda_2 \mathcal{L}_{lex} + \lambda_3 \mathcal{L}_{mul} + \mathcal{L}_{inter}}{4},
\qquad \lambda = (1, 0.1, 1)
$$
"""),
code(r"""
show(losses.loss_L)
"""),
md(r"""
**By hand.** With $\mathcal{L}_{dense} = 1.0$, $\mathcal{L}_{lex} = 2.0$, $\mathcal{L}_{mul} = 0.6$,
$\mathcal{L}_{inter} = 0.4$:
$\mathcal{L} = (1.0 + 0.1 \cdot 2.0 + 0.6 + 0.4)/4 = 2.2/4 = 0.55$.
"""),
code(r"""
cfg = M3Config()
print(f"lambda = {cfg.loss_weights}, divisor = {cfg.l_divisor}")
L = losses.loss_L(1.0, 2.0, 0.6, 0.4, cfg)
print(f"L = {L:.4f}")
assert abs(L - 0.55) < 1e-12
"""),
md(r"""
### Why the lexical loss gets 0.1

The paper gives $\lambda_2 = 0.1$ without a reason. Its scale is a likely one. $s_{dense}$ and
$s_{mul}$ are cosines, bounded by $[-1, 1]$. $s_{lex} = \sum_{t} w_{q_t} w_{p_t}$ is a sum of
products of ReLU outputs. It is never negative and has no upper bound. Here are the raw scores
of the batch above (before $\tau$):
"""),
code(r"""
for name in ("s_dense", "s_lex", "s_mul"):
    v = raw[name]
    print(f"{name:>8}: min {v.min().item():7.4f}   max {v.max().item():7.4f}")
assert raw["s_dense"].abs().max() <= 1 and raw["s_mul"].abs().max() <= 1 and raw["s_lex"].max() > 8
"""),
md(r"""
The dense and multi-vector scores of the untrained model lie between 0.3 and 0.9, and
whatever the weights, a cosine cannot leave $[-1, 1]$. The largest lexical score is above 8.
The lexical score scales with the weights. If the lexical head doubles its outputs (double
$\mathbf{W}_{lex}$ and its bias), every weight doubles and every $s_{lex}$ is multiplied by
4. The cosines would not change at all.
"""),
code(r"""
doubled = scores.s_lex(q.ids, 2 * q.weights, p.ids, 2 * p.weights, model.ignore_ids)
assert torch.allclose(doubled, 4 * raw["s_lex"], rtol=1e-6)
print(f"max s_lex: {raw['s_lex'].max().item():.4f} -> {doubled.max().item():.4f} with doubled weights")
print(f"largest lexical logit at tau = 0.02: {raw['s_lex'].max().item() / 0.02:.1f} (a cosine: at most 50)")
assert raw["s_lex"].max() / 0.02 > 8 * 50
"""),
md(r"""
Divided by $\tau = 0.02$, the largest lexical logit of this batch is more than eight times the 50 a
cosine can reach. With logit gaps that large, the softmax of a row puts nearly all its mass
on the passage with the largest lexical score, and the lexical loss is all or nothing. In
this batch every positive has its row's largest lexical score (above), so $\mathcal{L}_{lex}$
is practically 0 and sends practically no gradient to the encoder, which the three scores
share.

Real hard negatives are chosen to look relevant, and they often share many words with the
query. To see the case where a negative wins on words, swap the positive and the hard negative of every group. Now a negative has the largest
lexical score in every row. Here is the size of the gradient of each loss term on the
encoder's weights, for both versions of the batch:
"""),
code(r"""
encoder_params = list(model.encoder.parameters())

def gradient_norms(out):
    norms = {}
    for name in ("L_dense", "L_lex", "L_mul", "L_inter"):
        grads = torch.autograd.grad(out[name], encoder_params, retain_graph=True, allow_unused=True)
        norms[name] = torch.sqrt(sum((g ** 2).sum() for g in grads if g is not None)).item()
    return norms

swapped = [group[::-1] for group in passages]  # the hard negative now sits at the target column
out = model.training_loss(queries, passages, M3Config())
out_swapped = model.training_loss(queries, swapped, M3Config())
norms, norms_swapped = gradient_norms(out), gradient_norms(out_swapped)
print(f"gradient norm on the encoder  {'as given':>9} {'swapped':>9}")
for name in norms:
    print(f"{name:>28}  {norms[name]:9.1f} {norms_swapped[name]:9.1f}")
print(f"L_lex: {out['L_lex'].item():.4f} as given, {out_swapped['L_lex'].item():.4f} swapped")
assert (out_swapped["s_lex"].argmax(1) != targets).all()
assert norms["L_lex"] < 1e-3 < norms["L_dense"]
assert norms_swapped["L_lex"] > 10 * max(norms_swapped["L_dense"], norms_swapped["L_mul"])
assert norms_swapped["L_lex"] > 3 * norms_swapped["L_inter"]
"""),
md(r"""
> On this untrained model the lexical loss either does not pull on the shared encoder at
> all or, once a negative wins, pulls ten times as hard as the dense loss and more than
> three times as hard as $\mathcal{L}_{inter}$, whose ensemble contains $0.3\, s_{lex}$. The
> dense and multi-vector losses pull in both versions. A trained model has other numbers.
> In the released BGE-M3, the lexical score of a short sentence with itself is only about
> 0.2 (FlagEmbedding issue #552), so its scale is learned, not fixed. We read $\lambda_2 = 0.1$ as a guard: it keeps the one
> term whose scale nothing controls from dominating the encoder's update. Note that the
> official code uses two different constants for the lexical score: 0.3 inside $s_{inter}$,
> and 0.1 on its loss.

## The loss of a real batch

`M3Model.training_loss` does all of this for a batch of texts. It encodes the queries and the
flattened passages, computes the three $(B, B \cdot G)$ score matrices divided by $\tau$, and
returns every score and every loss. Here is the batch in four languages, with the official
constants:
"""),
code(r"""
for name, value in out.items():
    if value.dim() == 0:
        print(f"{name:>14} = {value.item():.4f}")
    else:
        print(f"{name:>14}: shape {tuple(value.shape)}")
"""),
md(r"""
The returned $\mathcal{L}$ is the formula applied to the returned parts, and each part is
InfoNCE on its own score matrix. If all 8 logits of a row were equal, the row's loss would
be $\log 8 = 2.0794$, the loss of a uniform guess. The untrained dense score does worse: it
ranks the positive first for only two of the four queries, and $\tau = 0.02$ turns its
small cosine gaps into large logit gaps, so the two wrong rows cost a lot and
$\mathcal{L}_{dense}$ is well above $\log 8$. $\mathcal{L}_{lex}$ is practically 0, as
found above. (`L_prime` and `L_final` are chapter 6.)
"""),
code(r"""
l1, l2, l3 = cfg.loss_weights
by_formula = (l1 * out["L_dense"] + l2 * out["L_lex"] + l3 * out["L_mul"] + out["L_inter"]) / 4
print(f"L returned {out['L'].item():.6f}   by the formula {by_formula.item():.6f}")
assert torch.allclose(out["L"], by_formula)
for name in ("dense", "lex", "mul", "inter"):
    assert torch.allclose(out[f"L_{name}"], losses.info_nce(out[f"s_{name}"], targets))
assert torch.allclose(out["s_inter"], out["s_dense"] + 0.3 * out["s_lex"] + out["s_mul"])
dense_right = (out["s_dense"].argmax(1) == targets).tolist()
print(f"L_dense = {out['L_dense'].item():.4f}, log(B*G) = {math.log(B * G):.4f}, dense top-1 right: {dense_right}")
assert sum(dense_right) == 2 and out["L_dense"].item() > math.log(B * G) + 1
assert out["L_lex"].item() < 1e-3
"""),
md(r"""
## Distillation from a teacher's scores

Fine-tuning data can carry a teacher's opinion: the official format has `pos_scores` and
`neg_scores`, one score per passage, e.g. from a cross-encoder reranker. The official code
turns the $G$ scores of each group into targets with a softmax (no temperature),

$$
t_{b,g} = \frac{\exp(\text{teacher}_{b,g})}{\sum_{g'} \exp(\text{teacher}_{b,g'})},
$$

and replaces each InfoNCE loss by one of two distillation losses (`kd_loss_type`):

* `kl_div`: the cross-entropy between $t$ and the softmax of the query's own $G$ scores,
  *plus* the ordinary InfoNCE over the batch:
  $-\frac{1}{B} \sum_b \sum_g t_{b,g} \log \operatorname{softmax}(s_{b, bG..bG+G-1})_g + \mathcal{L}_s$.
* `m3_kd_loss` (used by the official BGE-M3 example scripts): every passage of the group takes a
  turn as the target, weighted by the teacher. At turn $k$, the group's earlier passages
  $bG, \dots, bG+k-1$ are masked out of the softmax:
  $\sum_{k=0}^{G-1} \frac{1}{B} \sum_b t_{b,k} \, \mathrm{CE}(s \text{ with earlier columns masked},\ bG+k)$.
"""),
code(r"""
show(losses.teacher_kd_loss)
"""),
md(r"""
**By hand.** One query, $G = 3$, all three logits 0. The teacher scores are $(\ln 2, 0, 0)$,
so $t = (2, 1, 1)/4 = (0.5, 0.25, 0.25)$.

* `m3_kd_loss`: turn 0 is a softmax over 3 equal logits, CE $= \log 3 = 1.098612$. Turn 1
  masks column 0, CE $= \log 2 = 0.693147$. Turn 2 masks columns 0 and 1, CE $= \log 1 = 0$.
  The loss is $0.5 \cdot 1.098612 + 0.25 \cdot 0.693147 + 0.25 \cdot 0 = 0.722593$.
* `kl_div`: each $\log\operatorname{softmax}$ is $\log(1/3)$, so the first term is
  $(0.5 + 0.25 + 0.25)\log 3 = 1.098612$, and InfoNCE adds another $\log 3$: $2.197225$.
"""),
code(r"""
logits = torch.zeros(1, 3)
t = torch.softmax(torch.tensor([[math.log(2), 0.0, 0.0]]), dim=-1)
print("t =", t.numpy().round(4))
m3_kd = losses.teacher_kd_loss(logits, t, group_size=3, kind="m3_kd_loss")
kl = losses.teacher_kd_loss(logits, t, group_size=3, kind="kl_div")
print(f"m3_kd_loss = {m3_kd.item():.6f}   kl_div = {kl.item():.6f}")
assert abs(m3_kd.item() - (0.5 * math.log(3) + 0.25 * math.log(2))) < 1e-6
assert abs(kl.item() - 2 * math.log(3)) < 1e-6
"""),
md(r"""
`training_loss(..., teacher_scores=...)` switches every mode, and the ensemble, to the
distillation loss. Here are three examples of the sample file with teacher scores, each with
its positive and two negatives:
"""),
code(r"""
with open(DATA / "train" / "finetune" / "ftkd_len-0-500.jsonl", encoding="utf-8") as f:
    kd_rows = [json.loads(line) for line in f][:3]
kd_queries = [r["query"] for r in kd_rows]
kd_passages = [r["pos"][:1] + r["neg"][:2] for r in kd_rows]
kd_teacher = [r["pos_scores"][:1] + r["neg_scores"][:2] for r in kd_rows]
print("teacher scores:", kd_teacher)
kd_out = model.training_loss(kd_queries, kd_passages, M3Config(), teacher_scores=kd_teacher, kd_kind="m3_kd_loss")
print("  ".join(f"{k} = {kd_out[k].item():.4f}" for k in ("L_dense", "L_lex", "L_mul", "L_inter", "L")))
t = torch.softmax(torch.tensor(kd_teacher), dim=-1)
assert torch.allclose(kd_out["L_mul"], losses.teacher_kd_loss(kd_out["s_mul"], t, 3, "m3_kd_loss"))
"""),
md(r"""
## Summary

* InfoNCE is a cross-entropy with the positive passage as the correct class and the scores divided by $\tau$ as logits.
* $\tau = 0.02$ (official code; the paper does not state it) stretches cosines in $[-1, 1]$ to logits in $[-50, 50]$, so a positive can win against thousands of negatives.
* A batch of $B$ queries with $G$ passages each gives a $(B, B \cdot G)$ score matrix. Query $i$'s positive is column $i \cdot G$, and every other column is a negative.
* $\mathcal{L} = (\mathcal{L}_{dense} + 0.1\,\mathcal{L}_{lex} + \mathcal{L}_{mul} + \mathcal{L}_{inter})/4$. The lexical score is unbounded, and its loss gets the small weight.
* With teacher scores, each InfoNCE becomes `m3_kd_loss` or `kl_div` (InfoNCE plus a soft-label term).

## Exercises

1. Two passages have cosines 0.5 and 0.3 with a query, the first is the positive. Compute $\mathcal{L}$ by hand for $\tau = 1$ and $\tau = 0.02$.
2. In the batch above, which columns are in-batch negatives of query 1 (German)? How many negatives does each query have in a batch of $B$ queries and $G$ passages?
3. Run `model.training_loss(queries, passages, M3Config(loss_weights=(1, 1, 1)))`. Which losses change, and why does $\mathcal{L}_{lex}$ itself stay the same?
4. In `m3_kd_loss`, why is the last turn ($k = G - 1$) of a query with $B = 1$ always 0?

```{admonition} Solutions
:class: dropdown

1. $\mathcal{L} = \log(1 + e^{-(0.5 - 0.3)/\tau})$. For $\tau = 1$: $\log(1 + e^{-0.2}) = \log 1.818731 = 0.598139$. For $\tau = 0.02$: $\log(1 + e^{-10}) = 0.0000454$.
2. Columns 0, 1 (query 0's group) and 4, 5, 6, 7 (queries 2 and 3). Its own hard negative is column 3. Each query has $G - 1$ hard negatives and $(B - 1) G$ in-batch negatives, $BG - 1$ in all.
3. Only `L` (and `L_prime`, `L_final`, chapter 6) change: $\lambda$ weights the losses, it does not change the scores. $\mathcal{L}_{lex}$ is InfoNCE on $s_{lex}$, which is the same.
4. With $B = 1$, by the last turn all other $G - 1$ columns are masked, so the softmax has one column left and puts probability 1 on it: $-\log 1 = 0$. With $B > 1$ the other queries' passages are never masked, so the last turn is not 0.
```
"""),
]
write(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "05_contrastive.ipynb"), cells)
