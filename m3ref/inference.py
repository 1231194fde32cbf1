"""From texts to M3's outputs: the FlagEmbedding-compatible API (book ch. 01-04, 10).

`M3Model` binds these functions as its methods, so `model.encode(texts)` is `encode(model,
texts)`:

* `tokenize`, `collate`: token ids with <s> ... </s> (MCLS adds one <s> per stride), padded
  into tensors;
* `embed`: texts -> differentiable `Embeddings` (one forward pass, gradients kept);
* `encode`: texts -> numpy dense vectors, lexical weight dicts and ColBERT vectors, batched
  by length as `BGEM3FlagModel.encode` does;
* `compute_score`: (query, passage) pairs -> the five scores of `BGEM3FlagModel.compute_score`.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from .errors import M3Error
from .scores import s_dense, s_lex, s_mul, term_weight_vectors, weighted_average


@dataclass
class EncodeOutput:
    """What `encode` returns (numpy, input order)."""
    dense: Optional[np.ndarray]  # (N, d) float32, L2-normalised
    sparse: Optional[list]  # N dicts {token id: weight > 0}
    colbert: Optional[list]  # N arrays (n_i, d'): one vector per token after [CLS]


def tokenize(model, texts: Sequence[str], max_length: int, mcls_stride: Optional[int] = None,
             warn: bool = True) -> list:
    """Token ids with <s> ... </s>, truncated to `max_length` (a warning says how many were cut).

    With `mcls_stride`, one more <s> is inserted before every `mcls_stride` content tokens
    (MCLS, paper App. B.2). The inserted tokens count towards `max_length`.
    """
    texts = _check_texts(texts)
    _check_lengths(model, max_length, mcls_stride)
    ids = _content_ids(model.tokenizer, texts) if texts else []
    cls, eos = model.tokenizer.cls_token_id, model.eos_id
    out, cut = [], 0
    for content in ids:
        if mcls_stride:
            # c content tokens need c + 1 + ceil(c / stride) positions
            keep = len(content)
            while keep + 1 + -(-keep // mcls_stride) > max_length:
                keep -= 1
            chunks = [content[i:i + mcls_stride] for i in range(0, keep, mcls_stride)] or [[]]
            seq = [t for chunk in chunks for t in [cls] + chunk] + [eos]
        else:
            keep = min(len(content), max_length - 2)
            seq = [cls] + content[:keep] + [eos]
        cut += keep < len(content)
        out.append(seq)
    if cut and warn:
        warnings.warn(f"{cut} of {len(texts)} texts were longer than max_length={max_length} tokens "
                      f"and were truncated", stacklevel=3)
    return out


def _content_ids(tokenizer, texts: list) -> list:
    """Token ids of each text, no special tokens. A fast tokenizer's `encode_batch_fast` gives
    the same ids as `tokenizer(texts)` without computing character offsets (a quarter faster);
    it is used only when the tokenizer file sets no truncation or padding of its own."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    try:
        if hasattr(backend, "encode_batch_fast") and backend.truncation is None and backend.padding is None:
            return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
        return tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
    except Exception:  # noqa: BLE001 - the tokenizer's TypeError does not say which text
        _check_encodable(texts)
        raise


def collate(model, seqs: Sequence[list], mcls: bool = False) -> dict:
    """Right-pad token id lists into tensors on the model's device."""
    pad, cls = model.tokenizer.pad_token_id, model.tokenizer.cls_token_id
    ids = np.full((len(seqs), max(map(len, seqs))), pad, dtype=np.int64)  # (B, L)
    mask = np.zeros(ids.shape, dtype=np.int64)  # (B, L) real tokens first
    for row, seq in enumerate(seqs):
        ids[row, :len(seq)], mask[row, :len(seq)] = seq, 1
    batch = {"input_ids": torch.from_numpy(ids).to(model.device),
             "attention_mask": torch.from_numpy(mask).to(model.device)}
    if mcls:
        batch["cls_mask"] = (batch["input_ids"] == cls) & batch["attention_mask"].bool()
    return batch


def embed(model, texts: Sequence[str], max_length: int = 512, warn: bool = False):
    """Tokenize, pad and run all three heads with gradients: texts -> `Embeddings`.
    Padding is per call. Training truncates to its max lengths silently, as the official
    trainer does."""
    return model(**collate(model, tokenize(model, texts, max_length, warn=warn)))


@torch.inference_mode()
def encode(model, texts, batch_size: int = 32, max_length: int = 8192, return_dense: bool = True,
           return_sparse: bool = True, return_colbert: bool = True, mcls_stride: Optional[int] = None,
           dtype: Optional[torch.dtype] = None, show_progress: Optional[bool] = None,
           max_tokens: Optional[int] = None) -> EncodeOutput:
    """Encode texts into dense vectors, lexical weights and ColBERT vectors (ch. 01-03).

    Texts are sorted by length (longest first) and batched so that each batch pads to
    similar lengths; a batch also stops before its padded size passes `max_tokens`
    (default batch_size * 512), so one 8k document is not padded together with 31 others.
    The outputs come back in input order. A single string gives single
    items. An empty list gives empty outputs. Runs in fp32 on CPU. On a GPU, `dtype`
    (torch.float16 / torch.bfloat16) turns on autocast. `mcls_stride` enables MCLS for
    long documents (ch. 10); None takes `model.config.mcls_stride`, 0 turns MCLS off.
    """
    single = isinstance(texts, str)
    mcls_stride = model.config.mcls_stride if mcls_stride is None else mcls_stride
    _check_stride(mcls_stride)
    _check_int("batch_size", batch_size, 1)
    _check_int("max_length", max_length, 2)
    if max_tokens is not None:
        _check_int("max_tokens", max_tokens, 1)
    seqs = tokenize(model, [texts] if single else texts, min(max_length, model.max_length), mcls_stride)
    was_training = model.training
    model.eval()
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    dense, sparse, colbert = [None] * len(seqs), [None] * len(seqs), [None] * len(seqs)
    batches = length_batches([len(seqs[i]) for i in order], batch_size, max_tokens or batch_size * 512)
    if show_progress is None:
        show_progress = len(batches) >= 20
    device = model.device
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype is not None and device.type == "cuda")
    from tqdm import tqdm
    for start, end in tqdm(batches, desc="encode", disable=not show_progress):
        idx = order[start:end]
        batch = collate(model, [seqs[i] for i in idx], mcls=bool(mcls_stride))
        with autocast:  # only the requested heads, and ColBERT only on real tokens
            hidden = model.encoder(input_ids=batch["input_ids"],
                                   attention_mask=batch["attention_mask"]).last_hidden_state  # (B, L, d)
            if return_dense:
                vecs = model.dense_vector(hidden, batch.get("cls_mask"), batch["attention_mask"])  # (B, d)
                for i, v in zip(idx, vecs.float().cpu().numpy()):
                    dense[i] = v
            if return_sparse:
                weights = model.lexical_weights(hidden).float()  # (B, L)
                for i, d in zip(idx, lexical_dicts(batch["input_ids"], weights, model.ignore_ids)):
                    sparse[i] = d
            if return_colbert:
                keep = model.colbert_mask(batch["attention_mask"], batch.get("cls_mask")).bool()  # (B, L-1)
                vecs = model.colbert_vectors(hidden[:, 1:][keep]).float().cpu().numpy()  # (tokens, d')
                for i, v in zip(idx, np.split(vecs, keep.sum(1).cumsum(0)[:-1].tolist())):
                    colbert[i] = v
    model.train(was_training)
    d = model.encoder.config.hidden_size
    out = EncodeOutput(
        dense=(np.stack(dense) if dense else np.zeros((0, d), np.float32)) if return_dense else None,
        sparse=sparse if return_sparse else None,
        colbert=colbert if return_colbert else None)
    if single:
        out = EncodeOutput(*(x[0] if x is not None else None for x in (out.dense, out.sparse, out.colbert)))
    return out


def lexical_dicts(ids: torch.Tensor, weights: torch.Tensor, ignore_ids: Sequence[int]) -> list:
    """Per text {token id: max weight} without ignored ids and zero weights (ch. 02)."""
    vocab, vectors = term_weight_vectors(ids, weights, ignore_ids)  # (U,), (B, U)
    rows, cols = vectors.nonzero(as_tuple=True)  # row-major: each text's entries together
    counts = torch.bincount(rows, minlength=ids.shape[0]).tolist()
    keys, vals = vocab[cols].tolist(), vectors[rows, cols].tolist()
    out, start = [], 0
    for n in counts:
        out.append(dict(zip(keys[start:start + n], vals[start:start + n])))
        start += n
    return out


@torch.inference_mode()
def compute_score(model, pairs, weights: Sequence[float] = (1.0, 1.0, 1.0), max_query_length: int = 512,
                  max_passage_length: int = 512, batch_size: int = 256,
                  colbert_max_over_padding: Optional[bool] = None) -> dict:
    """Scores of (query, passage) pairs in all modes (official `compute_score`; ch. 04).

    Returns lists for "dense", "sparse", "colbert", "sparse+dense" and
    "colbert+sparse+dense". The combinations are weighted averages sum(w*s)/sum(w) with
    weights = (w_dense, w_sparse, w_colbert). A single (query, passage) tuple gives
    floats. Pairs are batched in input order, as the official code does.
    `colbert_max_over_padding=True` reproduces its batch-dependent ColBERT max; None takes
    `model.config.colbert_max_over_padding`.
    """
    if colbert_max_over_padding is None:
        colbert_max_over_padding = model.config.colbert_max_over_padding
    # one pair, as a tuple or a 2-list of strings (as FlagEmbedding accepts it)
    single = isinstance(pairs, (tuple, list)) and len(pairs) == 2 and all(isinstance(x, str) for x in pairs)
    pairs = [pairs] if single else list(pairs)
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise M3Error(f"pairs[{i}] is not a (query, passage) pair")
        for j, text in enumerate(pair):
            if not isinstance(text, str):
                raise M3Error(f"pairs[{i}][{j}] is a {type(text).__name__}, not a string")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise M3Error(f"pairs[{i}][{j}] holds a lone surrogate (U+{ord(text[exc.start]):04X} at character "
                              f"{exc.start}), which is not valid Unicode text") from None
    weights = check_weights(weights)
    _check_int("batch_size", batch_size, 1)
    _check_int("max_query_length", max_query_length, 2)
    _check_int("max_passage_length", max_passage_length, 2)
    was_training = model.training
    model.eval()
    keys = ("dense", "sparse", "colbert", "sparse+dense", "colbert+sparse+dense")
    result = {k: [] for k in keys}
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        q = embed(model, [p[0] for p in chunk], max_query_length, warn=True)
        p = embed(model, [p[1] for p in chunk], max_passage_length, warn=True)
        d = s_dense(q.dense, p.dense, pairwise=True)
        s = s_lex(q.ids, q.weights, p.ids, p.weights, model.ignore_ids, pairwise=True)
        c = s_mul(q.colbert, p.colbert, q.colbert_mask, p.colbert_mask, colbert_max_over_padding, pairwise=True)
        for key, val in zip(keys, (d, s, c, weighted_average((d, s), weights[:2]), weighted_average((d, s, c), weights))):
            result[key].extend(val.float().cpu().tolist())
    model.train(was_training)
    return {k: v[0] for k, v in result.items()} if single else result


def length_batches(lengths: Sequence[int], batch_size: int, max_tokens: int) -> list:
    """(start, end) spans over lengths sorted longest first: at most `batch_size` texts and,
    beyond the first text, at most `max_tokens` padded tokens (count * longest) per batch."""
    spans, start = [], 0
    while start < len(lengths):
        end = start + 1
        while end < len(lengths) and end - start < batch_size and (end + 1 - start) * lengths[start] <= max_tokens:
            end += 1
        spans.append((start, end))
        start = end
    return spans


def check_weights(weights) -> tuple:
    """(w_dense, w_sparse, w_colbert) as floats: finite, >= 0, and each weighted average
    ("sparse+dense" divides by w_dense + w_sparse, "colbert+sparse+dense" by all three) has a
    positive divisor, so no score comes back as nan or inf."""
    if isinstance(weights, np.ndarray) and weights.ndim == 1:
        weights = weights.tolist()
    if isinstance(weights, (str, bytes)) or not isinstance(weights, (tuple, list)) or len(weights) != 3 or not all(
            isinstance(w, (int, float, np.integer, np.floating)) and not isinstance(w, bool) for w in weights):
        raise M3Error(f"weights={weights!r}: give 3 numbers (w_dense, w_sparse, w_colbert)")
    weights = tuple(float(w) for w in weights)
    if not all(np.isfinite(w) and w >= 0 for w in weights):
        raise M3Error(f"weights={weights}: each weight must be a finite number >= 0")
    if weights[0] + weights[1] <= 0:
        raise M3Error(f"weights={weights}: w_dense + w_sparse must be > 0 (\"sparse+dense\" divides by it)")
    return weights


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _check_int(name: str, value, low: int) -> None:
    if not (_is_int(value) and value >= low):
        raise M3Error(f"{name} must be an integer >= {low}, got {value!r}")


def _check_lengths(model, max_length, mcls_stride) -> None:
    if not _is_int(max_length) or max_length > model.max_length or max_length < 2:
        raise M3Error(f"max_length={max_length!r} is outside 2..{model.max_length} (this model's position table)")
    _check_stride(mcls_stride)


def _check_stride(mcls_stride) -> None:
    if mcls_stride is not None and not (_is_int(mcls_stride) and mcls_stride >= 0):
        raise M3Error(f"mcls_stride must be an integer >= 1 (or 0 or None for off), got {mcls_stride!r}")


def _check_encodable(texts: list) -> None:
    """Raise `M3Error` on the first text that is not valid Unicode (a lone surrogate such as
    '\\ud800', which Python strings may hold but no tokenizer can read)."""
    for i, t in enumerate(texts):
        try:
            t.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise M3Error(f"texts[{i}] holds a lone surrogate (U+{ord(t[exc.start]):04X} at character "
                          f"{exc.start}), which is not valid Unicode text") from None


def _check_texts(texts) -> list:
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, (list, tuple)):
        raise M3Error(f"texts must be a string or a list of strings, got {type(texts).__name__}")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise M3Error(f"texts[{i}] is a {type(t).__name__}, not a string")
    return list(texts)
