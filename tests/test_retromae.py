"""RetroMAE pre-training (RetroMAE Sec. 3, Eq. 1-7): masks, the attention rule, the losses by hand."""
import math

import pytest
import torch
import torch.nn.functional as F

from m3ref.retromae import RetroMAEDecoder, decoder_attention_mask, mask_tokens, position_ids, retromae_loss

pytestmark = pytest.mark.usefixtures("one_thread")

CLS, PAD, EOS, UNK, MASK, V = 0, 1, 2, 3, 99, 100  # XLM-R's special ids, <mask> last
SPECIALS = (CLS, PAD, EOS, UNK)
NEG = torch.finfo(torch.float32).min


def tiny_encoder(seed=0, dropout=0.0):
    from transformers import XLMRobertaConfig, XLMRobertaModel
    cfg = XLMRobertaConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=40, pad_token_id=PAD, bos_token_id=CLS,
                           eos_token_id=EOS, type_vocab_size=1, hidden_dropout_prob=dropout,
                           attention_probs_dropout_prob=dropout, initializer_range=0.2)
    torch.manual_seed(seed)
    return XLMRobertaModel(cfg, add_pooling_layer=False)


def batch(rows):
    """[CLS] content [EOS], right-padded with <pad>."""
    seqs = [[CLS] + list(r) + [EOS] for r in rows]
    L = max(map(len, seqs))
    ids = torch.tensor([s + [PAD] * (L - len(s)) for s in seqs])
    return ids, (ids != PAD).long()


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("ratio", [0.15, 0.3])
def test_mask_tokens_counts_and_never_special(ratio):
    ids, att = batch([range(10, 30), range(40, 47), [50]])  # 20, 7 and 1 content tokens
    masked, labels = mask_tokens(ids, att, ratio, MASK, SPECIALS, gen())
    chosen = labels != -100
    assert chosen.sum(1).tolist() == [math.floor(ratio * n + 0.5) or 1 for n in (20, 7, 1)]  # at least one
    assert not chosen[(ids == CLS) | (ids == EOS) | (att == 0)].any()  # never special tokens or padding
    assert torch.equal(labels[chosen], ids[chosen])  # labels: the original ids, -100 elsewhere
    assert torch.equal(masked, torch.where(chosen, MASK, ids))  # without vocab_size: plain <mask>


def test_mask_tokens_bert_80_10_10():
    ids, att = batch([range(4, 99)] * 60)  # 60 x 95 content tokens, 29 chosen each: 1740 in all
    masked, labels = mask_tokens(ids, att, 0.3, MASK, SPECIALS, gen(1), vocab_size=V)
    chosen = labels != -100
    assert chosen.sum(1).eq(29).all()
    assert torch.equal(masked[~chosen], ids[~chosen])  # only chosen tokens change
    as_mask = (masked[chosen] == MASK).float().mean().item()
    kept = (masked[chosen] == ids[chosen]).float().mean().item()
    assert 0.76 < as_mask < 0.84 and 0.07 < kept < 0.13  # random: the rest
    assert not torch.isin(masked[chosen & (masked != MASK)], torch.tensor(SPECIALS)).any()


def test_decoder_attention_mask_follows_eq7():
    ids, att = batch([range(10, 20), range(10, 15)])  # N = 11 and 6 real tokens after [CLS]
    M = decoder_attention_mask(ids.shape[1], att, 0.5, gen())
    assert M.shape == (2, 12, 12) and set(M.unique().tolist()) <= {0.0, NEG}
    vis = M == 0
    assert not vis.diagonal(dim1=1, dim2=2).any()  # never itself
    for b, n in enumerate((11, 6)):  # n real tokens after [CLS]
        real = n + 1
        assert vis[b, 1:real, 0].all() and not vis[b, 0, 0]  # h_X visible to every row but its own
        assert not vis[b, :, real:].any() and not vis[b, real:].any()  # padding: never seen, sees nothing
        # row 0 samples from the n tokens, row i >= 1 from the n - 1 others: keeps round((1 - r) * c)
        assert vis[b, 0, 1:].sum().item() == math.floor(0.5 * n + 0.5)
        assert vis[b, 1:real, 1:].sum(-1).tolist() == [math.floor(0.5 * (n - 1) + 0.5)] * n
    assert len({tuple(r.tolist()) for r in vis[0, 1:]}) > 1  # one sample per row, not one for all
    counted = decoder_attention_mask(12, att, 3, gen()) == 0  # an int: that many sampled tokens
    assert counted[0, 1:, 1:].sum(-1).eq(3).all() and counted[1, 1:7, 1:].sum(-1).eq(3).all()


def test_position_ids_follow_the_encoder():
    from transformers import BertConfig, BertModel
    ids, _ = batch([[5, 6, 7], [5]])
    assert position_ids(tiny_encoder().embeddings, ids).tolist() == [[2, 3, 4, 5, 6], [2, 3, 4, 1, 1]]
    bert = BertModel(BertConfig(vocab_size=V, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                                intermediate_size=8, max_position_embeddings=8))
    assert position_ids(bert.embeddings, ids).tolist() == [[0, 1, 2, 3, 4]] * 2


def test_decoder_is_tied_and_adds_only_its_own_parameters():
    enc = tiny_encoder()
    dec = RetroMAEDecoder(enc)
    assert dec.embeddings.word_embeddings.weight is enc.embeddings.word_embeddings.weight
    assert not {id(p) for p in dec.parameters()} & {id(p) for p in enc.parameters()}
    h = torch.randn(3, 32)
    assert torch.allclose(dec.logits(h), F.linear(dec.head_norm(F.gelu(dec.head_dense(h))),
                                                  enc.embeddings.word_embeddings.weight, dec.head_bias))


def test_decoder_row_never_uses_its_own_token():
    enc = tiny_encoder()
    dec = RetroMAEDecoder(enc).eval()
    ids, att = batch([range(10, 20)])
    M = decoder_attention_mask(ids.shape[1], att, 0.5, gen())
    h_X = torch.randn(1, 32)
    out = dec(h_X, ids, M)
    i = 4
    changed = ids.clone()
    changed[0, i] = 60
    out2 = dec(h_X, changed, M)
    sees_i = (M[0, :, i] == 0)  # rows whose sample holds position i
    assert torch.allclose(out[0, ~sees_i], out2[0, ~sees_i], atol=1e-6)  # row i among them
    assert (out[0, sees_i] - out2[0, sees_i]).abs().amax(-1).gt(1e-4).all()


def test_losses_by_hand_with_a_constant_head():
    """Head LayerNorm zeroed: every logit row is the bias b, so each CE is -log softmax(b)[x]."""
    enc = tiny_encoder()
    dec = RetroMAEDecoder(enc)
    with torch.no_grad():
        dec.head_norm.weight.zero_(), dec.head_norm.bias.zero_()
        dec.head_bias.zero_()
        dec.head_bias[5] = math.log(V - 1)  # p(5) = 1/2, p(other) = 1/(2 (V - 1))
    ids, att = batch([[5, 5, 7], [5, 9]])  # decoder targets: all 5 content tokens, not only masked ones
    out = retromae_loss(enc, dec, ids, att, MASK, SPECIALS, generator=gen())
    assert out["L_dec"].item() == pytest.approx((3 * math.log(2) + 2 * math.log(2 * (V - 1))) / 5, rel=1e-5)
    ids, att = batch([[5] * 6, [5] * 3])  # encoder targets are all 5, whichever are masked
    out = retromae_loss(enc, dec, ids, att, MASK, SPECIALS, generator=gen())
    assert out["L_enc"].item() == pytest.approx(math.log(2), rel=1e-5)
    assert out["loss"].item() == pytest.approx(2 * math.log(2), rel=1e-5)


def test_L_dec_is_the_cross_entropy_of_the_decoder_logits():
    enc, ids_att = tiny_encoder(), batch([range(10, 22), range(30, 35)])
    dec = RetroMAEDecoder(enc)
    ids, att = ids_att
    out = retromae_loss(enc, dec, ids, att, MASK, SPECIALS, generator=gen(3))
    g = gen(3)  # the same draws, in the same order: encoder mask, then M
    x_enc, labels = mask_tokens(ids, att, 0.3, MASK, SPECIALS, g, vocab_size=V)
    hidden = enc(input_ids=x_enc, attention_mask=att).last_hidden_state
    logp = torch.log_softmax(dec.logits(hidden), -1)
    rows, cols = (labels != -100).nonzero(as_tuple=True)
    assert out["L_enc"].item() == pytest.approx(-logp[rows, cols, labels[rows, cols]].mean().item(), rel=1e-5)
    M = decoder_attention_mask(ids.shape[1], att, 0.5, g)
    logp = torch.log_softmax(dec.logits(dec(hidden[:, 0], ids, M)), -1)
    want = [-logp[b, i, ids[b, i]].item() for b in range(2) for i in range(ids.shape[1])
            if att[b, i] and ids[b, i] not in SPECIALS]
    assert len(want) == 12 + 5
    assert out["L_dec"].item() == pytest.approx(sum(want) / len(want), rel=1e-5)


def test_decoder_loss_reaches_the_encoder_only_through_h_X():
    enc = tiny_encoder()
    dec = RetroMAEDecoder(enc)
    seen = []

    def keep(module, args, output):  # the encoder's last hidden states, with their gradient
        output.last_hidden_state.retain_grad()
        seen.append(output.last_hidden_state)

    enc.register_forward_hook(keep)
    ids, att = batch([range(10, 20), range(20, 25)])
    retromae_loss(enc, dec, ids, att, MASK, SPECIALS, generator=gen())["L_dec"].backward()
    grad = seen[0].grad  # (B, L, d)
    assert grad[:, 0].abs().sum(-1).gt(0).all() and grad[:, 1:].abs().sum() == 0
    assert enc.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0  # the [CLS] path


def test_same_generator_same_losses():
    enc = tiny_encoder(dropout=0.0)
    dec = RetroMAEDecoder(enc)
    ids, att = batch([range(10, 25), range(30, 38)])
    a, b, c = (retromae_loss(enc, dec, ids, att, MASK, SPECIALS, generator=gen(s)) for s in (7, 7, 8))
    assert a["L_enc"].item() == b["L_enc"].item() and a["L_dec"].item() == b["L_dec"].item()
    assert a["L_dec"].item() != c["L_dec"].item()
    assert torch.equal(decoder_attention_mask(17, att, 0.5, gen(7)), decoder_attention_mask(17, att, 0.5, gen(7)))


@pytest.mark.slow
def test_training_lowers_both_losses():
    patterns = [[10, 11, 12], [20, 21], [30, 31, 32, 33], [40, 41]]
    texts = [(patterns[i % 4] * 6)[: 8 + i % 5] for i in range(20)]  # 20 short repetitive texts
    ids, att = batch(texts)
    enc = tiny_encoder(seed=1)
    dec = RetroMAEDecoder(enc)
    opt = torch.optim.AdamW(list(enc.parameters()) + list(dec.parameters()), lr=3e-3)

    def evaluate():
        with torch.no_grad():
            runs = [retromae_loss(enc, dec, ids, att, MASK, SPECIALS, generator=gen(1000 + s)) for s in range(3)]
        return [sum(r[k].item() for r in runs) / 3 for k in ("L_enc", "L_dec")]

    before = evaluate()
    g = gen(0)
    for _ in range(60):
        opt.zero_grad()
        retromae_loss(enc, dec, ids, att, MASK, SPECIALS, generator=g)["loss"].backward()
        opt.step()
    after = evaluate()
    assert after[0] < 0.3 * before[0] and after[1] < 0.3 * before[1], (before, after)  # about 5 -> under 1


def test_runs_on_the_tiny_m3_encoder(tiny_model):
    """The real tiny XLM-R (8194 positions) and its tokenizer's special ids."""
    tok, enc = tiny_model.tokenizer, tiny_model.encoder
    dec = RetroMAEDecoder(enc)
    batch_ = tiny_model.collate(tiny_model.tokenize(["What is BGE-M3?", "Ein kurzer Text."], 16))
    specials = (tok.cls_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id)
    out = retromae_loss(enc, dec, batch_["input_ids"], batch_["attention_mask"], tok.mask_token_id, specials,
                        generator=gen())
    assert all(torch.isfinite(v) for v in out.values())
    out["loss"].backward()
    assert enc.embeddings.word_embeddings.weight.grad is not None
