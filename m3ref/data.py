"""Training and evaluation data: loading, validation, group sampling, atomic writes.

Training data (paper §3.3-3.4, Table 8-9; official fine-tuning schema) is JSON Lines, one object per
query: ``{"query": str, "pos": [str, ...], "neg": [str, ...]}`` plus the optional ``pos_scores`` and
``neg_scores`` (teacher scores, one per passage, for distillation), ``prompt`` and ``type``. The
paper batches by length (§3.4 "Efficient Batching"), so a training directory is read as one dataset
per file: files split by token length (``<name>_len-{lo}-{hi}.jsonl``) give length-homogeneous
batches.

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

MKQA has no passage judgements: as in the paper's evaluation (Recall@k = a question counts as found
when a top-k passage contains one of its answers), relevance is derived by answer matching,
see `answer_qrels`. These repositories ship loading scripts, which `datasets` >= 4 no longer runs,
so their files are read with the generic ``json``/``csv`` builders on ``hf://`` paths.
"""
from __future__ import annotations

import fnmatch
import gzip
import json
import math
import os
import re
import tempfile
import unicodedata
from pathlib import Path
from typing import Iterable, Iterator

from m3ref.errors import M3Error

REQUIRED = ("query", "pos", "neg")
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


# --------------------------------------------------------------------------- reading JSON Lines

def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, decoded line) of a text file, plain or gzip; strict UTF-8."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        for no, raw in enumerate(f, 1):
            try:
                yield no, raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise M3Error(f"{path}:{no}: not valid UTF-8 (byte {exc.start})") from None


def _jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-blank line; a bad line raises `M3Error`."""
    for no, line in _lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise M3Error(f"{path}:{no}: malformed JSON ({exc.msg}, column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise M3Error(f"{path}:{no}: expected a JSON object, got {type(obj).__name__}")
        yield no, obj


# --------------------------------------------------------------------------- training data

def validate_example(ex: dict, where: str) -> dict:
    """Check one training example against the fine-tuning schema (paper §3.4; official README).

    Returns a normalized copy (scores as floats); raises `M3Error` naming `where` (``file:line``).
    """
    for key in REQUIRED:
        if key not in ex:
            raise M3Error(f"{where}: '{key}' is missing")
    if not isinstance(ex["query"], str):
        raise M3Error(f"{where}: 'query' is not a string (got {type(ex['query']).__name__})")
    for key in ("pos", "neg"):
        texts = ex[key]
        if not isinstance(texts, list):
            raise M3Error(f"{where}: '{key}' must be a list of strings, got {type(texts).__name__}")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise M3Error(f"{where}: '{key}'[{i}] is not a string (got {type(t).__name__})")
    if not ex["pos"]:
        raise M3Error(f"{where}: 'pos' is empty")
    out = dict(ex)
    if (ex.get("pos_scores") is None) != (ex.get("neg_scores") is None):  # null = absent
        raise M3Error(f"{where}: 'pos_scores' and 'neg_scores' must come together")
    for key, texts in (("pos_scores", "pos"), ("neg_scores", "neg")):
        if ex.get(key) is None:
            continue
        sc = ex[key]
        if not isinstance(sc, list) or not all(
                isinstance(s, (int, float)) and not isinstance(s, bool) for s in sc):
            raise M3Error(f"{where}: '{key}' must be a list of numbers")
        if len(sc) != len(ex[texts]):
            raise M3Error(f"{where}: '{key}' has {len(sc)} scores for {len(ex[texts])} '{texts}'")
        out[key] = [float(s) for s in sc]
    for key in ("prompt", "type"):
        if ex.get(key) is not None and not isinstance(ex[key], str):
            raise M3Error(f"{where}: '{key}' is not a string (got {type(ex[key]).__name__})")
    return out


def _to_dataset(rows: list[dict]):
    """Rows -> `datasets.Dataset`; a field absent from some rows is None there."""
    import datasets

    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    return datasets.Dataset.from_dict({k: [r.get(k) for r in rows] for k in keys})


def read_train_file(path: str | os.PathLike) -> list[dict]:
    """Read and validate one training JSONL file (plain or .gz) into a list of examples."""
    path = Path(path)
    rows = [validate_example(obj, f"{path}:{no}") for no, obj in _jsonl(path)]
    if not rows:
        raise M3Error(f"{path}: no examples")
    return rows


def load_train_data(path_or_name: str | os.PathLike, split: str = "train") -> dict:
    """Load fine-tuning data (paper §3.4) as ``{name: datasets.Dataset}``, validated first.

    - a ``.jsonl`` (or ``.jsonl.gz``) file gives one entry, named after the file;
    - a directory gives one entry per JSONL file in it (sorted), so that a trainer can draw each
      batch from a single file, e.g. one length bucket ``<name>_len-{lo}-{hi}`` (§3.4, Table 9);
    - anything else that looks like ``owner/name`` is loaded from the hub with
      `datasets.load_dataset` (``split``) and validated row by row.

    Every problem (malformed line, missing field, empty ``pos``, non-string passage, score count
    mismatch, non-UTF-8 bytes) raises `M3Error` with ``file:line: ...`` before anything is returned.
    """
    p = Path(path_or_name)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.name.endswith((".jsonl", ".jsonl.gz")))
        if not files:
            raise M3Error(f"{p}: no .jsonl files in this directory")
        return {_stem(f): _to_dataset(read_train_file(f)) for f in files}
    if p.is_file():
        return {_stem(p): _to_dataset(read_train_file(p))}
    name = str(path_or_name)
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", name) or name.endswith((".jsonl", ".json", ".gz")):
        raise M3Error(f"{name}: no such file or directory")
    import datasets

    ds = datasets.load_dataset(name, split=split)
    for i, row in enumerate(ds, 1):
        validate_example({k: v for k, v in row.items() if v is not None}, f"{name}[{split}]:{i}")
    return {name.split("/")[-1]: ds}


def _stem(path: Path) -> str:
    return path.name.removesuffix(".gz").removesuffix(".jsonl")


def sample_group(example: dict, group_size: int, rng) -> tuple[str, list[str], list[float] | None]:
    """Draw one training group as the official dataset does (paper §3.4; G = `group_size`).

    One positive chosen at random, then ``group_size - 1`` negatives drawn without replacement;
    when there are too few negatives the list is tiled first (each repeated ``ceil`` times) and
    drawn from the tiled list. Teacher scores are taken at the same indices.
    `rng` is a `random.Random`. Returns ``(query, [pos, neg...], scores or None)``.
    """
    pos, neg = example["pos"], example["neg"]
    i = rng.randrange(len(pos))
    n = group_size - 1
    if n <= 0:
        idx = []
    elif not neg:
        raise M3Error(f"group_size={group_size} needs negatives, but this example has none")
    elif len(neg) < n:
        idx = rng.sample(list(range(len(neg))) * math.ceil(n / len(neg)), n)
    else:
        idx = rng.sample(range(len(neg)), n)
    passages = [pos[i]] + [neg[j] for j in idx]
    scores = None
    if example.get("pos_scores") is not None and example.get("neg_scores") is not None:
        scores = [example["pos_scores"][i]] + [example["neg_scores"][j] for j in idx]
    return example["query"], passages, scores


def write_jsonl_atomic(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    """Write `rows` as JSON Lines to `path` all at once or not at all; returns the row count.

    Writes a temporary file in the same directory, then renames it over `path`; if anything fails
    (including the `rows` iterator raising), the temporary file is removed and `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    n = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                n += 1
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return n


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
            yield from (obj for _, obj in _jsonl(f))
            continue
        for no, line in _lines(f):
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
        qrels = answer_qrels(corpus, answers)
    return corpus, queries, qrels
