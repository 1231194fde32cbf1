"""Parity with the official implementation (PyPI FlagEmbedding) on the same tiny checkpoint.

Tolerances, as measured for an exact fp32 re-implementation: 1e-5 on vectors and inference
scores (SDPA against eager attention alone moves hidden states by 1.5e-5), 1e-3 on
temperature-scaled training scores (dividing by tau = 0.02 multiplies errors by 50), 1e-4
relative on losses.
"""
import copy

import numpy as np
import pytest
import torch

from m3ref import M3Config, M3Model
from m3ref.losses import group_targets

pytestmark = [pytest.mark.parity, pytest.mark.slow]

FlagEmbedding = pytest.importorskip("FlagEmbedding", reason="pip install -r requirements-test.txt")
# Five scripts, a literal special token, an empty text and one input of several thousand tokens.
TEXTS = ["What is the capital of France?", "Paris ist die Hauptstadt Frankreichs.", "中国的首都是北京。",
         "東京は日本の首都です。", "서울은 한국의 수도이다.", "القاهرة عاصمة مصر", "मुंबई भारत का शहर है",
         "Москва — столица России.", "", "The capital of France is <mask>.",
         " ".join(["Долгий документ о реках, горах и городах Европы."] * 400)]


@pytest.fixture(scope="module")
def both(tiny_dir):
    from FlagEmbedding import BGEM3FlagModel
    ours = M3Model.from_pretrained(tiny_dir, device="cpu")
    theirs = BGEM3FlagModel(tiny_dir, use_fp16=False, devices="cpu")
    return ours, theirs


def test_the_long_input_really_is_long(both):
    assert len(both[0].tokenize(TEXTS[-1:], 8192)[0]) > 3000


def official_encode(theirs, texts):
    """FlagEmbedding's encode, the long text in its own call: its batches pad every text to
    the longest one, which costs minutes on a 2-core CPU and changes nothing per text."""
    kw = dict(max_length=8192, return_dense=True, return_sparse=True, return_colbert_vecs=True)
    short, long = theirs.encode(texts[:-1], **kw), theirs.encode(texts[-1:], **kw)
    return {"dense_vecs": np.concatenate([short["dense_vecs"], long["dense_vecs"]]),
            **{k: short[k] + long[k] for k in ("lexical_weights", "colbert_vecs")}}


def test_encode_matches(both):
    ours, theirs = both
    a = ours.encode(TEXTS, max_length=8192)
    b = official_encode(theirs, TEXTS)
    assert np.abs(a.dense - b["dense_vecs"]).max() < 1e-5
    for x, y in zip(a.sparse, b["lexical_weights"]):
        assert {str(k) for k in x} == set(y)  # official keys are str(token id)
        assert max([abs(x[int(k)] - v) for k, v in y.items()], default=0) < 1e-5
    for x, y in zip(a.colbert, b["colbert_vecs"]):
        assert x.shape == y.shape and np.abs(x - y).max() < 1e-5


def test_lexical_matching_score_matches(both):
    from m3ref.scores import lexical_match
    ours, theirs = both
    w = theirs.encode(TEXTS[:4], return_dense=False, return_sparse=True)["lexical_weights"]
    ours_w = ours.encode(TEXTS[:4]).sparse
    for i in range(4):
        for j in range(4):
            want = float(theirs.compute_lexical_matching_score(w[i], w[j]))
            assert lexical_match(ours_w[i], ours_w[j]) == pytest.approx(want, abs=1e-6)


def test_compute_score_matches_with_the_official_colbert_switch(both):
    ours, theirs = both
    weights = (0.4, 0.2, 0.4)
    # one batch of short pairs (padding matters to the official ColBERT max), the long pair alone
    for pairs in ([(TEXTS[0], t) for t in TEXTS[1:-1]] + [("What is the capital of France?", "中国")],
                  [(TEXTS[7], TEXTS[-1])]):
        a = ours.compute_score(pairs, weights=weights, colbert_max_over_padding=True, max_passage_length=8192)
        b = theirs.compute_score(pairs, weights_for_different_modes=list(weights), max_passage_length=8192)
        for key in b:
            assert np.abs(np.array(a[key]) - np.array(b[key])).max() < 1e-5, key


def test_default_colbert_is_the_definition_which_is_the_official_per_pair_scorer(both):
    ours, theirs = both
    pairs = [(TEXTS[0], t) for t in TEXTS[1:8]]
    a = ours.compute_score(pairs)
    enc = theirs.encode([p for pair in pairs for p in pair], return_dense=False, return_colbert_vecs=True)
    vecs = enc["colbert_vecs"]
    want = [float(theirs.colbert_score(vecs[2 * i], vecs[2 * i + 1])) for i in range(len(pairs))]
    assert np.abs(np.array(a["colbert"]) - np.array(want)).max() < 1e-5


def official_training_model(ours, **kwargs):
    """FlagEmbedding's M3 training model holding copies of the same weights."""
    from FlagEmbedding.finetune.embedder.encoder_only.m3.modeling import EncoderOnlyEmbedderM3Model
    base = {"model": copy.deepcopy(ours.encoder), "colbert_linear": copy.deepcopy(ours.colbert_linear),
            "sparse_linear": copy.deepcopy(ours.sparse_linear)}
    args = dict(temperature=0.02, normalize_embeddings=True, unified_finetuning=True, use_self_distill=True,
                self_distill_start_step=-1, sentence_pooling_method="cls")
    args.update(kwargs)
    model = EncoderOnlyEmbedderM3Model(base, tokenizer=ours.tokenizer, **args)
    return model.train()


QUERIES = ["What is the capital of France?", "中国的首都是哪里？", "Какая столица России?"]
GROUPS = [["Paris is the capital of France.", "Lyon is a city.", "Le vin est bon."],
          ["北京是中国的首都。", "上海是大城市。", "长江很长。"],
          ["Москва — столица России.", "Волга — река.", "Сибирь большая."]]


def tokenize(tok, texts, n):
    return tok(texts, padding=True, truncation=True, max_length=n, return_tensors="pt")


# The trainer calls training_loss with split-batch settings: parity holds on that path too.
TRAINER_PATH = {"sub_batch_size": 2, "checkpoint_sub_batches": True}


@pytest.mark.parametrize("path", [{}, TRAINER_PATH], ids=["one_pass", "trainer_path"])
@pytest.mark.parametrize("teacher,kd", [(None, "m3_kd_loss"), ([[1.0, 0.2, -0.5]] * 3, "m3_kd_loss"),
                                        ([[0.9, 0.4, 0.1]] * 3, "kl_div")])
def test_training_loss_matches_the_official_training_model(tiny_dir, teacher, kd, path):
    ours = M3Model.from_pretrained(tiny_dir, device="cpu")
    theirs = official_training_model(ours, kd_loss_type=kd)
    ours.train()  # training mode, dropout off in both models for an exact comparison
    for m in list(ours.modules()) + list(theirs.modules()):
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    cfg = M3Config(colbert_max_over_padding=True, kd_loss_type=kd)  # the official scorer's max over padding
    out = ours.training_loss(QUERIES, GROUPS, cfg, max_query_length=32, max_passage_length=48,
                             teacher_scores=teacher, **path)
    q = tokenize(ours.tokenizer, QUERIES, 32)
    p = tokenize(ours.tokenizer, [t for g in GROUPS for t in g], 48)
    flat_teacher = None if teacher is None else [x for row in teacher for x in row]
    loss = theirs(queries=q, passages=p, teacher_scores=flat_teacher).loss
    assert out["L_final"].item() == pytest.approx(loss.item(), rel=1e-4)
    # the individual scores, from the official scoring functions
    qd, qs, qc = theirs.encode(q)
    pd, ps, pc = theirs.encode(p)
    want = {"s_dense": theirs.compute_dense_score(qd, pd), "s_lex": theirs.compute_sparse_score(qs, ps),
            "s_mul": theirs.compute_colbert_score(qc, pc, q_mask=q["attention_mask"])}
    want["s_inter"] = theirs.ensemble_score(None, None, want["s_dense"], want["s_lex"], want["s_mul"])
    for key, value in want.items():
        assert torch.allclose(out[key], value, atol=1e-3), key
    if teacher is None:
        t = group_targets(3, 3)
        for key, name in (("L_dense", "s_dense"), ("L_lex", "s_lex"), ("L_mul", "s_mul"), ("L_inter", "s_inter")):
            ref = torch.nn.functional.cross_entropy(want[name], t)
            assert out[key].item() == pytest.approx(ref.item(), rel=1e-4), key


def test_official_preset_differs_from_paper_preset_only_in_l_prime(tiny_dir):
    ours = M3Model.from_pretrained(tiny_dir, device="cpu")
    a = ours.training_loss(QUERIES, GROUPS, M3Config.official(), max_query_length=32, max_passage_length=48)
    b = ours.training_loss(QUERIES, GROUPS, M3Config.paper(), max_query_length=32, max_passage_length=48)
    assert a["L"].item() == pytest.approx(b["L"].item(), rel=1e-6)
    assert b["L_prime"].item() == pytest.approx(3 * a["L_prime"].item(), rel=1e-5)


def test_a_checkpoint_saved_by_m3ref_loads_in_flagembedding(tiny_dir, tmp_path):
    from FlagEmbedding import BGEM3FlagModel
    ours = M3Model.from_pretrained(tiny_dir, device="cpu")
    with torch.no_grad():  # make the weights differ from the fixture's, so loading is tested
        ours.sparse_linear.bias.add_(0.5)
        ours.colbert_linear.weight.mul_(-1)
    ours.save_pretrained(tmp_path / "saved")
    theirs = BGEM3FlagModel(str(tmp_path / "saved"), use_fp16=False, devices="cpu")
    a = ours.encode(TEXTS[:6])
    b = theirs.encode(TEXTS[:6], return_dense=True, return_sparse=True, return_colbert_vecs=True)
    assert np.abs(a.dense - b["dense_vecs"]).max() < 1e-5
    assert all(np.abs(x - y).max() < 1e-5 for x, y in zip(a.colbert, b["colbert_vecs"]))
    assert all({str(k) for k in x} == set(y) for x, y in zip(a.sparse, b["lexical_weights"]))


def test_a_checkpoint_saved_by_flagembedding_loads_in_m3ref(tiny_dir, tmp_path):
    ours = M3Model.from_pretrained(tiny_dir, device="cpu")
    theirs = official_training_model(ours)
    with torch.no_grad():  # weights that differ from the fixture's
        theirs.sparse_linear.bias.add_(0.25)
        theirs.colbert_linear.weight.mul_(-1)
    theirs.save(str(tmp_path / "official"))  # FlagEmbedding's own writer (the trainer adds the tokenizer)
    ours.tokenizer.save_pretrained(tmp_path / "official")
    loaded = M3Model.from_pretrained(tmp_path / "official", device="cpu")
    assert torch.equal(loaded.sparse_linear.bias, theirs.sparse_linear.bias)
    from FlagEmbedding import BGEM3FlagModel
    reference = BGEM3FlagModel(str(tmp_path / "official"), use_fp16=False, devices="cpu")
    a = loaded.encode(TEXTS[:6])
    b = reference.encode(TEXTS[:6], return_dense=True, return_sparse=True, return_colbert_vecs=True)
    assert np.abs(a.dense - b["dense_vecs"]).max() < 1e-5
    assert all(np.abs(x - y).max() < 1e-5 for x, y in zip(a.colbert, b["colbert_vecs"]))
