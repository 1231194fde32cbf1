import sys; import os; sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nb import md, code, write

cells = [
md(r"""
# Lexical retrieval

Lexical (sparse) retrieval scores a passage by the **terms it shares with the query**, like
BM25, but with term weights that the model computes (paper Sec. 3.2). Every token $t$ at
position $i$ of a text gets one non-negative weight from its last hidden state,

$$
w_t = \mathrm{ReLU}(\mathbf{W}_{lex}^\top \mathbf{H}[i]) ,
$$

where $\mathbf{W}_{lex}$ maps the hidden size to 1. A term that occurs several times keeps
its largest weight. The relevance of passage $p$ to query $q$ sums, over the terms present in
both, the product of their weights:

$$
s_{lex} = \sum_{t \in q \cap p} \left( w_{q_t} \cdot w_{p_t} \right) .
$$

This chapter computes the weights, the max over repeats, the dropped special tokens and the
score, then shows why the official training code's version of it needs tens of gigabytes and
how `m3ref` computes the same numbers in a small space.
"""),
code(r"""
import json, os

import matplotlib.pyplot as plt
import numpy as np
import torch

from m3ref import M3Model, scores
from m3ref.book import load_model, show
from m3ref.tiny import SOURCE_DIR  # data_samples/source

model = load_model()
tok = model.tokenizer
"""),
md(r"""
## One weight per token

$$
w_t = \mathrm{ReLU}(\mathbf{W}_{lex}^\top \mathbf{H}[i])
$$

`sparse_linear` is $\mathbf{W}_{lex}$, a linear layer from the hidden size to 1 (with a bias,
as in the official checkpoint). In `M3Model.forward` it is the line
`weights = torch.relu(self.sparse_linear(hidden)).squeeze(-1)`. It runs on **every**
position, special tokens and padding included. Which positions count is decided later.
"""),
code(r"""
show(M3Model.forward)
"""),
md(r"""
The same weights by hand from the hidden states. The ReLU sets every negative output to 0,
so a token can have weight exactly 0:
"""),
code(r"""
text = "Mars is red, and red dust covers Mars."
batch = model.collate([model.tokenize([text], 512)[0]])
with torch.no_grad():
    H = model.encoder(**batch).last_hidden_state  # (1, L, d)
    w = torch.relu(H @ model.sparse_linear.weight.T + model.sparse_linear.bias).squeeze(-1)  # (1, L)
    assert torch.allclose(w, model(**batch).weights, atol=1e-6)
for t, x in zip(tok.convert_ids_to_tokens(batch["input_ids"][0]), w[0].tolist()):
    print(f"{t:>6} {x:.3f}")
"""),
md(r"""
## From token weights to term weights

Two rules turn the per-position weights into one weight per distinct term (the official
code does the same):

* **max over repeats**: a token id that occurs several times keeps its largest weight;
* **special tokens dropped**: `<s>`, `</s>`, `<pad>` and `<unk>` never count as terms
  (`model.ignore_ids`). `<mask>` is an ordinary token here, as in the official code.

`scores.term_weight_vectors` does both for a batch. It puts every text's term weights in the
columns of the distinct ids of the batch (`vocab`), not in a vocabulary-sized vector:
"""),
code(r"""
show(scores.term_weight_vectors)
"""),
md(r"""
A hand example with made-up ids: `<s>`=0, `<pad>`=1, `</s>`=2, *planet*=5, *red*=7, *dust*=9.

| text | tokens (id: weight) | term weights |
|---|---|---|
| query "red planet red" | `<s>` 0: 0.9, red 7: 0.2, planet 5: 0.4, red 7: 0.3, `</s>` 2: 0.8 | red: max(0.2, 0.3) = 0.3, planet: 0.4 |
| passage 1 "planet dust" | `<s>` 0: 1.0, planet 5: 0.5, dust 9: 0.1, `</s>` 2: 1.0, `<pad>` 1: 3.0 | planet: 0.5, dust: 0.1 |
| passage 2 "red dust red" | `<s>` 0: 0.7, red 7: 0.6, dust 9: 0.2, red 7: 0.9, `</s>` 2: 0.4 | red: max(0.6, 0.9) = 0.9, dust: 0.2 |

The large weights of `<s>`, `</s>` and `<pad>` are dropped. The ids present are
0, 1, 2, 5, 7, 9, so the term-weight vectors have 6 columns, with 0 in the columns of the
special ids.
"""),
code(r"""
q_ids = torch.tensor([[0, 7, 5, 7, 2]])
q_w = torch.tensor([[0.9, 0.2, 0.4, 0.3, 0.8]])
p_ids = torch.tensor([[0, 5, 9, 2, 1], [0, 7, 9, 7, 2]])
p_w = torch.tensor([[1.0, 0.5, 0.1, 1.0, 3.0], [0.7, 0.6, 0.2, 0.9, 0.4]])
vocab, vectors = scores.term_weight_vectors(torch.cat([q_ids, p_ids]), torch.cat([q_w, p_w]), model.ignore_ids)
print("vocab:", vocab.tolist())
print(np.round(vectors.numpy(), 2))
assert vocab.tolist() == [0, 1, 2, 5, 7, 9]
assert torch.allclose(vectors, torch.tensor([[0, 0, 0, 0.4, 0.3, 0.0],
                                             [0, 0, 0, 0.5, 0.0, 0.1],
                                             [0, 0, 0, 0.0, 0.9, 0.2]]))
"""),
md(r"""
## The lexical score

$$
s_{lex} = \sum_{t \in q \cap p} \left( w_{q_t} \cdot w_{p_t} \right)
$$

`scores.lexical_match` is the formula as written, on two `{term: weight}` dictionaries (the
format `encode` returns). `scores.s_lex` computes it for whole batches of token ids and
weights, and is differentiable for training:
"""),
code(r"""
show(scores.lexical_match, scores.s_lex)
"""),
md(r"""
By hand: the query {red: 0.3, planet: 0.4} shares only *planet* with passage 1, so
$s_{lex} = 0.4 \cdot 0.5 = 0.2$; *dust* is in the passage only and adds nothing. With
passage 2 it shares only *red*: $s_{lex} = 0.3 \cdot 0.9 = 0.27$. In the vectors above, each
score is the inner product of two rows, since the columns a text lacks hold 0.
"""),
code(r"""
q_terms = {7: 0.3, 5: 0.4}
p_terms = [{5: 0.5, 9: 0.1}, {7: 0.9, 9: 0.2}]
by_dict = [scores.lexical_match(q_terms, p) for p in p_terms]
batched = scores.s_lex(q_ids, q_w, p_ids, p_w, ignore_ids=model.ignore_ids)  # (1, 2)
assert np.allclose(by_dict, [0.2, 0.27]) and torch.allclose(batched, torch.tensor([[0.2, 0.27]]))
print("lexical_match:", [round(s, 4) for s in by_dict], "  s_lex:", [round(s, 4) for s in batched[0].tolist()])
"""),
md(r"""
The score is not normalised: it grows with the weights and with the number of shared terms,
and it is not bounded by 1. Chapter 4 comes back to this when the three scores are added.

## The model's term weights

`model.encode(...).sparse` gives one dictionary `{token id: weight}` per text: max over
repeats, special tokens dropped, and, as in the official code, only weights $> 0$ kept. It
must equal `term_weight_vectors` on the forward pass, and `compute_score(...)["sparse"]`
must equal `lexical_match` on two such dictionaries:
"""),
code(r"""
pair = ("Why is Mars red?", text)
out = model.encode(list(pair))
emb = model.embed([text])
vocab, vec = scores.term_weight_vectors(emb.ids, emb.weights.detach(), model.ignore_ids)
expected = {int(t): float(x) for t, x in zip(vocab, vec[0]) if x > 0}
assert out.sparse[1].keys() == expected.keys()
assert all(abs(out.sparse[1][t] - expected[t]) < 1e-5 for t in expected)
s_pair = model.compute_score(pair)["sparse"]
assert abs(s_pair - scores.lexical_match(out.sparse[0], out.sparse[1])) < 1e-5
shared = sorted(out.sparse[0].keys() & out.sparse[1].keys())
print("shared terms:", tok.convert_ids_to_tokens(shared), f"  s_lex = {s_pair:.4f}")
"""),
md(r"""
The figure shows the term weights of one sentence in four languages: one bar per **distinct**
token, in order of first occurrence, at its max weight. A black dot marks the weight at each
occurrence, so a repeated token (marked ×2) has two dots and a bar at the higher one.
The special tokens do not appear. Chinese tokens are labelled by their ids, since the font
has no CJK glyphs.

> The model is **untrained**: $\mathbf{W}_{lex}$ is random, so which tokens get a large
> weight means nothing yet. The figure shows the mechanism only. The trained BGE-M3 gives
> content words large weights and function words small ones.
"""),
code(r"""
sentences = {"English": text,
             "German": "Der Mars ist rot, weil roter Staub den Mars bedeckt.",
             "Russian": "Марс красный, потому что Марс покрыт ржавой пылью.",
             "Chinese": "火星是红色的，因为火星表面有铁锈。"}
emb = model.embed(list(sentences.values()))
fig, axes = plt.subplots(len(sentences), 1, figsize=(7, 7.5))
for ax, lang, ids, w in zip(axes, sentences, emb.ids, emb.weights.detach()):
    real = ids != tok.pad_token_id
    ids, w = ids[real].tolist(), w[real].tolist()
    terms = list(dict.fromkeys(t for t in ids if t not in model.ignore_ids))  # distinct, first-occurrence order
    best = [max(x for i, x in zip(ids, w) if i == t) for t in terms]
    ax.bar(range(len(terms)), best, color="tab:blue")
    for k, t in enumerate(terms):
        occ = [x for i, x in zip(ids, w) if i == t]
        ax.plot([k] * len(occ), occ, "k.", ms=4)
        if len(occ) > 1:
            ax.text(k, best[k] + 0.03, f"×{len(occ)}", ha="center", va="bottom", fontsize=7)
    labels = [f"#{t}" for t in terms] if lang == "Chinese" else tok.convert_ids_to_tokens(terms)
    ax.set_xticks(range(len(terms)), labels, rotation=60, fontsize=7)
    ax.set_ylim(0, max(best) * 1.25)
    ax.set_ylabel("weight", fontsize=8)
    ax.set_title(f"{lang}: {len(ids) - 2} tokens, {len(terms)} distinct terms", fontsize=9)
plt.tight_layout()
plt.show()
"""),
md(r"""
## Why the official training code runs out of memory

The official training code (FlagEmbedding, `_sparse_embedding` in training mode) builds the
term weights in a vocabulary-sized space: it scatters the weight of position $i$ into column
$\mathrm{id}_i$ of a zero tensor of shape $(B, L, V)$, takes the max over $L$, and zeroes the
special columns. The result is one $V$-sized vector per text, and $s_{lex}$ is the inner
product of two such vectors. The numbers are right; the size is the problem. XLM-R's
vocabulary has $V = 250{,}002$ entries, and the tensor has $B \cdot L \cdot V$ of them.

For passages of 512 tokens (the official fine-tuning example's length) and groups of $G = 8$
passages per query, a batch of $B_q$ queries has $8 B_q$ passages. 48 queries is the paper's
per-GPU fine-tuning batch for the shortest length group (Table 9's 1,152 over 24 GPUs).
"""),
code(r"""
V, L, G = 250_002, 512, 8
print(f"{'queries':>8} {'passages':>9} {'elements':>16} {'fp16 GB':>8} {'fp32 GB':>8}")
for b_q in (2, 8, 48):
    n = b_q * G
    elements = n * L * V
    print(f"{b_q:>8} {n:>9} {elements:>16,} {elements * 2 / 1e9:>8.1f} {elements * 4 / 1e9:>8.1f}")
assert round(48 * G * L * V * 2 / 1e9, 1) == 98.3
"""),
md(r"""
For 384 passages of 512 tokens the passage side alone is
$384 \cdot 512 \cdot 250{,}002 \approx 4.9 \cdot 10^{10}$ numbers: 98.3 GB in fp16, twice
that in fp32, and `torch.scatter` returns a second tensor of the same size. An 80 GB GPU
cannot hold it. The backward pass of the max over $L$ builds a gradient of the same shape
again. Splitting the batch into sub-batches (chapter 8) bounds the tensor to one sub-batch
at a time, at the cost of more, smaller steps.

`m3ref` never builds it. A batch of $n$ texts of $L$ tokens contains at most $n \cdot L$
distinct ids, usually far fewer, and every other column of the vocabulary space is 0 in
every text, so it adds nothing to any inner product. `s_lex` takes the $U$ distinct ids of
the batch (`torch.unique`), maps each token to its column with `searchsorted`, and takes the
max with `scatter_reduce` into a $(n, U)$ matrix. The inner products over $U$ columns equal
those over $V$ columns.

The check: a random batch with ids drawn from the full $V = 250{,}002$, scored both ways, with
gradients. The vocabulary-sized version below is written out in full, as the official code
computes it.
"""),
code(r"""
def s_lex_vocabulary(q_ids, q_w, p_ids, p_w, V, ignore_ids):
    # the (B, L, V) formula: scatter each weight into its id's column, max over L, zero special columns
    def vectors(ids, w):
        full = torch.zeros(ids.shape[0], ids.shape[1], V, dtype=w.dtype)  # (B, L, V)
        full = torch.scatter(full, -1, ids.unsqueeze(-1), w.unsqueeze(-1))
        full = full.max(dim=1).values  # (B, V)
        return full * torch.isin(torch.arange(V), torch.tensor(ignore_ids)).logical_not()
    return vectors(q_ids, q_w) @ vectors(p_ids, p_w).T

g = torch.Generator().manual_seed(0)
pool = torch.cat([torch.tensor([0, 1, 2, 3]), torch.randint(4, V, (20,), generator=g)])  # specials + 20 random ids
q_ids = pool[torch.randint(0, len(pool), (2, 7), generator=g)]  # 2 queries of 7 tokens
p_ids = pool[torch.randint(0, len(pool), (3, 9), generator=g)]  # 3 passages of 9 tokens
q_w = torch.rand(2, 7, generator=g).requires_grad_()
p_w = torch.rand(3, 9, generator=g).requires_grad_()

ours = scores.s_lex(q_ids, q_w, p_ids, p_w, ignore_ids=model.ignore_ids)
ref = s_lex_vocabulary(q_ids, q_w, p_ids, p_w, V, model.ignore_ids)
assert torch.allclose(ours, ref, atol=1e-6)
for a, b in zip(torch.autograd.grad(ours.sum(), (q_w, p_w)), torch.autograd.grad(ref.sum(), (q_w, p_w))):
    assert torch.allclose(a, b, atol=1e-6)
U = torch.unique(torch.cat([q_ids.flatten(), p_ids.flatten()])).numel()
print(f"U = {U} columns instead of V = {V:,}")
print(np.round(ours.detach().numpy(), 4))
"""),
md(r"""
Same scores and same gradients, with 5 vectors of $U$ entries instead of two
$(n, L, 250{,}002)$ tensors. At inference the official code has since switched to a
$(B, V)$ `scatter_reduce`, which is small enough; its training path still builds
$(B, L, V)$, because the in-place version broke autograd (FlagEmbedding issue #1364).
`m3ref` uses one function for both.

## Why lexical matching is weak across languages

$s_{lex}$ only sees token ids that occur in both texts. Two texts in different languages
share ids only where they share pieces: names, numbers, cognates, punctuation. Training can
change the weights, but it cannot create an overlap that the tokenizer does not produce.

Here an English query is compared with the answer passage of the same topic in each of the
ten sample languages. The counts come from the tokenizer alone, so they hold for the
untrained model as much as for a trained one:
"""),
code(r"""
langs = sorted(f[:-len(".jsonl")] for f in os.listdir(SOURCE_DIR) if f.endswith(".jsonl"))
topic = {lang: [json.loads(line) for line in open(os.path.join(SOURCE_DIR, f"{lang}.jsonl"), encoding="utf-8")][3]
         for lang in langs}
query = topic["en"]["query"]
q_terms = set(tok(query, add_special_tokens=False)["input_ids"])
print("query:", query, f"({len(q_terms)} distinct terms)")
overlap = {}
for lang in langs:
    p_terms = set(tok(topic[lang]["passage"], add_special_tokens=False)["input_ids"])
    overlap[lang] = sorted(q_terms & p_terms)
    print(f"{lang}: {len(overlap[lang])} shared  {tok.convert_ids_to_tokens(overlap[lang])}")
assert max(overlap, key=lambda lang: len(overlap[lang])) == "en"
"""),
md(r"""
The English passage shares most of the query's terms. Languages written in the Latin
alphabet share a few pieces at best (cognates like *solar* in Spanish), and the passages in
other scripts share almost nothing. A lexical score of 0 tells a cross-lingual retriever
nothing. This is why, in the paper's cross-lingual MKQA results (Sec. 4), the lexical
method is far behind (Recall@100 of 45.3, against 75.1 for dense retrieval), while dense
and multi-vector retrieval compare meanings through learned vectors.

## Summary

* Each token gets a weight $w_t = \mathrm{ReLU}(\mathbf{W}_{lex}^\top \mathbf{H}[i]) \ge 0$; repeated tokens keep their max; `<s>`, `</s>`, `<pad>`, `<unk>` are dropped.
* $s_{lex}$ sums $w_{q_t} w_{p_t}$ over shared terms. It is an inner product of sparse vectors, not normalised.
* The official training code builds a $(B, L, 250{,}002)$ tensor, about 98 GB in fp16 for a realistic batch. `m3ref` works in the $U$ ids present in the batch and gets the same scores and gradients.
* Lexical matching needs shared token ids, so it is weak across languages.

## Exercises

1. In the hand example, add the token *dust* (id 9) with weight 0.5 to the query. What are the two scores now?
2. Why does the ReLU matter for the max over repeats? What would a negative weight do to `term_weight_vectors`, which starts from zeros?
3. Compute the size of the $(B, L, V)$ tensor for one 8192-token passage in fp16. Would it fit on one 80 GB GPU?
4. Find two languages in `data_samples/source` whose passages of one topic share many token ids. Which pieces are shared?

```{admonition} Solutions
:class: dropdown

1. The query is now {red: 0.3, planet: 0.4, dust: 0.5}. Passage 1: $0.4 \cdot 0.5 + 0.5 \cdot 0.1 = 0.25$. Passage 2: $0.3 \cdot 0.9 + 0.5 \cdot 0.2 = 0.37$.
2. With the ReLU every weight is $\ge 0$, so a max that starts from 0 equals the max over the occurrences. A negative weight would be lifted to 0 by that starting value. The official code starts from zeros too, so both assume non-negative weights.
3. $1 \cdot 8192 \cdot 250{,}002 \cdot 2$ bytes $\approx 4.1$ GB per passage: it fits for one, but a batch of 20 such passages would not.
4. Loop over topics and language pairs and count `set(ids_a) & set(ids_b)`. Pairs written in the same script share the most: names, numbers, cognates and punctuation. Chinese and Japanese share some characters too.
```
"""),
]
write(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "02_lexical.ipynb"), cells)
