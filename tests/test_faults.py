"""Faults and bad input (issue #17): nothing silent, nothing stuck.

Every bad argument, file or interruption gives one line that names its cause (the file and
line, or the argument), a warning where the input is legitimate, and never a silent wrong
result; no interruption leaves a run that a later `--resume` cannot continue.

* bad arguments to the model API, damaged and unsafe weight files, bad data files;
* the evaluator's CLI on broken evaluation sets, and its --json, --compare and number flags;
* the trainer: bad data and config, read-only and full disks (OSError(ENOSPC) injected at the
  write), a damaged newest checkpoint, a torn log line, --resume auto, the lr-schedule rule;
* SIGKILL at seeded points of the writes of `python -m m3ref.train` (the init model and the
  checkpoints), then `--resume auto` gives the uninterrupted run's L_final.
"""
from __future__ import annotations

import errno
import gzip
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from m3ref import M3Error, M3Model
from m3ref.config import load_config
from m3ref.errors import M3Warning, cli_errors

ROOT = Path(__file__).resolve().parents[1]
PAIRS = [("capital of France", "Paris is the capital."), ("中国", "中国的首都是北京")]
STRIDE = r"mcls_stride must be an integer >= 1 \(or 0 or None for off\), got "

pytestmark = pytest.mark.usefixtures("one_thread")


def one_line(text: str) -> str:
    text = text.strip()
    assert text and "\n" not in text and "Traceback" not in text, text
    return text


def messages(err: str) -> list:
    """The `warning: ...` and `error: ...` lines of a CLI's stderr (progress bars use \\r)."""
    assert "Traceback" not in err, err
    return [line for line in re.split(r"[\r\n]", err) if line.startswith(("warning:", "error:"))]


# =========================================================================== the model API

@pytest.mark.parametrize("call, message", [
    (lambda m: m.encode(["a b c"], mcls_stride=-5), STRIDE + "-5"),
    (lambda m: m.tokenize(["a b c"], 64, mcls_stride=-5), STRIDE + "-5"),
    (lambda m: m.encode(["a b c"], mcls_stride=True), STRIDE + "True"),
    (lambda m: m.encode(["a b c"], mcls_stride=2.5), STRIDE + "2.5"),
    (lambda m: m.compute_score(PAIRS, weights=(0, 0, 0)),
     r"weights=\(0.0, 0.0, 0.0\): w_dense \+ w_sparse must be > 0 \(\"sparse\+dense\" divides by it\)"),
    (lambda m: m.compute_score(PAIRS, weights=(0, 0, 1)), r"w_dense \+ w_sparse must be > 0"),
    (lambda m: m.compute_score(PAIRS, weights=(1, -1, 0)),
     r"weights=\(1.0, -1.0, 0.0\): each weight must be a finite number >= 0"),
    (lambda m: m.compute_score(PAIRS, weights=(1, float("nan"), 1)), "each weight must be a finite number"),
    (lambda m: m.compute_score(PAIRS, weights=None), r"weights=None: give 3 numbers \(w_dense, w_sparse, w_colbert\)"),
    (lambda m: m.compute_score(PAIRS, weights=0.4), "weights=0.4: give 3 numbers"),
    (lambda m: m.compute_score(PAIRS, weights="abc"), "weights='abc': give 3 numbers"),
    (lambda m: m.compute_score(PAIRS, weights=("0.4", "0.2", "0.4")), r"weights=\('0.4', '0.2', '0.4'\): give 3"),
    (lambda m: m.compute_score(PAIRS, weights=(1, 1)), "give 3 numbers"),
    (lambda m: m.compute_score(PAIRS, batch_size=0), "batch_size must be an integer >= 1, got 0"),
    (lambda m: m.compute_score(PAIRS, max_query_length=1), "max_query_length must be an integer >= 2, got 1"),
    (lambda m: m.encode(["a"], batch_size="8"), "batch_size must be an integer >= 1, got '8'"),
    (lambda m: m.encode(["a"], max_length=None), "max_length must be an integer >= 2, got None"),
    (lambda m: m.encode(["a"], max_tokens=0), "max_tokens must be an integer >= 1, got 0"),
    (lambda m: m.encode(["ok", "bad \ud800 text"]),
     r"texts\[1\] holds a lone surrogate \(U\+D800 at character 4\), which is not valid Unicode text"),
    (lambda m: m.compute_score([("q", "p \udfff")]), r"pairs\[0\]\[1\] holds a lone surrogate \(U\+DFFF"),
    (lambda m: m.compute_score([("q", 5)]), r"pairs\[0\]\[1\] is a int, not a string"),
])
def test_bad_arguments_to_the_model_api_are_one_line_errors(tiny_model, call, message):
    with pytest.raises(M3Error, match=message) as err:
        call(tiny_model)
    one_line(str(err.value))


def test_legitimate_weights_give_finite_scores(tiny_model):
    for weights in ((1, 0, 0), (0, 1, 0), (0.4, 0.2, 0.4), [1, 1, 1]):
        out = tiny_model.compute_score(PAIRS, weights=weights)
        assert all(math.isfinite(v) for values in out.values() for v in values), weights
    off = tiny_model.encode(["a b c"], mcls_stride=0).dense  # 0 = MCLS off, as None
    assert torch.allclose(torch.tensor(off), torch.tensor(tiny_model.encode(["a b c"]).dense))


# =========================================================================== weight files

class _Unsafe:
    """A pickle that would make a directory when loaded without weights_only."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


def _truncate(f: Path) -> None:
    data = f.read_bytes()
    f.write_bytes(data[:len(data) // 2])


def _encoder_as_bin(d: Path, unsafe=None) -> None:
    """Replace model.safetensors by a pytorch_model.bin (the older layout)."""
    from safetensors.torch import load_file
    state = load_file(d / "model.safetensors")
    os.remove(d / "model.safetensors")
    torch.save({"x": unsafe} if unsafe is not None else state, d / "pytorch_model.bin")


WEIGHT_CASES = {
    "truncated model.safetensors": (lambda d, m: _truncate(d / "model.safetensors"),
                                    r"/model\.safetensors: cannot be read, the file is truncated or corrupt "
                                    r"\(.*incomplete metadata"),
    "truncated colbert_linear.pt": (lambda d, m: _truncate(d / "colbert_linear.pt"),
                                    r"/colbert_linear\.pt: cannot be read, the file is truncated or corrupt"),
    "truncated sparse_linear.pt": (lambda d, m: _truncate(d / "sparse_linear.pt"),
                                   r"/sparse_linear\.pt: cannot be read, the file is truncated or corrupt"),
    "unsafe colbert_linear.pt": (lambda d, m: torch.save({"weight": _Unsafe(m)}, d / "colbert_linear.pt"),
                                 r"/colbert_linear\.pt: refused as unsafe: it holds pickled objects, not only "
                                 r"tensors \(it asks for posix\.mkdir\)"),
    "unsafe pytorch_model.bin": (lambda d, m: _encoder_as_bin(d, _Unsafe(m)),
                                 r"/pytorch_model\.bin: refused as unsafe: it holds pickled objects"),
    "truncated pytorch_model.bin": (lambda d, m: (_encoder_as_bin(d), _truncate(d / "pytorch_model.bin")),
                                    r"/pytorch_model\.bin: cannot load the encoder \(PytorchStreamReader failed"),
    "no encoder weights": (lambda d, m: os.remove(d / "model.safetensors"),
                           r" has no encoder weights \(model\.safetensors or pytorch_model\.bin\)"),
    "tokenizer.json missing": (lambda d, m: os.remove(d / "tokenizer.json"),
                               r" has no tokenizer\.json \(nor another tokenizer file\), so its tokenizer cannot"),
    "damaged config.json": (lambda d, m: (d / "config.json").write_text('{"hidden_size": 12'),
                            r"/config\.json: not valid JSON \(.*\); the file is truncated or corrupt"),
    "head of another width": (lambda d, m: torch.save({"weight": torch.zeros(1, 64), "bias": torch.zeros(1)},
                                                      d / "sparse_linear.pt"),
                              r"/sparse_linear\.pt: does not fit this encoder \(Error\(s\) in loading"),
    "head not a state dict": (lambda d, m: torch.save(torch.zeros(3), d / "sparse_linear.pt"),
                              r"/sparse_linear\.pt: not a linear head's state dict"),
}


@pytest.mark.parametrize("case", list(WEIGHT_CASES))
def test_damaged_or_unsafe_weight_files_are_named(tiny_dir, tmp_path, case):
    damage, message = WEIGHT_CASES[case]
    d, marker = tmp_path / "model", tmp_path / "pickle-ran"
    shutil.copytree(tiny_dir, d)
    damage(d, str(marker))
    with pytest.raises(M3Error, match=message) as err:
        M3Model.from_pretrained(d, device="cpu")
    text = one_line(str(err.value))
    assert "weights_only" not in text and not marker.exists()  # no advice to unpickle, nothing ran


# =========================================================================== data files

GOOD = {"query": "q", "pos": ["p"], "neg": ["n1", "n2"]}


def _jsonl(path: Path, third: str) -> Path:
    """A training file whose line 3 is `third` (lines 1, 2 and 4 are valid)."""
    good = json.dumps(GOOD)
    path.write_text(f"{good}\n{good}\n{third}\n{good}\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("third, message", [
    ('{"query": "q", "pos": ["p"], "neg": ["n"], "pos_scores": [NaN], "neg_scores": [0.1]}',
     r"x\.jsonl:3: 'pos_scores'\[0\] is nan; teacher scores must be finite numbers"),
    ('{"query": "q", "pos": ["p"], "neg": ["n"], "pos_scores": [1.0], "neg_scores": [-Infinity]}',
     r"x\.jsonl:3: 'neg_scores'\[0\] is -inf; teacher scores must be finite"),
    ('{"query": "caf\\ud800", "pos": ["p"], "neg": ["n"]}',
     r"x\.jsonl:3: a lone surrogate \(U\+D800\) is not valid Unicode text"),
])
def test_bad_training_values_name_file_and_line(tmp_path, third, message):
    from m3ref.data import load_train_data, read_train_file
    path = _jsonl(tmp_path / "x.jsonl", third)
    for read in (read_train_file, load_train_data):
        with pytest.raises(M3Error, match=message) as err:
            read(path)
        one_line(str(err.value))


def test_an_escaped_surrogate_pair_is_valid_text(tmp_path):
    from m3ref.data import read_train_file
    rows = read_train_file(_jsonl(tmp_path / "x.jsonl", '{"query": "\\ud83d\\ude00", "pos": ["p"], "neg": []}'))
    assert rows[2]["query"] == "\U0001F600"


def test_a_truncated_gzip_file_names_file_and_line(tmp_path):
    from m3ref.data import load_train_data, read_train_file
    path = tmp_path / "x.jsonl.gz"
    data = gzip.compress("".join(json.dumps({**GOOD, "query": f"q{i} " * 40}) + "\n" for i in range(200)).encode())
    path.write_bytes(data[:len(data) // 2])
    for read in (read_train_file, load_train_data):
        with pytest.raises(M3Error, match=r"x\.jsonl\.gz:\d+: the gzip stream ends early; the file is truncated"):
            read(path)


def test_a_hub_dataset_that_cannot_be_loaded_is_one_line(monkeypatch):
    from m3ref.data import load_train_data
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(M3Error, match=r"^nobody/no-such-data: cannot load this dataset from the hub \(") as err:
        load_train_data("nobody/no-such-data")
    one_line(str(err.value))


# =========================================================================== the evaluator's CLI

TEXTS = [f"{w} river {i} mountain story" for i, w in enumerate(
    ["apple", "stone", "cloud", "music", "garden", "winter", "paper", "light", "silver", "forest"])]


def write_miracl(root: Path, lang: str = "es", corpus=None, topics=None, qrels=None, gz: bool = False) -> dict:
    """A MIRACL-layout set (the relevant passage of query i is its own text); each part may be
    replaced by raw text. Returns the paths of the three files."""
    base = root / "miracl"
    paths = {"corpus": base / f"miracl-corpus-v1.0-{lang}" / ("docs-0.jsonl" + (".gz" if gz else "")),
             "topics": base / f"miracl-v1.0-{lang}/topics/topics.miracl-v1.0-{lang}-dev.tsv",
             "qrels": base / f"miracl-v1.0-{lang}/qrels/qrels.miracl-v1.0-{lang}-dev.tsv"}
    for p in paths.values():
        p.parent.mkdir(parents=True, exist_ok=True)
    if corpus is None:
        corpus = "".join(json.dumps({"docid": f"{lang}{i}#0", "title": "", "text": t}) + "\n"
                         for i, t in enumerate(TEXTS))
    data = corpus.encode()
    paths["corpus"].write_bytes(gzip.compress(data) if gz else data)
    paths["topics"].write_text("".join(f"q{i}\t{TEXTS[i]}\n" for i in range(4)) if topics is None else topics)
    paths["qrels"].write_text("".join(f"q{i} Q0 {lang}{i}#0 1\nq{i} Q0 {lang}{i + 1}#0 0\n" for i in range(4))
                              if qrels is None else qrels)
    return paths


def _doc(docid, text="some text"):
    return json.dumps({"docid": docid, "title": "", "text": text}) + "\n"


GOOD_QRELS = "".join(f"q{i} Q0 es{i}#0 1\n" for i in range(4))
EVAL_CASES = {  # name: (write_miracl arguments, extra flags, exit status, the message's pattern)
    "some qrels documents missing": (
        {"qrels": GOOD_QRELS + "q0 Q0 ghost#0 1\n"}, [], 0,
        r"^warning: 1 of 5 relevant documents in \S+qrels\.miracl-v1\.0-es-dev\.tsv are not in the corpus "
        r"\S+docs-0\.jsonl; they count as not retrieved$"),
    "some qrels queries without a topic": (
        {"qrels": GOOD_QRELS + "q9 Q0 es1#0 1\n"}, [], 0,
        r"^warning: 1 of 5 query ids in \S+qrels\S+\.tsv have no query in \S+topics\S+\.tsv; they are left out$"),
    "every qrels document missing": (
        {"qrels": "".join(f"q{i} Q0 ghost{i} 1\n" for i in range(4))}, [], 2,
        r"^error: none of the 4 relevant documents in \S+qrels\S+\.tsv is in the corpus \S+docs-0\.jsonl$"),
    "empty topics": ({"topics": ""}, [], 2, r"^error: \S+topics\.miracl-v1\.0-es-dev\.tsv: no queries$"),
    "empty topics, bm25": ({"topics": ""}, ["--methods", "bm25"], 2, r"^error: \S+topics\S+\.tsv: no queries$"),
    "qrels of no topic": (
        {"qrels": "".join(f"x{i} Q0 es{i}#0 1\n" for i in range(4))}, [], 2,
        r"^error: no judged query: none of the 4 query ids in \S+qrels\S+\.tsv is a query of \S+topics\S+\.tsv$"),
    "empty qrels": ({"qrels": ""}, [], 2, r"^error: \S+qrels\S+\.tsv: no judgements$"),
    "no relevant document": ({"qrels": "q0 Q0 es0#0 0\n"}, [], 2,
                             r"^error: \S+qrels\S+\.tsv: no query has a relevant document$"),
    "empty corpus": ({"corpus": ""}, [], 2, r"^error: \S+docs-0\.jsonl: no documents$"),
    "empty corpus, bm25": ({"corpus": ""}, ["--methods", "bm25"], 2, r"^error: \S+docs-0\.jsonl: no documents$"),
    "duplicate docid": ({"corpus": _doc("es0#0") + _doc("es1#0") + _doc("es0#0")}, [], 2,
                        r"^error: \S+docs-0\.jsonl:3: duplicate docid 'es0#0'; every document needs its own id$"),
    "non-integer relevance": ({"qrels": "q0 Q0 es0#0 1\nq1 Q0 es1#0 yes\n"}, [], 2,
                              r"^error: \S+qrels\S+\.tsv:2: relevance 'yes' is not an integer$"),
    "conflicting judgements": ({"qrels": "q0 Q0 es0#0 1\nq0 Q0 es0#0 0\n"}, [], 2,
                               r"^error: \S+qrels\S+\.tsv:2: query 'q0' judges document 'es0#0' again, now 0 "
                               r"\(was 1\)$"),
    "corpus line without text": ({"corpus": _doc("es0#0") + json.dumps({"docid": "es1#0", "title": "t"}) + "\n"},
                                 [], 2, r"^error: \S+docs-0\.jsonl:2: 'text' is missing$"),
    "corpus line without docid": ({"corpus": json.dumps({"text": "t"}) + "\n"}, [], 2,
                                  r"^error: \S+docs-0\.jsonl:1: 'docid' is missing$"),
    "duplicate topic": ({"topics": "q0\tone\nq0\ttwo\n"}, [], 2,
                        r"^error: \S+topics\S+\.tsv:2: duplicate query id 'q0'$"),
    "lone surrogate in the corpus": ({"corpus": '{"docid": "d", "text": "x\\udc00"}\n'}, [], 2,
                                     r"^error: \S+docs-0\.jsonl:1: a lone surrogate \(U\+DC00\)"),
}


def _run_evaluate(args, capsys):
    from m3ref.evaluate import main
    try:
        main(args)
        status = 0
    except SystemExit as exc:
        status = exc.code
    out = capsys.readouterr()
    return status, out.out, out.err


@pytest.mark.parametrize("case", list(EVAL_CASES))
def test_broken_evaluation_sets(tiny_dir, tmp_path, capsys, case):
    parts, flags, status, message = EVAL_CASES[case]
    write_miracl(tmp_path / "data", **parts)
    args = ["--model", tiny_dir, "--data", str(tmp_path / "data"), "--benchmark", "miracl", "--langs", "es",
            "--methods", "dense"] + flags
    got, out, err = _run_evaluate(args, capsys)
    lines = messages(err)
    assert got == status and len(lines) == 1, err
    assert re.search(message, lines[0]), lines[0]
    if status == 0:
        assert out.startswith("miracl ndcg@10")


def test_a_truncated_gzip_corpus_names_file_and_line(tiny_dir, tmp_path, capsys):
    paths = write_miracl(tmp_path / "data", gz=True,
                         corpus="".join(_doc(f"es{i}#0", f"text {i} " * 30) for i in range(300)))
    data = paths["corpus"].read_bytes()
    paths["corpus"].write_bytes(data[:len(data) // 2])
    status, _, err = _run_evaluate(["--model", tiny_dir, "--data", str(tmp_path / "data"), "--benchmark", "miracl",
                                    "--langs", "es", "--methods", "dense"], capsys)
    assert status == 2 and len(messages(err)) == 1
    assert re.fullmatch(r"error: \S+docs-0\.jsonl\.gz:\d+: the gzip stream ends early; the file "
                        r"is truncated or damaged", messages(err)[0]), err


def _deny_writes(monkeypatch, root: Path, code=errno.EROFS):
    """Make `root` read-only for this process: the first write under it fails as the kernel
    says (a read-only mount; chmod does not stop root, who runs some test machines)."""
    import builtins
    real_open, real_os_open, real_mkdir = builtins.open, os.open, os.mkdir
    root = os.path.abspath(root)

    def under(path):
        return isinstance(path, (str, os.PathLike)) and os.path.abspath(path).startswith(root)

    def deny(path):
        raise OSError(code, os.strerror(code), os.fspath(path))

    def open_(file, mode="r", *a, **kw):
        if under(file) and any(c in mode for c in "wax+"):
            deny(file)
        return real_open(file, mode, *a, **kw)

    def os_open(path, flags, *a, **kw):
        if under(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            deny(path)
        return real_os_open(path, flags, *a, **kw)

    def mkdir(path, *a, **kw):
        if under(path):
            deny(path)
        return real_mkdir(path, *a, **kw)

    for target, name, fn in ((builtins, "open", open_), (io, "open", open_), (os, "open", os_open),
                             (os, "mkdir", mkdir)):
        monkeypatch.setattr(target, name, fn)


@pytest.mark.parametrize("args, message", [
    (["--mcls-stride", "-5"], r"error: --mcls-stride must be an integer >= 1 \(0 or left out: MCLS off\), got -5"),
    (["--batch-size", "0"], "error: --batch-size must be an integer >= 1, got 0"),
    (["--max-passage-length", "1"], "error: --max-passage-length must be an integer >= 2, got 1"),
    (["--json", "{ro}/scores.json"], r"error: cannot write --json \S+/ro/scores\.json: read-only file system"),
    (["--json", "{tmp}/no/such/dir/scores.json"],
     r"error: cannot write --json \S+/no/such/dir/scores\.json: no such file or directory"),
])
def test_evaluate_flags_fail_before_the_model_is_loaded(tmp_path, capsys, monkeypatch, args, message):
    """--model /no/model: each of these is reported before the model (or any data) is read."""
    write_miracl(tmp_path / "data")
    (tmp_path / "ro").mkdir()
    _deny_writes(monkeypatch, tmp_path / "ro")
    args = [a.format(ro=tmp_path / "ro", tmp=tmp_path) for a in args]
    status, out, err = _run_evaluate(["--model", "/no/model", "--data", str(tmp_path / "data"), "--benchmark",
                                      "miracl", "--langs", "es"] + args, capsys)
    assert status == 2 and out == ""
    assert re.fullmatch(message, one_line(err)), err


def test_evaluate_compare_names_a_bad_file(tmp_path, capsys):
    (tmp_path / "a.json").write_text('{"benchmark": "miracl", ')
    (tmp_path / "b.json").write_text('{"some": "thing"}')
    for files, message in (([tmp_path / "a.json", tmp_path / "b.json"], r"error: \S+a\.json:1: not valid JSON"),
                           ([tmp_path / "b.json", tmp_path / "a.json"], r"error: \S+b\.json: not a saved evaluation"),
                           ([tmp_path / "missing.json", tmp_path / "a.json"],
                            r"error: \S+missing\.json: no such file or directory")):
        status, _, err = _run_evaluate(["--compare", *map(str, files)], capsys)
        assert status == 2 and re.match(message, one_line(err)), err


# =========================================================================== every OSError of a CLI

@pytest.mark.parametrize("exc, message", [
    (PermissionError(errno.EACCES, "Permission denied", "/data/out/x"), "error: /data/out/x: permission denied"),
    (OSError(errno.EROFS, "Read-only file system", "/data/out"), "error: /data/out: read-only file system"),
    (OSError(errno.ENOSPC, "No space left on device", "/data/out/f"),
     "error: no space left on the device while writing /data/out/f"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "/x"), "error: /x: no such file or directory"),
    (OSError(errno.EXDEV, "Invalid cross-device link", "/a", None, "/b"), "error: /a -> /b: invalid cross-device link"),
])
def test_cli_errors_turns_every_os_error_into_one_line(capsys, exc, message):
    with pytest.raises(SystemExit) as stop, cli_errors():
        raise exc
    assert stop.value.code == 2 and one_line(capsys.readouterr().err) == message


# =========================================================================== the trainer: bad input

def tiny_config(path: Path, out: Path, **overrides) -> Path:
    """configs/tiny.yaml as these tests run it: 3 steps (1 dense, 2 unified), a checkpoint after
    each, no tensorboard; `overrides` set any field. Returns the YAML file."""
    values = {**yaml.safe_load((ROOT / "configs/tiny.yaml").read_text()), "output_dir": str(out), "max_steps": 3,
              "save_every": 1, "tensorboard": False, "dense_train_data": str(ROOT / "data_samples/train/unsup"),
              "train_data": str(ROOT / "data_samples/train/finetune"), **overrides}
    path.write_text(yaml.safe_dump(values))
    return path


def _run_train(args, capsys):
    from m3ref.train import main
    try:
        main(args)
        status = 0
    except SystemExit as exc:
        status = exc.code
    return status, capsys.readouterr().err


def _nan_scores(tmp):
    good = json.dumps({"query": "q", "pos": ["p"], "neg": ["n"], "pos_scores": [1.0], "neg_scores": [0.5]})
    bad = good.replace("[1.0]", "[NaN]")
    (tmp / "nan").mkdir()
    (tmp / "nan" / "kd_len-0-500.jsonl").write_text(f"{good}\n{good}\n{bad}\n")
    return {"train_data": str(tmp / "nan")}


TRAIN_CASES = {  # name: (config overrides (a function of tmp_path), flags, the error's pattern)
    "NaN teacher score": (_nan_scores, [],
                          r"error: \S+/nan/kd_len-0-500\.jsonl:3: 'pos_scores'\[0\] is nan; teacher scores must be "
                          r"finite numbers"),
    "query_max_len above the positions": (lambda tmp: {"model": "{tiny_dir}", "query_max_len": 9000}, [],
                                          r"error: config: query_max_len=9000: above the 8192 positions of the "
                                          r"model \S+"),
    "passage_max_len above the positions": (lambda tmp: {"model": "{tiny_dir}", "passage_max_len": 10000}, [],
                                            r"error: config: passage_max_len=10000: above the 8192 positions .*"),
    "bad ensemble weights": (lambda tmp: {"m3": {"ensemble_weights": ["a", 1, 1]}}, [],
                             r"error: \S+run\.yaml: m3: ensemble_weights=\['a', 1, 1\]: give 3 numbers"),
    "a NaN loss weight": (lambda tmp: {"m3": {"loss_weights": [1, float("nan"), 1]}}, [],
                          r"error: \S+run\.yaml: loss_weights must be 3 finite numbers, got \[1, nan, 1\]"),
    "output under a file": (lambda tmp: (tmp / "file").write_text("") or {"output_dir": str(tmp / "file" / "out")},
                            [], r"error: cannot write \S+/file/out: not a directory"),
    "read-only output dir": (lambda tmp: {"output_dir": str(tmp / "ro")}, [],
                             r"error: cannot write in the output directory \S+/ro: read-only file system"),
    "read-only parent": (lambda tmp: {"output_dir": str(tmp / "ro" / "out")}, [],
                         r"error: cannot write \S+/ro/out: read-only file system"),
    "--resume without a checkpoint": (lambda tmp: {"output_dir": str(tmp / "empty")}, ["--resume"],
                                      r"error: no checkpoint to resume from in \S+/empty \(--resume auto starts a "
                                      r"new run when there is none\)"),
    "--resume a missing directory": (lambda tmp: {}, ["--resume", "/no/such/checkpoint"],
                                     r"error: --resume /no/such/checkpoint: no checkpoint directory there"),
}


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_trainer_bad_input_is_one_line(tiny_dir, tmp_path, capsys, monkeypatch, case):
    overrides, flags, message = TRAIN_CASES[case]
    (tmp_path / "ro").mkdir()
    _deny_writes(monkeypatch, tmp_path / "ro")
    values = {k: (v.format(tiny_dir=tiny_dir) if isinstance(v, str) else v) for k, v in overrides(tmp_path).items()}
    cfg = tiny_config(tmp_path / "run.yaml", tmp_path / "out", **{"model": tiny_dir, **values})
    status, err = _run_train(["--config", str(cfg)] + flags, capsys)
    assert status == 2 and len(messages(err)) == 1, err
    assert re.fullmatch(message, messages(err)[0]), err


# =========================================================================== the trainer: faults and resume

def _log(out: Path) -> list:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(one_thread, tiny_dir, tmp_path_factory):
    """The uninterrupted run every fault is compared with: OUTPUT_DIR with checkpoint-1,
    checkpoint-2 and final (step 3)."""
    from m3ref.train import train
    root = tmp_path_factory.mktemp("reference")
    train(load_config(str(tiny_config(root / "run.yaml", root / "out", model=tiny_dir))))
    return root / "out"


def same_as_reference(out: Path, reference: Path) -> None:
    """Every step logged once, with the uninterrupted run's losses and lr, and the same final heads."""
    log, want = _log(out), _log(reference)
    assert [r["step"] for r in log] == [r["step"] for r in want] == list(range(1, len(want) + 1))
    for got, ref in zip(log, want):
        for key in ("L_final", "L_dense", "lr", "grad_norm"):
            assert got[key] == pytest.approx(ref[key], rel=1e-6, abs=1e-9), (got["step"], key)
    for name in ("sparse_linear.pt", "colbert_linear.pt"):
        got, ref = (torch.load(d / "final" / name, weights_only=True) for d in (out, reference))
        torch.testing.assert_close(got, ref)
    assert not [p.name for p in out.iterdir() if p.name.startswith((".tmp-", ".old-"))]


def _interrupted_after(reference: Path, out: Path, step: int) -> None:
    """OUTPUT_DIR as a run killed after `step` leaves it: checkpoints up to `step`, log lines up to it."""
    out.mkdir()
    for s in range(1, step + 1):
        shutil.copytree(reference / f"checkpoint-{s}", out / f"checkpoint-{s}")
    (out / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _log(reference)[:step]))


def _train_file(cfg_path: Path, resume=None, **overrides):
    from m3ref.train import train
    cfg = load_config(str(cfg_path))
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return train(cfg, resume=resume)


DAMAGE = {  # the file, how it is damaged, what the message says after "checkpoint-2"
    "model.safetensors": (lambda d: _truncate(d / "model.safetensors"),
                          r"/model\.safetensors: cannot be read, the file is truncated or corrupt"),
    "optimizer.pt": (lambda d: _truncate(d / "optimizer.pt"),
                     r"/optimizer\.pt: cannot be read, the file is truncated or corrupt"),
    "trainer_state.json": (lambda d: (d / "trainer_state.json").write_text('{"step": 2, "sta'),
                           r"/trainer_state\.json: not valid JSON"),
    "rng_state_0.pt": (lambda d: _truncate(d / "rng_state_0.pt"), r"/rng_state_0\.pt: cannot be read"),
    "tokenizer.json": (lambda d: os.remove(d / "tokenizer.json"), r" has no tokenizer\.json"),
}


@pytest.mark.slow
@pytest.mark.parametrize("damaged", list(DAMAGE))
def test_a_damaged_newest_checkpoint_is_passed_over(reference, tiny_dir, tmp_path, damaged):
    """The newest checkpoint cannot be loaded: resume warns, naming the file, continues from
    the one before it, and ends where the uninterrupted run ended."""
    damage, why = DAMAGE[damaged]
    out = tmp_path / "out"
    _interrupted_after(reference, out, 2)
    damage(out / "checkpoint-2")
    cfg = tiny_config(tmp_path / "run.yaml", out, model=tiny_dir)
    with pytest.raises(M3Error, match=f"checkpoint-2{why}"):  # named explicitly, it is an error
        _train_file(cfg, resume=str(out / "checkpoint-2"))
    with pytest.warns(M3Warning, match=rf"resuming from \S+/checkpoint-1: the newer checkpoint-2 cannot be used "
                                       rf"\(\S+/checkpoint-2{why}"):
        _train_file(cfg, resume="latest")
    same_as_reference(out, reference)


@pytest.mark.slow
def test_a_torn_log_line_is_dropped_and_a_damaged_one_named(reference, tiny_dir, tmp_path):
    out = tmp_path / "out"
    _interrupted_after(reference, out, 2)
    log = out / "train_log.jsonl"
    cfg = tiny_config(tmp_path / "run.yaml", out, model=tiny_dir)
    good = log.read_text()
    log.write_text("{not json\n" + good.split("\n", 1)[1])  # line 1 damaged, not torn: an error
    with pytest.raises(M3Error, match=r"train_log\.jsonl:1: not a log record \(.*\); the log is damaged: remove "
                                      r"that line to resume"):
        _train_file(cfg, resume="latest")
    log.write_text(good + '{"step": 3, "stage": "unified", "L_fi')  # killed while appending step 3
    with pytest.warns(M3Warning, match=r"train_log\.jsonl:3: the last line is torn \(an interrupted write\); dropped"):
        _train_file(cfg, resume="latest")
    same_as_reference(out, reference)


@pytest.mark.slow
def test_resume_auto_starts_continues_or_stops(reference, tiny_dir, tmp_path, capsys):
    """--resume auto: a new run when there is no checkpoint, the newest checkpoint when there is
    one, and nothing to do once final/ is at max_steps (a requeue script can always pass it)."""
    import warnings
    cfg = tiny_config(tmp_path / "run.yaml", tmp_path / "out", model=tiny_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("error", M3Warning)
        status, _ = _run_train(["--config", str(cfg), "--resume", "auto"], capsys)  # nothing there: a new run
        assert status == 0
        same_as_reference(tmp_path / "out", reference)
        before = (tmp_path / "out" / "train_log.jsonl").read_text()
        status, err = _run_train(["--config", str(cfg), "--resume", "auto"], capsys)  # done: nothing to do
        assert status == 0 and re.search(r"\S+/final is at step 3 of max_steps=3: nothing to do", err)
        assert (tmp_path / "out" / "train_log.jsonl").read_text() == before
        _interrupted_after(reference, tmp_path / "again", 1)
        _train_file(cfg, resume="auto", output_dir=str(tmp_path / "again"))  # a checkpoint: continue from it
        same_as_reference(tmp_path / "again", reference)


@pytest.mark.slow
def test_a_longer_resume_warns_that_the_lr_schedule_follows_the_new_length(reference, tiny_dir, tmp_path):
    """The schedule is lr_at(step) for the current max_steps (README, "When things go wrong"):
    raising max_steps on resume re-stretches it, and says so."""
    from m3ref.train import lr_at
    out = tmp_path / "out"
    _interrupted_after(reference, out, 2)
    cfg = tiny_config(tmp_path / "run.yaml", out, model=tiny_dir, max_steps=5)
    with pytest.warns(M3Warning, match=r"resuming \S+/checkpoint-2 at step 2 with max_steps=3 -> 5: the "
                                       r"learning-rate schedule is recomputed for the new values \(lr at step 3: "
                                       r"6e-05, the old schedule's 3.33e-05\); the steps already taken keep the lr"):
        _train_file(cfg, resume="latest")
    log = _log(out)
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5]
    assert [r["lr"] for r in log[2:]] == [lr_at(s, load_config(str(cfg))) for s in (2, 3, 4)]


@pytest.mark.slow
def test_a_resume_with_another_config_names_each_changed_field(reference, tiny_dir, tmp_path):
    """A resume may change where and how often a run writes without a word; a change to what a step
    computes (here the temperature and the seed) is named, field by field, old -> new."""
    import warnings
    out = tmp_path / "out"
    _interrupted_after(reference, out, 2)
    cfg = tiny_config(tmp_path / "run.yaml", out, model=tiny_dir, seed=7, m3={"temperature": 0.05})
    with pytest.warns(M3Warning) as caught:
        _train_file(cfg, resume="latest", save_every=0)
    notes = [str(w.message) for w in caught if "another config" in str(w.message)]
    assert len(notes) == 1 and re.fullmatch(
        r"resuming \S+/checkpoint-2 at step 2 with another config \(seed: 0 -> 7; m3: \{.*'temperature': 0\.02.*"
        r" -> \{.*'temperature': 0\.05.*\): the steps already taken used the saved values, so this run mixes two "
        r"configs", notes[0]), notes
    again = tmp_path / "again"
    _interrupted_after(reference, again, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", M3Warning)  # save_every, output_dir: no warning
        _train_file(tiny_config(tmp_path / "same.yaml", again, model=tiny_dir), resume="latest", save_every=0)
    same_as_reference(again, reference)


def _enospc(path):
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _fail_writes(monkeypatch, where: str, error, skip: int = 0):
    """Make the writes (torch.save, safetensors, appends) to a path containing `where` fail
    with `error(path)`, after the first `skip` of them."""
    import builtins

    import transformers.modeling_utils as mu
    real_save, real_safe, real_open = torch.save, mu.safe_save_file, builtins.open
    seen = []

    def fails(name) -> bool:
        if where not in str(name):
            return False
        seen.append(name)
        return len(seen) > skip

    def save(obj, f, *a, **kw):
        name = getattr(f, "name", f)
        if fails(name):
            raise error(name)
        return real_save(obj, f, *a, **kw)

    def safe_save_file(tensors, filename, *a, **kw):
        if fails(filename):
            raise error(filename)
        return real_safe(tensors, filename, *a, **kw)

    def open_(file, mode="r", *a, **kw):
        if "a" in mode and fails(file):
            raise error(file)
        return real_open(file, mode, *a, **kw)

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(mu, "safe_save_file", safe_save_file)
    monkeypatch.setattr(builtins, "open", open_)


def _safetensors_full(path):
    from safetensors import SafetensorError
    return SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


FULL_DISK = {  # name: (the write that fails, the error it raises, how many such writes pass first)
    "optimizer.pt (OSError from torch.save)": (".tmp-checkpoint-2/optimizer.pt", _enospc, 0),
    "optimizer.pt (torch's short-write RuntimeError)": (
        ".tmp-checkpoint-2/optimizer.pt",
        lambda p: RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"), 0),
    "model.safetensors (safetensors)": (".tmp-checkpoint-2/model.safetensors", _safetensors_full, 0),
    "train_log.jsonl (append)": ("train_log.jsonl", lambda p: OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), p), 1),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(FULL_DISK))
def test_a_full_disk_names_the_file_and_resume_continues(reference, tiny_dir, tmp_path, monkeypatch, case):
    where, error, skip = FULL_DISK[case]
    out = tmp_path / "out"
    cfg = tiny_config(tmp_path / "run.yaml", out, model=tiny_dir)
    with monkeypatch.context() as patch:
        _fail_writes(patch, where, error, skip)
        with pytest.raises(M3Error) as err:
            _train_file(cfg)
    assert one_line(str(err.value)) == (f"step 2: no space left on the device while writing {out / where}; "
                                        f"stopped. Last good checkpoint: {out / 'checkpoint-1'}")
    _train_file(cfg, resume="auto")
    same_as_reference(out, reference)


@pytest.mark.slow
def test_the_init_model_is_written_whole_or_not_at_all(reference, tmp_path, monkeypatch):
    """model: null builds OUTPUT_DIR/init under a temporary name: a full disk leaves no init/, a
    later run builds it again; an incomplete init/ (an older version's interrupted write) is rebuilt."""
    out = tmp_path / "out"
    cfg = tiny_config(tmp_path / "run.yaml", out, model=None)
    with monkeypatch.context() as patch:
        _fail_writes(patch, ".tmp-init/model.safetensors", _enospc)
        with pytest.raises(M3Error, match=rf"^no space left on the device while writing {out}/\.tmp-init/"
                                          rf"model\.safetensors$"):
            _train_file(cfg)
    assert not (out / "init").exists()
    _train_file(cfg, resume="auto")
    same_as_reference(out, reference)  # the tiny model of seed 0, as `tiny_dir`
    (tmp_path / "old" / "init").mkdir(parents=True)  # what an interrupted write left before #17
    shutil.copy(out / "init" / "config.json", tmp_path / "old" / "init")
    with pytest.warns(M3Warning, match=r"init is incomplete \(\S+ has no encoder weights .*\); building it again"):
        _train_file(cfg, resume="auto", output_dir=str(tmp_path / "old"))
    same_as_reference(tmp_path / "old", reference)


# =========================================================================== SIGKILL during writes

# Runs in a fresh `python` (OMP_NUM_THREADS=1): imports the trainer once, runs the uninterrupted
# run in a forked child that records every write under OUTPUT_DIR, then forks one child per
# trial that runs `python -m m3ref.train`'s main() and SIGKILLs itself at a seeded write. A
# write is: opening a file for writing, each write() into it, a safetensors file (also killed
# after half of it is on disk), mkdir, rename/replace, unlink, rmtree.
KILLER = r'''
import builtins, io, json, os, random, re, shutil, signal, sys, traceback

import torch  # noqa: F401 - imported once, before the forks
import transformers.modeling_utils as mu
from transformers import AutoModel, AutoTokenizer, XLMRobertaModel  # noqa: F401
import m3ref.train

REAL = {"open": builtins.open, "os.open": os.open, "rename": os.rename, "replace": os.replace, "mkdir": os.mkdir,
        "unlink": os.unlink, "rmtree": shutil.rmtree, "safetensors": mu.safe_save_file}


def install(out, kill_at, events_file):
    out = os.path.abspath(out) + os.sep
    count = [0]

    def event(kind, path, torn=None):
        p = os.path.abspath(os.fspath(path))
        if not p.startswith(out):
            return
        count[0] += 1
        with REAL["open"](events_file, "a") as f:
            f.write(json.dumps([count[0], kind, os.path.relpath(p, out)]) + "\n")
        if count[0] == kill_at:
            if torn is not None:
                torn()
            os.kill(os.getpid(), signal.SIGKILL)

    class Writer:
        def __init__(self, f, path):
            self._f, self._path = f, path

        def write(self, data):
            event("write", self._path)
            return self._f.write(data)

        def __getattr__(self, name):
            return getattr(self._f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self._f.__exit__(*exc)

    def open_(file, mode="r", *a, **kw):
        f = REAL["open"](file, mode, *a, **kw)
        if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+"):
            event("open", file)
            return Writer(f, file)
        return f

    def os_open(path, flags, *a, **kw):
        if flags & (os.O_WRONLY | os.O_RDWR):
            event("os.open", path)
        return REAL["os.open"](path, flags, *a, **kw)

    def one(name):
        def call(path, *a, **kw):
            event(name, path)
            return REAL[name](path, *a, **kw)
        return call

    def safe_save_file(tensors, filename, *a, **kw):
        event("safetensors", filename)
        REAL["safetensors"](tensors, filename, *a, **kw)
        event("safetensors-torn", filename, lambda: os.truncate(filename, os.path.getsize(filename) // 2))

    builtins.open = io.open = open_
    os.open = os_open
    for name in ("rename", "replace", "mkdir", "unlink"):
        setattr(os, name, one(name))
    shutil.rmtree = one("rmtree")
    mu.safe_save_file = safe_save_file


def child(out, argv, kill_at=0, events_file=None):
    """-SIGKILL if the run was killed, else its exit status."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            if events_file:
                install(out, kill_at, events_file)
            m3ref.train.main(argv + ["--output-dir", out])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


spec = json.loads(sys.argv[1])
root = spec["root"]
summary = {"reference": child(os.path.join(root, "reference"), spec["argv"], 0, os.path.join(root, "reference.events"))}
with REAL["open"](os.path.join(root, "reference.events")) as f:
    events = [json.loads(line) for line in f]
points = []  # one point per operation: a file's many write() calls count once, at the middle one
for i, e in enumerate(events):
    if e[1] != "write":
        points.append(e)
    elif i == 0 or events[i - 1][1:] != e[1:]:  # the first of a run of write() calls into one file
        end = i
        while end < len(events) and events[end][1:] == e[1:]:
            end += 1
        points.append(events[(i + end) // 2])
groups = {}  # init, checkpoint-1, final: the points of each directory's write (its temporary name too)
for e in points:
    name = re.match(r"(?:\.tmp-|\.old-)?([^/]+)", e[2]).group(1)
    groups.setdefault(name, []).append(e)
rng = random.Random(spec["seed"])
summary["points"] = {g: len(v) for g, v in groups.items()}
summary["trials"] = []
for group, n in spec["trials"].items():
    for event in sorted(rng.sample(groups[group], n)):
        i = len(summary["trials"])
        out = os.path.join(root, f"trial-{i}")
        status = child(out, spec["argv"], event[0], os.path.join(root, f"trial-{i}.events"))
        resumed = child(out, spec["argv"] + ["--resume", "auto"])  # what a requeue script runs
        summary["trials"].append({"group": group, "event": event, "out": out, "status": status,
                                  "resumed": resumed})
with REAL["open"](os.path.join(root, "summary.json"), "w") as f:
    json.dump(summary, f)
'''


@pytest.mark.slow
def test_sigkill_during_the_init_and_checkpoint_writes_then_resume_auto(tmp_path):
    """`python -m m3ref.train` on the tiny config (model: null, so it writes OUTPUT_DIR/init;
    2 steps, checkpoint-1 and final), SIGKILLed at 2 seeded points of the init model's write
    and 1 of each checkpoint's; each time the next `--resume auto` ends with the uninterrupted run's losses
    and heads, and leaves no temporary directory behind."""
    cfg = tiny_config(tmp_path / "run.yaml", tmp_path / "unused", model=None, max_steps=2)
    spec = {"root": str(tmp_path), "argv": ["--config", str(cfg)], "seed": 17,
            "trials": {"init": 2, "checkpoint-1": 1, "final": 1}}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-c", KILLER, json.dumps(spec)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["reference"] == 0, proc.stderr[-3000:]
    assert all(summary["points"][d] >= 10 for d in ("init", "checkpoint-1", "final")), summary["points"]
    reference = tmp_path / "reference"
    for trial in summary["trials"]:
        assert trial["status"] == -9 and trial["resumed"] == 0, trial  # killed at that write; resumed
        out = Path(trial["out"])
        same_as_reference(out, reference)
        assert not (out / "init").exists() or sorted(os.listdir(out / "init")) == sorted(os.listdir(reference / "init"))
