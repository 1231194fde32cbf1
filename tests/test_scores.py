"""Each score of paper Sec. 3.2 on examples small enough to compute by hand."""
import math

import pytest
import torch

from m3ref.scores import lexical_match, s_dense, s_inter, s_lex, s_mul, term_weight_vectors, weighted_average


def test_s_dense_is_the_inner_product():
    q = torch.tensor([[1.0, 0.0]])
    p = torch.tensor([[0.6, 0.8], [1.0, 0.0], [0.0, -1.0]])
    # <q, p_j> = 1*0.6 + 0*0.8 = 0.6, 1.0, 0.0
    assert s_dense(q, p).tolist() == [[pytest.approx(0.6), 1.0, 0.0]]
    assert s_dense(q.expand(3, 2), p, pairwise=True).tolist() == [pytest.approx(0.6), 1.0, 0.0]


def test_lexical_match_sums_shared_terms_only():
    q = {5: 0.5, 7: 0.2}
    p = {5: 0.4, 9: 1.0}
    assert lexical_match(q, p) == pytest.approx(0.5 * 0.4)  # only term 5 is shared
    assert lexical_match(q, {}) == 0.0
    assert lexical_match(p, q) == lexical_match(q, p)


def test_term_weights_keep_the_max_and_drop_special_ids():
    ids = torch.tensor([[0, 7, 5, 7, 2, 1]])  # <s> 7 5 7 </s> <pad>
    w = torch.tensor([[0.9, 0.2, 0.4, 0.3, 0.8, 0.5]])
    vocab, vec = term_weight_vectors(ids, w, ignore_ids=(0, 1, 2, 3))
    got = {int(t): float(x) for t, x in zip(vocab, vec[0]) if x > 0}
    assert got == {5: pytest.approx(0.4), 7: pytest.approx(0.3)}  # 7 occurs twice: max(0.2, 0.3)


def test_s_lex_hand_example():
    # query terms {7: 0.3, 5: 0.4}; passage terms {5: 0.5, 9: 0.1}: shared term 5 -> 0.4 * 0.5
    q_ids, q_w = torch.tensor([[0, 7, 5, 7, 2]]), torch.tensor([[1.0, 0.2, 0.4, 0.3, 1.0]])
    p_ids, p_w = torch.tensor([[0, 5, 9, 2, 1]]), torch.tensor([[1.0, 0.5, 0.1, 1.0, 3.0]])
    assert s_lex(q_ids, q_w, p_ids, p_w, ignore_ids=(0, 1, 2, 3)).item() == pytest.approx(0.2)


def dense_vocab_s_lex(q_ids, q_w, p_ids, p_w, vocab_size, ignore_ids):
    """The official training formula: scatter into (B, L, V), max over L, zero special columns."""
    def vectors(ids, w):
        full = torch.zeros(ids.shape[0], ids.shape[1], vocab_size, dtype=w.dtype)
        full = torch.scatter(full, -1, ids.unsqueeze(-1), w.unsqueeze(-1))
        full = full.max(dim=1).values
        full[:, list(ignore_ids)] *= 0.0
        return full
    return vectors(q_ids, q_w) @ vectors(p_ids, p_w).T


def test_s_lex_in_id_space_equals_the_vocabulary_formula_with_gradients():
    g = torch.Generator().manual_seed(0)
    V = 300
    q_ids, p_ids = torch.randint(0, 40, (3, 9), generator=g), torch.randint(0, 40, (6, 13), generator=g)
    q_w = torch.rand(3, 9, generator=g).requires_grad_()
    p_w = torch.rand(6, 13, generator=g).requires_grad_()
    ours = s_lex(q_ids, q_w, p_ids, p_w, ignore_ids=(0, 1, 2, 3))
    ref = dense_vocab_s_lex(q_ids, q_w, p_ids, p_w, V, (0, 1, 2, 3))
    assert torch.allclose(ours, ref, atol=1e-6)
    g_ours = torch.autograd.grad(ours.sum(), (q_w, p_w))
    g_ref = torch.autograd.grad(ref.sum(), (q_w, p_w))
    for a, b in zip(g_ours, g_ref):
        assert torch.allclose(a, b, atol=1e-6)
    pair = s_lex(q_ids, q_w, p_ids[:3], p_w[:3], ignore_ids=(0, 1, 2, 3), pairwise=True)
    assert torch.allclose(pair, ref[:, :3].diagonal(), atol=1e-6)


def test_s_mul_hand_example_and_the_padding_switch():
    # query token vectors a=(1,0), b=(0,1); passage vectors c=(0.6,0.8), d=(-1,0), then padding
    q = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    p = torch.tensor([[[0.6, 0.8], [-1.0, 0.0], [0.0, 0.0]]])
    q_mask, p_mask = torch.tensor([[1, 1]]), torch.tensor([[1, 1, 0]])
    # a: max(0.6, -1) = 0.6; b: max(0.8, 0) = 0.8 -> mean 0.7
    assert s_mul(q, p, q_mask, p_mask).item() == pytest.approx(0.7)
    # a token whose similarities are all negative: e=(-0.6,-0.8) -> max(-0.6*0.6-0.8*0.8, 0.6) = 0.6
    q2 = torch.tensor([[[-0.6, -0.8], [0.0, 0.0]]])
    q2_mask = torch.tensor([[1, 0]])
    p2 = torch.tensor([[[0.6, 0.8], [0.0, 0.0]]])
    p2_mask = torch.tensor([[1, 0]])
    assert s_mul(q2, p2, q2_mask, p2_mask).item() == pytest.approx(-1.0)  # definition: the real max
    # the official batched scorer also sees the padding's zero vector: max(-1, 0) = 0
    assert s_mul(q2, p2, q2_mask, p2_mask, max_over_padding=True).item() == pytest.approx(0.0)
    assert s_mul(q2, p2, q2_mask, p2_mask, pairwise=True).item() == pytest.approx(-1.0)


def test_s_mul_batched_equals_pairwise_on_random_inputs():
    g = torch.Generator().manual_seed(1)
    q = torch.nn.functional.normalize(torch.randn(2, 4, 8, generator=g), dim=-1)
    p = torch.nn.functional.normalize(torch.randn(2, 6, 8, generator=g), dim=-1)
    q_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    p_mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 0, 0, 0, 0]])
    full = s_mul(q, p, q_mask, p_mask)
    assert torch.allclose(full.diagonal(), s_mul(q, p, q_mask, p_mask, pairwise=True))
    # reference loop: mean over real query tokens of max over real passage tokens
    for b in range(2):
        for n in range(2):
            qs, ps = q[b][q_mask[b].bool()], p[n][p_mask[n].bool()]
            ref = (qs @ ps.T).max(1).values.mean()
            assert full[b, n].item() == pytest.approx(ref.item(), abs=1e-6)


def test_s_inter_and_weighted_average():
    d, l, m = torch.tensor(0.5), torch.tensor(2.0), torch.tensor(0.25)
    assert s_inter(d, l, m).item() == pytest.approx(0.5 + 0.3 * 2.0 + 0.25)
    assert s_inter(d, l, m, (0.2, 0.8, 0.0)).item() == pytest.approx(0.1 + 1.6)
    assert weighted_average((d, l, m), (1, 1, 2)).item() == pytest.approx((0.5 + 2.0 + 0.5) / 4)
    assert math.isclose(weighted_average((1.0, 3.0), (1, 3)), 2.5)


def test_s_mul_packed_equals_s_mul_with_masks():
    from m3ref.scores import s_mul, s_mul_packed
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([3, 1, 5, 2])
    q = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=-1)  # (Lq, d)
    flat = torch.nn.functional.normalize(torch.randn(int(lengths.sum()), 8, generator=g), dim=-1)  # (T, d)
    padded = torch.nn.utils.rnn.pad_sequence(list(flat.split(lengths.tolist())), batch_first=True)  # (N, 5, d)
    p_mask = torch.arange(5)[None] < lengths[:, None]
    expected = s_mul(q[None], padded, torch.ones(1, 4), p_mask)[0]  # (N,)
    torch.testing.assert_close(s_mul_packed(q, flat, lengths), expected)
    # by hand for passage 1 (one vector): the mean of the query tokens' similarities to it
    torch.testing.assert_close(s_mul_packed(q, flat, lengths)[1], (q @ flat[3]).mean())
