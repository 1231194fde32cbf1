import sys; import os; sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nb import md, code, write

cells = [
md(r"""
# Data and multi-stage training

Chapters 5 and 6 defined the loss of one batch. This chapter is about what goes into the
batches, and in what order. M3 is trained in stages (paper Sec. 3.4 and App. B.1), each on
its own data (paper Sec. 3.1 and App. A):

1. the data: three sources, and the small files in `data_samples/` that stand in for them;
2. the training schema: one JSON object per query, and one real example;
3. the stages: RetroMAE pre-training, a dense-only stage on unsupervised pairs, then unified
   fine-tuning with hard negatives and self-distillation;
4. hard-negative mining with the model itself (ANCE-style);
5. how a training group of $G$ passages is drawn from an example, as the official code does it;
6. what happens with a bad input file.
"""),
code(r"""
import json
import random
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import torch
import yaml

from m3ref.book import load_model, show
from m3ref.data import load_train_data, sample_group, write_jsonl_atomic
from m3ref.errors import M3Error
from m3ref.retrieval import mine_hard_negatives
from m3ref.scores import s_dense
from m3ref.tiny import SOURCE_DIR
from m3ref.train import groups_of, load_config

DATA = Path(SOURCE_DIR).parent  # data_samples/
ROOT = DATA.parent  # the repository
model = load_model()
"""),
md(r"""
## Three sources of data (paper Sec. 3.1)

The paper collects three kinds of training data:

| source | what it is | size | used in |
|---|---|---|---|
| **unsupervised** | pairs taken from the structure of documents: title and body, title and abstract, instruction and output, and so on. The texts come from Wikipedia, S2ORC, xP3, mC4, CC-News and the MTP data. Translation pairs from NLLB and CCMatrix add cross-lingual pairs. Pairs of low relevance are filtered out. | 1.2 billion pairs, 194 languages | the dense-only stage |
| **fine-tuning** | labelled retrieval and NLI data: for English HotpotQA, TriviaQA, NQ, MS MARCO, COLIEE, PubMedQA, SQuAD and SimCSE's NLI data; for Chinese DuReader, mMARCO-ZH, T²-Ranking, LawGPT, CMedQAv2, NLI-zh and LeCaRDv2; for other languages Mr. TyDi and MIRACL | far smaller | unified fine-tuning |
| **synthetic long documents** (MultiLongDoc) | long articles from Wikipedia, Wudao and mC4. A paragraph is picked at random, GPT-3.5 writes a question about it, and the question is paired with the whole article. | | unified fine-tuning |

Labelled data for long documents hardly exists, which is why the third source is generated.
The pairs teach the model to find one relevant paragraph inside a text of thousands of tokens.

`data_samples/` has one small stand-in for each source. All of it is written from the same
100 topics in ten languages (the datasheet is `data_samples/README.md`):

| folder / file | stands in for |
|---|---|
| `train/unsup/unsup_*` | unsupervised pairs: (title, passage), (query, passage), and cross-lingual (query in another language, English passage); no negatives |
| `train/finetune/ft_*`, `ftkd_*` | fine-tuning data with 7 hard negatives per query; `ftkd` also has teacher scores |
| `train/finetune/long_*` | synthetic long documents, one file per length bucket |

The training rows carry no language field. We recover each row's language from the source texts.
"""),
code(r"""
lang_of = {}  # text -> language, from data_samples/source/{lang}.jsonl
for f in sorted((DATA / "source").glob("*.jsonl")):
    for line in f.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        for key in ("title", "query", "passage", "related"):
            lang_of[row[key]] = row["lang"]

unsup = load_train_data(DATA / "train" / "unsup")
finetune = load_train_data(DATA / "train" / "finetune")
langs = sorted({*lang_of.values()})
groups = {"unsup": [unsup["unsup_len-0-500"]], "ft": [finetune["ft_len-0-500"]],
          "ftkd": [finetune["ftkd_len-0-500"]],
          "long": [ds for name, ds in finetune.items() if name.startswith("long_")]}
print(f"{'':6}" + "".join(f"{l:>5}" for l in langs) + f"{'total':>7}")
for name, parts in groups.items():
    counts = Counter(lang_of[q] for ds in parts for q in ds["query"])
    print(f"{name:6}" + "".join(f"{counts[l]:5d}" for l in langs) + f"{sum(counts.values()):7d}")
cross = sum(lang_of[r["query"]] != lang_of[r["pos"][0]] for r in unsup["unsup_len-0-500"])
print(f"cross-lingual unsup pairs: {cross} (a non-English query, an English passage)")
"""),
md(r"""
Per language, the unsupervised file holds 67 training topics $\times$ 2 pairs (title and
query, each with the passage), plus 67 cross-lingual pairs for every language but English:
$67 \cdot 2 = 134$ and $134 + 67 = 201$. The 670 fine-tuning queries (67 topics $\times$ 10
languages) are split at random between `ft` and `ftkd`. The long-document files hold one
query per language in each of 7 length buckets.

> The real unsupervised set is about six hundred thousand times larger than ours
> (1.2 billion against 1,943 pairs). The sample is for running every code path, not for
> learning anything useful.

## The training schema

Every training file follows the official fine-tuning format (FlagEmbedding's README): one
JSON object per line with `query` (a string), `pos` and `neg` (lists of strings), and
optionally `pos_scores` and `neg_scores` (one teacher score per passage, for distillation),
`prompt` and `type`. Only the first three are required. One real row of `ftkd`, with the
passages cut to 60 characters:
"""),
code(r"""
path = DATA / "train" / "finetune" / "ftkd_len-0-500.jsonl"
example = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
short = lambda t: t if len(t) <= 60 else t[:57] + "..."  # noqa: E731
for key, value in example.items():
    if isinstance(value, list) and value and isinstance(value[0], str):
        print(f"{key}:")
        for text in value:
            print(f"    {short(text)}")
    else:
        print(f"{key}: {value}")
"""),
md(r"""
The positive answers the query. The first negative is the same topic's `related` text: on
the subject, but it does not answer the query. It is meant to be the hardest negative. The other six are passages of
other topics. The teacher gives the positive 1.0 and the related text 0.6. These scores are
synthetic (datasheet), made to exercise the distillation code, not taken from a real
cross-encoder.

## The stages (paper Sec. 3.4, App. B.1)

| stage | data | what is trained | scale in the paper |
|---|---|---|---|
| 0. RetroMAE pre-training | 184M texts, 105 languages | XLM-RoBERTa-large, extended to 8192 positions, with RetroMAE's masked auto-encoding | 20k steps on 32 A100 (40 GB), length 8192 |
| 1. unsupervised | 1.2B pairs | dense score only, InfoNCE with in-batch negatives | 25k steps on 96 A800 (80 GB), total batch 67,200 down to 9,984 by length |
| 2. fine-tuning | labelled + synthetic, 7 hard negatives each | all three scores, then self-distillation | 24 A800, total batch 1,152 down to 192 |

App. B.1 adds that fine-tuning starts with a warm-up of about 6,000 steps on the three
scores, followed by unified training with self-distillation.

The paper's ablation shows that each stage adds something (MIRACL nDCG@10 of the dense score,
as printed in the February 2024 version): fine-tuning alone 59.3; RetroMAE + fine-tuning 64.8;
RetroMAE + unsupervised + fine-tuning 67.8.

**Stage 0 is not reproduced here.** RetroMAE is a pre-training objective for the encoder
(reconstruct a masked text from its sentence embedding with a shallow decoder). It uses none
of M3's scores or losses, and it needs a large corpus and many GPU-days. What stage 0 gives
the model is language knowledge and a position table of 8192 entries. Our tiny model has
8192 positions too, but its weights are random. To start from a pre-trained encoder, pass
`--model xlm-roberta-large` (the heads start fresh), or `--model BAAI/bge-m3` to fine-tune
the finished model.

Stages 1 and 2 are one run of `m3ref.train`. The first `dense_steps` optimizer steps are the
dense-only stage: pairs, $G = 1$, only $\mathcal{L}_{dense}$ (`M3Config(unified=False)`).
The remaining steps are unified fine-tuning. The two configs of the repository:
"""),
code(r"""
tiny = load_config(str(ROOT / "configs" / "tiny.yaml"),  # data paths are relative to the repository
                   train_data=str(DATA / "train" / "finetune"), dense_train_data=str(DATA / "train" / "unsup"))
gpu = yaml.safe_load((ROOT / "configs" / "bge-m3-gpu.yaml").read_text())  # its data dir is a placeholder
keys = ["model", "dense_steps", "dense_batch_size", "group_size", "batch_size", "self_distill",
        "self_distill_start_step", "teacher_kd", "max_steps", "lr"]
print(f"{'':24}{'tiny.yaml':>24}  bge-m3-gpu.yaml")
for key in keys:
    print(f"{key:24}{str(getattr(tiny, key)):>24}  {gpu[key]}")
"""),
md(r"""
The tiny config runs 1 dense-only step on `train/unsup` and 5 unified steps on
`train/finetune`, in seconds on a CPU. The GPU config starts from `BAAI/bge-m3`, which is
past the dense stage already, so it has `dense_steps: 0`.

## Hard negatives (paper Sec. 3.4, App. B.1)

In fine-tuning, each query comes with 7 negatives that the paper mines with ANCE: retrieve
with the model itself and take passages that rank high but are not positives. Let
$p_{(r)}$ be the passage at rank $r$ (0-based) of the dense ranking of the corpus for query
$q$, and $P^+$ the positives. The negatives are $n$ passages drawn at random, without
replacement, from

$$
\mathcal{C}(q) = \{\, p_{(r)} : r_{lo} \le r < r_{hi} \,\} \setminus P^+
$$

The official miner uses ranks 2 to 199 (`--range_for_sampling 2-200`). It skips the very
top, where unlabelled true positives are most likely. When $\mathcal{C}(q)$ has fewer than
$n$ passages, random passages of the corpus fill the gap. `mine_hard_negatives` writes the
result in the same schema, atomically (next section):
"""),
code(r"""
show(mine_hard_negatives)
"""),
md(r"""
We mine 3 negatives for 4 English queries of `ft`, from ranks 2 to 29 of a corpus made of
the 99 distinct English passages of `ft`:
"""),
code(r"""
rows = [json.loads(line) for line in (DATA / "train" / "finetune" / "ft_len-0-500.jsonl").read_text(encoding="utf-8").splitlines()]
english = [r for r in rows if lang_of[r["query"]] == "en"]
corpus = list(dict.fromkeys(t for r in english for t in r["pos"] + r["neg"]))
queries = [{"query": r["query"], "pos": r["pos"], "neg": []} for r in english[:4]]
lo, hi = 2, 30

work = Path(tempfile.mkdtemp())
write_jsonl_atomic(work / "slice.jsonl", queries)
n = mine_hard_negatives(model, work / "slice.jsonl", work / "mined.jsonl", corpus=corpus,
                        rank_range=(lo, hi), n_neg=3, seed=0)
mined = [json.loads(line) for line in (work / "mined.jsonl").read_text(encoding="utf-8").splitlines()]

# the same dense ranking, to look up the rank of every text
enc = model.encode([r["query"] for r in queries] + corpus, return_sparse=False, return_colbert=False)
scores = s_dense(torch.as_tensor(enc.dense[:4]), torch.as_tensor(enc.dense[4:]))  # (4, 99)
print(f"{n} rows mined; corpus of {len(corpus)} passages; ranks are 0-based")
for row, out, s in zip(queries, mined, scores):
    rank = {corpus[j]: r for r, j in enumerate(s.argsort(descending=True).tolist())}
    neg_ranks = [rank[t] for t in out["neg"]]
    print(f"{row['query'][:44]:46} positive at {rank[row['pos'][0]]:2d}, negatives at {neg_ranks}")
    assert all(lo <= r < hi for r in neg_ranks) and row["pos"][0] not in out["neg"]
"""),
md(r"""
Every mined negative lies in ranks 2 to 29 and none is the positive, as the rule says. But
look at the positives: they rank anywhere among the 99 passages. The tiny model is untrained,
so its ranking is random, and "hard" negatives mined with it are just random passages. ANCE
negatives are hard only when the model that mines them already retrieves well. This is why
the paper mines with a trained model, and why mining comes after, not before, the earlier stages.

> The official scripts mine once, offline, with a fixed model. ANCE itself refreshes the
> negatives during training, with the model being trained.

## Sampling a group (official `AbsDataset`)

An example may have several positives and any number of negatives. Each time it is used,
the trainer draws a group of $G$ passages (paper: $G = 8$). One positive is drawn uniformly,
then $G - 1$ negatives without replacement. When there are fewer than $G - 1$ negatives,
the list is first repeated $\lceil (G-1) / |N| \rceil$ times:

$$
p \sim \mathrm{Uniform}(P^+), \qquad
\{n_1, \dots, n_{G-1}\} \sim \mathrm{Sample}_{G-1}\big(N^{\lceil (G-1)/|N| \rceil}\big)
$$

Teacher scores, when present, are taken at the same indices.
"""),
code(r"""
show(sample_group)
"""),
md(r"""
**By hand.** `sample_group` makes exactly two calls on the random generator:
`randrange(len(pos))`, then `sample(...)`. So a second `random.Random(0)` that makes the same
two calls must give the same indices. Take two positives, four negatives and $G = 4$:
"""),
code(r"""
example = {"query": "q", "pos": ["P0", "P1"], "neg": ["N0", "N1", "N2", "N3"],
           "pos_scores": [0.9, 0.8], "neg_scores": [0.1, 0.2, 0.3, 0.4]}
query, group, teacher = sample_group(example, 4, random.Random(0))
print(group, teacher)

rng = random.Random(0)
i, idx = rng.randrange(2), rng.sample(range(4), 3)
print("positive", i, "negatives", idx)
assert group == [f"P{i}"] + [f"N{j}" for j in idx]
assert teacher == [example["pos_scores"][i]] + [example["neg_scores"][j] for j in idx]
"""),
md(r"""
The tiling case can be checked without knowing the generator. With two negatives and
$G = 5$, four negatives are needed, and $\lceil 4/2 \rceil = 2$. The list $(N_0, N_1)$ is
tiled to $(N_0, N_1, N_0, N_1)$, and all four entries are drawn. So each negative must
appear exactly twice, whatever the seed:
"""),
code(r"""
short_example = {"query": "q", "pos": ["P0"], "neg": ["N0", "N1"]}
for seed in range(3):
    _, group, _ = sample_group(short_example, 5, random.Random(seed))
    print(seed, group)
    assert group[0] == "P0" and sorted(group[1:]) == ["N0", "N0", "N1", "N1"]
"""),
md(r"""
In training, `groups_of` gives each example its own generator, seeded by the run's seed, the
epoch, the length bucket and the example's index. An example's group therefore does not
depend on which process draws it, or on how many processes there are. Chapter 9 needs that
to compare 2 processes with 1. After a resume, the same groups are drawn again.
"""),
code(r"""
show(groups_of)
"""),
md(r"""
## Bad input

A training file is read and checked completely before any compute starts. Any problem raises
`M3Error` with a one-line message naming the file and line. On the command line,
`python -m m3ref.train` prints it as `error: ...` and exits with status 2. Three broken files:
"""),
code(r"""
good = '{"query": "q", "pos": ["p"], "neg": ["n"]}'
broken = {
    "bad_json.jsonl": [good, '{"query": "q", "pos": ["p"] "neg": []}'],
    "no_pos.jsonl": [good, good, '{"query": "q", "neg": ["n"]}'],
    "scores.jsonl": ['{"query": "q", "pos": ["p"], "neg": ["n", "m"], "pos_scores": [1], "neg_scores": [0.5]}'],
}
for name, lines in broken.items():
    path = work / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    try:
        load_train_data(path)
    except M3Error as exc:
        print(str(exc).replace(str(work), "<dir>"))
"""),
md(r"""
Files written by the package (mined negatives, the training log) go through
`write_jsonl_atomic`. It writes a temporary file next to the target and renames it over the
target at the end, so a crash in the middle leaves the old file, never half a file:
"""),
code(r"""
show(write_jsonl_atomic)
"""),
code(r"""
def rows_then_crash():
    yield {"query": "new", "pos": ["p"], "neg": []}
    raise RuntimeError("disk full")

target = work / "slice.jsonl"
before = target.read_text(encoding="utf-8")
try:
    write_jsonl_atomic(target, rows_then_crash())
except RuntimeError as exc:
    print("write failed:", exc)
assert target.read_text(encoding="utf-8") == before
print("the old file is intact; files in the folder:", sorted(p.name for p in work.iterdir()))
shutil.rmtree(work)
"""),
md(r"""
## Summary

* M3 is trained on 1.2 billion unsupervised pairs, on labelled fine-tuning data, and on
  synthetic long documents with generated questions (paper Sec. 3.1). `data_samples/` has a
  small stand-in for each, in ten languages, in the official JSONL schema.
* The stages: RetroMAE pre-training (not reproduced), a dense-only stage on pairs, then
  unified fine-tuning with hard negatives and self-distillation. In `m3ref` the last two are
  one run, split by `dense_steps`.
* `mine_hard_negatives` keeps dense ranks 2 to 199, minus the positives. The negatives are
  only as hard as the model that mines them. An untrained model mines random ones.
* `sample_group` draws one positive and $G - 1$ negatives without replacement, tiling a short
  list. Each example has its own seeded generator, so the draw does not depend on the
  number of processes.
* Bad input fails early, with `file:line`, and package writes are atomic.

## Exercises

1. An example has 3 negatives and $G = 8$. How often can a negative appear in one group, at least and at most?
2. Mine the 4 queries again with `rank_range=(0, 30)`. What can go wrong with real data when the top ranks are kept?
3. Why must the cross-lingual pairs of `unsup` keep the English passage as `pos`, and what would (English query, German passage) pairs add?
4. Write a file whose second line has `"pos": "a string"` and load it. Which check catches it?

```{admonition} Solutions
:class: dropdown

1. $G - 1 = 7$ negatives are needed and $\lceil 7/3 \rceil = 3$, so the list is tiled to 9 entries (each negative 3 times) and 7 are drawn. Two entries are left out, so a negative appears at least once and at most 3 times.
2. Rank 0 and 1 are the passages the model likes best. In real data they are often relevant passages that nobody labelled (false negatives). Training pushes them away from the query, which teaches the model something false. `mine_hard_negatives` only removes the labelled positives.
3. The pairs teach the model to place a query in any language near the English passage that answers it, as MKQA tests (non-English question, English corpus). The reverse direction would teach English queries to find German passages. The loss is not symmetric, so each direction is learned from its own pairs.
4. `validate_example`: `'pos' must be a list of strings, got str`, with `file:2`.
```
"""),
]
write(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "07_data_and_stages.ipynb"), cells)
