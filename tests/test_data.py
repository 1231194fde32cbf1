"""Tests for m3ref.data, m3ref.eval_data and the shipped samples built by data_samples/make_samples.py."""
from __future__ import annotations

import gzip
import importlib.util
import json
import random
import re
from pathlib import Path

import pytest

from m3ref.data import load_train_data, read_train_file, sample_group, write_jsonl_atomic
from m3ref.errors import M3Error
from m3ref.eval_data import answer_qrels, load_eval

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "data_samples"
LANGS = ["en", "de", "es", "sw", "zh", "ja", "ko", "ru", "ar", "hi"]
BUCKET = re.compile(r"^(\w+)_len-(\d+)-(\d+|inf)$")


# --------------------------------------------------------------------------- shipped samples

@pytest.mark.parametrize("benchmark", ["miracl", "mkqa", "mldr"])
@pytest.mark.parametrize("lang", LANGS)
def test_load_eval_samples(benchmark, lang):
    corpus, queries, qrels = load_eval(benchmark, lang)
    assert len(queries) == 33 and set(qrels) == set(queries)
    assert all(isinstance(d["title"], str) and d["text"] for d in corpus.values())
    for qid, judged in qrels.items():
        assert set(judged) <= set(corpus), qid
        assert sum(rel > 0 for rel in judged.values()) >= 1, qid
    if benchmark == "miracl":
        assert len(corpus) == 200
        assert all(sorted(j.values()) == [0, 1] for j in qrels.values())
    if benchmark == "mkqa":  # one English corpus; the topic's own passage always contains an answer
        assert all(d.startswith("en-") for d in corpus)
        assert all(judged.get(f"en-{qid}-p") == 1 for qid, judged in qrels.items())
    if benchmark == "mldr":  # each answering passage is inside exactly one long document
        assert len(corpus) == 33 + 10 and all(len(j) == 1 for j in qrels.values())
        passages = load_eval("miracl", lang)[0]
        for qid, judged in qrels.items():
            answer = passages[f"{lang}-{qid.split('-')[-1]}-p"]["text"]
            assert [d for d, doc in corpus.items() if answer in doc["text"]] == list(judged)


def test_no_eval_text_in_training():
    """No text of an evaluation topic (passage or related, any language) is in a training file."""
    held_out = []
    for lang in LANGS:
        corpus, _, qrels = load_eval("miracl", lang)
        held_out += [corpus[d]["text"] for judged in qrels.values() for d in judged]
    for path in sorted((SAMPLES / "train").glob("*/*.jsonl")):
        text = path.read_text(encoding="utf-8")
        assert not [t for t in held_out if json.dumps(t, ensure_ascii=False)[1:-1] in text], path


def test_train_samples():
    unsup = load_train_data(SAMPLES / "train" / "unsup")
    ft = load_train_data(SAMPLES / "train" / "finetune")
    assert all(BUCKET.match(name) for name in [*unsup, *ft])
    assert all(neg == [] for ds in unsup.values() for neg in ds["neg"])
    assert sum(len(ds) for ds in unsup.values()) == 67 * (2 * len(LANGS) + len(LANGS) - 1)
    short = [ds for name, ds in ft.items() if not name.startswith("long")]
    assert sum(len(ds) for ds in short) == 67 * len(LANGS)
    assert all(len(neg) == 7 for ds in short for neg in ds["neg"])
    kd = [ds for name, ds in ft.items() if name.startswith("ftkd")]
    assert kd and all(s == [1.0] for ds in kd for s in ds["pos_scores"])
    assert all(len(s) == 7 for ds in kd for s in ds["neg_scores"])
    long = [name for name in ft if name.startswith("long")]
    assert [BUCKET.match(n).group(2) for n in long] == [str(x) for x in range(1000, 8000, 1000)]
    assert all(len(ft[n]) == len(LANGS) for n in long)


@pytest.fixture(scope="module")
def tokenizer():
    """The project's tiny tokenizer, which the builder counts tokens with (built once here)."""
    from m3ref.tiny import build_tokenizer

    return build_tokenizer()


def test_sample_lengths_match_buckets(tokenizer):
    """Bucket names hold for the first example of every train file; MLDR documents are 2k-8k."""
    n_tokens = lambda texts: [len(ids) for ids in tokenizer(texts)["input_ids"]]
    for path in sorted((SAMPLES / "train").glob("*/*.jsonl")):
        lo, hi = BUCKET.match(path.name.removesuffix(".jsonl")).group(2, 3)
        for ex in read_train_file(path)[:1]:
            n = max(n_tokens([ex["query"], *ex["pos"], *ex["neg"]]))
            assert int(lo) <= n < (float("inf") if hi == "inf" else int(hi)), path
            assert n <= 8000
    corpus, _, _ = load_eval("mldr", "ja")
    assert all(2000 <= n <= 8000 for n in n_tokens([d["text"] for d in corpus.values()]))


@pytest.mark.slow
def test_builder_reproduces_shipped_files(tokenizer):
    """A fresh build (in memory) equals the shipped files; .gz files compared decompressed."""
    spec = importlib.util.spec_from_file_location("make_samples", SAMPLES / "make_samples.py")
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    fresh = builder.render(SAMPLES / "source", tokenizer)
    shipped = {str(p.relative_to(SAMPLES)).removesuffix(".gz"): p
               for sub in ("train", "eval") for p in (SAMPLES / sub).rglob("*") if p.is_file()}
    assert sorted(shipped) == sorted(fresh)
    for rel, path in shipped.items():
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        assert data == fresh[rel].encode("utf-8"), rel


def test_hub_reader_on_a_local_mirror(tmp_path, monkeypatch):
    """The hub branch (`datasets` json/csv builders on hub paths) reads a local mirror of the hub
    repositories exactly as the local branch reads the sample."""
    import datasets

    import m3ref.eval_data

    hub, ev = tmp_path / "hub", SAMPLES / "eval"

    def mirror(src: str, dst: str, gz: bool = False) -> None:
        data = (ev / src).read_bytes()
        (hub / dst).parent.mkdir(parents=True, exist_ok=True)
        (hub / dst).write_bytes(gzip.compress(data) if gz else data)

    for rel in ("topics/topics.miracl-v1.0-de-dev.tsv", "qrels/qrels.miracl-v1.0-de-dev.tsv"):
        mirror(f"miracl/miracl-v1.0-de/{rel}", f"miracl/miracl/miracl-v1.0-de/{rel}")
    mirror("miracl/miracl-corpus-v1.0-de/docs-0.jsonl",
           "miracl/miracl-corpus/miracl-corpus-v1.0-de/docs-0.jsonl.gz", gz=True)
    for name in ("corpus.jsonl.gz", "test.jsonl.gz"):
        mirror(f"mldr/mldr-v1.0-de/{name}", f"Shitao/MLDR/mldr-v1.0-de/{name}")
    monkeypatch.setattr(m3ref.eval_data, "HUB_ROOT", str(hub))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    for benchmark in ("miracl", "mldr"):
        assert load_eval(benchmark, "de", "hub") == load_eval(benchmark, "de")


# --------------------------------------------------------------------------- bad training input

GOOD = {"query": "q", "pos": ["p"], "neg": ["n1", "n2"]}


def _write_bad(tmp_path: Path, bad: bytes) -> Path:
    """A file whose line 3 is `bad` (lines 1-2 are valid)."""
    path = tmp_path / "x.jsonl"
    good = json.dumps(GOOD).encode()
    path.write_bytes(good + b"\n" + good + b"\n" + bad + b"\n" + good + b"\n")
    return path


def _bad(obj) -> bytes:
    return json.dumps(obj).encode()


@pytest.mark.parametrize("bad, message", [
    (b'{"query": "q", "pos": ["p"], "neg": [', "malformed JSON"),
    (_bad({"query": "q", "pos": ["p"]}), "'neg' is missing"),
    (_bad({"pos": ["p"], "neg": []}), "'query' is missing"),
    (_bad({"query": "q", "pos": [], "neg": ["n"]}), "'pos' is empty"),
    (_bad({"query": "q", "pos": ["p", 5], "neg": []}), "'pos'[1] is not a string"),
    (_bad({"query": "q", "pos": ["p"], "neg": [None]}), "'neg'[0] is not a string"),
    (_bad({"query": "q", "pos": "p", "neg": []}), "'pos' must be a list"),
    ('{"query": "caf\xe9", "pos": ["p"], "neg": []}'.encode("latin-1"), "not valid UTF-8"),
    (_bad({**GOOD, "pos_scores": [1.0, 0.5], "neg_scores": [0.1, 0.2]}), "'pos_scores' has 2 scores"),
    (_bad({**GOOD, "pos_scores": [1.0], "neg_scores": [0.1]}), "'neg_scores' has 1 scores"),
    (_bad({**GOOD, "pos_scores": [1.0]}), "must come together"),
])
def test_bad_training_line_names_file_and_line(tmp_path, bad, message):
    path = _write_bad(tmp_path, bad)
    with pytest.raises(M3Error) as err:
        load_train_data(path)
    assert str(err.value).startswith(f"{path}:3: ") and message in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_file_in_directory_and_missing_paths(tmp_path):
    write_jsonl_atomic(tmp_path / "a_len-0-500.jsonl", [GOOD])
    _write_bad(tmp_path, _bad({"query": "q", "pos": [], "neg": []}))
    with pytest.raises(M3Error, match=r"x\.jsonl:3: 'pos' is empty"):
        load_train_data(tmp_path)
    with pytest.raises(M3Error, match="no such file"):
        load_train_data(tmp_path / "missing.jsonl")
    with pytest.raises(M3Error, match="unknown benchmark"):
        load_eval("beir", "en")
    with pytest.raises(M3Error, match="no language"):
        load_eval("mldr", "sw", "hub")


# --------------------------------------------------------------------------- sampling, writing, matching

def test_sample_group_official_rules():
    ex = {"query": "q", "pos": ["p0", "p1"], "neg": ["n0", "n1", "n2"],
          "pos_scores": [1.0, 0.9], "neg_scores": [0.3, 0.2, 0.1]}
    q, passages, scores = sample_group(ex, 8, random.Random(1))
    assert q == "q" and len(passages) == 8 and passages[0] in ex["pos"]
    assert all(passages[1:].count(n) <= 3 for n in ex["neg"])  # tiled ceil(7/3) = 3 times
    score_of = dict(zip(ex["pos"] + ex["neg"], ex["pos_scores"] + ex["neg_scores"]))
    assert scores == [score_of[p] for p in passages]
    big = {"query": "q", "pos": ["p"], "neg": [f"n{i}" for i in range(20)]}
    _, passages, scores = sample_group(big, 8, random.Random(2))
    assert len(set(passages[1:])) == 7 and scores is None  # without replacement
    assert sample_group({"query": "q", "pos": ["p"], "neg": []}, 1, random.Random(0))[1] == ["p"]


def test_write_jsonl_atomic_leaves_no_partial_file(tmp_path):
    path = tmp_path / "mined.jsonl"
    assert write_jsonl_atomic(path, [GOOD, GOOD]) == 2
    before = path.read_bytes()

    def rows():
        yield GOOD
        raise RuntimeError("miner crashed")

    with pytest.raises(RuntimeError):
        write_jsonl_atomic(path, rows())
    assert path.read_bytes() == before and sorted(tmp_path.iterdir()) == [path]
    with pytest.raises(RuntimeError):
        write_jsonl_atomic(tmp_path / "new.jsonl", rows())
    assert sorted(tmp_path.iterdir()) == [path]


def test_answer_qrels_token_match():
    corpus = {"a": {"text": "The Nile is about 6,650 km long."}, "b": {"text": "Nilewater"}}
    assert answer_qrels(corpus, {"q": ["nile"], "r": ["6,650 km"], "s": ["65"]}) == {
        "q": {"a": 1}, "r": {"a": 1}, "s": {}}


def test_training_files_are_memory_mapped_and_reread_when_changed(tmp_path):
    path = tmp_path / "pairs_len-0-500.jsonl"
    write_jsonl_atomic(path, [{"query": f"q{i}", "pos": [f"p{i}"], "neg": [], "lang": "en"} for i in range(5)])
    ds = load_train_data(path)["pairs_len-0-500"]
    assert ds.cache_files and ds.cache_files[0]["filename"].endswith(".arrow")  # on disk, not in memory
    assert ds.column_names == ["query", "pos", "neg", "pos_scores", "neg_scores", "prompt", "type"]
    assert ds[3] == {"query": "q3", "pos": ["p3"], "neg": [], "pos_scores": None, "neg_scores": None,
                     "prompt": None, "type": None}
    write_jsonl_atomic(path, [{"query": "new", "pos": ["p"], "neg": ["n"], "pos_scores": [1], "neg_scores": [0]}])
    again = load_train_data(path)["pairs_len-0-500"]
    assert len(again) == 1 and again[0]["query"] == "new" and again[0]["neg_scores"] == [0.0]
