import sys; import os; sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nb import md, code, write

cells = [
md(r"""
# MCLS: multiple [CLS] for long documents

BGE-M3 reads up to 8192 tokens, but long training data are scarce. The paper (App. B.2)
proposes a way to improve long-document embeddings **without any fine-tuning**: *MCLS*,
multiple CLS. Insert a [CLS] token every 256 tokens, and take as the document embedding
the **mean of the last hidden states of all [CLS] tokens**. On MLDR the paper reports dense
nDCG@10 rising from 41.2 to 45.0 for a model trained without long data (paper Table 7 /
App. B.2; figures from the Feb-2024 version).

> The official repository does not implement MCLS (its name appears only in README text).
> The paper leaves the position ids and the attention pattern unspecified. `m3ref` makes one
> choice, documented below, and tests it against a reference computation.
"""),
code(r"""
import numpy as np
import torch
import matplotlib.pyplot as plt

from m3ref import M3Model
from m3ref.book import load_model, show

model = load_model()
"""),
md(r"""
## The formula

For a document of $n$ content tokens and stride $s$, the input becomes

$$
\texttt{[CLS]}\; c_1 \dots c_s\; \texttt{[CLS]}\; c_{s+1} \dots c_{2s}\; \dots\; \texttt{[CLS]}\; c_{(k-1)s+1} \dots c_n\; \texttt{</s>},
\qquad k = \lceil n / s \rceil ,
$$

and the dense embedding is the mean of the $k$ [CLS] states, normalised:

$$
e_{p} = \mathrm{norm}\Big(\frac{1}{k} \sum_{m=1}^{k} \mathbf{H}[\mathrm{pos}(\texttt{[CLS]}_m)]\Big).
$$

Our choices, where the paper is silent:

* **Positions.** The inserted [CLS] tokens are ordinary tokens: they take consecutive
  positions, like every other token. XLM-R derives position ids from `input_ids != pad`.
  The $m$-th [CLS] therefore sits at position $(m-1)(s+1)$ (counting from 0, before XLM-R's offset).
* **Attention.** Full attention: every token, [CLS] or not, sees every other token.
* **Length.** The inserted tokens count towards `max_length`. A text that would not fit loses content tokens from its end.
* **Other heads.** The inserted [CLS] tokens are left out of the ColBERT vectors. The
  lexical head already drops the [CLS] id. The one forward pass serves all three outputs.

`tokenize` builds the input:
"""),
code(r"""
show(M3Model.tokenize)
"""),
md(r"""
`forward` averages the [CLS] states when it gets a `cls_mask` (the `else` branch):
"""),
code(r"""
show(M3Model.forward)
"""),
md(r"""
## A worked example: where the [CLS] tokens go

Take 10 content tokens and a stride of 4. Then $k = \lceil 10/4 \rceil = 3$ [CLS] tokens,
at positions 0, 5 and 10, and the sequence has $10 + 3 + 1 = 14$ tokens:
"""),
code(r"""
text = "one two three four five six seven eight nine ten"
content = model.tokenizer(text, add_special_tokens=False)["input_ids"]
print("content tokens:", len(content))
seq = model.tokenize([text], max_length=8192, mcls_stride=4)[0]
cls_positions = [i for i, t in enumerate(seq) if t == model.tokenizer.cls_token_id]
print("sequence length:", len(seq), " [CLS] at positions:", cls_positions)
"""),
md(r"""
The tokenizer splits these ten words into more than ten pieces, so the numbers above are
for its pieces. The arithmetic is the same. Here is the same computation on a list of
exactly 10 ids, checked by hand:
"""),
code(r"""
def mcls_layout(n, stride):
    k = -(-n // stride)                      # ceil(n / stride)
    positions = [m * (stride + 1) for m in range(k)]
    return k, positions, n + k + 1          # (+1 for </s>)

k, positions, length = mcls_layout(10, 4)
assert (k, positions, length) == (3, [0, 5, 10], 14)
print(k, positions, length)
"""),
md(r"""
A text no longer than the stride gets exactly one [CLS], so MCLS then equals the ordinary
[CLS] embedding. The test suite checks this, and we check it here too:
"""),
code(r"""
short = "Why does Mars look red?"
a = model.encode(short, mcls_stride=256).dense
b = model.encode(short).dense
assert np.allclose(a, b, atol=1e-6)
print("short text: MCLS == [CLS]:", np.allclose(a, b, atol=1e-6))
"""),
md(r"""
## Against a reference computation

We rebuild the MCLS embedding by hand: insert the ids, run the bare encoder, average the
hidden states at the [CLS] positions, normalise. Then we compare with `encode(mcls_stride=...)`.
"""),
code(r"""
import json
doc = " ".join(json.loads(line)["passage"] for line in open("../data_samples/source/de.jsonl"))
stride = 256
content = model.tokenizer(doc, add_special_tokens=False)["input_ids"][:2000]
doc = model.tokenizer.decode(content)
content = model.tokenizer(doc, add_special_tokens=False)["input_ids"]
ids = []
for i in range(0, len(content), stride):
    ids += [model.tokenizer.cls_token_id] + content[i:i + stride]
ids = torch.tensor([ids + [model.tokenizer.eos_token_id]])
with torch.no_grad():
    hidden = model.encoder(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[0]
reference = torch.nn.functional.normalize(hidden[ids[0] == model.tokenizer.cls_token_id].mean(0), dim=-1).numpy()

out = model.encode(doc, mcls_stride=stride)
print("content tokens:", len(content), " [CLS] tokens:", int((ids[0] == 0).sum()))
print("max |encode - reference|:", f"{np.abs(out.dense - reference).max():.1e}" if np.abs(out.dense - reference).max() > 1e-6 else "< 1e-6")
assert np.allclose(out.dense, reference, atol=1e-5)
"""),
md(r"""
## What MCLS changes

With one [CLS], a single position must summarise the whole document. With MCLS, each
inserted [CLS] sits next to its own 256-token window, and the mean combines them. The
figure shows, for the German document above cut to growing lengths, how far the MCLS vector
moves from the plain [CLS] vector (cosine similarity of the two):
"""),
code(r"""
lengths = [128, 256, 512, 1024, 1536, 2000]
sims = []
for n in lengths:
    text_n = model.tokenizer.decode(content[:n])
    plain = model.encode(text_n).dense
    multi = model.encode(text_n, mcls_stride=256).dense
    sims.append(float(plain @ multi))
fig, ax = plt.subplots(figsize=(6, 3))
ax.plot(lengths, sims, marker="o")
ax.axvline(256, color="grey", linestyle=":", label="stride 256")
ax.set_xlabel("document length (tokens)")
ax.set_ylabel("cos(MCLS, [CLS])")
ax.set_title("MCLS departs from [CLS] once a document exceeds one stride")
ax.legend()
plt.tight_layout()
plt.show()
print(" ".join(f"{n}:{s:.3f}" for n, s in zip(lengths, sims)))
"""),
md(r"""
> The tiny model here is untrained, so this figure shows only the mechanism: up to one
> stride the two vectors are the same, and beyond it they differ. Whether MCLS *retrieves*
> better needs a trained model and long-document queries. The experiments chapter measures
> it on the MLDR-like samples, beside the paper's 41.2 → 45.0.

## Summary

* MCLS inserts a [CLS] token every 256 tokens and averages their final states into the dense embedding (paper App. B.2).
* It needs no training and changes nothing for texts shorter than the stride.
* The paper does not specify positions or attention. `m3ref` gives the inserted tokens ordinary consecutive positions and full attention, and tests this against a hand-built reference.
* In `m3ref` it is one argument: `model.encode(docs, mcls_stride=256)`.

## Exercises

1. A document has 1000 content tokens. How many tokens does the MCLS input have with stride 256, and where are the [CLS] tokens?
2. Why can MCLS not be used when the document already fills all 8192 positions, and what does `m3ref` do then?
3. Change the stride to 128 for the 2000-token document. Do you expect the MCLS vector to move closer to or further from the plain [CLS] vector? Check it.

```{admonition} Solutions
:class: dropdown

1. $k = \lceil 1000/256 \rceil = 4$ [CLS] tokens at positions 0, 257, 514 and 771. The input has $1000 + 4 + 1 = 1005$ tokens.
2. Every inserted [CLS] needs a position. `m3ref` counts them towards `max_length` and drops content tokens from the end until the text fits (`tokenize`).
3. There are more windows, and each [CLS] summarises fewer tokens. Run `model.encode(doc, mcls_stride=128)` and compare cosines. Expect it to move further, though with random weights any direction is possible.
```
"""),
]
write(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "10_mcls.ipynb"), cells)
