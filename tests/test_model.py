"""M3Model: encode, compute_score, training_loss, MCLS, checkpoints and bad input."""
import os
import shutil
import warnings

import numpy as np
import pytest
import torch

from m3ref import M3Config, M3Error, M3Model

TEXTS = ["What is the capital of France?", "Paris ist die Hauptstadt.", "中国的首都是北京", "", "東京"]


def test_encode_types_shapes_and_input_order(tiny_model):
    out = tiny_model.encode(TEXTS, batch_size=2)
    assert out.dense.dtype == np.float32 and out.dense.shape == (5, 128)
    assert np.allclose(np.linalg.norm(out.dense, axis=1), 1.0, atol=1e-5)
    assert all(isinstance(k, int) and v > 0 for d in out.sparse for k, v in d.items())
    assert out.sparse[3] == {}  # "" -> <s> </s>: no lexical terms
    assert out.colbert[3].shape == (1, 128)  # only </s> after [CLS]
    for i, text in enumerate(TEXTS):  # sorting by length must not change what each text gets
        alone = tiny_model.encode(text)
        assert np.allclose(alone.dense, out.dense[i], atol=1e-5)
        assert alone.sparse.keys() == out.sparse[i].keys()
        assert np.allclose(alone.colbert, out.colbert[i], atol=1e-5)


def test_encode_of_nothing_and_of_non_strings(tiny_model):
    empty = tiny_model.encode([])
    assert empty.dense.shape == (0, 128) and empty.sparse == [] and empty.colbert == []
    with pytest.raises(M3Error, match=r"texts\[1\] is a int"):
        tiny_model.encode(["ok", 3])
    with pytest.raises(M3Error, match="must be a string or a list"):
        tiny_model.encode(None)
    with pytest.raises(M3Error, match="batch_size"):
        tiny_model.encode(["a"], batch_size=0)


@pytest.mark.slow
def test_long_texts_are_truncated_with_one_warning(tiny_model):
    long = "Москва — столица России. " * 300
    with pytest.warns(UserWarning, match="1 of 2 texts were longer than max_length=64"):
        out = tiny_model.encode([long, "short"], max_length=64)
    assert out.colbert[0].shape[0] == 63  # 64 tokens minus [CLS]
    with pytest.raises(M3Error, match="max_length=9000 is outside 2..8192"):
        tiny_model.tokenize(["x"], max_length=9000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tiny_model.encode(long, max_length=8192).colbert.shape[0] < 8191


def test_tokenize_and_collate_match_the_tokenizers_own_padding(tiny_model):
    # the fast path (`encode_batch_fast`) gives the ids `tokenizer(texts)` gives
    texts = TEXTS + ["Москва — столица России. " * 40, "a\u0301 \u00e9 ＡＢＣ\t\n x"]
    seqs = tiny_model.tokenize(texts, max_length=8192)
    tok = tiny_model.tokenizer
    assert seqs == tok(texts)["input_ids"]
    batch = tiny_model.collate(seqs)
    ref = tok(texts, padding=True, return_tensors="pt")
    assert torch.equal(batch["input_ids"], ref["input_ids"])
    assert torch.equal(batch["attention_mask"], ref["attention_mask"])
    # a tokenizer file that truncates by itself: the fast path steps aside, nothing is cut
    backend = tok.backend_tokenizer
    backend.enable_truncation(4)
    try:
        assert tiny_model.tokenize(texts[-2:], max_length=8192)[0] == seqs[-2]
    finally:
        backend.no_truncation()


@pytest.mark.slow
def test_mcls_reduces_to_cls_for_short_texts_and_matches_a_reference(tiny_model):
    short = "A short sentence."
    assert np.allclose(tiny_model.encode(short, mcls_stride=256).dense, tiny_model.encode(short).dense, atol=1e-6)
    text = " ".join(["Das ist ein langer Text über Flüsse und Berge."] * 40)
    stride = 16
    # reference: insert <s> before every `stride` content tokens, mean of those hidden states
    content = tiny_model.tokenizer(text, add_special_tokens=False)["input_ids"]
    seq = []
    for i in range(0, len(content), stride):
        seq += [0] + content[i:i + stride]
    seq += [2]
    ids = torch.tensor([seq])
    with torch.no_grad():
        hidden = tiny_model.encoder(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[0]
    ref = torch.nn.functional.normalize(hidden[ids[0] == 0].mean(0), dim=-1).numpy()
    out = tiny_model.encode(text, mcls_stride=stride)
    assert np.allclose(out.dense, ref, atol=1e-5)
    assert out.colbert.shape[0] == len(content) + 1  # inserted [CLS] are not ColBERT vectors
    assert not np.allclose(out.dense, tiny_model.encode(text).dense, atol=1e-3)


def test_compute_score_single_pair_batch_and_weights(tiny_model):
    pairs = [("capital of France", "Paris ist die Hauptstadt."), ("中国", "中国的首都是北京")]
    many = tiny_model.compute_score(pairs, weights=(0.4, 0.2, 0.4))
    one = tiny_model.compute_score(pairs[1], weights=(0.4, 0.2, 0.4))
    assert set(many) == {"dense", "sparse", "colbert", "sparse+dense", "colbert+sparse+dense"}
    assert one["dense"] == pytest.approx(many["dense"][1], abs=1e-6)
    assert tiny_model.compute_score(list(pairs[1]))["dense"] == pytest.approx(one["dense"], abs=1e-7)
    d, s, c = (many[k][0] for k in ("dense", "sparse", "colbert"))
    assert many["sparse+dense"][0] == pytest.approx((0.2 * s + 0.4 * d) / 0.6, abs=1e-6)
    assert many["colbert+sparse+dense"][0] == pytest.approx(0.4 * c + 0.2 * s + 0.4 * d, abs=1e-6)
    enc = tiny_model.encode([p for pair in pairs for p in pair])
    assert many["dense"][0] == pytest.approx(float(enc.dense[0] @ enc.dense[1]), abs=1e-5)
    from m3ref.scores import lexical_match
    assert many["sparse"][1] == pytest.approx(lexical_match(enc.sparse[2], enc.sparse[3]), abs=1e-6)
    with pytest.raises(M3Error, match=r"pairs\[0\] is not"):
        tiny_model.compute_score(["just a string"])
    assert tiny_model.compute_score([])["dense"] == []


def test_training_loss_shapes_gradients_and_group_errors(tiny_model):
    tiny_model.train()
    queries = ["capital of France", "首都"]
    passages = [["Paris is the capital.", "Berlin is big."], ["北京是首都", "上海很大"]]
    out = tiny_model.training_loss(queries, passages, M3Config(), max_query_length=32, max_passage_length=32)
    for k in ("s_dense", "s_lex", "s_mul", "s_inter"):
        assert out[k].shape == (2, 4)
    for k in ("L_dense", "L_lex", "L_mul", "L_inter", "L", "L_prime", "L_final"):
        assert out[k].dim() == 0 and torch.isfinite(out[k])
    out["L_final"].backward()
    for name in ("encoder.embeddings.word_embeddings.weight", "colbert_linear.weight", "sparse_linear.weight"):
        grad = dict(tiny_model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    with pytest.raises(M3Error, match=r"passages\[1\] has 1 passages"):
        tiny_model.training_loss(queries, [passages[0], ["only one"]])
    with pytest.raises(M3Error, match="one passage group per query"):
        tiny_model.training_loss(queries, passages[:1])
    with pytest.raises(M3Error, match=r"passages\[0\] has 1"):
        tiny_model.training_loss(["q"], ["a bare string"])


def test_save_and_load_round_trip(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "copy")
    assert {"config.json", "colbert_linear.pt", "sparse_linear.pt", "tokenizer.json"} <= set(os.listdir(tmp_path / "copy"))
    again = M3Model.from_pretrained(tmp_path / "copy", device="cpu")
    a, b = tiny_model.encode(TEXTS), again.encode(TEXTS)
    assert np.array_equal(a.dense, b.dense) and a.sparse == b.sparse


def test_checkpoint_errors_name_the_path(tiny_dir, tmp_path):
    with pytest.raises(M3Error, match="no checkpoint directory at /nonexistent/model"):
        M3Model.from_pretrained("/nonexistent/model")
    with pytest.raises(M3Error, match="is a file"):
        M3Model.from_pretrained(os.path.join(tiny_dir, "config.json"))
    with pytest.raises(M3Error, match="has no config.json"):
        M3Model.from_pretrained(tmp_path)
    plain = tmp_path / "plain"
    shutil.copytree(tiny_dir, plain)
    os.remove(plain / "colbert_linear.pt")
    with pytest.raises(M3Error, match="has no colbert_linear.pt, so it is not an M3 checkpoint"):
        M3Model.from_pretrained(plain)
    fresh = M3Model.from_pretrained(plain, init_heads=True, device="cpu")
    assert fresh.colbert_linear.weight.shape == (128, 128)


def test_hub_ids_go_to_the_hub_and_fail_clearly_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(M3Error, match="cannot fetch 'BAAI/bge-m3' from the hub"):
        M3Model.from_pretrained("BAAI/bge-m3")


def test_length_batches_cap_padded_tokens():
    from m3ref.inference import length_batches
    # sorted longest first; budget 100 tokens: [60] alone (2*60 > 100), then [40, 30] (2*40 <= 100, 3*40 > 100)...
    assert length_batches([60, 40, 30, 10, 10, 10], batch_size=4, max_tokens=100) == [(0, 1), (1, 3), (3, 6)]
    assert length_batches([5] * 5, batch_size=2, max_tokens=1000) == [(0, 2), (2, 4), (4, 5)]
    assert length_batches([9000], batch_size=8, max_tokens=100) == [(0, 1)]  # a long text still gets a batch


@pytest.mark.slow
def test_the_shipped_tokenizer_is_current_and_loads_the_same_everywhere():
    import subprocess
    import sys
    from m3ref.tiny import build_tokenizer, shipped_tokenizer_matches
    assert shipped_tokenizer_matches(), "data_samples/source changed: run `python -m m3ref.tiny`, then `make notebooks`"
    code = "from m3ref.tiny import build_tokenizer; print(build_tokenizer()('Москва 北京 Cairo').input_ids)"
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
            for _ in range(2)}
    assert len(runs) == 1  # the same ids in every process


@pytest.mark.slow
def test_a_retrained_tokenizer_has_xlmr_special_ids(tmp_path):
    from transformers import AutoTokenizer
    from m3ref.tiny import build_tokenizer
    tok = build_tokenizer(out_dir=str(tmp_path), retrain=True)
    again = AutoTokenizer.from_pretrained(tmp_path)
    for t in (tok, again):
        assert [t.cls_token_id, t.pad_token_id, t.eos_token_id, t.unk_token_id] == [0, 1, 2, 3]
        assert t.mask_token_id == len(t) - 1
    ids = again("Hello\nworld").input_ids
    assert ids[0] == 0 and ids[-1] == 2 and 3 not in ids  # a newline is a space, not <unk>


def test_a_bert_style_encoder_ends_texts_with_sep(tmp_path):
    """BERT tokenizers have no eos token: [SEP] ends a text and is not a lexical term."""
    from transformers import BertConfig, BertModel, BertTokenizerFast
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "sky", "is", "blue", "sea"]
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)})
    torch.manual_seed(0)
    enc = BertModel(BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32, max_position_embeddings=64), add_pooling_layer=False)
    enc.save_pretrained(tmp_path / "bert")
    tok.save_pretrained(tmp_path / "bert")
    model = M3Model.from_pretrained(tmp_path / "bert", init_heads=True, device="cpu")
    assert model.eos_id == 3 and set(model.ignore_ids) == {0, 1, 2, 3}
    assert model.tokenize(["the sky is blue"], 16) == [[2, 5, 6, 7, 8, 3]]
    out = model.encode(["the sky is blue", "the sea"], max_length=16)
    assert out.dense.shape == (2, 16) and set(out.sparse[1]) <= {5, 9}  # no [CLS]/[SEP] weights
    assert model.max_length == 64


@pytest.mark.slow
def test_a_fresh_tiny_model_memorises_a_batch_and_keeps_texts_apart(tiny_dir):
    """The standard sanity check of a trainable model: 64 (query, passage) pairs, the dense
    InfoNCE loss (ln 64 = 4.16 at chance) falls well below 1, and the [CLS] vectors of
    different texts do not collapse onto one direction. (With XLM-R's dropout 0.1 the tiny model
    from scratch stalled at 4.16, every [CLS] at cosine 0.998: the cause, book ch. 07.)"""
    import json
    import torch
    from m3ref import M3Config
    from m3ref.tiny import SOURCE_DIR
    torch.manual_seed(0)
    rows = [json.loads(line) for lang in ("en", "de", "ru", "zh")
            for line in open(f"{SOURCE_DIR}/{lang}.jsonl", encoding="utf-8")][:64]
    queries, passages = [r["query"] for r in rows], [[r["passage"]] for r in rows]
    model = M3Model.from_pretrained(tiny_dir, device="cpu").train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    dense_only = M3Config(unified=False)
    for step in range(150):
        loss = model.training_loss(queries, passages, dense_only, max_query_length=32,
                                   max_passage_length=96)["L_final"]
        if loss.item() < 0.1:
            break
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert loss.item() < 0.1, f"the dense loss is {loss.item():.3f} after {step} steps"
    q = model.encode(queries, return_sparse=False, return_colbert=False).dense  # (64, d)
    cos = q @ q.T
    off_diagonal = cos[~torch.eye(len(q), dtype=torch.bool).numpy()]
    assert off_diagonal.mean() < 0.8, f"mean cosine of different queries {off_diagonal.mean():.3f}"  # collapse: 0.998
