"""Build the m3ref sample training and evaluation sets from data_samples/source/*.jsonl.

    python data_samples/make_samples.py [--source DIR] [--out DIR] [--tokenizer DIR]

Deterministic (fixed seed, sorted inputs, no network): the same sources give byte-identical files.
It rewrites ``<out>/train`` and ``<out>/eval`` (default ``<out>`` = this folder); see README.md
(the datasheet) for the layout and schemas. What it mirrors from BGE-M3 (arXiv 2402.03216):

- §3.3 / Table 8, stage 1: unsupervised (title -> passage) and (query -> passage) pairs with no
  negatives, plus cross-lingual pairs; stage 2: fine-tuning with 7 hard negatives per query (G=8)
  and teacher scores for distillation;
- §3.4 / Table 9: long training documents, and every training file split by max token length
  into ``<name>_len-{lo}-{hi}.jsonl`` (edges 0/500/1000/2000/.../7000/inf), as the official
  ``split_data_by_length.py`` does (length = token count with special tokens; empty buckets skipped);
- §4.1-4.2: MIRACL-, MKQA- and MLDR-like evaluation sets in the layouts of the real files, read
  by `m3ref.eval_data.load_eval`.
"""
from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from m3ref.eval_data import answer_qrels  # noqa: E402
from m3ref.errors import M3Error  # noqa: E402

LANGS = ["en", "de", "es", "sw", "zh", "ja", "ko", "ru", "ar", "hi"]
SEED = 240203216
EDGES = [0, 500, 1000, 2000, 3000, 4000, 5000, 6000, 7000]
N_NEG = 7  # hard negatives per fine-tuning query: G = 8 (paper §3.3, App. B.1)
LONG_NEG = 3  # long negatives per long-document example (tiled to G-1 when sampled)
MLDR_DISTRACTORS = 10  # long documents per language that answer no query
# Teacher scores (stand-in for a cross-encoder teacher): positive, same-topic related text, and
# other passages scored by the share of query tokens they contain, squeezed into [0.05, 0.35].
POS_SCORE, RELATED_SCORE = 1.0, 0.6

# English answers of the MKQA-like questions (eval topics), matched against the English corpus
# with the QA-recall rule of m3ref.data.answer_qrels; each must occur in its topic's passage.
ANSWERS = {
    "t003": ["sunlit half", "sunlit side"], "t006": ["90 °C", "90 degrees"],
    "t009": ["sodium chloride", "NaCl"], "t012": ["photosynthesis"],
    "t015": ["pollinate", "pollination", "pollinators"], "t018": ["chlorophyll"],
    "t021": ["2 to 3 litres", "2 to 3 liters", "two to three litres"], "t024": ["Nile"],
    "t027": ["Challenger Deep", "Mariana Trench"], "t030": ["Brazil"], "t033": ["Inca", "Incas"],
    "t036": ["Yuri Gagarin", "Gagarin"], "t039": ["Khufu", "pharaohs"], "t042": ["satellites"],
    "t045": ["neural networks", "neural network"], "t048": ["water molecules"],
    "t051": ["sulphur", "sulfur"], "t054": ["Ethiopia"], "t057": ["every four years"],
    "t060": ["five days"], "t063": ["nine symphonies", "9 symphonies"], "t066": ["Mumbai"],
    "t069": ["7,000", "7000"], "t072": ["Hangul", "Sejong"], "t075": ["inflation"],
    "t078": ["blockchain"], "t081": ["95 percent", "95 per cent", "95%"], "t084": ["cheetah"],
    "t087": ["30 m", "30 metres", "30 meters"], "t090": ["150 years"],
    "t093": ["Alfred Nobel", "1901"], "t096": ["15 degrees"], "t099": ["magnetic field"],
}


def is_eval(topic: str) -> bool:
    """Topic split, the same for every language: every third topic (t003, t006, ...) is eval."""
    return int(topic[1:]) % 3 == 0


assert sorted(ANSWERS) == [f"t{i:03d}" for i in range(1, 101) if is_eval(f"t{i:03d}")]


# --------------------------------------------------------------------------- inputs

def read_sources(src: Path) -> dict[str, list[dict]]:
    """{lang: 100 rows in topic order t001..t100} for the languages whose file exists."""
    out = {}
    for lang in LANGS:
        path = src / f"{lang}.jsonl"
        if not path.exists():
            print(f"warning: {path} missing, language {lang} skipped", file=sys.stderr)
            continue
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        for i, row in enumerate(rows, 1):
            m = re.search(r"t\d{3}", str(row.get("id", "")))
            if not m or m.group() != f"t{i:03d}":
                raise M3Error(f"{path}:{i}: expected topic t{i:03d}, got id {row.get('id')!r}")
            missing = [k for k in ("title", "query", "passage", "related") if not row.get(k)]
            if missing:
                raise M3Error(f"{path}:{i}: empty or missing {missing}")
            row["topic"] = m.group()
        if len(rows) != 100:
            raise M3Error(f"{path}: {len(rows)} lines, expected 100")
        out[lang] = rows
    if not out:
        raise M3Error(f"{src}: no source files")
    return out


class TokenCounter:
    """Token counts with special tokens, as `split_data_by_length.py` counts, cached per text.

    `tokenizer` is the project's tiny tokenizer (`m3ref.tiny.build_tokenizer`) unless given."""

    def __init__(self, tokenizer=None):
        if tokenizer is None:
            from m3ref.tiny import build_tokenizer

            tokenizer = build_tokenizer()
        self.tok, self.known, self.docs = tokenizer, {}, []

    def __call__(self, texts: list[str]) -> list[int]:
        new = sorted({t for t in texts if t not in self.known})
        if new:
            self.known.update(zip(new, map(len, self.tok(new)["input_ids"])))
        return [self.known[t] for t in texts]


# --------------------------------------------------------------------------- building blocks

def split_by_length(name: str, rows: list[dict], count) -> dict[str, list[dict]]:
    """Bucket rows by the max token length of query/pos/neg: ``{name}_len-{lo}-{hi}.jsonl``."""
    buckets: dict[str, list[dict]] = {}
    for row in rows:
        n = max(count([row["query"], *row["pos"], *row["neg"]]))
        k = max(i for i, lo in enumerate(EDGES) if n >= lo)
        hi = EDGES[k + 1] if k + 1 < len(EDGES) else "inf"
        buckets.setdefault(f"{name}_len-{EDGES[k]}-{hi}.jsonl", []).append(row)
    return dict(sorted(buckets.items(), key=lambda kv: int(kv[0].split("-")[1])))


def long_doc(core: list[str], pool: list[str], lo: int, hi: int, rng: random.Random,
             count: TokenCounter) -> str:
    """A document of lo..hi tokens: the `core` texts at random places among filler texts drawn
    from `pool`, each at most once (paper §3.4 long training data; MLDR-like documents, §4.2).

    Texts are joined by one space, like running text. The length is then
    additive, 2 + sum(n_i - 2) (Metaspace pre-tokenizer), which `check_additive` spot-checks."""
    target = rng.randint(lo + 100, hi - min(400, (hi - lo) // 4))
    order = rng.sample(pool, len(pool))
    inner = {t: n - 2 for t, n in zip(order + core, count(order + core))}
    pieces, j = [], 0
    total = 2 + sum(inner[t] for t in core)
    while total < target:
        if j == len(order):
            raise M3Error(f"too little text for a {target}-token document")
        pieces.append(order[j])
        total, j = total + inner[order[j]], j + 1
    while total > hi:
        total -= inner[pieces.pop()]
    assert lo <= total <= hi, (lo, total, hi)
    for slot, text in sorted(((rng.randint(0, len(pieces)), t) for t in core), reverse=True):
        pieces.insert(slot, text)
    doc = " ".join(pieces)
    count.known[doc] = total
    count.docs.append(doc)
    return doc


def check_additive(docs: list[str], count: TokenCounter) -> None:
    """Re-tokenize every 8th built document and compare with its additive length."""
    sample = docs[::8]
    exact = map(len, count.tok(sample)["input_ids"])
    for doc, n in zip(sample, exact):
        if n != count.known[doc]:
            raise M3Error(f"document length {count.known[doc]} != {n} tokens: the tokenizer is not "
                          "additive over space-joined texts; update long_doc")


_WORD = re.compile(r"[\u3040-\u30ff\u3400-\u9fff]|\w+")  # CJK: one character = one word


def teacher(query: str, passage: str) -> float:
    """Deterministic stand-in teacher score for a negative: query-token overlap in [0.05, 0.35]."""
    q, p = (set(_WORD.findall(t.lower())) for t in (query, passage))
    return round(0.05 + 0.3 * len(q & p) / max(len(q), 1), 3)


# --------------------------------------------------------------------------- training sets

def build_train(src: dict[str, list[dict]], count, rng: random.Random) -> dict[str, list[dict]]:
    """{relative path: rows} for train/unsup and train/finetune (train topics only)."""
    files: dict[str, list[dict]] = {}
    train = {lang: [r for r in rows if not is_eval(r["topic"])] for lang, rows in src.items()}
    # Stage 1 (§3.3): (title -> passage), (query -> passage); cross-lingual (query -> English passage).
    unsup = []
    for lang, rows in train.items():
        for r in rows:
            unsup += [{"query": r["title"], "pos": [r["passage"]], "neg": []},
                      {"query": r["query"], "pos": [r["passage"]], "neg": []}]
    if "en" in train:
        en = {r["topic"]: r["passage"] for r in train["en"]}
        unsup += [{"query": r["query"], "pos": [en[r["topic"]]], "neg": []}
                  for lang, rows in train.items() if lang != "en" for r in rows]
    files.update({f"unsup/{k}": v for k, v in split_by_length("unsup", unsup, count).items()})
    # Stage 2 (§3.3): 7 hard negatives (related text first), teacher scores on about half ("ftkd").
    ft, ftkd, long = [], [], []
    for lang, rows in train.items():
        for r in rows:
            others = rng.sample([o["passage"] for o in rows if o is not r], N_NEG - 1)
            ex = {"query": r["query"], "pos": [r["passage"]], "neg": [r["related"], *others]}
            if rng.random() < 0.5:
                ex["pos_scores"] = [POS_SCORE]
                ex["neg_scores"] = [RELATED_SCORE] + [teacher(r["query"], o) for o in others]
                ftkd.append(ex)
            else:
                ft.append(ex)
        # Long documents (§3.4): one query per bucket 1000-2000 ... 7000-8000, 3 long negatives.
        pool_all = [r["passage"] for r in rows] + [r["related"] for r in rows]
        for lo, r in zip(EDGES[2:], rng.sample(rows, len(EDGES) - 2)):
            pool, hi = [t for t in pool_all if t != r["passage"]], lo + 999
            long.append({"query": r["query"], "pos": [long_doc([r["passage"]], pool, lo, hi, rng, count)],
                         "neg": [long_doc([], pool, lo, hi, rng, count) for _ in range(LONG_NEG)]})
    for name, rows in (("ft", ft), ("ftkd", ftkd), ("long", long)):
        files.update({f"finetune/{k}": v for k, v in split_by_length(name, rows, count).items()})
    return files


# --------------------------------------------------------------------------- evaluation sets

def build_eval(src: dict[str, list[dict]], count, rng: random.Random) -> dict[str, str]:
    """{relative path: file text} for eval/miracl, eval/mkqa, eval/mldr."""
    out: dict[str, str] = {}

    def jsonl(rows) -> str:
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)

    for lang, rows in src.items():
        ev = [r for r in rows if is_eval(r["topic"])]
        # MIRACL-like (§4.1): passage + related of every topic; dev queries; binary qrels where the
        # related text is a judged non-relevant passage (0), as MIRACL judges negatives.
        corpus = [{"docid": f"{lang}-{r['topic']}-{kind[0]}", "title": r["title"], "text": r[kind]}
                  for r in rows for kind in ("passage", "related")]
        out[f"miracl/miracl-corpus-v1.0-{lang}/docs-0.jsonl"] = jsonl(corpus)
        base = f"miracl/miracl-v1.0-{lang}"
        out[f"{base}/topics/topics.miracl-v1.0-{lang}-dev.tsv"] = "".join(
            f"{lang}-{r['topic']}\t{r['query']}\n" for r in ev)
        out[f"{base}/qrels/qrels.miracl-v1.0-{lang}-dev.tsv"] = "".join(
            f"{lang}-{r['topic']}\tQ0\t{lang}-{r['topic']}-{k}\t{rel}\n"
            for r in ev for k, rel in (("p", 1), ("r", 0)))
        # MKQA-like (§4.1): the eval questions of every language against the one English corpus.
        if "en" in src:
            code = {"zh": "zh_cn"}.get(lang, lang)
            out[f"mkqa/MKQA_test-data/{code}.jsonl"] = jsonl(
                {"id": r["topic"], "question": r["query"], "answers": ANSWERS[r["topic"]]} for r in ev)
        # MLDR-like (§4.2): each eval passage hidden in one 2k-8k-token document of filler that
        # answers no eval query (train passages, related texts), plus distractor documents.
        pool = [r["passage"] for r in rows if not is_eval(r["topic"])] + [r["related"] for r in rows]
        docs = [(r, long_doc([r["passage"]], pool, 2000, 8000, rng, count)) for r in ev]
        docs += [(None, long_doc([], pool, 2000, 8000, rng, count)) for _ in range(MLDR_DISTRACTORS)]
        rng.shuffle(docs)
        ids = [f"doc-{lang}-{i}" for i in range(len(docs))]
        out[f"mldr/mldr-v1.0-{lang}/corpus.jsonl"] = jsonl(
            {"docid": d, "text": text} for d, (_, text) in zip(ids, docs))
        pos = {r["topic"]: (d, text) for d, (r, text) in zip(ids, docs) if r is not None}
        out[f"mldr/mldr-v1.0-{lang}/test.jsonl"] = jsonl(
            {"query_id": f"q-{lang}-{r['topic']}", "query": r["query"],
             "positive_passages": [{"docid": pos[r["topic"]][0], "text": pos[r["topic"]][1]}],
             "negative_passages": []} for r in ev)
    if "en" in src:
        en = src["en"]
        out["mkqa/corpus.jsonl"] = jsonl(
            {"_id": f"en-{r['topic']}-{k[0]}", "title": r["title"], "text": r[k]}
            for r in en for k in ("passage", "related"))
        check_answers(en)
    return out


def check_answers(en: list[dict]) -> None:
    """Every MKQA-like answer list must match its own English passage (QA-recall rule)."""
    corpus = {f"{r['topic']}-{k}": {"text": r[k]} for r in en for k in ("passage", "related")}
    qrels = answer_qrels(corpus, {t: ANSWERS[t] for t in ANSWERS})
    bad = [t for t in ANSWERS if f"{t}-passage" not in qrels[t]]
    if bad:
        raise M3Error(f"MKQA answers not found in their English passage: {bad}")
    extra = {t: sorted(set(q) - {f"{t}-passage"}) for t, q in qrels.items() if len(q) > 1}
    if extra:
        print(f"note: MKQA answers also match other passages: {extra}", file=sys.stderr)


# --------------------------------------------------------------------------- main

def render(source: Path, tokenizer=None) -> dict[str, str]:
    """Every output file as {path relative to the output folder: text}, built in memory."""
    src = read_sources(source)
    count = TokenCounter(tokenizer)
    count([r[k] for rows in src.values() for r in rows for k in ("title", "query", "passage", "related")])
    rng = random.Random(SEED)
    files = {f"train/{k}": "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in v)
             for k, v in build_train(src, count, rng).items()}
    files.update({f"eval/{k}": v for k, v in build_eval(src, count, rng).items()})
    check_additive(count.docs, count)
    return files


def build(source: Path, out: Path, tokenizer=None) -> dict[str, int]:
    """Write `render`'s files under `out` (replacing ``out/train``, ``out/eval``); {path: bytes}.
    MLDR files are gzipped like the real ones, with a fixed mtime so that builds are identical."""
    files = render(source, tokenizer)
    for sub in ("train", "eval"):
        shutil.rmtree(out / sub, ignore_errors=True)
    sizes = {}
    for rel, text in sorted(files.items()):
        path, data = out / rel, text.encode("utf-8")
        if rel.startswith("eval/mldr/"):
            path, data = path.with_name(path.name + ".gz"), gzip.compress(data, 9, mtime=0)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        sizes[str(path.relative_to(out))] = len(data)
    return sizes


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, default=HERE / "source", help="source JSONL folder")
    ap.add_argument("--out", type=Path, default=HERE, help="writes <out>/train and <out>/eval")
    ap.add_argument("--tokenizer", help="a saved tiny tokenizer (default: build one)")
    args = ap.parse_args(argv)
    t0 = time.time()
    tok = None
    if args.tokenizer:
        from transformers import PreTrainedTokenizerFast

        tok = PreTrainedTokenizerFast.from_pretrained(args.tokenizer)
    sizes = build(args.source, args.out, tok)
    print(f"wrote {len(sizes)} files, {sum(sizes.values()) / 1e6:.1f} MB in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    from m3ref.errors import cli_errors

    with cli_errors():
        main()
