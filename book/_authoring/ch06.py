import sys; import os; sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nb import md, code, write

cells = [
md(r"""
# Self-knowledge distillation

The three retrieval functions of M3 are trained together, and they can teach each other.
The paper's premise (Sec. 3.3) is that the three scores are heterogeneous, so their weighted
sum $s_{inter}$ is a more accurate relevance score than each of them alone. So $s_{inter}$ is
used as a *teacher*. Its softmax over the passages of a
batch is a soft label, and each of the three scores is trained to reproduce it. No second
model is involved, which is why the paper calls it *self*-knowledge distillation.

The paper's ablation shows what it is worth. As printed in the February 2024 version, MIRACL
nDCG@10 (dense / lexical / multi-vector) is 67.8 / 53.9 / 69.0 with self-distillation and
67.2 / 36.7 / 67.8 without. The lexical score gains the most.

This chapter computes the distillation loss $\mathcal{L}'$ and the final loss
$\mathcal{L}_{final} = (\mathcal{L} + \mathcal{L}')/2$. It runs the paper's and the official
code's versions, which differ by a factor of 3. It ends with the switch that decides when
distillation starts, and a failure mode users have reported.
"""),
code(r"""
import copy
import json
import math
from pathlib import Path

import torch

from m3ref import M3Config, losses, scores
from m3ref.book import load_model, show
from m3ref.tiny import SOURCE_DIR

torch.set_num_threads(1)  # the tensors of this chapter are small: one thread is faster than several
model = load_model()
"""),
md(r"""
## The teacher: $s_{inter}$

The teacher is the ensemble of chapter 4, computed from the same temperature-scaled
$(B, B \cdot G)$ score matrices as the three InfoNCE losses of chapter 5:

$$
s_{inter} = w_1 s_{dense} + w_2 s_{lex} + w_3 s_{mul}, \qquad w = (1, 0.3, 1) \text{ in the official code}
$$
"""),
code(r"""
show(scores.s_inter)
"""),
md(r"""
**By hand.** Logits $s_{dense} = 40$, $s_{lex} = 10$, $s_{mul} = 35$ give
$s_{inter} = 40 + 0.3 \cdot 10 + 35 = 78$.
"""),
code(r"""
value = scores.s_inter(torch.tensor(40.0), torch.tensor(10.0), torch.tensor(35.0), M3Config().ensemble_weights)
print(f"s_inter = {value.item():.4f}")
assert abs(value.item() - 78.0) < 1e-5
"""),
md(r"""
## The distillation loss $\mathcal{L}'_*$

Write $p(s)$ for the softmax of a row of scores over all $B \cdot G$ passages of the batch.
For each of the three scores $s_* \in \{s_{dense}, s_{lex}, s_{mul}\}$, the loss is the
cross-entropy between the teacher's distribution and the student's (paper Sec. 3.3):

$$
\mathcal{L}'_* = -\,p(s_{inter}) \cdot \log p(s_*)
$$

The dot product runs over the passages. The loss is averaged over the queries.
"""),
code(r"""
show(losses.self_distill_loss)
"""),
md(r"""
**By hand.** One query, two passages. The teacher's logits are $s_{inter} = (\ln 3, 0)$, so
$p(s_{inter}) = (3, 1)/4 = (0.75, 0.25)$. The student's logits are $s_* = (0, \ln 3)$, so
$p(s_*) = (0.25, 0.75)$ and $\log p(s_*) = (-1.386294, -0.287682)$.

$$
\mathcal{L}'_* = 0.75 \cdot 1.386294 + 0.25 \cdot 0.287682 = 1.039721 + 0.071921 = 1.111641
$$

If the student agrees with the teacher, $s_* = (\ln 3, 0)$, the loss is
$0.75 \cdot 0.287682 + 0.25 \cdot 1.386294 = 0.562335$. That is the entropy of the teacher's
distribution, and no student can go lower. The loss is not 0 at its best. It is the
KL divergence plus the teacher's entropy, and the entropy does not depend on the student, so
both have the same gradient. FlagEmbedding calls this loss `"kl_div"`, though it computes
the cross-entropy.
"""),
code(r"""
teacher = torch.tensor([[math.log(3), 0.0]])
student = torch.tensor([[0.0, math.log(3)]])
away = losses.self_distill_loss(student, teacher)
agree = losses.self_distill_loss(teacher.clone(), teacher)
print(f"L' (student disagrees) = {away.item():.6f}")
print(f"L' (student agrees)    = {agree.item():.6f}   KL of the first = {away.item() - agree.item():.6f}")
assert abs(away.item() - (0.75 * math.log(4) + 0.25 * math.log(4 / 3))) < 1e-6
assert abs(agree.item() - (0.75 * math.log(4 / 3) + 0.25 * math.log(4))) < 1e-6
"""),
md(r"""
### The teacher is detached

The teacher gives targets and is not trained by $\mathcal{L}'$. `self_distill_loss` calls
`teacher.detach()`, so no gradient of $\mathcal{L}'$ flows back through $s_{inter}$. Take
$s_{dense} = (0, \ln 3)$, $s_{lex} = (0, 0)$ and $s_{mul} = (\ln 3, -\ln 3)$. The
teacher is $s_{inter} = (\ln 3, 0)$, as above. The gradient of a cross-entropy with respect
to its logits is $p(s_{dense}) - p(s_{inter}) = (0.25 - 0.75,\ 0.75 - 0.25) = (-0.5, 0.5)$.
$s_{lex}$ and $s_{mul}$ get no gradient at all, although they are part of the teacher:
"""),
code(r"""
s_dense = torch.tensor([[0.0, math.log(3)]], requires_grad=True)
s_lex = torch.tensor([[0.0, 0.0]], requires_grad=True)
s_mul = torch.tensor([[math.log(3), -math.log(3)]], requires_grad=True)
s_inter = scores.s_inter(s_dense, s_lex, s_mul, (1.0, 0.3, 1.0))
loss = losses.self_distill_loss(s_dense, s_inter)
loss.backward()
print(f"L'_dense = {loss.item():.6f}")
print("grad s_dense:", s_dense.grad.tolist(), "  grad s_lex:", s_lex.grad, "  grad s_mul:", s_mul.grad)
assert torch.allclose(s_dense.grad, torch.tensor([[-0.5, 0.5]]))
assert s_lex.grad is None and s_mul.grad is None
"""),
md(r"""
Without the `detach`, the loss would also move the teacher toward the student. Here that would
push $s_{mul}$, the score that agrees with the ensemble, toward the dense score, which does not:
"""),
code(r"""
s_mul.grad = None
p_inter = torch.softmax(scores.s_inter(s_dense, s_lex, s_mul, (1.0, 0.3, 1.0)), dim=-1)  # not detached
undetached = -(p_inter * torch.log_softmax(s_dense, dim=-1)).sum(-1).mean()
undetached.backward()
print("without detach, grad s_mul:", [round(g, 4) for g in s_mul.grad[0].tolist()])
assert s_mul.grad.abs().sum() > 0
"""),
md(r"""
## $\mathcal{L}'$ and $\mathcal{L}_{final}$

The three distillation losses are weighted with the same $\lambda = (1, 0.1, 1)$ as the
contrastive losses. The final loss averages the contrastive loss $\mathcal{L}$ of chapter 5 and
$\mathcal{L}'$ (paper Sec. 3.3):

$$
\mathcal{L}' = \frac{\lambda_1 \mathcal{L}'_{dense} + \lambda_2 \mathcal{L}'_{lex} + \lambda_3 \mathcal{L}'_{mul}}{c},
\qquad
\mathcal{L}_{final} = \frac{\mathcal{L} + \mathcal{L}'}{2}
$$

The paper prints no divisor, $c = 1$. The official code divides by $c = 3$. The next section
compares the two.
"""),
code(r"""
show(losses.loss_L_prime, losses.loss_final)
"""),
md(r"""
**By hand.** With $\mathcal{L}'_{dense} = 1.2$, $\mathcal{L}'_{lex} = 3.0$,
$\mathcal{L}'_{mul} = 0.9$, the weighted sum is $1.2 + 0.1 \cdot 3.0 + 0.9 = 2.4$. The official
code gives $\mathcal{L}' = 2.4/3 = 0.8$ and the paper $\mathcal{L}' = 2.4$. With
$\mathcal{L} = 0.55$ (chapter 5's example), $\mathcal{L}_{final}$ is
$(0.55 + 0.8)/2 = 0.675$ (official) or $(0.55 + 2.4)/2 = 1.475$ (paper).
"""),
code(r"""
for preset, want_prime, want_final in (("official", 0.8, 0.675), ("paper", 2.4, 1.475)):
    cfg = M3Config.from_preset(preset)
    L_prime = losses.loss_L_prime(1.2, 3.0, 0.9, cfg)
    L_final = losses.loss_final(0.55, L_prime, cfg)
    print(f"{preset:>8}: L' = {L_prime:.4f}, L_final = {L_final:.4f}")
    assert abs(L_prime - want_prime) < 1e-12 and abs(L_final - want_final) < 1e-12
"""),
md(r"""
## All the terms together

`m3_loss` takes the three temperature-scaled score matrices and returns every term. It is what
`M3Model.training_loss` calls after encoding the batch. $\mathcal{L}'$ is always computed and
returned. It joins $\mathcal{L}_{final}$ only when self-distillation is on and the step is past
`self_distill_start_step` (below):
"""),
code(r"""
show(losses.m3_loss)
"""),
md(r"""
Here it is on the batch of chapter 5: four queries in English, German, Chinese and Swahili,
each with its positive and one hard negative. Every distillation term is checked against
its formula:
"""),
code(r"""
def sample(lang, topic):
    with open(Path(SOURCE_DIR) / f"{lang}.jsonl", encoding="utf-8") as f:
        return next(row for row in map(json.loads, f) if row["id"] == topic)

rows = [sample("en", "t001"), sample("de", "t002"), sample("zh", "t004"), sample("sw", "t005")]
queries = [r["query"] for r in rows]
passages = [[r["passage"], r["related"]] for r in rows]

official = model.training_loss(queries, passages, M3Config.official())
for name in ("L", "L_prime_dense", "L_prime_lex", "L_prime_mul", "L_prime", "L_final"):
    print(f"{name:>14} = {official[name].item():.4f}")
t = torch.softmax(official["s_inter"], dim=-1)
for name in ("dense", "lex", "mul"):
    by_hand = -(t * torch.log_softmax(official[f"s_{name}"], dim=-1)).sum(-1).mean()
    assert torch.allclose(official[f"L_prime_{name}"], by_hand)
by_formula = (official["L_prime_dense"] + 0.1 * official["L_prime_lex"] + official["L_prime_mul"]) / 3
assert torch.allclose(official["L_prime"], by_formula)
assert torch.allclose(official["L_final"], (official["L"] + official["L_prime"]) / 2)
"""),
md(r"""
## The paper vs the official code

There are three written versions of these formulas:

| | $s_{inter}$ | $\mathcal{L}'$ | $\mathcal{L}_{final}$ |
|---|---|---|---|
| PDF in the official repository (Feb 2024) | $s_{dense} + s_{lex} + s_{mul}$ | mean of the three $\mathcal{L}'_*$ | $\mathcal{L} + \mathcal{L}'$ |
| paper, arXiv revision: `M3Config.paper()` | $s_{dense} + 0.3\,s_{lex} + s_{mul}$ | $\mathcal{L}'_{dense} + 0.1\,\mathcal{L}'_{lex} + \mathcal{L}'_{mul}$ | $(\mathcal{L} + \mathcal{L}')/2$ |
| official code (FlagEmbedding): `M3Config.official()` | $s_{dense} + 0.3\,s_{lex} + s_{mul}$ | $(\mathcal{L}'_{dense} + 0.1\,\mathcal{L}'_{lex} + \mathcal{L}'_{mul})/3$ | $(\mathcal{L} + \mathcal{L}')/2$ |

The first row comes from our notes on the early PDF, which the official repository still
ships. `m3ref` describes it but does not implement it. The official training code, in its
current and its legacy version, has the weights 0.3 and 0.1 and the final division by 2. The
two presets differ only in the divisor of $\mathcal{L}'$:
"""),
code(r"""
for preset in ("official", "paper"):
    print(M3Config.from_preset(preset).summary())
"""),
md(r"""
Both presets on the same batch: the paper's preset re-uses the score matrices of the official
run above, so only the constants differ. $\mathcal{L}$ is the same, $\mathcal{L}'$ differs by the
factor 3, and $\mathcal{L}_{final}$ by
$\big(\mathcal{L}'_{paper} - \mathcal{L}'_{paper}/3\big)/2 = \mathcal{L}'_{paper}/3$:
"""),
code(r"""
targets = losses.group_targets(len(queries), len(passages[0]))
paper = losses.m3_loss(official["s_dense"], official["s_lex"], official["s_mul"], targets, M3Config.paper())
for name in ("L", "L_prime", "L_final"):
    print(f"{name:>8}: official {official[name].item():.4f}   paper {paper[name].item():.4f}   "
          f"paper - official {(paper[name] - official[name]).item():+.4f}")
assert torch.allclose(paper["L"], official["L"])
assert torch.allclose(paper["L_prime"], 3 * official["L_prime"])
assert torch.allclose(paper["L_final"] - official["L_final"], paper["L_prime"] / 3)
"""),
md(r"""
> In gradient terms, the official code gives $\mathcal{L}$ weight 1/2 and the weighted sum of
> the distillation losses weight 1/6. The paper's formula gives both weight 1/2, so its
> distillation is three times as strong relative to the contrastive loss. `m3ref` defaults
> to the code's constants, `M3Config.official()`.

## When self-distillation starts

The official trainer has a switch, `self_distill_start_step`, and a counter, `step`, on the
model. $\mathcal{L}'$ is added only when `step > self_distill_start_step`. Before that, the
model trains on $\mathcal{L}$ alone (not $\mathcal{L}/2$). In FlagEmbedding `step` starts at 0
and goes up by 1 after every forward pass in training, that is, once per micro-batch. The
default start step is $-1$: distillation from the very first batch. With a start step of 0, the
first batch trains without it and every later batch with it.

The paper warms up for about 6000 steps on the three modes before unified training with
self-distillation (App. B.1). `self_distill_start_step` is the knob for such a schedule.
`m3_loss` takes the step as an argument:
"""),
code(r"""
g = torch.Generator().manual_seed(0)
d, l, m = (torch.randn(2, 4, generator=g) * 5 for _ in range(3))  # hand-made logits, B = 2, G = 2
hand_targets = losses.group_targets(2, 2)
cfg = M3Config(self_distill_start_step=2)
for step in range(5):
    out = losses.m3_loss(d, l, m, hand_targets, cfg, step=step)
    on = not torch.allclose(out["L_final"], out["L"])
    print(f"step {step}: L = {out['L'].item():.4f}, L' = {out['L_prime'].item():.4f}, "
          f"L_final = {out['L_final'].item():.4f}  self-distillation {'on' if on else 'off'}")
    assert on == (step > 2)
"""),
md(r"""
> `m3ref.train` passes the index of the optimizer step within the unified stage. With
> gradient accumulation, FlagEmbedding's counter runs faster: it counts every micro-batch.
> Without accumulation the two agree.

## A failure mode: all-zero lexical weights

FlagEmbedding issue #982 reports unified fine-tuning with self-distillation starting at step
6000. Afterwards, about 50,000 test texts had an all-zero lexical vector, against 400 before
fine-tuning. Dense retrieval also ended up worse than with dense-only fine-tuning. The
maintainer's advice was to set `self_distill_start_step` to 0, that is, to distill from the
start. The thread does not establish the cause.

> Why a collapse is hard to undo: the lexical weights are $\mathrm{ReLU}(\mathbf{W}_{lex}^\top h)$.
> Once every weight of a text is 0, the ReLU passes no gradient. Neither $\mathcal{L}_{lex}$ nor
> $\mathcal{L}'_{lex}$ can raise the weights again. Only a change of the hidden states, driven
> by the other losses, or weight decay on the head can bring some of them back above 0.

Here is the dead state on the untrained model: push the lexical head's bias far below 0 and
every weight is 0. The lexical scores are all 0, both lexical losses equal the uniform guess
$\log(B \cdot G) = \log 8$, and the lexical head gets exactly zero gradient from the whole
loss $\mathcal{L}_{final}$:
"""),
code(r"""
dead = copy.deepcopy(model)
with torch.no_grad():
    dead.sparse_linear.bias.fill_(-100.0)
out = dead.training_loss(queries, passages, M3Config.official())
head = list(dead.sparse_linear.parameters())
grads = torch.autograd.grad(out["L_final"], head)
print(f"L_lex = {out['L_lex'].item():.4f}, L'_lex = {out['L_prime_lex'].item():.4f}, log 8 = {math.log(8):.4f}")
print("largest gradient on the lexical head:", max(g.abs().max().item() for g in grads))
assert (out["s_lex"] == 0).all() and all((g == 0).all() for g in grads)
del dead
"""),
md(r"""
## A tiny experiment

Three optimizer steps on the batch above, once with self-distillation (official constants, on
from step 0) and once without. Both runs start from the same weights. Passages are cut to 64
tokens to keep this fast, and dropout stays off. After the last step the losses are computed
once more, and we count the tokens that still have a positive lexical weight (special tokens
left out).

> This is a demonstration of the mechanics on one batch of eight passages. The model learns
> this batch by heart. Nothing here says whether self-distillation helps retrieval. That is
> what the paper's ablation measures, on real data and at full scale.
"""),
code(r"""
# NBVAL_IGNORE_OUTPUT
# (after a few optimizer steps the last digits can differ between CPUs; the next cell checks the claims)
start = copy.deepcopy(model.state_dict())
texts = queries + [t for group in passages for t in group]
special = torch.tensor(sorted(model.ignore_ids))

def lexical_state():
    with torch.no_grad():
        emb = model.embed(texts, 64)
    real = (emb.ids != model.tokenizer.pad_token_id) & ~torch.isin(emb.ids, special)
    positive = (emb.weights > 0) & real
    share = positive.sum().item() / real.sum().item()
    dead = [rows[i]["lang"] for i in range(len(queries)) if not positive[i].any()]  # queries without any weight
    return share, dead

def run(config, updates=3, lr=3e-4):
    model.load_state_dict(start)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    history, row_lex = [], []
    for step in range(updates + 1):
        out = model.training_loss(queries, passages, config, step=step, max_passage_length=64)
        history.append({k: v.item() for k, v in out.items() if v.dim() == 0})
        row_lex.append(torch.nn.functional.cross_entropy(out["s_lex"].detach(), targets, reduction="none"))
        h = history[-1]
        print(f"  after {step} update{'' if step == 1 else 's'}: L_final {h['L_final']:.2f}  L {h['L']:.2f}  L' {h['L_prime']:.2f} | "
              f"L_dense {h['L_dense']:.2f}  L_lex {h['L_lex']:.2f}  L_mul {h['L_mul']:.2f}  L_inter {h['L_inter']:.2f}")
        if step < updates:
            optimizer.zero_grad()
            out["L_final"].backward()
            optimizer.step()
    share, dead = lexical_state()
    print(f"  share of tokens with a positive lexical weight {share:.2f}; queries with none: {dead}")
    return history, row_lex, share, dead

share_before, dead_before = lexical_state()
print(f"before training: share of tokens with a positive lexical weight {share_before:.2f}; queries with none: {dead_before}")
torch.manual_seed(0)
print("with self-distillation:")
with_sd, rows_with, share_with, dead_with = run(M3Config.official())
print("without self-distillation:")
without_sd, rows_without, share_without, dead_without = run(M3Config.official(self_distill=False))
_ = model.load_state_dict(start)  # back to the untrained weights
"""),
md(r"""
What the numbers show, and do not show:

* Before the first update both runs print the same numbers: same weights, same batch. The
  runs differ in what they minimise: $(\mathcal{L} + \mathcal{L}')/2$ with self-distillation,
  $\mathcal{L}$ alone without.
* In both runs $\mathcal{L}_{dense}$, $\mathcal{L}_{mul}$ and $\mathcal{L}_{inter}$ fall fast.
  The model learns this one batch by heart. The dense loss falls with the others because the
  untrained [CLS] vectors already differ from text to text (chapter 1). With XLM-R's
  initialisation (standard deviation 0.02 instead of 0.2) they would be nearly identical,
  and the dense loss would hardly move.
* $\mathcal{L}'$ falls in both runs, even in the run that does not optimise it. All three
  scores learn the same batch, so they come to agree with their ensemble anyway.
* $\mathcal{L}_{lex}$ does not fall steadily. Before training it is about 42: cut to 64
  tokens, the English and German positives no longer have their row's largest lexical score
  (at full length they do, chapter 5), and $\tau = 0.02$ turns those gaps into large
  losses. One update brings it near 0, then it rises again. Meanwhile the lexical weights
  drain away in both runs: the share of tokens with a positive weight falls from 0.98 to
  below 0.4, and the German and Swahili queries end with no positive weight at all. Their
  rows of $s_{lex}$ are 0 and each costs exactly $\log 8$; together they make up most of the
  final $\mathcal{L}_{lex}$. That is the dead state of the previous section, and no gradient
  leads back out of it.
* Both runs lose the same two queries, with and without self-distillation, so on this batch
  the distillation term is not what drains the weights. An untrained model with a huge first
  lexical loss on one batch is not the setting of issue #982 (a pretrained model fine-tuned on
  real data), so this says nothing about that report's cause. It does show how fast whole
  texts can lose all their lexical weights.
"""),
code(r"""
log8 = torch.full((2,), math.log(8))
for h, row_lex, dead in ((with_sd, rows_with, dead_with), (without_sd, rows_without, dead_without)):
    for name in ("L_dense", "L_mul", "L_inter"):
        assert h[-1][name] < 0.2 * h[0][name]
    assert h[-1]["L_prime"] < 0.5 * h[0]["L_prime"]
    assert h[0]["L_lex"] > 30 and h[1]["L_lex"] < 0.1 and h[-1]["L_lex"] > 0.5
    assert (row_lex[0][:2] > 10).all() and (row_lex[0][2:] < 0.01).all()  # en and de lose, zh and sw win
    assert dead == ["de", "sw"]
    assert torch.allclose(row_lex[-1][[1, 3]], log8, atol=1e-5)  # a dead query's row is a uniform guess
    assert row_lex[-1][[1, 3]].sum() / 4 > 0.5 * h[-1]["L_lex"]
assert with_sd[0]["L"] == without_sd[0]["L"]
assert dead_before == [] and share_before > 0.95 and max(share_with, share_without) < 0.4
print("checked")
"""),
md(r"""
## Summary

* The teacher is the ensemble $s_{inter} = s_{dense} + 0.3\,s_{lex} + s_{mul}$. Its softmax over the batch is a soft label for each of the three scores.
* $\mathcal{L}'_* = -p(s_{inter}) \cdot \log p(s_*)$ is a cross-entropy with soft targets. The teacher is detached, so only the students learn from it.
* $\mathcal{L}_{final} = (\mathcal{L} + \mathcal{L}')/2$. The official code divides $\mathcal{L}'$ by 3 (`M3Config.official()`, the default). The paper's formula does not (`M3Config.paper()`).
* Distillation starts when `step > self_distill_start_step` (default $-1$: from the first batch). A user who started it late saw lexical weights collapse to 0 (issue #982).

## Exercises

1. Teacher logits $(0, 0)$, student logits $(\ln 3, 0)$. Compute $\mathcal{L}'_*$ by hand. What is the lowest value any student can reach against this teacher?
2. Remove the `.detach()` in your own copy of `self_distill_loss` and rerun the gradient cell. Which scores now get gradient from $\mathcal{L}'_{dense}$?
3. With the official constants, how large must $\mathcal{L}'$'s weighted sum be for distillation to contribute as much to $\mathcal{L}_{final}$ as $\mathcal{L}$ does?
4. A trainer uses gradient accumulation over 4 micro-batches and `self_distill_start_step = 100`. After how many optimizer steps does FlagEmbedding switch distillation on?

```{admonition} Solutions
:class: dropdown

1. $p(s_{inter}) = (0.5, 0.5)$ and $p(s_*) = (0.75, 0.25)$, so $\mathcal{L}'_* = -0.5 \log 0.75 - 0.5 \log 0.25 = 0.143841 + 0.693147 = 0.836988$. The lowest value is the teacher's entropy, $\log 2 = 0.693147$, reached when the student's two logits are equal.
2. $s_{lex}$ and $s_{mul}$ (through $s_{inter}$), and $s_{dense}$ along a second path, as part of the teacher.
3. $\mathcal{L}_{final} = \mathcal{L}/2 + S/6$ with $S$ the weighted sum, so $S$ must be $3\mathcal{L}$.
4. `step` counts micro-batches, starting at 0. The condition `step > 100` first holds for micro-batch number 101, the second micro-batch of optimizer step 26 (counting from 1). From optimizer step 27 on, every micro-batch includes $\mathcal{L}'$.
```
"""),
]
write(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "06_self_distillation.ipynb"), cells)
