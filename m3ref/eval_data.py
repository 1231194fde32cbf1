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
import warnings
from pathlib import Path
from typing import Iterator

from .assets import asset_path
from .data import jsonl_rows, text_lines
from .errors import M3Error, M3Warning

DEFAULT_EVAL_DIR = asset_path("data_samples/eval")  # the shipped sample, in a checkout or an installed wheel
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


def _local_files(root: Path, pattern: str) -> list[Path]:
    """The local files matching `pattern` (sorted); ``.gz`` is optional on disk."""
    files = sorted(root.glob(pattern)) or sorted(root.glob(pattern.removesuffix(".gz")))
    if not files:
        raise M3Error(f"{root / pattern}: not found")
    return files


def _local_rows(files: list[Path], columns: tuple[str, ...] | None) -> Iterator[tuple[str, dict]]:
    """(``file:line``, row) for every row of `files`: JSON objects, or whitespace/tab-separated
    `columns`."""
    for f in files:
        if columns is None:
            yield from ((f"{f}:{no}", obj) for no, obj in jsonl_rows(f))
            continue
        for no, line in text_lines(f):
            if line.strip():
                parts = line.rstrip("\n").split("\t") if len(columns) == 2 else line.split()
                if len(parts) != len(columns):
                    raise M3Error(f"{f}:{no}: expected {len(columns)} fields {columns}")
                yield f"{f}:{no}", dict(zip(columns, parts))


def _hub_rows(repo: str, pattern: str, columns: tuple[str, ...] | None) -> Iterator[tuple[str, dict]]:
    """(where, row) of hub files through `datasets` (generic json/csv builders on ``hf://`` paths)."""
    import datasets

    if repo == "Shitao/bge-m3-data":  # MKQA queries sit inside a zip: fetch it, read one member
        import zipfile
        from huggingface_hub import hf_hub_download

        member = Path(pattern).name
        zpath = hf_hub_download(repo, Path(pattern).parent.name + ".zip", repo_type="dataset")
        with zipfile.ZipFile(zpath) as z:
            name = next(n for n in z.namelist() if fnmatch.fnmatch(Path(n).name, member))
            for no, line in enumerate(z.read(name).decode("utf-8").splitlines(), 1):
                if line.strip():
                    try:
                        yield f"{zpath}:{name}:{no}", json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise M3Error(f"{zpath}:{name}:{no}: malformed JSON ({exc.msg})") from None
        return
    files = f"{HUB_ROOT}/{repo}/{pattern}"
    if columns is None:
        rows = datasets.load_dataset("json", data_files=files, split="train")
    else:  # TSV without header or quoting; every field a string
        features = datasets.Features({c: datasets.Value("string") for c in columns})
        rows = datasets.load_dataset("csv", data_files=files, split="train", sep="\t", header=None,
                                     column_names=list(columns), quoting=3, features=features)
    yield from ((f"{files} row {i}", row) for i, row in enumerate(rows, 1))


def _text(row: dict, key: str, where: str, optional: bool = False) -> str:
    """row[key] as a string; missing or not a string is an `M3Error` naming `where`."""
    value = row.get(key)
    if value is None and optional:
        return ""
    if value is None:
        raise M3Error(f"{where}: '{key}' is missing")
    if not isinstance(value, str):
        raise M3Error(f"{where}: '{key}' is not a string (got {type(value).__name__})")
    return value


def _ident(row: dict, keys: tuple[str, ...], where: str) -> str:
    """The first of `keys` present in `row`, as a string (ids may be numbers in JSON)."""
    for key in keys:
        if row.get(key) is not None:
            if not isinstance(row[key], (str, int)) or isinstance(row[key], bool):
                raise M3Error(f"{where}: '{key}' is not a string or an integer")
            return str(row[key])
    raise M3Error(f"{where}: '{keys[0]}' is missing")


def _grade(row: dict, where: str) -> int:
    try:
        return int(row["rel"])
    except ValueError:
        raise M3Error(f"{where}: relevance {row['rel']!r} is not an integer") from None


def _judge(qrels: dict, qid: str, docid: str, grade: int, where: str) -> None:
    judged = qrels.setdefault(qid, {})
    if judged.get(docid, grade) != grade:
        raise M3Error(f"{where}: query {qid!r} judges document {docid!r} again, now {grade} "
                      f"(was {judged[docid]})")
    judged[docid] = grade


def check_judgements(corpus: dict, queries: dict, qrels: dict, sources: dict) -> dict:
    """Check that an evaluation set can be scored; returns the qrels of the queries it has.

    Errors (each one line naming the file): no documents, no queries, no judged query (no
    query id of the qrels is a query of the topics), no relevant document, or none of the
    relevant documents in the corpus. Warnings (`M3Warning`, with the count and the file):
    query ids of the qrels without a query (left out: trec_eval would count them as 0), and
    relevant documents missing from the corpus (they count as not retrieved).
    `sources`: {"corpus", "topics", "qrels"} -> the file (or pattern) each came from.
    """
    if not corpus:
        raise M3Error(f"{sources['corpus']}: no documents")
    if not queries:
        raise M3Error(f"{sources['topics']}: no queries")
    if not qrels:
        raise M3Error(f"{sources['qrels']}: no judgements")
    judged = {q: docs for q, docs in qrels.items() if q in queries}
    if not judged:
        raise M3Error(f"no judged query: none of the {len(qrels)} query ids in {sources['qrels']} "
                      f"is a query of {sources['topics']}")
    if len(judged) < len(qrels):
        warnings.warn(f"{len(qrels) - len(judged)} of {len(qrels)} query ids in {sources['qrels']} have no "
                      f"query in {sources['topics']}; they are left out", M3Warning, stacklevel=3)
    relevant = [d for docs in judged.values() for d, g in docs.items() if g > 0]
    if not relevant:
        raise M3Error(f"{sources['qrels']}: no query has a relevant document")
    missing = sum(d not in corpus for d in relevant)
    if missing == len(relevant):
        raise M3Error(f"none of the {len(relevant)} relevant documents in {sources['qrels']} is in the "
                      f"corpus {sources['corpus']}")
    if missing:
        warnings.warn(f"{missing} of {len(relevant)} relevant documents in {sources['qrels']} are not in the "
                      f"corpus {sources['corpus']}; they count as not retrieved", M3Warning, stacklevel=3)
    return judged


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

    sources = {}

    def rows(role: str, columns: tuple[str, ...] | None = None) -> Iterator[tuple[str, dict]]:
        repo, pattern = _HUB[benchmark][role]
        pattern = pattern.format(lang=code, split=split)
        if hub:
            sources[role] = f"{HUB_ROOT}/{repo}/{pattern}"
            return _hub_rows(repo, pattern, columns)
        files = _local_files(root / benchmark, pattern)
        sources[role] = str(files[0]) if len(files) == 1 else str(root / benchmark / pattern)
        return _local_rows(files, columns)

    corpus: dict[str, dict] = {}
    for where, r in rows("corpus"):
        docid = _ident(r, ("docid", "_id"), where)
        if docid in corpus:
            raise M3Error(f"{where}: duplicate docid {docid!r}; every document needs its own id")
        corpus[docid] = {"title": _text(r, "title", where, optional=True), "text": _text(r, "text", where)}
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}

    def add_query(qid: str, text: str, where: str) -> None:
        if qid in queries:
            raise M3Error(f"{where}: duplicate query id {qid!r}")
        queries[qid] = text

    if benchmark == "miracl":
        for where, r in rows("topics", ("qid", "query")):
            add_query(r["qid"], r["query"], where)
        for where, r in rows("qrels", ("qid", "q0", "docid", "rel")):
            _judge(qrels, r["qid"], r["docid"], _grade(r, where), where)
    elif benchmark == "mldr":
        for where, r in rows("topics"):
            qid = _ident(r, ("query_id",), where)
            add_query(qid, _text(r, "query", where), where)
            judged = qrels.setdefault(qid, {})
            for key, grade in (("negative_passages", 0), ("positive_passages", 1)):
                passages = r.get(key) or [] if key == "negative_passages" else r.get(key)
                if not isinstance(passages, list):
                    raise M3Error(f"{where}: '{key}' is missing" if passages is None else
                                  f"{where}: '{key}' must be a list of {{\"docid\": ...}} objects")
                for p in passages:
                    if not isinstance(p, dict):
                        raise M3Error(f"{where}: '{key}' must be a list of {{\"docid\": ...}} objects")
                    judged[_ident(p, ("docid",), where)] = grade
        sources["qrels"] = sources["topics"]
    else:
        answers = {}
        for where, r in rows("topics"):
            qid = _ident(r, ("id",), where)
            add_query(qid, _text(r, "question", where), where)
            if not isinstance(r.get("answers"), list):
                raise M3Error(f"{where}: 'answers' must be a list of strings")
            answers[qid] = [a for a in r["answers"] if isinstance(a, str)]
        judged = root / benchmark / "qrels" / f"qrels.mkqa-{code}-{split}.tsv"
        if not hub and judged.is_file():  # judged passages instead of answer matching
            sources["qrels"] = str(judged)
            for where, r in _local_rows([judged], ("qid", "q0", "docid", "rel")):
                _judge(qrels, r["qid"], r["docid"], _grade(r, where), where)
        else:
            sources["qrels"] = f"the answers of {sources['topics']}"
            qrels = answer_qrels(corpus, answers)
    qrels = check_judgements(corpus, queries, qrels, sources)
    return corpus, queries, qrels
