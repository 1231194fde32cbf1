"""data_samples/build_corpus.py on a tiny hand-made Debian archive (no network, no apt).

The fixture archive is written by `make_archive`: a Release file, a Packages file, Translation-en,
-de and -ja files and a few synthetic manual pages (English and German), laid out like the
builder's cache, and built with ``--offline --min-test 3``. Its packages cover each rule: source
siblings, near-duplicate and identical descriptions across sources, short descriptions, a
transitional package, duplicate summaries, an untranslated "translation", German and Japanese
summaries with and without the package name, a `.so` redirect page, pages shared by both languages
and pages whose NAME description is a package summary.
"""
from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import random
import re
import shutil
import sys
import unicodedata
from pathlib import Path

import pytest

from m3ref.errors import M3Error

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("build_corpus", ROOT / "data_samples" / "build_corpus.py")
bc = sys.modules["build_corpus"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bc)

SYLLABLES = "ka lo mi ru te zan vor pel dis qua nix bor sel tum gra fen ost lib wer dun".split()


def vocabulary(seed: int, n: int = 600) -> list[str]:
    rng = random.Random(seed)
    return sorted({"".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3))) for _ in range(n)})


EN, DE = vocabulary(1), [w + "ung" for w in vocabulary(2)]
KANA = [chr(c) for c in range(0x30A2, 0x30F3)]


def words(rng, vocab, n):
    return " ".join(rng.choice(vocab) for _ in range(n))


def kana(rng, n):
    return "".join(rng.choice(KANA) for _ in range(n))


def control(para: dict) -> str:
    """A deb822 paragraph; multi-line values become continuation lines (" ." for blank)."""
    out = []
    for field, value in para.items():
        first, *rest = value.split("\n")
        out.append(f"{field}: {first}")
        out.extend(" " + (line or ".") for line in rest)
    return "\n".join(out) + "\n"


def packages(rng) -> list[dict]:
    """Package records: name, source, English and German (summary, long), optional Japanese."""
    pk = []

    def add(name, source=None, summary=None, long=None, ja=None):
        summary = summary or words(rng, EN, 4)
        long = long or words(rng, EN, 14) + "\n\n" + words(rng, EN, 10)
        de_summary = words(rng, DE, 4) + (f" für {name}" if len(pk) % 2 else "")  # half keep the name
        pk.append({"name": name, "source": source or name, "en": (summary, long),
                   "de": (de_summary, words(rng, DE, 18)), "ja": ja})
    for i in range(36):
        ja = None
        if i < 14:  # Japanese: pure kana, except two summaries that keep the product name
            ja = (f"pkg{i} {kana(rng, 6)}" if i < 2 else kana(rng, 8), kana(rng, 40))
        add(f"pkg{i}", ja=ja)
    for name in ("alpha", "libalpha1", "alpha-doc", "python3-alpha"):  # one source package
        add(name, source="alpha")
    base = words(rng, EN, 30)
    add("fontx-one", long=base + " " + "bold")  # near-duplicates from different sources
    add("fontx-two", long=base + " " + "light")
    same = words(rng, EN, 20)
    add("twin-a", long=same)  # identical descriptions from different sources
    add("twin-b", long=same)
    add("tiny", long="too short")
    add("oldname", summary="transitional package for newname", long=words(rng, EN, 20))
    add("dup-one", summary="shared summary here")
    add("dup-two", summary="shared summary here")
    pk[0]["de"] = pk[0]["en"]  # an untranslated "translation": dropped
    return pk


def page(name: str, section: int, query: str, body: list[str], lang: str) -> str:
    heads = {"en": ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS"),
             "de": ("BEZEICHNUNG", "ÜBERSICHT", "BESCHREIBUNG", "OPTIONEN")}[lang]
    lines = [f'.TH {name.upper()} {section} "2024" "fixture" "User Commands"',
             f".SH {heads[0]}", f"{name} \\- {query}", f".SH {heads[1]}",
             f".B {name}", "[\\fIOPTION\\fR]...", f".SH {heads[2]}"]
    for para in body:
        lines += [para, ".PP"]
    lines += [f".SH {heads[3]}", ".TP", ".B \\-a", body[0].split(".")[0] + "."]
    if lang == "de":
        lines += [".SH ÜBERSETZUNG", "Die deutsche Übersetzung wurde von Freiwilligen erstellt."]
    return "\n".join(lines) + "\n"


def make_archive(root: Path) -> dict:
    rng = random.Random(7)
    pk = packages(rng)
    lists = root / "lists"
    lists.mkdir(parents=True)
    (lists / "Release").write_text("Origin: Debian\nSuite: fixture\nCodename: bookworm\n"
                                   "Date: Sat, 01 Jan 2000 00:00:00 UTC\nComponents: main\n", encoding="utf-8")
    paras = {"Packages": [], "Translation-en": [], "Translation-de": [], "Translation-ja": []}
    for p in pk:
        md5 = hashlib.md5("\n".join(p["en"]).encode()).hexdigest()
        source = {"Source": p["source"]} if p["source"] != p["name"] else {}
        paras["Packages"].append(control({"Package": p["name"], **source, "Version": "1.0-1",
                                          "Description": p["en"][0], "Description-md5": md5}))
        for lang in ("en", "de", "ja"):
            if p[lang]:
                paras[f"Translation-{lang}"].append(control({
                    "Package": p["name"], "Description-md5": md5, f"Description-{lang}": "\n".join(p[lang])}))
    for name, rows in paras.items():
        (lists / name).write_text("\n".join(rows), encoding="utf-8")
    man = {"en": root / "man/manpages/usr/share/man/man1", "de": root / "man/manpages-de/usr/share/man/de/man1"}
    for lang, folder in man.items():
        folder.mkdir(parents=True)
        vocab = EN if lang == "en" else DE
        for i in range(14 if lang == "en" else 11):
            n_paras = 30 if i == 0 else 3  # one long page: a higher length bucket
            body = [words(rng, vocab, 25) + "." for _ in range(n_paras)]
            # pages 2-7 have a package's summary as NAME description: no query on both sides
            query = pk[18 + i][lang][0] if 2 <= i < 8 else words(rng, vocab, 4)
            text = page(f"tool{i}", 1, query, body, lang)
            (folder / f"tool{i}.1.gz").write_bytes(gzip.compress(text.encode(), mtime=0))
        (folder / "alias.1").write_text(".so man1/tool1.1\n", encoding="utf-8")
    return {p["name"]: p for p in pk}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    archive = make_archive(root / "cache")
    for out in ("a", "b"):
        bc.main(["--out", str(root / out), "--cache", str(root / "cache"), "--offline", "--min-test", "3",
                 "--jobs", "2"])
    return root / "a", root / "b", archive


def read_lines(path: Path) -> list[str]:
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return data.decode("utf-8").splitlines()


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in read_lines(path)]


def train_rows(out: Path) -> dict[str, list[dict]]:
    return {str(p.relative_to(out)): jsonl(p) for p in sorted((out / "train").rglob("*.jsonl"))}


def eval_queries(out: Path) -> dict[str, list[tuple[str, str, str]]]:
    """{split: [(benchmark/lang, query id, query text)]} over every evaluation file."""
    got = {s: [] for s in ("dev", "test")}
    for p in (out / "eval/miracl").glob("miracl-v1.0-*/topics/*.tsv"):
        split = p.stem.rsplit("-", 1)[1]
        got[split] += [("miracl", *line.split("\t")) for line in read_lines(p)]
    for p in (out / "eval/mkqa").glob("MKQA_*-data/*.jsonl"):
        split = p.parent.name.split("_")[1].split("-")[0]
        got[split] += [("mkqa", r["id"], r["question"]) for r in jsonl(p)]
    for p in (out / "eval/mldr").glob("mldr-v1.0-*/[dt]*.jsonl.gz"):
        got[p.name.split(".")[0]] += [("mldr", r["query_id"], r["query"]) for r in jsonl(p)]
    return got


def test_deterministic(built):
    a, b, _ = built
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for rel in files:
        if rel.name == "manifest.json":
            ma, mb = (json.loads((d / rel).read_text()) for d in (a, b))
            ma.pop("wall_time_s"), mb.pop("wall_time_s")
            assert ma == mb
        else:
            assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert all(gzip.open(a / p).read() is not None and (a / p).read_bytes()[4:8] == b"\0\0\0\0"
               for p in files if p.suffix == ".gz")  # gzip time stamp 0


def test_layout(built):
    out = built[0]
    for split in ("dev", "test"):
        for lang in ("en", "de"):
            assert (out / f"eval/miracl/miracl-v1.0-{lang}/topics/topics.miracl-v1.0-{lang}-{split}.tsv").is_file()
            assert (out / f"eval/miracl/miracl-v1.0-{lang}/qrels/qrels.miracl-v1.0-{lang}-{split}.tsv").is_file()
            assert (out / f"eval/mldr/mldr-v1.0-{lang}/{split}.jsonl.gz").is_file()
        for ev, langs in (("eval", ("en", "de", "ja")), ("eval-name-masked", ("de", "ja"))):
            for lang in langs:
                assert (out / f"{ev}/mkqa/MKQA_{split}-data/{lang}.jsonl").is_file()
                assert (out / f"{ev}/mkqa/qrels/qrels.mkqa-{lang}-{split}.tsv").is_file()
    assert not (out / "eval-name-masked/mkqa/MKQA_test-data/en.jsonl").exists()  # not cross-lingual
    assert (out / "eval/miracl/miracl-corpus-v1.0-ja/docs-0.jsonl.gz").is_file()
    assert (out / "eval/mkqa/corpus.jsonl.gz").is_file() and (out / "eval-name-masked/mkqa/corpus.jsonl.gz").is_file()
    doc = jsonl(out / "eval/miracl/miracl-corpus-v1.0-en/docs-0.jsonl.gz")[0]
    assert list(doc) == ["docid", "title", "text"]
    assert list(jsonl(out / "eval/mkqa/corpus.jsonl.gz")[0]) == ["_id", "title", "text"]
    assert list(jsonl(out / "eval/mldr/mldr-v1.0-en/corpus.jsonl.gz")[0]) == ["docid", "text"]
    names = {p.name for p in (out / "train").rglob("*.jsonl")}
    assert {"desc-en_len-0-500.jsonl", "trans-de-en_len-0-500.jsonl", "ft-ja_len-0-500.jsonl"} <= names
    assert all(re.fullmatch(r"[\w-]+_len-\d+-(\d+|inf)\.jsonl", n) for n in names)
    assert any(n.startswith("man-en_len-") and not n.endswith("-0-500.jsonl") for n in names)
    for rows in train_rows(out).values():
        for r in rows:
            assert list(r) == ["query", "pos", "neg"] and len(r["pos"]) == 1
    for r in jsonl(sorted((out / "train/finetune").glob("ft-en_*.jsonl"))[0]):
        assert len(r["neg"]) == bc.N_NEG and r["pos"][0] not in r["neg"]


def test_no_leakage_and_no_duplicates(built):
    out, _, archive = built
    train_texts = {t for rows in train_rows(out).values() for r in rows for t in [r["query"], *r["pos"], *r["neg"]]}
    queries = eval_queries(out)
    assert queries["test"] and queries["dev"]
    for split, rows in queries.items():
        for _, _, text in rows:
            assert text not in train_texts
    positives = [line.split("\t")[2] for p in (out / "eval").rglob("qrels.*.tsv") for line in read_lines(p)]
    corpus = {}
    for p in (out / "eval/miracl").glob("miracl-corpus-v1.0-*/docs-0.jsonl.gz"):
        corpus.update({d["docid"]: d["text"] for d in jsonl(p)})
    corpus.update({d["_id"]: d["text"] for d in jsonl(out / "eval/mkqa/corpus.jsonl.gz")})
    assert positives and all(corpus[d] not in train_texts for d in positives)
    # every package sits on one side: train (its English summary is a training query) or eval
    side = {}
    en_train = {r["query"] for rows in train_rows(out).values() for r in rows}
    en_eval = {(q[2]): s for s, rows in queries.items() for q in rows}
    for name, p in archive.items():
        summary = p["en"][0]
        side[name] = "train" if summary in en_train else en_eval.get(summary)
    assert side["alpha"] == side["libalpha1"] == side["alpha-doc"] == side["python3-alpha"] is not None
    assert side["fontx-one"] == side["fontx-two"] is not None
    assert side["twin-a"] == side["twin-b"] is not None
    # no duplicate (query, passage) pair within a training file or an evaluation split
    for rows in train_rows(out).values():
        pairs = [(r["query"], r["pos"][0]) for r in rows]
        assert len(pairs) == len(set(pairs))
    for split in ("dev", "test"):
        for p in (out / "eval").rglob(f"qrels.*-{split}.tsv"):
            lines = read_lines(p)
            assert len(lines) == len(set(lines)) and len({l.split()[0] for l in lines}) == len(lines)


def test_dropped_descriptions(built):
    out, _, archive = built
    everything = "\n".join(p.read_text(encoding="utf-8") if p.suffix != ".gz" else "\n".join(read_lines(p))
                           for p in out.rglob("*") if p.is_file() and p.name != "manifest.json")
    for name in ("tiny", "oldname", "dup-one", "dup-two"):
        assert archive[name]["en"][1].split("\n")[0] not in everything, name
        assert archive[name]["en"][0] not in everything, name
    assert archive["pkg0"]["de"][0] not in everything.replace(archive["pkg0"]["en"][0], "")
    filters = json.loads((out / "manifest.json").read_text())["filters"]["descriptions"]
    assert filters["en"]["short"] == 1 and filters["en"]["dummy"] == 1 and filters["en"]["duplicate_summary"] == 2
    assert filters["de"]["untranslated"] == 1
    assert json.loads((out / "manifest.json").read_text())["filters"]["manual_pages"]["en"]["redirect"] == 1


def tokens(text: str) -> set[str]:
    text = unicodedata.normalize("NFKC", text).casefold()
    return set(re.findall(r"[a-z0-9]+", text))


def test_name_masked(built):
    out, _, archive = built
    corpus = {d["_id"]: d["text"] for d in jsonl(out / "eval-name-masked/mkqa/corpus.jsonl.gz")}
    kept = total = 0
    for split in ("dev", "test"):
        for lang in ("de", "ja"):
            masked = jsonl(out / f"eval-name-masked/mkqa/MKQA_{split}-data/{lang}.jsonl")
            full = jsonl(out / f"eval/mkqa/MKQA_{split}-data/{lang}.jsonl")
            qrels_file = out / f"eval-name-masked/mkqa/qrels/qrels.mkqa-{lang}-{split}.tsv"
            qrels = dict(line.split("\t")[0::2] for line in read_lines(qrels_file))
            assert {r["id"] for r in masked} <= {r["id"] for r in full} and set(qrels) == {r["id"] for r in masked}
            for r in masked:
                assert not tokens(r["question"]) & (tokens(corpus[qrels[r["id"]]]) | tokens(r["id"]))
            kept, total = kept + len(masked), total + len(full)
    assert 0 < kept < total


def test_manifest_counts_match_files(built):
    out = built[0]
    m = json.loads((out / "manifest.json").read_text())
    for section in ("unsup", "finetune"):
        for name, entry in m["train"][section].items():
            assert len(read_lines(out / "train" / section / name)) == entry["examples"]
    files = {p.name for p in (out / "train").rglob("*.jsonl")}
    assert files == set(m["train"]["unsup"]) | set(m["train"]["finetune"])
    for lang, splits in m["eval"]["miracl"].items():
        corpus = read_lines(out / f"eval/miracl/miracl-corpus-v1.0-{lang}/docs-0.jsonl.gz")
        for split, s in splits.items():
            topics = read_lines(out / f"eval/miracl/miracl-v1.0-{lang}/topics/topics.miracl-v1.0-{lang}-{split}.tsv")
            qrels = read_lines(out / f"eval/miracl/miracl-v1.0-{lang}/qrels/qrels.miracl-v1.0-{lang}-{split}.tsv")
            assert (s["queries"], s["qrels"], s["corpus"]) == (len(topics), len(qrels), len(corpus))
    for ev in ("eval", "eval-name-masked"):
        for lang, splits in m[ev]["mkqa"].items():
            for split, s in splits.items():
                assert s["queries"] == len(read_lines(out / f"{ev}/mkqa/MKQA_{split}-data/{lang}.jsonl"))
                assert s["corpus"] == len(read_lines(out / f"{ev}/mkqa/corpus.jsonl.gz"))
    for lang, splits in m["eval"]["mldr"].items():
        for split, s in splits.items():
            assert s["queries"] == len(read_lines(out / f"eval/mldr/mldr-v1.0-{lang}/{split}.jsonl.gz"))
            assert s["corpus"] == len(read_lines(out / f"eval/mldr/mldr-v1.0-{lang}/corpus.jsonl.gz"))
    assert set(m["inputs_sha256"]) >= {"lists/Packages", "lists/Translation-en", "lists/Release"}
    assert m["archive"]["release"]["Date"] == "Sat, 01 Jan 2000 00:00:00 UTC"


def test_manual_pages(built):
    out, _, _ = built
    for lang in ("en", "de"):
        for r in jsonl(out / f"eval/mldr/mldr-v1.0-{lang}/test.jsonl.gz"):
            page = r["positive_passages"][0]["text"]
            assert r["query"] not in page and "\\-" not in page and "\\f" not in page
            assert "Übersetzung" not in page and "NAME" not in page.split("\n")[0]
    # a page and its translation are on the same side
    sides = {}
    for lang in ("en", "de"):
        for split in ("dev", "test"):
            for r in jsonl(out / f"eval/mldr/mldr-v1.0-{lang}/{split}.jsonl.gz"):
                sides.setdefault(r["query_id"], set()).add(split)
    assert all(len(s) == 1 for s in sides.values())


def test_roff_stripper():
    src = r""".\" a comment
.TH LS 1
.de XX
ignored macro body
..
.if n \{\
ignored conditional
.\}
.SH NAME
ls \- list \fBdirectory\fR contents
.SH DESCRIPTION
It\(aqs \(lqfine\(rq \[u00E9]t\(ga.
.TP
.BR \-a , " \-\-all"
.I ""
show all
.nf
int main(void);
int exit(int);
.fi
.TS
tab(;);
l l.
one;two
.TE
"""
    text = bc.roff_to_text(src)
    assert bc.join_wrapped(["ゲー", "ムです", "", "Debian", "パッケージ"]) == "ゲームです Debian パッケージ"
    assert text.splitlines() == ["NAME", "  ls - list directory contents", "DESCRIPTION",
                                 "  It's “fine” ét`.", "  -a, --all show all", "  int main(void);",
                                 "  int exit(int);", "  one two"]
    assert bc.roff_to_text(".so man1/ls.1\n") is None
    item = bc.page_item("en", "ls.1", text)
    assert (item.query, item.text) == ("list directory contents", "DESCRIPTION\nIt's “fine” ét`.\n-a, --all show all\n"
                                     "int main(void);\nint exit(int);\none two")


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff not installed")
def test_roff_stripper_agrees_with_groff():
    rng = random.Random(3)
    src = page("tool", 1, words(rng, EN, 4), [words(rng, EN, 25) + "." for _ in range(3)], "en")
    assert bc.roff_to_text(src).split() == bc.groff_to_text(src.encode()).split()


def test_bad_input(tmp_path):
    with pytest.raises(M3Error, match="no Release file"):
        bc.main(["--out", str(tmp_path / "out"), "--cache", str(tmp_path), "--offline"])
    bad = tmp_path / "Translation-en"
    bad.write_text(" continuation first\n", encoding="utf-8")
    with pytest.raises(M3Error, match=f"{bad}:1: continuation"):
        bc.read_translation(bad, "en")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(M3Error, match="no manifest.json"):
        bc.main(["--out", str(tmp_path / "out"), "--cache", str(tmp_path), "--offline"])
