"""m3ref where users already are (issue #16): sentence-transformers reads m3ref's checkpoints and
gets m3ref's dense vectors; the tokenizer of a checkpoint loads in the oldest transformers the
requirements allow; `pip install` of the wheel into a fresh virtual environment works from any
directory (shipped configs and samples, console scripts); the declared dependencies agree."""
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import warnings
from pathlib import Path

import numpy as np
import pytest

from m3ref import M3Config, M3Model
from m3ref.errors import M3Warning

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["What is BGE-M3?", "Ein längerer deutscher Satz über Katzen, Hunde und das Wetter am Meer.", "短い文",
         "مرحبا بالعالم", "the speed of light in a vacuum is about 300000 km/s"]
pytestmark = pytest.mark.usefixtures("one_thread")


def _sentence_transformers_vectors(path, texts=TEXTS):
    from sentence_transformers import SentenceTransformer
    return SentenceTransformer(str(path), device="cpu").encode(texts, batch_size=2)


# ------------------------------------------------------------------ the files sentence-transformers reads
def test_save_pretrained_writes_the_sentence_transformers_files(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "m")
    d = tmp_path / "m"
    modules = json.loads((d / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling", "Normalize"]
    pooling = json.loads((d / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_cls_token"] and not pooling["pooling_mode_mean_tokens"]
    assert pooling["word_embedding_dimension"] == 128
    assert json.loads((d / "sentence_bert_config.json").read_text())["max_seq_length"] == tiny_model.max_length == 8192
    # transformers 4.x knows no "TokenizersBackend" (the class transformers 5 writes)
    assert json.loads((d / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"


def test_pooling_and_normalisation_round_trip_and_disagreement_warns(tiny_dir, tmp_path):
    with pytest.warns(M3Warning, match="the config is used"):  # tiny_dir declares M3's CLS + normalisation
        mean = M3Model.from_pretrained(tiny_dir, device="cpu",
                                       config=M3Config(pooling="mean", normalize_embeddings=False))
    mean.save_pretrained(tmp_path / "mean")
    assert "Normalize" not in (tmp_path / "mean" / "modules.json").read_text()
    again = M3Model.from_pretrained(tmp_path / "mean", device="cpu")  # no config: the directory's declaration
    assert (again.config.pooling, again.config.normalize_embeddings) == ("mean", False)
    np.testing.assert_allclose(again.encode(TEXTS[:2]).dense, mean.encode(TEXTS[:2]).dense, atol=1e-5)
    with pytest.warns(M3Warning, match=r"declare \{'pooling': 'mean', 'normalize_embeddings': False\}, the config "
                                       r"says pooling='cls'"):
        M3Model.from_pretrained(tmp_path / "mean", device="cpu", config=M3Config())


def test_dense_pooling_options_by_hand(tiny_model):
    """cls / mean / last_token over the real tokens of a padded batch, normalised or not."""
    import torch
    texts = ["a b c d e f", "a"]
    batch = tiny_model.collate(tiny_model.tokenize(texts, 64))
    with torch.no_grad():
        hidden = tiny_model.encoder(**batch).last_hidden_state
    mask = batch["attention_mask"]
    n = mask.sum(1)
    want = {"cls": hidden[:, 0], "mean": torch.stack([hidden[i, :n[i]].mean(0) for i in range(2)]),
            "last_token": torch.stack([hidden[i, n[i] - 1] for i in range(2)])}
    for pooling, vector in want.items():
        for normalize in (True, False):
            tiny_model.config = M3Config(pooling=pooling, normalize_embeddings=normalize)
            got = tiny_model.dense_vector(hidden, None, mask)
            expect = torch.nn.functional.normalize(vector, dim=-1) if normalize else vector
            torch.testing.assert_close(got, expect)
            np.testing.assert_allclose(tiny_model.encode(texts).dense, expect.numpy(), atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("pooling,normalize", [("cls", True), ("mean", False), ("last_token", True)])
def test_sentence_transformers_gives_m3refs_dense_vectors_tiny(tiny_dir, tmp_path, pooling, normalize):
    with warnings.catch_warnings():  # tiny_dir declares CLS + normalisation; this config may differ
        warnings.simplefilter("ignore", M3Warning)
        model = M3Model.from_pretrained(tiny_dir, device="cpu",
                                        config=M3Config(pooling=pooling, normalize_embeddings=normalize))
    model.save_pretrained(tmp_path / "m")
    np.testing.assert_allclose(_sentence_transformers_vectors(tmp_path / "m"), model.encode(TEXTS).dense, atol=1e-5)


@pytest.mark.slow
def test_sentence_transformers_files_survive_load_train_save(tiny_dir, tmp_path):
    """A checkpoint with sentence-transformers files (prompts in config_sentence_transformers.json)
    goes through a 2-step m3ref.train run: final/ has the files, the prompts, and
    SentenceTransformer(final) encodes as M3Model(final).encode(...).dense, to 1e-5."""
    from m3ref.train import main
    start = tmp_path / "start"
    M3Model.from_pretrained(tiny_dir, device="cpu").save_pretrained(start)
    st_config = json.loads((start / "config_sentence_transformers.json").read_text())
    st_config["prompts"] = {"query": "query: ", "passage": "passage: "}
    (start / "config_sentence_transformers.json").write_text(json.dumps(st_config))
    out = tmp_path / "run"
    main(["--config", "tiny", "--model", str(start), "--output_dir", str(out), "--max_steps", "2",
          "--save_every", "0"])
    final = out / "final"
    assert json.loads((final / "config_sentence_transformers.json").read_text())["prompts"]["query"] == "query: "
    trained = M3Model.from_pretrained(final, device="cpu")
    ours = trained.encode(TEXTS).dense
    assert not np.allclose(ours, M3Model.from_pretrained(start, device="cpu").encode(TEXTS).dense, atol=1e-4)
    np.testing.assert_allclose(_sentence_transformers_vectors(final), ours, atol=1e-5)


# ------------------------------------------------------------------ shipped files
def test_assets_are_found_and_local_files_win(tmp_path, monkeypatch):
    from m3ref.assets import asset, find_asset, resolve_path, shipped_config, shipped_configs
    assert (asset("data_samples/tokenizer") / "tokenizer.json").is_file()
    assert {"tiny", "bge-m3-gpu", "bge-m3-paper-gpu"} <= set(shipped_configs())
    assert shipped_config("tiny") == shipped_config("tiny.yaml") == asset("configs/tiny.yaml")
    assert find_asset("data_samples/no-such") is None
    monkeypatch.chdir(tmp_path)
    assert resolve_path("data_samples/eval") == str(asset("data_samples/eval"))
    assert resolve_path("elsewhere/eval") == "elsewhere/eval" and resolve_path(None) is None
    (tmp_path / "data_samples" / "eval").mkdir(parents=True)
    assert resolve_path("data_samples/eval") == "data_samples/eval"
    from m3ref.errors import M3Error
    with pytest.raises(M3Error, match="data_samples/no-such: not shipped with this m3ref"):
        asset("data_samples/no-such")


def _requirements(text: str) -> dict:
    """{name: specifier} of requirement lines (comments, -r and blank lines skipped)."""
    out = {}
    for line in text.splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            m = re.match(r"([A-Za-z0-9_.-]+)\s*(.*)", line)
            out[m.group(1).lower().replace("_", "-")] = m.group(2).replace(" ", "")
    return out


def test_declared_dependencies_agree():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = _requirements("\n".join(project["dependencies"]))
    pinned = _requirements((ROOT / "requirements.txt").read_text())
    book = _requirements("\n".join(project["optional-dependencies"]["book"]))
    assert set(pinned) == set(runtime) | set(book)
    for name, spec in runtime.items():
        if name != "torch":  # requirements.txt pins the CPU wheel of these machines
            assert pinned[name] == spec, name
    assert pinned["torch"] == "==2.13.0" and runtime["torch"] == ">=2.13"
    test = _requirements("\n".join(project["optional-dependencies"]["test"]))
    assert test == {k: v for k, v in _requirements((ROOT / "requirements-test.txt").read_text()).items()}
    assert set(project["optional-dependencies"]) == {"book", "test", "faiss", "tensorboard"}
    assert project["scripts"] == {"m3ref-train": "m3ref.train:main", "m3ref-evaluate": "m3ref.evaluate:main"}
    import m3ref
    assert re.fullmatch(r"\d+\.\d+\.\d+", m3ref.__version__) and (ROOT / "LICENSE").is_file()


# ------------------------------------------------------------------ the wheel in a fresh virtual environment
# The oldest version of every runtime dependency that pyproject.toml allows (its lower bounds),
# plus what they need to import together on Python 3.11.
OLDEST = ["torch==2.13.0", "transformers==4.45.0", "tokenizers==0.20.0", "datasets==3.0.0", "pyarrow==16.0.0",
          "safetensors==0.4.1", "huggingface_hub==0.24.0", "numpy==2.0.0", "scipy==1.13.0", "tqdm==4.66.3",
          "pyyaml==6.0.1", "pytrec-eval-terrier==0.5.6", "bm25s==0.2.0"]


def _run(cmd, cwd, env=None, timeout=600):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory):
    """The wheel built from this checkout, installed with the oldest allowed dependencies into a
    virtual environment that sees no other site-packages. Skips when pip reaches no index."""
    root = tmp_path_factory.mktemp("package")
    probe = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--dest", str(root / "probe"),
                            "pyyaml==6.0.1"], capture_output=True, text=True, timeout=180)
    if probe.returncode != 0:
        pytest.skip(f"pip cannot reach a package index: {probe.stderr.strip().splitlines()[-1:]}")
    src = root / "src"  # a copy of the tracked and new files: the build leaves nothing in the checkout
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file() and not name.startswith(("book/", "benchmarks/")):
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(root / "dist"),
          str(src)], cwd=root)
    wheel = next((root / "dist").glob("m3ref-*.whl"))
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=root)
    assert "include-system-site-packages = false" in (venv / "pyvenv.cfg").read_text()
    _run([venv / "bin" / "python", "-m", "pip", "install", "-q", str(wheel), *OLDEST], cwd=root, timeout=900)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    return {"root": root, "venv": venv, "env": env, "wheel": wheel}


@pytest.mark.slow
def test_the_wheel_installs_and_runs_outside_the_repository(fresh_venv):
    """From a directory with nothing in it: import m3ref (from the venv, not the checkout), build
    the tiny model, `m3ref-train --config tiny` 2 steps, `m3ref-evaluate` on the shipped sample."""
    venv, env, work = fresh_venv["venv"], fresh_venv["env"], fresh_venv["root"] / "work"
    work.mkdir()
    python = str(venv / "bin" / "python")
    proc = _run([python, "-c", "import m3ref, transformers; from m3ref.assets import asset; "
                               "print(m3ref.__file__, transformers.__version__, asset('configs/tiny.yaml'))"], work, env)
    where, version, config = proc.stdout.split()
    assert where.startswith(str(venv)) and version == "4.45.0" and config.startswith(str(venv))
    # model: null builds the tiny model (shipped tokenizer) into runs/init, then 2 steps on the shipped samples
    _run(["m3ref-train", "--config", "tiny", "--output_dir", "runs", "--max_steps", "2"], work, env)
    assert (work / "runs" / "init" / "sparse_linear.pt").is_file() and (work / "runs" / "final" / "modules.json").is_file()
    proc = _run(["m3ref-evaluate", "--model", "runs/final", "--data", "data_samples/eval", "--benchmark", "miracl",
                 "--langs", "en", "--methods", "dense,sparse,bm25"], work, env)
    assert re.search(r"^Dense\s+\d+\.\d", proc.stdout, re.M) and re.search(r"^BM25\s+\d+\.\d", proc.stdout, re.M)
    assert not (work / "data_samples").exists()


@pytest.mark.slow
def test_a_checkpoint_saved_here_loads_in_the_oldest_transformers(fresh_venv, tiny_model, tmp_path):
    """A checkpoint saved with this environment's transformers (5.x) loads in transformers 4.45
    (the oldest allowed): the same token ids and the same dense, lexical and ColBERT outputs."""
    tiny_model.save_pretrained(tmp_path / "ckpt")
    ours = tiny_model.encode(TEXTS)
    ids = tiny_model.tokenizer(TEXTS)["input_ids"]
    script = ("import json, sys; from transformers import AutoTokenizer; from m3ref import M3Model\n"
              "d = sys.argv[1]; t = AutoTokenizer.from_pretrained(d); m = M3Model.from_pretrained(d, device='cpu')\n"
              "out = m.encode(json.loads(sys.argv[2]))\n"
              "print(json.dumps({'ids': t(json.loads(sys.argv[2]))['input_ids'], 'dense': out.dense.tolist(), "
              "'sparse': [{str(k): v for k, v in s.items()} for s in out.sparse], "
              "'colbert': [c.tolist() for c in out.colbert]}))")
    proc = _run([str(fresh_venv["venv"] / "bin" / "python"), "-c", script, str(tmp_path / "ckpt"), json.dumps(TEXTS)],
                tmp_path, fresh_venv["env"])
    theirs = json.loads(proc.stdout.strip().splitlines()[-1])
    assert theirs["ids"] == ids
    np.testing.assert_allclose(np.array(theirs["dense"]), ours.dense, atol=1e-5)
    for a, b in zip(theirs["sparse"], ours.sparse):
        assert set(a) == {str(k) for k in b} and all(abs(a[str(k)] - v) < 1e-5 for k, v in b.items())
    for a, b in zip(theirs["colbert"], ours.colbert):
        np.testing.assert_allclose(np.array(a), b, atol=1e-5)
