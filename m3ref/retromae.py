"""RetroMAE pre-training, the first stage of M3's recipe (M3 paper Sec. 3.4; book ch. 07).

RetroMAE (Xiao et al., EMNLP 2022, arXiv 2205.12035, Sec. 3) teaches an encoder to put a whole
text into its [CLS] state h_X: a one-layer decoder must rebuild the text from h_X and a
random few of its tokens.

    X_enc = mask(X), 15-30 % of the content tokens          BERT-style 80/10/10   (Sec. 3.1)
    h_X   = encoder(X_enc)[CLS]                             sentence embedding     (Eq. 1)
    L_enc = CE of the masked tokens through the LM head     BERT's MLM, kept       (Sec. 3.3)
    H1 = [h_X + p_0, ..., h_X + p_N]                        query stream           (Eq. 4)
    H2 = [h_X, e_x1 + p_1, ..., e_xN + p_N]                 context stream, no token masked
    A  = softmax(Q K^T / sqrt(d) + M) V, Q = H1 W^Q, K = H2 W^K, V = H2 W^V        (Eq. 5)
    M_ij = 0 if x_j in s(X_{!=i}) or (j = 0 and i != 0), else -inf                 (Eq. 7)
    L_dec = sum over x_i in X of CE(x_i | A, H1)            every token            (Eq. 6)
    L = L_enc + L_dec                                                              (Alg. 1)

The decoder's aggressive masking (50-70 %, default 0.5, Sec. 4.1) lives in M: row i sees h_X and
a fresh random sample s(X_{!=i}) of the other tokens, never itself. The encoder's word and
position embeddings build H1 and H2, and the LM head's output matrix is the word embedding
table, so the only new parameters are the decoder layer and the head's dense, LayerNorm and bias.
"""
from __future__ import annotations

from typing import Iterable, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

IGNORE = -100  # label of a position that is not predicted


def _sample(candidates: torch.Tensor, k: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    """Exactly k[...] of the True positions of each row of `candidates`, uniformly at random. (..., L) bool"""
    device = generator.device if generator is not None else candidates.device
    scores = torch.rand(candidates.shape, generator=generator, device=device).to(candidates.device)
    order = scores.masked_fill(~candidates, 2.0).argsort(-1)  # candidates first, in random order
    steps = torch.arange(order.shape[-1], device=order.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(-1, order, steps)  # rank[j]: place of position j in that order
    return rank < k[..., None]


def _round(x: torch.Tensor) -> torch.Tensor:
    """Round half up (0.5 -> 1), so counts are easy to compute by hand."""
    return (x.double() + 0.5).floor().long()


def mask_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, ratio: float, mask_id: int,
                special_ids: Iterable[int], generator: Optional[torch.Generator] = None,
                vocab_size: Optional[int] = None):
    """X_enc = mask(X) (RetroMAE Sec. 3.1): round(ratio * n) of the n content tokens of each text,
    at least one when ratio > 0; never a special token or padding. -> (masked_ids, labels), (B, L)

    With `vocab_size`, a chosen token becomes <mask> 80 % of the time, a random non-special token
    10 % and stays itself 10 % (BERT's rule, as RetroMAE's encoder keeps BERT's MLM); without it,
    every chosen token becomes <mask>. labels hold the original id where chosen, -100 elsewhere.
    """
    specials = torch.tensor(sorted(set(special_ids) | {mask_id}), device=input_ids.device)
    content = attention_mask.bool() & ~torch.isin(input_ids, specials)  # (B, L)
    n = content.sum(-1)  # (B,)
    k = torch.minimum(_round(n * ratio).clamp(min=int(ratio > 0)), n)  # (B,)
    chosen = _sample(content, k, generator)  # (B, L)
    labels = input_ids.masked_fill(~chosen, IGNORE)  # (B, L)
    if vocab_size is None:
        return input_ids.masked_fill(chosen, mask_id), labels
    device = generator.device if generator is not None else input_ids.device
    u = torch.rand(input_ids.shape, generator=generator, device=device).to(input_ids.device)  # (B, L)
    allowed = torch.ones(vocab_size, dtype=torch.bool, device=input_ids.device)
    allowed[specials[specials < vocab_size]] = False
    pool = allowed.nonzero().squeeze(1)  # (V',) ids a random replacement may take
    pick = torch.randint(len(pool), input_ids.shape, generator=generator, device=device).to(input_ids.device)
    masked = torch.where(chosen & (u < 0.8), mask_id, input_ids)
    masked = torch.where(chosen & (u >= 0.8) & (u < 0.9), pool[pick], masked)
    return masked, labels


def decoder_attention_mask(length: int, valid_mask: Optional[torch.Tensor], ratio_or_count: Union[float, int],
                           generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """The position-specific attention mask M of enhanced decoding (RetroMAE Sec. 3.3, Eq. 7):

        M_ij = 0     if x_j in s(X_{!=i}), or j = 0 and i != 0
               -inf  otherwise

    Row i sees the first position (h_X; not in row 0, the diagonal) and s(X_{!=i}), a sample drawn
    afresh for every row from the other valid positions j >= 1, j != i: with a float r (the
    decoder's masking ratio) it keeps round((1 - r) * c_i) of those c_i positions, with an int m
    it keeps min(m, c_i). The diagonal and padding are never visible; padding rows see nothing.
    -inf is written as float32's lowest value, so such rows give no NaN. valid_mask (B, L) marks
    real tokens (None: one text of `length` tokens). -> (B, L, L) additive mask, float32
    """
    valid = torch.ones(1, length, dtype=torch.bool) if valid_mask is None else valid_mask.bool()  # (B, L)
    if valid.shape[1] != length:
        raise ValueError(f"valid_mask has {valid.shape[1]} positions, length is {length}")
    pos = torch.arange(length, device=valid.device)
    diagonal, first = pos[:, None] == pos[None, :], pos == 0  # (L, L), (L,)
    rows = valid[:, :, None]  # (B, L, 1)
    candidates = rows & valid[:, None, :] & ~first & ~diagonal  # (B, L, L): j >= 1, j != i, both real
    c = candidates.sum(-1)  # (B, L)
    if isinstance(ratio_or_count, float):
        m = _round(c * (1.0 - ratio_or_count))
    else:
        m = torch.clamp(c, max=int(ratio_or_count))
    visible = _sample(candidates, m, generator) | (rows & first & ~diagonal)  # (B, L, L)
    return torch.zeros(visible.shape, device=valid.device).masked_fill(~visible, torch.finfo(torch.float32).min)


def position_ids(embeddings: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """The encoder's own position ids: RoBERTa / XLM-R number real tokens from pad_id + 1 and give
    padding pad_id (its `create_position_ids_from_input_ids`); BERT-style encoders use 0, 1, .... (B, L)"""
    make = getattr(embeddings, "create_position_ids_from_input_ids", None)
    if make is not None:
        return make(input_ids, embeddings.padding_idx)
    return torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)


class RetroMAEDecoder(nn.Module):
    """One transformer layer with two input streams (Eq. 4-5) plus an LM head tied to the encoder.

    Built from `encoder` (a `transformers` BERT / XLM-R model: `.config`, `.embeddings`). The
    encoder's embeddings are used, not registered: `decoder.parameters()` holds only the new
    weights, so an optimizer over encoder.parameters() + decoder.parameters() has no duplicates.
    """

    def __init__(self, encoder: nn.Module):
        super().__init__()
        cfg = encoder.config
        d, eps = cfg.hidden_size, cfg.layer_norm_eps
        self._embeddings = (encoder.embeddings,)  # a tuple, so nn.Module does not register it
        self.heads, self.vocab_size = cfg.num_attention_heads, cfg.vocab_size
        self.W_Q, self.W_K, self.W_V, self.W_O = (nn.Linear(d, d) for _ in range(4))
        self.attention_norm = nn.LayerNorm(d, eps=eps)
        self.ffn = nn.Sequential(nn.Linear(d, cfg.intermediate_size), nn.GELU(), nn.Linear(cfg.intermediate_size, d))
        self.ffn_norm = nn.LayerNorm(d, eps=eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)
        self.attention_dropout = cfg.attention_probs_dropout_prob
        # LM head, as XLMRobertaLMHead: dense -> gelu -> LayerNorm -> word embeddings^T + bias
        self.head_dense, self.head_norm = nn.Linear(d, d), nn.LayerNorm(d, eps=eps)
        self.head_bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        for module in self.modules():  # the encoder's initialisation
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=cfg.initializer_range)
                nn.init.zeros_(module.bias)

    @property
    def embeddings(self) -> nn.Module:
        return self._embeddings[0]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Token scores through the tied LM head. (..., d) -> (..., V)"""
        h = self.head_norm(F.gelu(self.head_dense(hidden)))  # (..., d)
        return F.linear(h, self.embeddings.word_embeddings.weight, self.head_bias)  # (..., V)

    def forward(self, h_X: torch.Tensor, input_ids: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
        """Enhanced decoding of the original (unmasked) `input_ids` (B, L) from h_X (B, d) under the
        additive mask M (B, L, L). Returns the decoder's output states; `logits` scores them. (B, L, d)"""
        B, L = input_ids.shape
        pos = position_ids(self.embeddings, input_ids)  # (B, L)
        H1 = h_X[:, None] + self.embeddings.position_embeddings(pos)  # (B, L, d) [h_X + p_0, ..., h_X + p_N]
        tokens = self.embeddings(input_ids=input_ids, position_ids=pos)  # (B, L, d) e_x + p, the encoder's LayerNorm
        H2 = torch.cat([h_X[:, None], tokens[:, 1:]], dim=1)  # (B, L, d) [h_X, e_x1 + p_1, ..., e_xN + p_N]

        def split(x):  # (B, L, d) -> (B, heads, L, d / heads)
            return x.view(B, L, self.heads, -1).transpose(1, 2)

        Q, K, V = split(self.W_Q(H1)), split(self.W_K(H2)), split(self.W_V(H2))
        mask = M.clamp(min=torch.finfo(Q.dtype).min).to(Q.dtype)[:, None]  # (B, 1, L, L)
        # A = softmax(Q K^T / sqrt(d_head) + M) V (Eq. 5), per head
        A = F.scaled_dot_product_attention(Q, K, V, attn_mask=mask,  # (B, heads, L, d / heads)
                                           dropout_p=self.attention_dropout if self.training else 0.0)
        A = A.transpose(1, 2).reshape(B, L, -1)  # (B, L, d)
        out = self.attention_norm(H1 + self.dropout(self.W_O(A)))  # (B, L, d) residual on the query stream H1
        return self.ffn_norm(out + self.dropout(self.ffn(out)))  # (B, L, d)


def retromae_loss(encoder: nn.Module, decoder: RetroMAEDecoder, input_ids: torch.Tensor,
                  attention_mask: torch.Tensor, mask_id: int, special_ids: Iterable[int],
                  encoder_mask_ratio: float = 0.3, decoder_mask_ratio: float = 0.5,
                  generator: Optional[torch.Generator] = None) -> dict:
    """L = L_enc + L_dec for one batch of texts (RetroMAE Alg. 1). -> dict(L_enc, L_dec, loss)

    input_ids, attention_mask (B, L): [CLS] text [EOS], right-padded. Both losses are means over
    their predicted tokens: L_enc over the encoder's masked tokens, L_dec over every real token
    that is not special (Eq. 6 sums; the mean only rescales it, as the official code does). The
    random draws come from `generator` in a fixed order (encoder mask, then M), so a seeded
    generator makes the losses reproducible. Call `loss.backward()` and step your optimizer.
    """
    special_ids = tuple(special_ids)
    x_enc, labels = mask_tokens(input_ids, attention_mask, encoder_mask_ratio, mask_id, special_ids,
                                generator, vocab_size=decoder.vocab_size)  # (B, L), (B, L)
    hidden = encoder(input_ids=x_enc, attention_mask=attention_mask).last_hidden_state  # (B, L, d)
    chosen = labels != IGNORE  # (B, L)
    L_enc = F.cross_entropy(decoder.logits(hidden[chosen]), labels[chosen])
    h_X = hidden[:, 0]  # (B, d) [CLS], Eq. 1
    M = decoder_attention_mask(input_ids.shape[1], attention_mask, float(decoder_mask_ratio), generator)  # (B, L, L)
    out = decoder(h_X, input_ids, M)  # (B, L, d)
    specials = torch.tensor(special_ids + (mask_id,), device=input_ids.device)
    targets = attention_mask.bool() & ~torch.isin(input_ids, specials)  # (B, L) every content token
    L_dec = F.cross_entropy(decoder.logits(out[targets]), input_ids[targets])
    return {"L_enc": L_enc, "L_dec": L_dec, "loss": L_enc + L_dec}
