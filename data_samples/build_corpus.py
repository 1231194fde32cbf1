"""Build multilingual training and evaluation data from Debian's documentation (issue #13).

    python data_samples/build_corpus.py --out DIR [--cache DIR] [--offline] [--jobs N]

Sources: Debian 12 "bookworm", component main, fetched with apt into a private cache (``--cache``,
default ``~/.cache/m3ref-debian``); nothing is installed and no file outside the cache changes.

- **Package descriptions.** ``apt-get update`` with a private configuration fetches the Release file,
  the amd64 Packages file (its ``Source:`` field names each binary package's source package) and
  ``main/i18n/Translation-{lang}``: the English descriptions (``Translation-en``) and their DDTP
  translations (``DDTP_LANGS``), keyed by package and ``Description-md5``. A description's first
  line (the summary) is a natural query; its long description is the passage.
- **Manual pages.** ``apt-get download`` fetches ``manpages``, ``manpages-dev`` and their
  translations (``MAN_PACKAGES``); ``dpkg-deb -x`` unpacks them into the cache. Pages are converted
  to text by the roff stripper below (default ``--roff python``: no dependency, the same text on
  every machine) or by the installed groff (``--roff groff``). The query of a page is the
  description part of its NAME line; the document is the page without its NAME section and
  without translator credits; pages whose query occurs verbatim in the document are dropped.

``--offline`` skips apt and reads the cache as it is: ``CACHE/lists/`` (Release, Packages,
Translation-* files, as apt names them or plainly) and ``CACHE/man/<package>/usr/share/man/``.

Outputs under ``--out`` (the datasheet is the "Debian corpus" section of data_samples/README.md):

- ``train/unsup/``: ``desc-{l}``: summary -> long description per language; ``trans-{l}-en``:
  description in language l -> the English one. JSONL ``{"query", "pos": [..], "neg": []}``.
- ``train/finetune/``: ``ft-{l}``: summary -> description with 7 hard negatives mined with BM25
  (`m3ref.retrieval.search_bm25`), sampled from ranks 3..50 of the language's training passages,
  the package's own group (source siblings and near-duplicates) excluded, each passage used at most
  NEG_MAX_USES times, for at most FT_MAX_QUERIES queries per language; ``man-{l}``: NAME query ->
  manual page with 3 hard negatives mined the same way.
  Every training file is split by length like the official ``split_data_by_length.py``:
  ``<name>_len-{lo}-{hi}.jsonl``, length = max token count (with special tokens) of query and
  passages, edges 0/500/1000/2000/.../7000/inf, empty buckets not written.
- ``eval/`` with splits ``dev`` and ``test``: MIRACL-like (summary -> descriptions, monolingual),
  MKQA-like (summary in l -> one English corpus, judged by qrels files) and MLDR-like (NAME query ->
  manual pages); ``eval-name-masked/mkqa/``: the cross-lingual MKQA-like queries that share no
  token and no package name with their English passage.
- ``manifest.json``: counts, token-length distributions, the archive snapshot, the sha256 of every
  input, the builder version and the wall time.

Splits: items are joined by union-find over their source package (descriptions) or page name
(manual pages, across languages) and over identical or near-identical texts (MinHash over
character 5-grams, Jaccard >= 0.8 verified exactly); each group goes whole to train, dev or test.
Deterministic: fixed seed, sorted inputs, gzip with mtime 0; the same archive and the same roff
converter give byte-identical files (the manifest's wall time aside).
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import multiprocessing
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
import unicodedata
import urllib.parse
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from m3ref.data import write_jsonl_atomic  # noqa: E402
from m3ref.errors import M3Error, cli_errors  # noqa: E402

BUILDER_VERSION = "1.0"
SEED = 240203216
SUITE, MIRROR = "bookworm", "http://deb.debian.org/debian"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
# Translation-{DDTP code} -> the language code used in file names (MIRACL/MLDR style).
DDTP_LANGS = {"en": "en", "da": "da", "it": "it", "fr": "fr", "de": "de", "sk": "sk", "ja": "ja",
              "pt_BR": "pt", "uk": "uk", "ko": "ko", "pl": "pl", "ru": "ru", "es": "es", "cs": "cs",
              "zh_CN": "zh"}
MKQA_CODE = {"zh": "zh_cn"}  # MKQA's name for Chinese (as m3ref.data reads it)
# language -> (folder under /usr/share/man, binary packages holding its pages)
MAN_PACKAGES = {
    "en": ("", ["manpages", "manpages-dev"]),
    "de": ("de", ["manpages-de", "manpages-de-dev"]),
    "fr": ("fr", ["manpages-fr", "manpages-fr-dev"]),
    "ja": ("ja", ["manpages-ja", "manpages-ja-dev"]),
    "zh": ("zh_CN", ["manpages-zh"]),
    "ru": ("ru", ["manpages-ru", "manpages-ru-dev"]),
    "es": ("es", ["manpages-es", "manpages-es-dev"]),
    "pl": ("pl", ["manpages-pl", "manpages-pl-dev"]),
    "pt": ("pt_BR", ["manpages-pt-br", "manpages-pt-br-dev"]),
    "it": ("it", ["manpages-it", "manpages-it-dev"]),
    "nl": ("nl", ["manpages-nl", "manpages-nl-dev"]),
    "uk": ("uk", ["manpages-uk", "manpages-uk-dev"]),
}
# Section headings of translator credits and colophons, dropped from pages (boilerplate).
CREDIT_HEADINGS = {"ÜBERSETZUNG", "TRADUCTION", "TRADUCCIÓN", "TRADUZIONE", "TŁUMACZENIE",
                   "TRADUÇÃO", "ПЕРЕВОД", "ПЕРЕКЛАД", "VERTALING", "PŘEKLAD", "COLOPHON", "译者", "跋"}

EDGES = [0, 500, 1000, 2000, 3000, 4000, 5000, 6000, 7000]
N_NEG, LONG_NEG = 7, 3  # hard negatives: descriptions (G = 8), manual pages (tiled by the loader)
NEG_RANKS = (3, 50)  # 1-based BM25 ranks negatives are drawn from (ranks 1-2 skipped: likely positives)
NEG_MAX_USES = 30  # times one passage may serve as a negative, per training file
FT_MAX_QUERIES = 20_000  # fine-tuning queries per language (a seeded sample; BM25 time grows with them)
MIN_WORDS, MIN_QUERY_WORDS = 8, 2  # shorter descriptions / summaries are dropped
DUMMY = re.compile(r"\btransitional\b|\bdummy (?:transitional )?package\b", re.I)
NEAR_DUP, SHINGLE, BANDS, ROWS = 0.8, 5, 10, 5  # MinHash: 10 bands of 5 rows over char 5-grams
MAX_EVAL_GROUP = 20  # larger groups always go to train
SPLITS = ("dev", "test")
GROFF = ["groff", "-Kutf-8", "-t", "-mandoc", "-Tutf8", "-rLL=20000n", "-rHY=0", "-P-cbou"]


@dataclass
class Item:
    """One query and its passage: a package description or a manual page in one language."""
    lang: str
    key: str  # package name, or page file name ("ls.1") shared by all languages
    query: str
    text: str
    group: str = ""  # union-find root, set by `group_items`
    docid: str = ""  # passages with the same text share one docid


# --------------------------------------------------------------------------- text helpers

def norm(text: str) -> str:
    """NFKC, case-folded, whitespace collapsed: the form used for identity and near-duplicates."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def n_words(text: str) -> float:
    """Words of space-separated scripts, plus Han/kana characters counted two to a word."""
    return len(re.findall(r"\w+", _CJK.sub(" ", text))) + len(_CJK.findall(text)) / 2


def word_tokens(text: str) -> set[str]:
    """Case-folded tokens for overlap tests: runs of word characters split where Latin meets
    another script ("qt5ライブラリ" -> qt5, ライブラリ); Han/kana runs become character bigrams."""
    out = set()
    for run in re.findall(r"[^\W_]+", unicodedata.normalize("NFKC", text).casefold()):
        for part in re.findall(r"[\u0000-\u024f]+|[^\u0000-\u024f]+", run):
            if _CJK.match(part):
                out.update(part[i:i + 2] for i in range(max(1, len(part) - 1)))
            else:
                out.add(part)
    return out


_CJK_EDGE = re.compile(r"[\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]")


def join_wrapped(parts: list[str]) -> str:
    """Join wrapped lines with a space, except between two Han/kana/CJK-punctuation characters
    (Japanese and Chinese text is wrapped anywhere: "ゲー" + "ムです" is "ゲームです")."""
    out = ""
    for part in filter(None, parts):
        if out and not (_CJK_EDGE.match(out[-1]) and _CJK_EDGE.match(part[0])):
            out += " "
        out += part
    return out


def format_description(lines: list[str]) -> str:
    """Debian long description (control-file lines, leading space removed) -> text: " ." breaks a
    paragraph, indented lines and list items start a new line, wrapped lines are joined."""
    paras, cur = [], []
    for line in lines:
        line_text = " ".join(line.split())
        if line_text == ".":
            paras.append(cur)
            cur = []
        elif not line_text:
            continue
        elif cur and not line.startswith(" ") and not re.match(r"[*+\-o•] ", line_text):
            cur[-1].append(line_text)
        else:
            cur.append([line_text])
    paras.append(cur)
    return "\n".join(join_wrapped(parts) for para in paras for parts in para)


# --------------------------------------------------------------------------- apt

def run_tool(cmd: list[str], cwd: Path | None = None, env: dict | None = None) -> None:
    """Run apt-get or dpkg-deb; a failure becomes a one-line M3Error with the tool's last words."""
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
        raise M3Error(f"{' '.join(cmd[:2])} failed (status {proc.returncode}): {tail[0]}")


def run_apt(cache: Path, args: list[str], cwd: Path | None = None) -> None:
    run_tool(["apt-get", "-q", *args], cwd, dict(os.environ, APT_CONFIG=str(cache / "apt.conf"), LC_ALL="C"))


def write_apt_config(cache: Path, mirror: str, keyring: str) -> None:
    """A private apt configuration: host settings are not read, state lives in the cache."""
    if not Path(keyring).is_file():
        raise M3Error(f"--keyring {keyring}: not found (install debian-archive-keyring or pass one)")
    etc = cache / "etc"
    for d in (etc / "apt.conf.d", etc / "preferences.d", etc / "sources.list.d",
              cache / "lists" / "partial", cache / "apt-cache" / "archives" / "partial"):
        d.mkdir(parents=True, exist_ok=True)
    (cache / "status").touch()
    (etc / "sources.list").write_text(
        f"deb [arch=amd64 signed-by={keyring}] {mirror} {SUITE} main\n", encoding="utf-8")
    langs = " ".join(f'"{code}";' for code in DDTP_LANGS)
    (cache / "apt.conf").write_text(f"""\
Dir::Etc "{etc}";
Dir::Etc::Main "apt.conf";
Dir::Etc::Parts "apt.conf.d";
Dir::Etc::SourceList "sources.list";
Dir::Etc::SourceParts "sources.list.d";
Dir::Etc::Preferences "preferences";
Dir::Etc::PreferencesParts "preferences.d";
Dir::State::Lists "{cache / 'lists'}";
Dir::State::status "{cache / 'status'}";
Dir::Cache "{cache / 'apt-cache'}";
APT::Architecture "amd64";
APT::Architectures {{ "amd64"; }};
Acquire::Languages {{ {langs} }};
Acquire::GzipIndexes "false";
Acquire::PDiffs "false";
Acquire::Check-Valid-Until "false";
APT::Sandbox::User "root";
""", encoding="utf-8")


def fetch(cache: Path, mirror: str, keyring: str) -> None:
    """apt-get update (index files) and download + unpack the manual-page packages."""
    write_apt_config(cache, mirror, keyring)
    run_apt(cache, ["update"])
    for d in ("debs", "man"):
        shutil.rmtree(cache / d, ignore_errors=True)
    (cache / "debs").mkdir()
    (cache / "man").mkdir()
    packages = sorted(p for _, pkgs in MAN_PACKAGES.values() for p in pkgs)
    run_apt(cache, ["download", *packages], cwd=cache / "debs")
    for deb in sorted((cache / "debs").glob("*.deb")):
        run_tool(["dpkg-deb", "-x", str(deb), str(cache / "man" / deb.name.split("_")[0])])


# --------------------------------------------------------------------------- reading the archive

def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tree_digest(root: Path) -> str:
    """sha256 over the sorted relative paths and contents of the files under `root`."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            h.update(str(p.relative_to(root)).encode() + b"\0" + sha256_file(p).encode())
    return h.hexdigest()


def deb822(path: Path):
    """Paragraphs of a Debian control-style file as {field: [first line, continuation lines...]}."""
    para, field = {}, None
    with open(path, encoding="utf-8") as f:
        for no, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip(" \t"):
                if para:
                    yield para
                para, field = {}, None
            elif line[0] in " \t":
                if field is None:
                    raise M3Error(f"{path}:{no}: continuation line outside a field")
                para[field].append(line[1:])
            else:
                field, sep, value = line.partition(":")
                if not sep:
                    raise M3Error(f"{path}:{no}: expected 'Field: value'")
                para[field] = [value.strip()]
    if para:
        yield para


def index_files(lists: Path) -> dict:
    """The Release, Packages and Translation-* files under `lists` (apt's names or plain names)."""
    found = {"release": None, "packages": None, "translations": {}}
    for p in sorted(lists.iterdir()) if lists.is_dir() else []:
        name = urllib.parse.unquote(p.name)
        if m := re.search(r"(?:^|_)Translation-(\w+)$", name):
            found["translations"][m.group(1)] = p
        elif re.search(r"(?:^|_)Packages$", name):
            found["packages"] = p
        elif re.search(r"(?:^|_)(?:In)?Release$", name) and found["release"] is None:
            found["release"] = p
    for what in ("release", "packages"):
        if found[what] is None:
            raise M3Error(f"{lists}: no {what.capitalize()} file (run without --offline to fetch)")
    if "en" not in found["translations"]:
        raise M3Error(f"{lists}: no Translation-en file")
    return found


def read_release(path: Path) -> dict:
    """Origin, Suite, Codename, Version, Date and Components of a (signed) Release file."""
    text = path.read_text(encoding="utf-8")
    if text.startswith("-----BEGIN PGP SIGNED MESSAGE-----"):
        text = text.split("\n\n", 1)[1].split("\n-----BEGIN PGP SIGNATURE-----", 1)[0]
    fields = dict(re.findall(r"^(Origin|Label|Suite|Codename|Version|Date|Components): *(.*)$",
                             text, re.M))
    if "Date" not in fields:
        raise M3Error(f"{path}: no Date field")
    return fields


def read_packages(path: Path) -> dict[str, tuple[str, str]]:
    """{binary package: (source package, Description-md5)} from a Packages file."""
    out = {}
    for para in deb822(path):
        pkg = para["Package"][0]
        source = para.get("Source", [pkg])[0].split(" (")[0]
        out[pkg] = (source, para.get("Description-md5", [""])[0])
    return out


def read_translation(path: Path, ddtp: str) -> dict[tuple[str, str], tuple[str, str]]:
    """{(package, Description-md5): (summary, long description)} from a Translation-* file."""
    out = {}
    for para in deb822(path):
        desc = para.get(f"Description-{ddtp}")
        if not desc or "Package" not in para or "Description-md5" not in para:
            raise M3Error(f"{path}: paragraph without Package, Description-md5 or Description-{ddtp}")
        summary = " ".join(desc[0].split())  # one line without tabs: it goes into TSV topics
        out[(para["Package"][0], para["Description-md5"][0])] = (summary, format_description(desc[1:]))
    return out


def read_descriptions(files: dict, packages: dict, stats: dict) -> tuple[dict[str, list[Item]], dict]:
    """Kept description items per language and {package: source package}.

    Dropped: English descriptions of transitional/dummy packages, descriptions under MIN_WORDS
    words or summaries under MIN_QUERY_WORDS, translations of a dropped or outdated English text,
    "translations" identical to the English text, and every summary that is not unique in its
    language. `stats[lang]` counts each reason.
    """
    english = {}
    by_pkg = defaultdict(list)
    for (pkg, md5), desc in read_translation(files["translations"]["en"], "en").items():
        by_pkg[pkg].append((md5, desc))
    for pkg, versions in by_pkg.items():  # one English description per package: the amd64 one
        want = packages.get(pkg, ("", ""))[1]
        english[pkg] = next((v for v in versions if v[0] == want), min(versions))
    items, kept_en = {}, set()
    for ddtp, lang in DDTP_LANGS.items():
        if ddtp not in files["translations"]:
            continue
        st = stats[lang] = Counter()
        descs = (read_translation(files["translations"][ddtp], ddtp) if ddtp != "en"
                 else {(p, md5): d for p, (md5, d) in english.items()})
        rows = []
        for (pkg, md5), (summary, text) in sorted(descs.items()):
            st["entries"] += 1
            en = english.get(pkg)
            if lang == "en" and (DUMMY.search(summary) or DUMMY.search(text)):
                st["dummy"] += 1
            elif lang != "en" and (en is None or en[0] != md5 or pkg not in kept_en):
                st["no_kept_english"] += 1
            elif n_words(text) < MIN_WORDS or n_words(summary) < MIN_QUERY_WORDS:
                st["short"] += 1
            elif lang != "en" and norm(text) == norm(en[1][1]):
                st["untranslated"] += 1
            else:
                rows.append(Item(lang, pkg, summary, text))
        counts = Counter(norm(it.query) for it in rows)
        items[lang] = [it for it in rows if counts[norm(it.query)] == 1]
        st["duplicate_summary"] = len(rows) - len(items[lang])
        st["kept"] = len(items[lang])
        if lang == "en":
            kept_en = {it.key for it in items["en"]}
    sources = {pkg: packages.get(pkg, (pkg, ""))[0] for pkg in english}
    return items, sources


# --------------------------------------------------------------------------- manual pages

_NAMED = {"em": "—", "en": "–", "hy": "-", "mi": "-", "aq": "'", "dq": '"', "lq": "“", "rq": "”",
          "oq": "‘", "cq": "’", "bu": "•", "co": "©", "rg": "®", "tm": "™", "ga": "`", "ha": "^",
          "ti": "~", "rs": "\\", "sl": "/", "ba": "|", "br": "|", "ul": "_", "ru": "_", "pl": "+",
          "mu": "×", "di": "÷", "<=": "≤", ">=": "≥", "!=": "≠", "->": "→", "<-": "←", "ua": "↑",
          "da": "↓", "Fo": "«", "Fc": "»", "fo": "‹", "fc": "›", "de": "°", "+-": "±", "sc": "§",
          "at": "@", "sh": "#", "Do": "$", "Eu": "€", "eu": "€", "ss": "ß", "R": "®", "Tm": "™"}
_SINGLE = {"-": "-", "e": "\\", "\\": "\\", " ": " ", "~": " ", "0": " ", ".": ".", "'": "'", "`": "`",
           "t": " "}
_ESCAPE = re.compile(r"""\\(?:
    \((?P<n2>..) | \[(?P<nb>[^\]]*)\]                      # special characters
  | \*(?:\((?P<s2>..)|\[(?P<sb>[^\]]*)\]|(?P<s1>.))         # defined strings
  | [fFgkmMnVY](?:\(..|\[[^\]]*\]|.)                        # fonts, registers, colours
  | s[-+]?(?:\(\d\d|\[\d+\]|\d)                              # type size
  | [bDhHlLNoRSvwxXZ](?P<q>['"]).*?(?P=q)                   # escapes with a quoted argument
  | (?P<c>.))""", re.X)
_NEWLINE_MACROS = {"PP", "LP", "P", "Pp", "HP", "RS", "RE", "EX", "EE", "Bl", "El", "Bd", "Ed", "UE",
                   "ME", "br", "sp", "nf", "fi", "in", "ti"}
_IGNORED = {"TH", "Dd", "Dt", "Os", "PD", "UC"}  # besides every other lower-case roff request
_MDOC_CALLABLE = set("Ac Ad An Ao Ap Aq Ar At Bc Bo Bq Brc Bro Brq Bsx Bx Cm Dc Do Dq Dv Ec Em En Eo "
                     "Er Ev Fa Fc Fl Fn Fo Ft Fx Ic Li Lk Ms Mt Nm No Ns Nx Oc Oo Op Ox Pa Pc Pf Po "
                     "Pq Qc Ql Qo Qq Sc So Sq St Sx Sy Tn Ux Va Vt Xc Xo Xr".split())


def _unescape(text: str, strings: dict) -> str:
    def sub(m):
        name = m.group("n2") or m.group("nb")
        if name is not None:
            if re.fullmatch(r"u[0-9A-Fa-f]{4,6}", name):
                return chr(int(name[1:], 16))
            return _NAMED.get(name, "")
        name = m.group("s2") or m.group("sb") or m.group("s1")
        if name is not None:
            return strings.get(name, _NAMED.get(name, ""))
        return _SINGLE.get(m.group("c") or "", "")
    return _ESCAPE.sub(sub, text)


def _args(rest: str) -> list[str]:
    """Macro arguments: blank-separated, double quotes group ("" is a literal quote)."""
    return [a[1:].removesuffix('"').replace('""', '"') if a.startswith('"') else a
            for a in re.findall(r'"(?:[^"]|"")*"?|\S+', rest)]


def roff_to_text(source: str) -> str | None:
    """A roff stripper for man(7) pages (mdoc best effort): the text of the page, section headings
    on their own unindented lines, body lines indented by two spaces (the layout of groff's
    output); None for a `.so` redirect."""
    out, line_buf, strings = [], [], {"R": "®", "Aq": "'"}
    skip_until = table = None
    heading_next = nofill = False  # .SH without arguments: the next text line is the heading

    def flush():
        if line_buf:
            out.append("  " + join_wrapped(line_buf))
            line_buf.clear()
    for raw in source.splitlines():
        line = re.sub(r'\\".*|\\#.*', "", raw)
        if skip_until is not None:
            if re.fullmatch(skip_until, line.strip()):
                skip_until = None
            continue
        if table is not None:  # .TS: options and format lines up to the one ending in "."
            if line.startswith(".TE"):
                table = None
            elif table.startswith("format"):
                tab = re.search(r"tab\s*\((.)\)", line)
                table = ("data:" if line.rstrip().endswith(".") else "format:") + (
                    tab.group(1) if tab else table.split(":", 1)[1])
            elif line.strip() not in ("_", "=", "") and not line.startswith("."):
                cells = re.sub(r"T[{}]", " ", line).replace(table.split(":", 1)[1], " ")
                out.append("  " + " ".join(_unescape(cells, strings).split()))
            continue
        if not line.startswith((".", "'")):
            text = _unescape(line, strings).strip()
            if text and heading_next:
                out.append(text)
                heading_next = False
            elif text:
                line_buf.append(text)
                if nofill:  # .nf / .EX: one output line per input line
                    flush()
            continue
        macro, _, rest = line[1:].strip().partition(" ")
        args = _args(rest)
        if macro == "so":
            return None
        if macro in ("de", "de1", "am", "ig"):  # macro definitions, ignored blocks
            skip_until = r"\.\s*\." if macro != "ig" or not args else re.escape("." + args[0])
        elif macro in ("if", "ie", "el"):  # conditionals: skipped, with their \{ ... \} block
            if "\\{" in line and "\\}" not in line:
                skip_until = r".*\\\}.*"
        elif macro == "ds" and args:
            strings[args[0]] = _unescape(rest.split(None, 1)[1] if len(args) > 1 else "", strings)
        elif macro == "TS":
            flush()
            table = "format:\t"  # then "data:<tab character>"
        elif macro in ("SH", "SS", "Sh", "Ss"):
            flush()
            heading = _unescape(" ".join(args), strings).strip()
            out.extend([heading] if heading else [])
            heading_next = not heading
        elif macro in ("TP", "IP", "It", "Nd", "UR", "MT") or macro in _NEWLINE_MACROS:
            flush()
            nofill = macro in ("nf", "EX") or (nofill and macro not in ("fi", "EE"))
            if macro == "Nd":
                line_buf.append("-")
            if macro in ("IP", "It", "Nd", "UR", "MT") and args:
                line_buf.append(_unescape(" ".join(args[:1] if macro == "IP" else args), strings))
        elif macro in ("BR", "BI", "IB", "IR", "RB", "RI"):
            line_buf.append(_unescape("".join(args), strings))
        elif macro not in _IGNORED and not macro.islower():
            words = [a for a in args if a not in _MDOC_CALLABLE]
            if words:
                line_buf.append(_unescape(" ".join(words), strings))
    flush()
    return "\n".join(out)


def groff_to_text(source: bytes) -> str:
    """groff's plain-text rendering without its running header and footer lines."""
    proc = subprocess.run(GROFF, input=source, capture_output=True, env=dict(os.environ, LC_ALL="C.UTF-8"))
    lines = [l for l in proc.stdout.decode("utf-8", "replace").splitlines() if l.strip()]
    return "\n".join(lines[1:-1])


def page_item(lang: str, key: str, text: str) -> Item | None:
    """Split a rendered page into (NAME description -> rest of the page); None when it has none."""
    sections, head = [], None
    for line in text.splitlines():
        if not line[:1].isspace():  # a section heading
            head = [line.strip(), []]
            sections.append(head)
        elif head is not None and line.strip():
            head[1].append(" ".join(line.split()))
    if len(sections) < 2 or not sections[0][1]:
        return None
    name_line = " ".join(sections[0][1])
    parts = re.split(r"\s+[-–—]+\s+", name_line, maxsplit=1)
    if len(parts) != 2:
        return None
    query = parts[1].strip()
    body = "\n".join(part for title, lines in sections[1:] if title not in CREDIT_HEADINGS
                     for part in [title, *lines])
    return Item(lang, key, query, body)


def read_pages(man_root: Path, roff: str, jobs: int, stats: dict) -> dict[str, list[Item]]:
    """Kept page items per language (MAN_PACKAGES): .so redirects, symbolic links, pages without
    a NAME description, short queries and queries that are not unique in the language dropped."""
    items = {}
    for lang, (folder, pkgs) in MAN_PACKAGES.items():
        paths = sorted(p for pkg in pkgs for p in (man_root / pkg / "usr/share/man" / folder).glob("man*/*")
                       if p.is_file() and not p.is_symlink())
        if not paths:
            continue
        st = stats[lang] = Counter(files=len(paths))

        def convert(path: Path):
            data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
            text = data.decode("utf-8", "replace")
            if not re.search(r"^\.S[Hh]\b", text, re.M):  # a .so redirect, not a page
                return None
            return groff_to_text(data) if roff == "groff" else roff_to_text(text)
        with ThreadPoolExecutor(jobs) as pool:
            texts = list(pool.map(convert, paths))
        rows = []
        for path, text in zip(paths, texts):
            key = path.name.removesuffix(".gz")
            item = page_item(lang, key, text) if text else None
            if text is None:
                st["redirect"] += 1
            elif item is None:
                st["no_name_line"] += 1
            elif n_words(item.query) < MIN_QUERY_WORDS or n_words(item.text) < MIN_WORDS:
                st["short"] += 1
            elif norm(item.query) in norm(item.text):
                st["query_verbatim_in_page"] += 1
            else:
                rows.append(item)
        counts = Counter(norm(it.query) for it in rows)
        keys = Counter(it.key for it in rows)
        items[lang] = [it for it in rows if counts[norm(it.query)] == 1 and keys[it.key] == 1]
        st["duplicate_query"] = len(rows) - len(items[lang])
        st["kept"] = len(items[lang])
    return items


# --------------------------------------------------------------------------- groups and splits

class UnionFind:
    """Disjoint sets of strings; the root of a set is its smallest member (deterministic)."""

    def __init__(self):
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        parent = self.parent
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _window_hashes(codes: np.ndarray) -> np.ndarray:
    """64-bit polynomial hashes (wrapping mod 2^64) of every SHINGLE-long window of code points."""
    n = len(codes) - SHINGLE + 1
    h = np.zeros(n, dtype=np.uint64)
    for j in range(SHINGLE):
        h = h * np.uint64(1099511628211) + codes[j:j + n]
    return h


def _codes(text: str) -> np.ndarray:
    return np.frombuffer(text.ljust(SHINGLE, "\1").encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)


def shingles(text: str) -> np.ndarray:
    """Sorted unique hashes of the character 5-grams of a normalized text."""
    return np.unique(_window_hashes(_codes(text)))


def minhash(texts: list[str]) -> np.ndarray:
    """(N, BANDS*ROWS) MinHash signatures of the texts' 5-gram sets, computed for blocks of
    texts at once (joined by NUL, windows that cross a NUL dropped), 32-bit hash functions."""
    rng = np.random.default_rng(SEED)
    a = rng.integers(1, 2 ** 32, BANDS * ROWS, dtype=np.uint64).astype(np.uint32) | np.uint32(1)
    b = rng.integers(0, 2 ** 32, BANDS * ROWS, dtype=np.uint64).astype(np.uint32)
    sig = np.empty((len(texts), BANDS * ROWS), dtype=np.uint32)
    for lo in range(0, len(texts), 2000):
        block = [t.ljust(SHINGLE, "\1") for t in texts[lo:lo + 2000]]
        codes = _codes("\0".join(block))
        h = _window_hashes(codes)
        starts = np.cumsum([0] + [len(t) + 1 for t in block[:-1]])  # window i starts at code i
        valid = np.ones(len(h), dtype=bool)
        for j in range(SHINGLE):  # drop windows containing a separator
            valid &= codes[j:j + len(h)] != 0
        h ^= h >> np.uint64(29)  # fold the high bits in, keep 32
        h32 = (h * np.uint64(0xBF58476D1CE4E5B9) >> np.uint64(32)).astype(np.uint32)[valid]
        first = np.searchsorted(np.flatnonzero(valid), starts)  # each text's first valid window
        for k in range(BANDS * ROWS):
            x = h32 * a[k] + b[k]
            x ^= x >> np.uint32(15)
            sig[lo:lo + len(block), k] = np.minimum.reduceat(x, first)
    return sig


def candidate_pairs(sig: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i < j) that agree on all rows of at least one band of their signatures."""
    codes = []
    for band in range(BANDS):
        key = np.zeros(len(sig), dtype=np.uint64)
        for v in sig[:, band * ROWS:(band + 1) * ROWS].T.astype(np.uint64):
            key = key * np.uint64(0x100000001B3) + v  # a band's rows as one 64-bit key
        order = np.argsort(key, kind="stable")
        bounds = np.flatnonzero(np.diff(key[order])) + 1
        starts, ends = np.r_[0, bounds], np.r_[bounds, len(key)]
        for start, end in zip(starts[ends - starts > 1], ends[ends - starts > 1]):
            bucket = np.sort(order[start:end])
            i, j = np.triu_indices(len(bucket), 1)
            codes.append(bucket[i].astype(np.int64) * len(sig) + bucket[j])
    codes = np.unique(np.concatenate(codes)) if codes else np.zeros(0, dtype=np.int64)
    return codes // len(sig), codes % len(sig)


def near_duplicates(texts: list[str]) -> list[tuple[int, int]]:
    """Pairs (i, j) of normalized texts with 5-gram Jaccard >= NEAR_DUP, enough to connect every
    such pair: LSH candidates (one shared MinHash band) whose signatures agree on at least 60 % of
    their values are checked exactly, unless earlier pairs already connect them."""
    if len(texts) < 2:
        return []
    sig = minhash(texts)
    first, second = candidate_pairs(sig)
    agree = np.concatenate([(sig[first[k:k + 65536]] == sig[second[k:k + 65536]]).mean(1)
                            for k in range(0, len(first), 65536)] or [np.zeros(0)])
    keep = agree >= 0.6  # a pair at Jaccard 0.8 agrees less often with probability ~2e-4
    uf, sets, pairs = UnionFind(), {}, []
    for i, j in zip(first[keep].tolist(), second[keep].tolist()):
        if uf.find(str(i)) == uf.find(str(j)):
            continue
        for k in (i, j):
            if k not in sets:
                sets[k] = shingles(texts[k])
        inter = len(np.intersect1d(sets[i], sets[j], assume_unique=True))
        if inter >= NEAR_DUP * (len(sets[i]) + len(sets[j]) - inter):
            pairs.append((i, j))
            uf.union(str(i), str(j))
    return pairs


def group_items(items: dict[str, list[Item]], seed: dict[str, str]) -> dict[str, int]:
    """Set each item's group and docid. Items are joined through `seed` (package -> source
    package; absent keys stand alone) and, within a language, through identical or near-identical
    texts; items with the same normalized text share one docid ({lang}-{smallest key}).
    Returns the number of near-duplicate pairs per language."""
    uf, near = UnionFind(), {}
    for lang, rows in items.items():
        by_text = defaultdict(list)
        for it in rows:
            uf.union(it.key, "src:" + seed.get(it.key, it.key))
            by_text[norm(it.text)].append(it)
        texts = sorted(by_text)
        pairs = near_duplicates(texts)
        near[lang] = len(pairs)
        for i, j in pairs:
            uf.union(by_text[texts[i]][0].key, by_text[texts[j]][0].key)
        for same in by_text.values():
            docid = f"{lang}-{min(it.key for it in same)}"
            for it in same:
                uf.union(same[0].key, it.key)
                it.docid = docid
    for rows in items.values():
        for it in rows:
            it.group = uf.find(it.key)
    return near


def split_targets(n: int, min_test: int) -> dict[str, int]:
    """Test and dev queries wanted from a language with n items (n >= 2.5 * min_test)."""
    return {"test": min(10 * min_test, max(min_test, round(0.2 * n))),
            "dev": min(3 * min_test // 2, max(min_test // 2, round(0.05 * n)))}


def assign_splits(items: dict[str, list[Item]], min_test: int) -> dict[str, str]:
    """{group: "train" | "dev" | "test"}. Groups are visited in a seeded random order; a group goes
    to test while one of its languages still lacks test queries, then to dev likewise, else to
    train. Groups of more than MAX_EVAL_GROUP keys always go to train."""
    count, keys = defaultdict(Counter), defaultdict(set)
    for lang, rows in items.items():
        for it in rows:
            count[it.group][lang] += 1
            keys[it.group].add(it.key)
    targets = {lang: split_targets(len(rows), min_test) for lang, rows in items.items()}
    filled = defaultdict(Counter)
    order = sorted(count)
    random.Random(SEED).shuffle(order)
    split_of = {}
    for group in order:
        split = "train"
        if len(keys[group]) <= MAX_EVAL_GROUP:
            split = next((s for s in ("test", "dev")
                          if any(filled[lang][s] < targets[lang][s] for lang in count[group])), "train")
        split_of[group] = split
        for lang, n in count[group].items():
            filled[lang][split] += n
    return split_of


def drop_small_languages(items: dict[str, list[Item]], min_test: int) -> list[str]:
    """Remove languages with fewer than 2.5 * min_test items: min_test test queries, min_test / 2
    dev queries and at least as many training items as test queries."""
    small = sorted(lang for lang, rows in items.items() if len(rows) < 2.5 * min_test)
    for lang in small:
        del items[lang]
    return small


# --------------------------------------------------------------------------- training files

class TokenCounter:
    """Token counts with special tokens (as split_data_by_length.py counts), cached per text."""

    def __init__(self, tokenizer):
        self.tokenizer, self.cache = tokenizer, {}

    def __call__(self, texts: list[str]) -> list[int]:
        todo = list(dict.fromkeys(t for t in texts if t not in self.cache))
        for lo in range(0, len(todo), 512):
            batch = todo[lo:lo + 512]
            ids = self.tokenizer(batch, add_special_tokens=True, verbose=False)["input_ids"]
            self.cache.update(zip(batch, map(len, ids)))
        return [self.cache[t] for t in texts]


def distribution(values: list[int]) -> dict:
    """min / median / p90 (nearest rank) / max of token counts."""
    if not values:
        return {}
    v = sorted(values)
    return {"min": v[0], "median": statistics.median_low(v), "p90": v[int(0.9 * (len(v) - 1))],
            "max": v[-1]}


def write_train(folder: Path, name: str, rows: list[dict], count: TokenCounter, manifest: dict) -> None:
    """Rows split by length into <name>_len-{lo}-{hi}.jsonl (empty buckets skipped)."""
    buckets = defaultdict(list)
    for row in rows:
        n = max(count([row["query"], *row["pos"], *row["neg"]]))
        lo = max(e for e in EDGES if e <= n)
        buckets[lo].append((row, n))
    for lo, pairs in sorted(buckets.items()):
        hi = next((e for e in EDGES if e > lo), "inf")
        path = folder / f"{name}_len-{lo}-{hi}.jsonl"
        write_jsonl_atomic(path, (row for row, _ in pairs))
        manifest[path.name] = {"examples": len(pairs), "tokens": distribution([n for _, n in pairs])}


def unique_rows(pairs) -> list[dict]:
    """{"query", "pos": [passage], "neg": []} for each distinct (query, passage) pair."""
    return [{"query": q, "pos": [p], "neg": []} for q, p in dict.fromkeys(pairs)]


def bm25_candidates(job: tuple) -> list[list[str]]:
    """For each query, the docids at BM25 ranks NEG_RANKS among `docs`, best first, minus the
    passages of the query's own group (its source siblings and near-duplicates). Runs in a worker
    process: job = (queries [(key, text, group)], docs {docid: (text, group)}, tokenizer)."""
    from m3ref.retrieval import search_bm25

    queries, docs, tokenizer = job
    pids = sorted(docs)
    run = search_bm25([q[0] for q in queries], [q[1] for q in queries], pids,
                      [docs[p][0] for p in pids], tokenizer, k=NEG_RANKS[1])
    return [[p for p in list(run.get(key, {}))[NEG_RANKS[0] - 1:] if docs[p][1] != group]
            for key, _, group in queries]


def draw_negatives(rows: list[Item], queries: list[Item], candidates: list[list[str]], n_neg: int,
                   seed: str, topped_up: Counter) -> list[dict]:
    """{"query", "pos", "neg"} per query: a seeded draw of n_neg negatives from its BM25
    candidates, in rank order. A passage serves as a negative at most NEG_MAX_USES times, so a few
    long "hub" passages cannot fill most rows; short candidate lists are topped up with random
    training passages (`rows`) outside the query's group (counted in `topped_up`)."""
    docs = {it.docid: it for it in rows}
    pids, uses, out = sorted(docs), Counter(), []
    for it, cands in zip(queries, candidates):
        rng = random.Random(f"{SEED}:{seed}:{it.key}")
        pool = [p for p in cands if uses[p] < NEG_MAX_USES]
        negs = sorted(rng.sample(pool, min(n_neg, len(pool))), key=pool.index)
        for _ in range(100 * n_neg):
            if len(negs) == n_neg:
                break
            p = rng.choice(pids)
            if docs[p].group != it.group and p not in negs:
                negs.append(p)
        topped_up[seed] += len(negs) > len(pool)
        uses.update(negs)
        out.append({"query": it.query, "pos": [it.text], "neg": [docs[p].text for p in negs]})
    return out


def write_training(out: Path, desc: dict, pages: dict, split_of: dict, page_split: dict, tokenizer,
                   count: TokenCounter, jobs: int, manifest: dict) -> None:
    """train/unsup (summary -> description, translation -> English) and train/finetune (BM25
    negatives, ranked in `jobs` worker processes while the unsup files are written).

    Training items come from training groups, minus those whose query or passage equals (after
    `norm`) an evaluation query or passage of the same language from the other source (a manual
    page's NAME line can be a package summary: "archiving utility")."""
    held_out = {(it.lang, norm(t)) for items, split in ((desc, split_of), (pages, page_split))
                for rows in items.values() for it in rows if split[it.group] != "train" for t in (it.query, it.text)}
    train, collisions = {}, {}
    for prefix, items, split in (("ft", desc, split_of), ("man", pages, page_split)):
        for lang, rows in items.items():
            rows = [it for it in rows if split[it.group] == "train"]
            kept = [it for it in rows if (lang, norm(it.query)) not in held_out
                    and (lang, norm(it.text)) not in held_out]
            train[f"{prefix}-{lang}"], collisions[f"{prefix}-{lang}"] = kept, len(rows) - len(kept)
    train = dict(sorted(train.items()))
    manifest["dropped_as_eval_collisions"] = dict(sorted(collisions.items()))
    queries = {name: sorted(random.Random(f"{SEED}:{name}").sample(rows, min(FT_MAX_QUERIES, len(rows))),
                            key=lambda it: it.key) for name, rows in train.items()}
    jobs_ = [([(it.key, it.query, it.group) for it in queries[name]],
              {it.docid: (it.text, it.group) for it in rows}, tokenizer) for name, rows in train.items()]
    # fork before this process tokenizes anything (the tokenizers library warns otherwise)
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")) as pool:
        candidates = pool.map(bm25_candidates, jobs_)
        english = {it.key: it for it in train.get("ft-en", [])}
        unsup, finetune, topped = manifest.setdefault("unsup", {}), manifest.setdefault("finetune", {}), Counter()
        for name, rows in train.items():
            lang = name.split("-", 1)[1]
            if name.startswith("ft-"):
                write_train(out / "unsup", f"desc-{lang}", unique_rows((it.query, it.text) for it in rows),
                            count, unsup)
            if name.startswith("ft-") and lang != "en":
                pairs = ((it.text, english[it.key].text) for it in rows if it.key in english)
                write_train(out / "unsup", f"trans-{lang}-en", unique_rows(pairs), count, unsup)
        for (name, rows), cands in zip(train.items(), candidates):
            n_neg = N_NEG if name.startswith("ft-") else LONG_NEG
            rows = draw_negatives(rows, queries[name], cands, n_neg, name, topped)
            write_train(out / "finetune", name, rows, count, finetune)
    manifest["negatives_topped_up"] = dict(sorted(topped.items()))


# --------------------------------------------------------------------------- evaluation files

def write_text(path: Path, lines, gz: bool = False) -> None:
    """Write lines (each ending in a newline); gzip without file name or time stamp. (The whole
    build is written under DIR.partial and renamed at the end, so no file needs its own rename.)"""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) if gz else raw as f:
            for line in lines:
                f.write(line.encode("utf-8"))


def jsonl(rows):
    return (json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def trec(pairs):
    return (f"{qid}\tQ0\t{docid}\t1\n" for qid, docid in pairs)


def eval_stats(queries: list[Item], corpus_size: int, count: TokenCounter, positives=None) -> dict:
    positives = positives if positives is not None else [it.text for it in queries]
    return {"queries": len(queries), "qrels": len(queries), "corpus": corpus_size,
            "query_tokens": distribution(count([it.query for it in queries])),
            "positive_tokens": distribution(count(positives))}


def corpus_of(rows: list[Item]) -> dict[str, str]:
    return dict(sorted((it.docid, it.text) for it in rows))


def write_miracl(root: Path, desc: dict, split_of: dict, count: TokenCounter) -> dict:
    """MIRACL-like: summary in l -> the descriptions in l (every kept one is in the corpus)."""
    stats = {}
    for lang, rows in sorted(desc.items()):
        corpus = corpus_of(rows)
        write_text(root / f"miracl-corpus-v1.0-{lang}/docs-0.jsonl.gz",
                   jsonl({"docid": d, "title": "", "text": t} for d, t in corpus.items()), gz=True)
        base = root / f"miracl-v1.0-{lang}"
        for split in SPLITS:
            qs = sorted((it for it in rows if split_of[it.group] == split), key=lambda it: it.key)
            write_text(base / f"topics/topics.miracl-v1.0-{lang}-{split}.tsv",
                       (f"{it.key}\t{it.query}\n" for it in qs))
            write_text(base / f"qrels/qrels.miracl-v1.0-{lang}-{split}.tsv",
                       trec((it.key, it.docid) for it in qs))
            stats.setdefault(lang, {})[split] = eval_stats(qs, len(corpus), count)
    return stats


def name_masked(it: Item, english: Item) -> bool:
    """True when the query shares no token (`word_tokens`, any length) with the English passage
    or the package name."""
    return not word_tokens(it.query) & (word_tokens(english.text) | word_tokens(it.key))


def write_mkqa(root: Path, desc: dict, split_of: dict, count: TokenCounter, masked: bool) -> dict:
    """MKQA-like: summary in l -> one English corpus; qrels files judge the English passage.
    `masked`: only the cross-lingual queries that pass `name_masked`."""
    english = {it.key: it for it in desc["en"]}
    corpus = corpus_of(desc["en"])
    write_text(root / "corpus.jsonl.gz", jsonl({"_id": d, "title": "", "text": t} for d, t in corpus.items()),
               gz=True)
    stats = {}
    for lang, rows in sorted(desc.items()):
        if masked and lang == "en":
            continue
        code = MKQA_CODE.get(lang, lang)
        for split in SPLITS:
            qs = sorted((it for it in rows if split_of[it.group] == split and it.key in english
                         and (not masked or name_masked(it, english[it.key]))),
                        key=lambda it: it.key)
            write_text(root / f"MKQA_{split}-data/{code}.jsonl",
                       jsonl({"id": it.key, "question": it.query, "answers": []} for it in qs))
            write_text(root / f"qrels/qrels.mkqa-{code}-{split}.tsv",
                       trec((it.key, english[it.key].docid) for it in qs))
            stats.setdefault(lang, {})[split] = eval_stats(qs, len(corpus), count,
                                                           [english[it.key].text for it in qs])
    return stats


def leakage(rows: list[Item]) -> dict:
    """How much a query gives away: the mean share of its tokens found in its page, and the share
    of queries all of whose tokens are in the page."""
    shares = [len(q & word_tokens(it.text)) / len(q) for it in rows if (q := word_tokens(it.query))]
    return {"mean_query_token_share_in_page": round(statistics.fmean(shares), 4) if shares else None,
            "all_query_tokens_in_page": round(sum(s == 1 for s in shares) / len(shares), 4) if shares else None}


def write_mldr(root: Path, pages: dict, split_of: dict, count: TokenCounter) -> dict:
    """MLDR-like: NAME description -> manual pages of the same language."""
    stats = {}
    for lang, rows in sorted(pages.items()):
        corpus = corpus_of(rows)
        base = root / f"mldr-v1.0-{lang}"
        write_text(base / "corpus.jsonl.gz", jsonl({"docid": d, "text": t} for d, t in corpus.items()), gz=True)
        for split in SPLITS:
            qs = sorted((it for it in rows if split_of[it.group] == split), key=lambda it: it.key)
            write_text(base / f"{split}.jsonl.gz", jsonl(
                {"query_id": it.key, "query": it.query, "positive_passages": [{"docid": it.docid, "text": it.text}],
                 "negative_passages": []} for it in qs), gz=True)
            stats.setdefault(lang, {})[split] = dict(eval_stats(qs, len(corpus), count), **leakage(qs))
    return stats


# --------------------------------------------------------------------------- main

def load_tokenizer(path: str | None):
    from transformers.utils import logging

    logging.set_verbosity_error()  # texts over the model's 8192 positions are counted, never encoded
    if path:
        from transformers import AutoTokenizer
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError) as exc:
            raise M3Error(f"--tokenizer {path}: cannot load ({exc.__class__.__name__})") from None
        if not tokenizer.is_fast:
            raise M3Error(f"--tokenizer {path}: not a fast tokenizer (no tokenizer.json)")
        return tokenizer
    from m3ref.tiny import build_tokenizer
    return build_tokenizer()


def input_digests(cache: Path, files: dict) -> dict:
    """sha256 of every index file read, every downloaded .deb and every unpacked page tree."""
    used = [files["release"], files["packages"], *files["translations"].values()]
    out = {f"lists/{p.name}": sha256_file(p) for p in sorted(used)}
    out.update({f"debs/{p.name}": sha256_file(p) for p in sorted((cache / "debs").glob("*.deb"))})
    for lang, (_, pkgs) in MAN_PACKAGES.items():
        for pkg in pkgs:
            if (cache / "man" / pkg).is_dir():
                out[f"man/{pkg}/ (tree)"] = tree_digest(cache / "man" / pkg)
    return out


def check_out(out: Path) -> None:
    if out.exists() and any(out.iterdir()) and not (out / "manifest.json").is_file():
        raise M3Error(f"--out {out}: exists, is not empty and holds no manifest.json of an earlier build")


def replace_dir(new: Path, out: Path) -> None:
    """Put the finished build at `out`, replacing an earlier build there."""
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    new.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def build(args) -> dict:
    """Read the cache, build every file under a temporary folder, return the manifest."""
    t0 = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - t0:5.0f} s] {msg}", file=sys.stderr, flush=True)
    cache, out = Path(args.cache).expanduser(), Path(args.out)
    check_out(out)
    if args.roff == "groff" and not shutil.which("groff"):
        raise M3Error("--roff groff: groff is not installed")
    if not args.offline:
        fetch(cache, args.mirror, args.keyring)
        log(f"fetched the index files and manual pages into {cache}")
    files = index_files(cache / "lists")
    release = read_release(files["release"])
    tokenizer = load_tokenizer(args.tokenizer)
    count = TokenCounter(tokenizer)
    filters = {"descriptions": {}, "manual_pages": {}}
    desc, sources = read_descriptions(files, read_packages(files["packages"]), filters["descriptions"])
    log(f"read descriptions: {', '.join(f'{l} {len(r)}' for l, r in desc.items())}")
    pages = read_pages(cache / "man", args.roff, args.jobs, filters["manual_pages"])
    log(f"read manual pages: {', '.join(f'{l} {len(r)}' for l, r in pages.items())}")
    dropped = {"descriptions": drop_small_languages(desc, args.min_test),
               "manual_pages": drop_small_languages(pages, args.min_test)}
    if "en" not in desc:
        raise M3Error(f"{files['translations']['en']}: fewer than {2.5 * args.min_test:g} English "
                      "descriptions kept")
    near = {"descriptions": group_items(desc, sources), "manual_pages": group_items(pages, {})}
    split_of, page_split = assign_splits(desc, args.min_test), assign_splits(pages, args.min_test)
    log("grouped near-duplicates and source siblings, assigned splits")

    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    manifest = {"builder_version": BUILDER_VERSION, "seed": SEED,
                "archive": {"mirror": args.mirror, "suite": release.get("Codename", SUITE),
                            "components_read": ["main"], "architecture": "amd64", "release": release},
                "roff_converter": args.roff if args.roff == "python" else subprocess.run(
                    ["groff", "--version"], capture_output=True, text=True).stdout.splitlines()[0],
                "tokenizer_sha256": hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest(),
                "min_test": args.min_test, "filters": filters, "dropped_languages": dropped,
                "near_duplicate_pairs": near, "train": {}}
    write_training(tmp / "train", desc, pages, split_of, page_split, tokenizer, count, args.jobs,
                   manifest["train"])
    log("wrote train/")
    manifest["eval"] = {"miracl": write_miracl(tmp / "eval/miracl", desc, split_of, count),
                        "mkqa": write_mkqa(tmp / "eval/mkqa", desc, split_of, count, masked=False),
                        "mldr": write_mldr(tmp / "eval/mldr", pages, page_split, count)}
    manifest["eval-name-masked"] = {"mkqa": write_mkqa(tmp / "eval-name-masked/mkqa", desc, split_of, count,
                                                       masked=True)}
    manifest["inputs_sha256"] = input_digests(cache, files)
    manifest["wall_time_s"] = round(time.time() - t0, 1)
    write_text(tmp / "manifest.json", [json.dumps(manifest, ensure_ascii=False, indent=1) + "\n"])
    replace_dir(tmp, out)
    return manifest


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output folder (replaced if it holds an earlier build)")
    ap.add_argument("--cache", default="~/.cache/m3ref-debian", help="apt state, .deb files, unpacked pages")
    ap.add_argument("--offline", action="store_true", help="no apt: read the cache as it is")
    ap.add_argument("--mirror", default=MIRROR, help="Debian mirror (a snapshot.debian.org URL pins a date)")
    ap.add_argument("--keyring", default=KEYRING, help="keyring that signs the archive's Release file")
    ap.add_argument("--tokenizer", help="a saved transformers tokenizer (default: m3ref's tiny tokenizer)")
    ap.add_argument("--roff", choices=("python", "groff"), default="python",
                    help="manual-page converter: this file's roff stripper or groff")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel page conversions")
    ap.add_argument("--min-test", type=int, default=200,
                    help="test queries per language at least (scales every split; small for tests)")
    args = ap.parse_args(argv)
    if args.min_test < 2 or args.jobs < 1:
        raise M3Error("--min-test must be >= 2 and --jobs >= 1")
    manifest = build(args)
    print(f"wrote {args.out} in {manifest['wall_time_s']} s")


if __name__ == "__main__":
    with cli_errors():
        main()
