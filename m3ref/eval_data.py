"""Evaluation sets (paper §4.1-4.2): MIRACL, MKQA and MLDR, from local files or the hub.

Evaluation data (paper §4.1-4.2) comes in the layouts of the real benchmark files, so one reader
serves both the local sample (``data_samples/eval``) and the real data on the Hugging Face hub:

=========  ========================  ========================================================
benchmark  hub repository            files (relative to the repository, ``{l}`` = language)
=========  ========================  ========================================================
miracl     ``miracl/miracl``         ``miracl-v1.0-{l}/topics/topics.miracl-v1.0-{l}-dev.tsv``
                                     (``qid<TAB>query``) and ``miracl-v1.0-{l}/qrels/
                                     qrels.miracl-v1.0-{l}-dev.tsv`` (TREC ``qid Q0 docid rel``,
                                     binary with judged negatives)
           ``miracl/miracl-corpus``  ``miracl-corpus-v1.0-{l}/docs-*.jsonl.gz`` (docid, title, text)
mldr       ``Shitao/MLDR``           ``mldr-v1.0-{l}/corpus.jsonl.gz`` (docid, text) and
                                     ``mldr-v1.0-{l}/test.jsonl.gz`` (query_id, query,
                                     positive_passages, negative_passages)
mkqa       ``BeIR/nq``               ``corpus.jsonl.gz`` (_id, title, text): one English corpus
           ``Shitao/bge-m3-data``    ``MKQA_test-data.zip`` holding ``{l}.jsonl`` (id, question,
                                     answers); unzipped locally as ``MKQA_test-data/{l}.jsonl``
=========  ========================  ========================================================

A local MKQA-style set may also judge its passages directly: when
``mkqa/qrels/qrels.mkqa-{l}-{split}.tsv`` (TREC qrels) exists, it replaces answer matching
(the Debian cross-lingual sets of ``data_samples/build_corpus.py`` are judged that way).

MKQA has no passage judgements: as in the paper's evaluation (Recall@k = a question counts as found
when a top-k passage contains one of its answers), relevance is derived by answer matching,
see `answer_qrels`. These repositories ship loading scripts, which `datasets` >= 4 no longer runs,
so their files are read with the generic ``json``/``csv`` builders on ``hf://`` paths.
"""
from __future__ import annotations

import fnmatch
import json
import os
import re
import unicodedata
from pathlib import Path
from typing import Iterator

from .data import jsonl_rows, text_lines
from .errors import M3Error

DEFAULT_EVAL_DIR = Path(__file__).resolve().parents[1] / "data_samples" / "eval"
DEFAULT_SPLIT = {"miracl": "dev", "mldr": "test", "mkqa": "test"}
# Languages the real benchmarks have (the BGE-M3 evaluation sets); MKQA names Chinese zh_cn.
HUB_LANGS = {
    "miracl": "ar bn en es fa fi fr hi id ja ko ru sw te th zh de yo".split(),
    "mldr": "ar de en es fr hi it ja ko pt ru th zh".split(),
    "mkqa": ("en ar fi ja ko ru es sv he th da de fr it nl pl pt hu vi ms km no tr "
             "zh_cn zh_hk zh_tw").split(),
}
MKQA_LANG = {"zh": "zh_cn"}
HUB_ROOT = "hf://datasets"  # fsspec root of the hub's dataset repositories


# --------------------------------------------------------------------------- answer matching (MKQA)

_TOKEN = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def answer_tokens(text: str) -> list[str]:
    """Lower-cased word/punctuation tokens after Unicode NFD normalization (QA-recall matching)."""
    return _TOKEN.findall(unicodedata.normalize("NFD", text).lower())


def answer_qrels(corpus: dict[str, dict], answers: dict[str, list[str]]) -> dict[str, dict[str, int]]:
    """Relevance from answers: a passage is relevant (1) to a question when its text contains one
    of the question's answers as a contiguous token sequence (the QA-style Recall@k used for MKQA
    in paper §4.1). One pass over the corpus, indexing answers by their first token."""
    first: dict[str, list[tuple[tuple[str, ...], str]]] = {}
    for qid, alist in answers.items():
        for a in alist:
            toks = tuple(answer_tokens(a))
            if toks:
                first.setdefault(toks[0], []).append((toks, qid))
    qrels: dict[str, dict[str, int]] = {qid: {} for qid in answers}
    for docid, doc in corpus.items():
        toks = answer_tokens(doc["text"])
        for i, t in enumerate(toks):
            for cand, qid in first.get(t, ()):
                if tuple(toks[i:i + len(cand)]) == cand:
                    qrels[qid][docid] = 1
    return qrels


# --------------------------------------------------------------------------- evaluation data

_HUB = {  # benchmark -> role -> (hub repository, path pattern inside it)
    "miracl": {
        "corpus": ("miracl/miracl-corpus", "miracl-corpus-v1.0-{lang}/docs-*.jsonl.gz"),
        "topics": ("miracl/miracl", "miracl-v1.0-{lang}/topics/topics.miracl-v1.0-{lang}-{split}.tsv"),
        "qrels": ("miracl/miracl", "miracl-v1.0-{lang}/qrels/qrels.miracl-v1.0-{lang}-{split}.tsv"),
    },
    "mldr": {
        "corpus": ("Shitao/MLDR", "mldr-v1.0-{lang}/corpus.jsonl.gz"),
        "topics": ("Shitao/MLDR", "mldr-v1.0-{lang}/{split}.jsonl.gz"),
    },
    "mkqa": {
        "corpus": ("BeIR/nq", "corpus.jsonl.gz"),
        "topics": ("Shitao/bge-m3-data", "MKQA_{split}-data/{lang}.jsonl"),
    },
}


def _local_rows(root: Path, pattern: str, columns: tuple[str, ...] | None) -> Iterator[dict]:
    """Rows of the local files matching `pattern` (sorted); ``.gz`` is optional on disk."""
    files = sorted(root.glob(pattern)) or sorted(root.glob(pattern.removesuffix(".gz")))
    if not files:
        raise M3Error(f"{root / pattern}: not found")
    for f in files:
        if columns is None:
            yield from (obj for _, obj in jsonl_rows(f))
            continue
        for no, line in text_lines(f):
            if line.strip():
                parts = line.rstrip("\n").split("\t") if len(columns) == 2 else line.split()
                if len(parts) != len(columns):
                    raise M3Error(f"{f}:{no}: expected {len(columns)} fields {columns}")
                yield dict(zip(columns, parts))


def _hub_rows(repo: str, pattern: str, columns: tuple[str, ...] | None) -> Iterator[dict]:
    """Rows of hub files through `datasets` (generic json/csv builders on ``hf://`` paths)."""
    import datasets

    if repo == "Shitao/bge-m3-data":  # MKQA queries sit inside a zip: fetch it, read one member
        import zipfile
        from huggingface_hub import hf_hub_download

        member = Path(pattern).name
        zpath = hf_hub_download(repo, Path(pattern).parent.name + ".zip", repo_type="dataset")
        with zipfile.ZipFile(zpath) as z:
            name = next(n for n in z.namelist() if fnmatch.fnmatch(Path(n).name, member))
            yield from (json.loads(l) for l in z.read(name).decode("utf-8").splitlines() if l.strip())
        return
    files = f"{HUB_ROOT}/{repo}/{pattern}"
    if columns is None:
        yield from datasets.load_dataset("json", data_files=files, split="train")
    else:  # TSV without header or quoting; every field a string
        features = datasets.Features({c: datasets.Value("string") for c in columns})
        yield from datasets.load_dataset("csv", data_files=files, split="train", sep="\t", header=None,
                                         column_names=list(columns), quoting=3, features=features)


def load_eval(benchmark: str, lang: str, data_dir: str | os.PathLike | None = None,
              split: str | None = None):
    """Load an evaluation set as ``(corpus, queries, qrels)`` (paper §4.1 MIRACL and MKQA, §4.2 MLDR).

    - ``corpus``: ``{docid: {"title": str, "text": str}}`` (MLDR has no titles: ``""``);
    - ``queries``: ``{qid: str}``;
    - ``qrels``: ``{qid: {docid: relevance}}`` (MIRACL/MLDR as published, binary with judged
      negatives at 0; MKQA derived by answer matching, see `answer_qrels`).

    ``data_dir=None`` reads the shipped sample ``data_samples/eval``; a directory reads files laid
    out like the hub repositories (see the module docstring) under ``<data_dir>/<benchmark>/``;
    ``"hub"`` reads the real data from the Hugging Face hub (needs network; MKQA scans ~2.7M
    passages). Default splits: MIRACL dev, MLDR test, MKQA test.
    """
    if benchmark not in _HUB:
        raise M3Error(f"unknown benchmark {benchmark!r}; expected one of {sorted(_HUB)}")
    split = split or DEFAULT_SPLIT[benchmark]
    code = MKQA_LANG.get(lang, lang) if benchmark == "mkqa" else lang
    hub = str(data_dir) == "hub"
    if hub and code not in HUB_LANGS[benchmark]:
        raise M3Error(f"{benchmark} on the hub has no language {lang!r}")
    root = Path(data_dir) if data_dir is not None and not hub else DEFAULT_EVAL_DIR

    def rows(role: str, columns: tuple[str, ...] | None = None) -> Iterator[dict]:
        repo, pattern = _HUB[benchmark][role]
        pattern = pattern.format(lang=code, split=split)
        return _hub_rows(repo, pattern, columns) if hub else _local_rows(root / benchmark, pattern, columns)

    corpus: dict[str, dict] = {}
    for r in rows("corpus"):
        docid = str(r.get("docid", r.get("_id")))
        corpus[docid] = {"title": r.get("title") or "", "text": r["text"]}
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    if benchmark == "miracl":
        queries = {r["qid"]: r["query"] for r in rows("topics", ("qid", "query"))}
        for r in rows("qrels", ("qid", "q0", "docid", "rel")):
            qrels.setdefault(r["qid"], {})[r["docid"]] = int(r["rel"])
    elif benchmark == "mldr":
        for r in rows("topics"):
            qid = str(r["query_id"])
            queries[qid] = r["query"]
            judged = qrels.setdefault(qid, {})
            judged.update({str(p["docid"]): 0 for p in r.get("negative_passages") or []})
            judged.update({str(p["docid"]): 1 for p in r["positive_passages"]})
    else:
        answers = {}
        for r in rows("topics"):
            queries[str(r["id"])] = r["question"]
            answers[str(r["id"])] = [a for a in r["answers"] if isinstance(a, str)]
        judged = root / benchmark / "qrels" / f"qrels.mkqa-{code}-{split}.tsv"
        if not hub and judged.is_file():  # judged passages instead of answer matching
            for r in _local_rows(judged.parent, judged.name, ("qid", "q0", "docid", "rel")):
                qrels.setdefault(r["qid"], {})[r["docid"]] = int(r["rel"])
        else:
            qrels = answer_qrels(corpus, answers)
    return corpus, queries, qrels
