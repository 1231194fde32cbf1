"""m3-mini, the small M3 the book demonstrates on (data_samples/m3-mini): small enough to ship,
in the official layout, trained with the recipe it records, read alike by the three loaders,
and retrieving better than chance where the book says it does."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from m3ref import M3Model
from m3ref.tiny import MINI_DIR

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "experiments"))
import run_experiments as R  # noqa: E402
MINI = Path(MINI_DIR)
DEMO = ROOT / "data_samples" / "demo" / "packages.jsonl"
STAGES = {"dense_mono": "dense", "dense": "dense", "m3": "unified"}  # recipe.json stage -> configs/m3-mini/
TEXTS = ["lossless audio compression", "Bildbetrachter für die Kommandozeile", "テキストエディタ",
         "утилита для резервного копирования", ""]


@pytest.fixture(scope="module")
def mini():
    return M3Model.from_pretrained(str(MINI), device="cpu")


def test_small_enough_to_ship_and_stored_in_half_precision():
    from safetensors import safe_open
    size = sum(f.stat().st_size for f in MINI.rglob("*") if f.is_file())
    assert size < 25 * 2**20, f"m3-mini is {size / 2**20:.1f} MiB"
    with safe_open(MINI / "model.safetensors", "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {__import__("torch").float16}
    # loaders read it as float32
    assert json.loads((MINI / "config.json").read_text())["torch_dtype"] == "float32"


def test_the_official_layout():
    for name in ("config.json", "model.safetensors", "tokenizer.json", "colbert_linear.pt", "sparse_linear.pt",
                 "modules.json", "1_Pooling/config.json", "recipe.json"):
        assert (MINI / name).is_file(), name


def test_trained_with_the_recipe_it_records():
    """Every hyper-parameter of configs/m3-mini/<stage>.yaml, with the overrides of its experiment
    (configs/experiments/<stage>.yaml, `train`), is what the shipped model's stage ran with."""
    recipe = json.loads((MINI / "recipe.json").read_text())
    assert list(recipe["stages"]) == list(STAGES)
    for stage, config in STAGES.items():
        ran = recipe["stages"][stage]["train_config"]
        experiment = yaml.safe_load((ROOT / "configs" / "experiments" / f"{stage}.yaml").read_text())
        assert recipe["stages"][stage]["experiment"] == experiment, stage
        assert experiment["recipe"] == config, stage
        want = R.recipe_values(stage, experiment)  # the recipe file with the experiment's overrides
        for key, value in want.items():
            if key.endswith("data"):  # corpus paths, resolved against the corpus directory
                continue
            if key == "m3":
                assert {k: ran["m3"][k] for k in value} == value, stage
            elif isinstance(value, dict):
                assert {int(k): v for k, v in ran[key].items()} == value, (stage, key)
            else:
                assert ran[key] == value, (stage, key, ran[key], value)


@pytest.mark.parity
def test_flagembedding_and_sentence_transformers_read_it_alike(mini):
    from FlagEmbedding import BGEM3FlagModel
    from sentence_transformers import SentenceTransformer
    ours = mini.encode(TEXTS)
    theirs = BGEM3FlagModel(str(MINI), use_fp16=False, devices="cpu").encode(
        TEXTS, return_dense=True, return_sparse=True, return_colbert_vecs=True)
    assert np.abs(ours.dense - theirs["dense_vecs"]).max() < 1e-5
    for x, y in zip(ours.sparse, theirs["lexical_weights"]):
        assert {str(k) for k in x} == set(y) and max([abs(x[int(k)] - v) for k, v in y.items()], default=0) < 1e-5
    for x, y in zip(ours.colbert, theirs["colbert_vecs"]):
        assert x.shape == y.shape and np.abs(x - y).max() < 1e-5
    st = SentenceTransformer(str(MINI), device="cpu").encode(TEXTS)
    assert np.abs(ours.dense - st).max() < 1e-5


def _precision_at_1(scores: np.ndarray) -> float:
    return float((scores.argmax(1) == np.arange(len(scores))).mean())


@pytest.mark.parametrize("head", ["dense", "lexical"])
def test_its_heads_retrieve_english_descriptions(mini, head):
    """On the 24 demo packages (not in the training data), an English summary finds its English
    description at three times chance or better, with the dense score (paper Eq. 1) and with the
    lexical score (Eq. 2); the untrained model's does worse. Chapter 12 measures every head with
    intervals on hundreds of held-out queries; 24 queries only show that a head works at all."""
    from m3ref.book import load_model
    from m3ref.scores import lexical_match
    packages = [json.loads(line) for line in DEMO.read_text(encoding="utf-8").splitlines()]
    queries = [p["en"]["summary"] for p in packages]
    passages = [p["en"]["description"] for p in packages]
    chance = 1 / len(packages)

    def scores(model):
        q, p = model.encode(queries), model.encode(passages)
        if head == "dense":
            return q.dense @ p.dense.T
        return np.array([[lexical_match(a, b) for b in p.sparse] for a in q.sparse])

    trained = _precision_at_1(scores(mini))
    assert trained >= 3 * chance, trained
    assert trained > _precision_at_1(scores(load_model("untrained")))


def _card_tables() -> list:
    """The markdown tables of the model card that hold evaluation figures: [{(row, column): text}]."""
    tables, current = [], None
    for line in (MINI / "README.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else None
        if cells and cells[0] == "method":
            header, current = cells, {}
            tables.append(current)
        elif cells and current is not None and not set(cells[0]) <= {"-"}:
            current.update({(cells[0], col): text for col, text in zip(header[1:], cells[1:])})
        elif not cells:
            current = None
    return tables


def test_the_model_card_reports_the_stored_results():
    """Every figure of the card's two evaluation tables equals book/results/experiments.json."""
    results = json.loads((ROOT / "book" / "results" / "experiments.json").read_text())
    columns = {"MIRACL-like nDCG@10": ("miracl", "ndcg@10"), "MKQA-like Recall@20": ("mkqa", "success@20"),
               "MKQA-masked Recall@20": ("mkqa_masked", "success@20"), "MLDR-like nDCG@10": ("mldr", "ndcg@10")}
    rows = {"Dense": "dense", "Sparse": "sparse", "Multi-vec": "multivec", "Dense+Sparse": "dense+sparse",
            "All": "all", "BM25": "bm25"}
    tables = _card_tables()
    assert len(tables) == 2, "the card has the m3-mini table and the untrained table"
    for table, model in zip(tables, (results["runs"]["m3"]["0"]["eval"], results["untrained"])):
        assert {col for _, col in table} == set(columns)
        for (row, col), text in table.items():
            bench, metric = columns[col]
            if row == "chance":
                per_lang = results["chance"][bench].values()
                assert text == f"{100 * np.mean([v[metric] for v in per_lang]):.2f}", (row, col)
                continue
            source = results["untrained"] if rows[row] == "bm25" else model
            e = source[bench]
            low, high = e["ci"][rows[row]]["avg"][metric]
            expected = f"{100 * e['scores'][rows[row]]['avg'][metric]:.1f} [{100 * low:.1f}, {100 * high:.1f}]"
            assert text == expected, (row, col, text, expected)
