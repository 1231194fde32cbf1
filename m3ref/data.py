"""Training data: loading, validation, group sampling, atomic writes (paper Sec. 3.3-3.4).

Training data (paper §3.3-3.4, Table 8-9; official fine-tuning schema) is JSON Lines, one object per
query: ``{"query": str, "pos": [str, ...], "neg": [str, ...]}`` plus the optional ``pos_scores`` and
``neg_scores`` (teacher scores, one per passage, for distillation), ``prompt`` and ``type``. The
paper batches by length (§3.4 "Efficient Batching"), so a training directory is read as one dataset
per file: files split by token length (``<name>_len-{lo}-{hi}.jsonl``) give length-homogeneous
batches. Evaluation sets are read by `m3ref.eval_data`.
"""
from __future__ import annotations

import gzip
import json
import math
import os
import re
import tempfile
import zlib
from pathlib import Path
from typing import Iterable, Iterator

from m3ref.errors import M3Error

REQUIRED = ("query", "pos", "neg")
_HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")


def is_hub_id(name: str) -> bool:
    """Does `name` read as a hub id (``BAAI/bge-m3``, or ``xlm-roberta-large`` without an owner)
    rather than a local path? Local paths start with ``.``, ``/`` or ``~``, have more than one
    ``/``, or have a first folder that exists (``runs/x`` when ``runs/`` is there); a missing
    one is then a one-line error naming it, never a hub request."""
    name = str(name)
    if name.startswith((".", "/", "~")) or not _HUB_ID.fullmatch(name):
        return False
    return "/" not in name or not os.path.isdir(name.split("/")[0])


# --------------------------------------------------------------------------- reading JSON Lines

def text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, decoded line) of a text file, plain or gzip; strict UTF-8.
    A truncated or corrupt .gz file is an `M3Error` naming the line where it breaks off."""
    opener = gzip.open if path.suffix == ".gz" else open
    no = 0
    with opener(path, "rb") as f:
        lines = iter(f)
        while True:
            try:
                raw = next(lines)
            except StopIteration:
                return
            except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
                what = "ends early" if isinstance(exc, EOFError) else f"is corrupt ({exc})"
                raise M3Error(f"{path}:{no + 1}: the gzip stream {what}; the file is truncated or damaged") from None
            no += 1
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise M3Error(f"{path}:{no}: not valid UTF-8 (byte {exc.start})") from None
            yield no, line


def jsonl_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-blank line; a bad line raises `M3Error`."""
    for no, line in text_lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise M3Error(f"{path}:{no}: malformed JSON ({exc.msg}, column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise M3Error(f"{path}:{no}: expected a JSON object, got {type(obj).__name__}")
        if _SURROGATE_ESCAPE.search(line):  # "\ud800" decodes to a str no tokenizer reads
            bad = _lone_surrogate(obj)
            if bad is not None:
                raise M3Error(f"{path}:{no}: a lone surrogate (U+{ord(bad):04X}) is not valid Unicode text")
        yield no, obj


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _lone_surrogate(obj):
    """The first lone surrogate character in the strings of a JSON value, or None."""
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
        except UnicodeEncodeError as exc:
            return obj[exc.start]
        return None
    values = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, list) else ()
    for v in values:
        bad = _lone_surrogate(v)
        if bad is not None:
            return bad
    return None


# --------------------------------------------------------------------------- training data

def validate_example(ex: dict, where: str, required=REQUIRED) -> dict:
    """Check one training example against the fine-tuning schema (paper §3.4; official README).

    Returns a normalized copy (scores as floats); raises `M3Error` naming `where` (``file:line``).
    """
    for key in required:
        if key not in ex:
            raise M3Error(f"{where}: '{key}' is missing")
    if not isinstance(ex["query"], str):
        raise M3Error(f"{where}: 'query' is not a string (got {type(ex['query']).__name__})")
    for key in ("pos", "neg"):
        if key not in ex:
            continue
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
        for i, s in enumerate(sc):
            if not math.isfinite(s):
                raise M3Error(f"{where}: '{key}'[{i}] is {s}; teacher scores must be finite numbers")
        if len(sc) != len(ex.get(texts, [])):
            raise M3Error(f"{where}: '{key}' has {len(sc)} scores for {len(ex[texts])} '{texts}'")
        out[key] = [float(s) for s in sc]
    for key in ("prompt", "type"):
        if ex.get(key) is not None and not isinstance(ex[key], str):
            raise M3Error(f"{where}: '{key}' is not a string (got {type(ex[key]).__name__})")
    return out


def _features():
    """The Arrow schema of a training example; an absent optional field is null."""
    from datasets import Features, Sequence, Value
    texts, scores = Sequence(Value("string")), Sequence(Value("float64"))
    return Features({"query": Value("string"), "pos": texts, "neg": texts, "pos_scores": scores,
                     "neg_scores": scores, "prompt": Value("string"), "type": Value("string")})


def _validated_rows(path: str, stamp):
    """Validated examples of one file, streamed (`stamp` only keys the cache on size and mtime)."""
    names = _features()
    for no, obj in jsonl_rows(Path(path)):
        ex = validate_example(obj, f"{path}:{no}")
        yield {k: ex.get(k) for k in names}


def _arrow_dataset(path: Path):
    """One training file as a memory-mapped `datasets.Dataset`: rows are validated while they
    are written to an Arrow cache file (in the `datasets` cache), so a file of millions of
    examples trains without being held in memory. A changed file (size or mtime) is re-read."""
    import datasets

    stat = path.stat()
    was = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        ds = datasets.Dataset.from_generator(
            _validated_rows, features=_features(),
            gen_kwargs={"path": str(path.resolve()), "stamp": (stat.st_size, stat.st_mtime_ns)})
    except datasets.exceptions.DatasetGenerationError as exc:  # re-raise our file:line message
        cause = exc.__cause__ or exc.__context__
        raise (cause if isinstance(cause, M3Error) else M3Error(f"{path}: {exc}")) from None
    finally:
        if was:
            datasets.enable_progress_bars()
    if len(ds) == 0:
        raise M3Error(f"{path}: no examples")
    return ds


def read_train_file(path: str | os.PathLike, required=REQUIRED) -> list[dict]:
    """Read and validate one training JSONL file (plain or .gz) into a list of examples.
    `required` = ("query", "pos") accepts pairs without "neg" (the input of mining)."""
    path = Path(path)
    rows = [validate_example(obj, f"{path}:{no}", required) for no, obj in jsonl_rows(path)]
    if not rows:
        raise M3Error(f"{path}: no examples")
    return rows


def load_train_data(path_or_name: str | os.PathLike, split: str = "train") -> dict:
    """Load fine-tuning data (paper §3.4) as ``{name: datasets.Dataset}``, validated first.

    Local files become memory-mapped Arrow datasets (columns query, pos, neg, pos_scores,
    neg_scores, prompt, type; other keys are dropped), so their size is bounded by the disk,
    not by memory.

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
        return {_stem(f): _arrow_dataset(f) for f in files}
    if p.is_file():
        return {_stem(p): _arrow_dataset(p)}
    name = str(path_or_name)
    if not is_hub_id(name) or "/" not in name or name.endswith((".jsonl", ".json", ".gz")):
        raise M3Error(f"{name}: no such file or directory")
    import datasets

    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as exc:  # noqa: BLE001 - offline, unknown repository, no such split, ...
        line = next((x.strip() for x in str(exc).splitlines() if x.strip()), type(exc).__name__)
        raise M3Error(f"{name}: cannot load this dataset from the hub ({line})") from None
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
