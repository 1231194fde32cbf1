"""The relevance scores of M3 (paper Sec. 3.2), each one function named after the paper.

Shapes: B queries, N passages, L tokens, d dimensions, U distinct token ids in a batch.
Every function takes either all-pairs inputs ((B, ...) x (N, ...) -> (B, N)) or, with
``pairwise=True``, aligned pairs ((B, ...) x (B, ...) -> (B,)).
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch


def s_dense(q: torch.Tensor, p: torch.Tensor, pairwise: bool = False) -> torch.Tensor:
    """Dense score s_dense = <e_q, e_p> (paper Sec. 3.2; book ch. 01).

    `q` (B, d) and `p` (N, d) are the L2-normalised [CLS] states, so this is their cosine.
    """
    if pairwise:
        return (q * p).sum(-1)  # (B,)
    return q @ p.T  # (B, N)


def lexical_match(q_weights: dict, p_weights: dict) -> float:
    """Lexical score of two weight dicts: s_lex = sum over t in q∩p of w_qt * w_pt (paper Sec. 3.2; ch. 02).

    The literal formula, one pair at a time: the reference the batched `s_lex` and the
    sparse index are tested against.
    """
    if len(q_weights) > len(p_weights):
        q_weights, p_weights = p_weights, q_weights
    return float(sum(w * p_weights[t] for t, w in q_weights.items() if t in p_weights))


def term_weight_vectors(ids: torch.Tensor, weights: torch.Tensor, ignore_ids: Iterable[int] = (),
                        vocab: torch.Tensor | None = None):
    """Per text, the max weight of each distinct token id (paper Sec. 3.2: w_t = ReLU(W_lex^T H[i])).

    A term that occurs several times keeps its largest weight. Weights must be >= 0 (they
    are ReLU outputs): the max starts from 0. `ignore_ids` (cls, eos, pad,
    unk) get weight 0. The vectors live in the space of the U ids in `vocab` (by default
    the ids in `ids`), not in the full vocabulary. With XLM-R's 250k vocabulary, the
    (B, L, V) tensor of the official training code is what runs out of memory.

    ids, weights: (B, L). Returns (vocab (U,) sorted ids, vectors (B, U)).
    """
    if vocab is None:
        vocab = torch.unique(ids)  # (U,)
    column = torch.searchsorted(vocab, ids)  # (B, L) column of each token's id
    vectors = weights.new_zeros(ids.shape[0], vocab.numel())
    vectors = vectors.scatter_reduce(1, column, weights, reduce="amax")  # (B, U)
    ignore = torch.tensor(sorted(ignore_ids), dtype=vocab.dtype, device=vocab.device)
    return vocab, vectors * (~torch.isin(vocab, ignore)).to(vectors.dtype)


def s_lex(q_ids: torch.Tensor, q_weights: torch.Tensor, p_ids: torch.Tensor, p_weights: torch.Tensor,
          ignore_ids: Iterable[int] = (), pairwise: bool = False) -> torch.Tensor:
    """Lexical score, batched and differentiable (paper Sec. 3.2; ch. 02).

    q_ids, q_weights: (B, Lq) token ids and ReLU weights; p_ids, p_weights: (N, Lp).
    Both sides are mapped into one shared id space (the U ids present in the batch), so
    s_lex = q_vec @ p_vec^T equals the vocabulary-sized formula without building (B, V).
    """
    vocab = torch.unique(torch.cat([q_ids.flatten(), p_ids.flatten()]))  # (U,)
    _, q_vec = term_weight_vectors(q_ids, q_weights, ignore_ids, vocab)  # (B, U)
    _, p_vec = term_weight_vectors(p_ids, p_weights, ignore_ids, vocab)  # (N, U)
    if pairwise:
        return (q_vec * p_vec).sum(-1)  # (B,)
    return q_vec @ p_vec.T  # (B, N)


def s_mul(q_vecs: torch.Tensor, p_vecs: torch.Tensor, q_mask: torch.Tensor, p_mask: torch.Tensor,
          max_over_padding: bool = False, pairwise: bool = False) -> torch.Tensor:
    """Multi-vector score s_mul = 1/N_q * sum_i max_j <E_q[i], E_p[j]> (paper Sec. 3.2; ch. 03).

    q_vecs (B, Lq, d) and p_vecs (N, Lp, d) are the normalised ColBERT vectors of the tokens
    after [CLS]. q_mask (B, Lq) and p_mask (N, Lp) are 1 on real tokens. The mean runs over
    the real query tokens. By default the max runs over the real passage tokens only (the
    definition). With `max_over_padding=True` it also sees the zero vectors of padding, as
    FlagEmbedding's batched scorer does. Then a query token whose similarities are all
    negative scores 0 instead of its true maximum.
    """
    q_mask, p_mask = q_mask.bool(), p_mask.bool()
    if pairwise:
        sim = torch.einsum("bid,bjd->bij", q_vecs, p_vecs)  # (B, Lq, Lp)
        if not max_over_padding:
            sim = sim.masked_fill(~p_mask[:, None, :], float("-inf"))
        best = sim.max(-1).values.masked_fill(~q_mask, 0.0)  # (B, Lq)
        return best.sum(-1) / q_mask.sum(-1)  # (B,)
    sim = torch.einsum("bid,njd->bnij", q_vecs, p_vecs)  # (B, N, Lq, Lp)
    if not max_over_padding:
        sim = sim.masked_fill(~p_mask[None, :, None, :], float("-inf"))
    best = sim.max(-1).values.masked_fill(~q_mask[:, None, :], 0.0)  # (B, N, Lq)
    return best.sum(-1) / q_mask.sum(-1, keepdim=True)  # (B, N)


def s_mul_packed(q_vecs: torch.Tensor, p_flat: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """`s_mul` of one query against N passages stored back to back, without padding (ch. 03).

    q_vecs (Lq, d): the query's real token vectors. p_flat (T, d): the passages' token vectors
    one after another, passage i having lengths[i] > 0 of them (T = sum of lengths). One matrix
    product gives every similarity; a segment max per passage and a mean over the query tokens
    give the same numbers as `s_mul` with masks (the definition's max over real tokens).
    Retrieval re-ranks candidates this way (`retrieval.Index.mul_scores`). -> (N,)
    """
    sim = q_vecs @ p_flat.T  # (Lq, T)
    segment = torch.repeat_interleave(torch.arange(len(lengths), device=sim.device), lengths)  # (T,)
    best = torch.full((sim.shape[0], len(lengths)), float("-inf"), dtype=sim.dtype, device=sim.device)
    best = best.scatter_reduce(1, segment.expand_as(sim), sim, "amax")  # (Lq, N) max per passage
    return best.mean(0)  # (N,)


def s_inter(s_dense: torch.Tensor, s_lex: torch.Tensor, s_mul: torch.Tensor,
            weights: Sequence[float] = (1.0, 0.3, 1.0)) -> torch.Tensor:
    """Integrated score s_inter = w1*s_dense + w2*s_lex + w3*s_mul (paper Sec. 3.3; ch. 04).

    Used as the ensemble logit in training (Sec. 3.3) and as the hybrid rank score s_rank at
    inference (Sec. 3.2). The official training code fixes w = (1, 0.3, 1).
    """
    w1, w2, w3 = weights
    return w1 * s_dense + w2 * s_lex + w3 * s_mul


def weighted_average(scores: Sequence, weights: Sequence[float]):
    """The official `compute_score` combination: sum_k w_k * s_k / sum_k w_k (ch. 04)."""
    return sum(w * s for w, s in zip(weights, scores)) / sum(weights)
