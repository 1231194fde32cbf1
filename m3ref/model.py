"""M3Model: one encoder, three retrieval heads (paper Sec. 3.2, Fig. 2; book ch. 00-04).

    hidden = encoder(tokens)                               # (B, L, d)
    dense   = normalize(hidden[:, 0])                      # [CLS], (B, d)
    lexical = relu(sparse_linear(hidden))                  # one weight per token, (B, L)
    colbert = normalize(colbert_linear(hidden[:, 1:]))     # every token after [CLS], (B, L-1, d')

Checkpoints use the official BGE-M3 layout: the encoder's own files, `colbert_linear.pt`,
`sparse_linear.pt` and the tokenizer, so FlagEmbedding loads what m3ref saves and the
other way round.
"""
from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, fields
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import M3Config
from .errors import M3Error
from .losses import group_targets, m3_loss
from .scores import s_dense, s_lex, s_mul, term_weight_vectors, weighted_average

HEAD_FILES = ("colbert_linear", "sparse_linear")
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


@dataclass
class EncodeOutput:
    """What `encode` returns (numpy, input order)."""
    dense: Optional[np.ndarray]  # (N, d) float32, L2-normalised
    sparse: Optional[list]  # N dicts {token id: weight > 0}
    colbert: Optional[list]  # N arrays (n_i, d'): one vector per token after [CLS]


@dataclass
class Embeddings:
    """Differentiable outputs of one forward pass (training and scoring)."""
    dense: torch.Tensor  # (B, d)
    ids: torch.Tensor  # (B, L) token ids, padding = pad id
    weights: torch.Tensor  # (B, L) lexical weights ReLU(W_lex h)
    colbert: torch.Tensor  # (B, L-1, d') zero on padding
    colbert_mask: torch.Tensor  # (B, L-1) 1 on real tokens after [CLS]

    def pad(self, length: int, pad_id: int) -> "Embeddings":
        """Right-pad the token dimension L to `length` (ColBERT rows to length - 1)."""
        extra = length - self.ids.shape[1]
        if extra == 0:
            return self
        return Embeddings(dense=self.dense, ids=F.pad(self.ids, (0, extra), value=pad_id),
                          weights=F.pad(self.weights, (0, extra)), colbert=F.pad(self.colbert, (0, 0, 0, extra)),
                          colbert_mask=F.pad(self.colbert_mask, (0, extra)))

    def select(self, index: torch.Tensor) -> "Embeddings":
        """Rows `index` of every field, in that order (differentiable)."""
        return Embeddings(*(getattr(self, f.name)[index] for f in fields(Embeddings)))

    @staticmethod
    def cat(parts: Sequence["Embeddings"], pad_id: int) -> "Embeddings":
        """Concatenate sub-batches along B, padding L to the longest one."""
        length = max(p.ids.shape[1] for p in parts)
        parts = [p.pad(length, pad_id) for p in parts]
        return Embeddings(*(torch.cat([getattr(p, f.name) for p in parts]) for f in fields(Embeddings)))


class M3Model(nn.Module):
    """An encoder (any `transformers.AutoModel`) plus BGE-M3's two heads, each with bias."""

    def __init__(self, encoder: nn.Module, tokenizer, colbert_dim: int = -1):
        super().__init__()
        hidden = encoder.config.hidden_size
        self.encoder, self.tokenizer = encoder, tokenizer
        self.colbert_linear = nn.Linear(hidden, hidden if colbert_dim <= 0 else colbert_dim)
        self.sparse_linear = nn.Linear(hidden, 1)
        tok = tokenizer
        # The id that ends a text: </s> for XLM-R, [SEP] for BERT-style tokenizers (no eos).
        self.eos_id = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
        # Ids that never count as lexical terms (official: cls, eos, pad, unk). <mask> counts.
        self.ignore_ids = tuple(sorted({i for i in (tok.cls_token_id, self.eos_id, tok.pad_token_id, tok.unk_token_id)
                                        if i is not None}))

    # ------------------------------------------------------------------ forward
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def max_length(self) -> int:
        """Longest input the position table allows (XLM-R reserves pad_id + 1 positions)."""
        cfg = self.encoder.config
        reserved = cfg.pad_token_id + 1 if "roberta" in cfg.model_type else 0
        return cfg.max_position_embeddings - reserved

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                cls_mask: Optional[torch.Tensor] = None) -> Embeddings:
        """One encoder pass, all three heads (paper Sec. 3.2).

        input_ids, attention_mask: (B, L). `cls_mask` (B, L) marks the [CLS] tokens of MCLS
        (ch. 10): the dense vector is then the mean of their hidden states, and they are
        left out of the ColBERT vectors.
        """
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, L, d)
        colbert_mask = self.colbert_mask(attention_mask, cls_mask)  # (B, L-1)
        colbert = self.colbert_vectors(hidden[:, 1:]) * colbert_mask[..., None].to(hidden.dtype)  # (B, L-1, d')
        return Embeddings(dense=self.dense_vector(hidden, cls_mask), ids=input_ids,
                          weights=self.lexical_weights(hidden), colbert=colbert, colbert_mask=colbert_mask)

    # The three heads, shared by `forward` (training) and `encode` (inference).
    @staticmethod
    def dense_vector(hidden: torch.Tensor, cls_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """e_q = normalize(h[CLS]) (Eq. 1), or with MCLS the mean of the [CLS] states (ch. 10). (B, d)"""
        if cls_mask is None:
            return F.normalize(hidden[:, 0], dim=-1)
        m = cls_mask.to(hidden.dtype)[..., None]  # (B, L, 1)
        return F.normalize((hidden * m).sum(1) / m.sum(1), dim=-1)

    def lexical_weights(self, hidden: torch.Tensor) -> torch.Tensor:
        """w_t = ReLU(W_lex^T h_t), one weight per token (Eq. 2). (..., L, d) -> (..., L)"""
        return torch.relu(self.sparse_linear(hidden)).squeeze(-1)

    def colbert_vectors(self, hidden: torch.Tensor) -> torch.Tensor:
        """E = normalize(W_mul^T H), one vector per token (Eq. 4). (..., d) -> (..., d')"""
        return F.normalize(self.colbert_linear(hidden), dim=-1)

    @staticmethod
    def colbert_mask(attention_mask: torch.Tensor, cls_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """1 on the tokens that get a ColBERT vector: real tokens after the first, no MCLS [CLS]. (B, L-1)"""
        if cls_mask is not None:
            attention_mask = attention_mask * (1 - cls_mask.to(attention_mask.dtype))
        return attention_mask[:, 1:]

    def tokenize(self, texts: Sequence[str], max_length: int, mcls_stride: Optional[int] = None,
                 warn: bool = True) -> list:
        """Token ids with <s> ... </s>, truncated to `max_length` (a warning says how many were cut).

        With `mcls_stride`, one more <s> is inserted before every `mcls_stride` content tokens
        (MCLS, paper App. B.2). The inserted tokens count towards `max_length`.
        """
        texts = _check_texts(texts)
        if max_length > self.max_length or max_length < 2:
            raise M3Error(f"max_length={max_length} is outside 2..{self.max_length} (this model's position table)")
        ids = self._content_ids(texts) if texts else []
        cls, eos = self.tokenizer.cls_token_id, self.eos_id
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

    def _content_ids(self, texts: list) -> list:
        """Token ids of each text, no special tokens. A fast tokenizer's `encode_batch_fast` gives
        the same ids as `tokenizer(texts)` without computing character offsets (a quarter faster);
        it is used only when the tokenizer file sets no truncation or padding of its own."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if hasattr(backend, "encode_batch_fast") and backend.truncation is None and backend.padding is None:
            return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
        return self.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]

    def collate(self, seqs: Sequence[list], mcls: bool = False) -> dict:
        """Right-pad token id lists into tensors on the model's device."""
        pad, cls = self.tokenizer.pad_token_id, self.tokenizer.cls_token_id
        ids = np.full((len(seqs), max(map(len, seqs))), pad, dtype=np.int64)  # (B, L)
        mask = np.zeros(ids.shape, dtype=np.int64)  # (B, L) real tokens first
        for row, seq in enumerate(seqs):
            ids[row, :len(seq)], mask[row, :len(seq)] = seq, 1
        batch = {"input_ids": torch.from_numpy(ids).to(self.device),
                 "attention_mask": torch.from_numpy(mask).to(self.device)}
        if mcls:
            batch["cls_mask"] = (batch["input_ids"] == cls) & batch["attention_mask"].bool()
        return batch

    def embed(self, texts: Sequence[str], max_length: int = 512, warn: bool = False) -> Embeddings:
        """Tokenize and encode with gradients (training); padding is per call. Training
        truncates to its max lengths silently, as the official trainer does."""
        return self(**self.collate(self.tokenize(texts, max_length, warn=warn)))

    # ---------------------------------------------------------------- inference
    @torch.inference_mode()
    def encode(self, texts, batch_size: int = 32, max_length: int = 8192, return_dense: bool = True,
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
        long documents (ch. 10).
        """
        single = isinstance(texts, str)
        seqs = self.tokenize([texts] if single else texts, min(max_length, self.max_length), mcls_stride)
        if batch_size < 1:
            raise M3Error(f"batch_size must be >= 1, got {batch_size}")
        was_training = self.training
        self.eval()
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
        dense, sparse, colbert = [None] * len(seqs), [None] * len(seqs), [None] * len(seqs)
        batches = length_batches([len(seqs[i]) for i in order], batch_size, max_tokens or batch_size * 512)
        if show_progress is None:
            show_progress = len(batches) >= 20
        autocast = torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None and self.device.type == "cuda")
        from tqdm import tqdm
        for start, end in tqdm(batches, desc="encode", disable=not show_progress):
            idx = order[start:end]
            batch = self.collate([seqs[i] for i in idx], mcls=bool(mcls_stride))
            with autocast:  # only the requested heads, and ColBERT only on real tokens
                hidden = self.encoder(input_ids=batch["input_ids"],
                                      attention_mask=batch["attention_mask"]).last_hidden_state  # (B, L, d)
                if return_dense:
                    vecs = self.dense_vector(hidden, batch.get("cls_mask")).float().cpu().numpy()  # (B, d)
                    for i, v in zip(idx, vecs):
                        dense[i] = v
                if return_sparse:
                    weights = self.lexical_weights(hidden).float()  # (B, L)
                    for i, d in zip(idx, self._lexical_dicts(batch["input_ids"], weights)):
                        sparse[i] = d
                if return_colbert:
                    keep = self.colbert_mask(batch["attention_mask"], batch.get("cls_mask")).bool()  # (B, L-1)
                    vecs = self.colbert_vectors(hidden[:, 1:][keep]).float().cpu().numpy()  # (tokens, d')
                    for i, v in zip(idx, np.split(vecs, keep.sum(1).cumsum(0)[:-1].tolist())):
                        colbert[i] = v
        self.train(was_training)
        d = self.encoder.config.hidden_size
        out = EncodeOutput(
            dense=(np.stack(dense) if dense else np.zeros((0, d), np.float32)) if return_dense else None,
            sparse=sparse if return_sparse else None,
            colbert=colbert if return_colbert else None)
        if single:
            out = EncodeOutput(*(x[0] if x is not None else None for x in (out.dense, out.sparse, out.colbert)))
        return out

    def _lexical_dicts(self, ids: torch.Tensor, weights: torch.Tensor) -> list:
        """Per text {token id: max weight} without ignored ids and zero weights (ch. 02)."""
        vocab, vectors = term_weight_vectors(ids, weights, self.ignore_ids)  # (U,), (B, U)
        rows, cols = vectors.nonzero(as_tuple=True)  # row-major: each text's entries together
        counts = torch.bincount(rows, minlength=ids.shape[0]).tolist()
        keys, vals = vocab[cols].tolist(), vectors[rows, cols].tolist()
        out, start = [], 0
        for n in counts:
            out.append(dict(zip(keys[start:start + n], vals[start:start + n])))
            start += n
        return out

    @torch.inference_mode()
    def compute_score(self, pairs, weights: Sequence[float] = (1.0, 1.0, 1.0), max_query_length: int = 512,
                      max_passage_length: int = 512, batch_size: int = 256,
                      colbert_max_over_padding: bool = False) -> dict:
        """Scores of (query, passage) pairs in all modes (official `compute_score`; ch. 04).

        Returns lists for "dense", "sparse", "colbert", "sparse+dense" and
        "colbert+sparse+dense". The combinations are weighted averages sum(w*s)/sum(w) with
        weights = (w_dense, w_sparse, w_colbert). A single (query, passage) tuple gives
        floats. Pairs are batched in input order, as the official code does.
        `colbert_max_over_padding=True` reproduces its batch-dependent ColBERT max.
        """
        # one pair, as a tuple or a 2-list of strings (as FlagEmbedding accepts it)
        single = isinstance(pairs, (tuple, list)) and len(pairs) == 2 and all(isinstance(x, str) for x in pairs)
        pairs = [pairs] if single else list(pairs)
        for i, pair in enumerate(pairs):
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                raise M3Error(f"pairs[{i}] is not a (query, passage) pair")
        if len(weights) != 3:
            raise M3Error("weights needs 3 values (w_dense, w_sparse, w_colbert)")
        was_training = self.training
        self.eval()
        keys = ("dense", "sparse", "colbert", "sparse+dense", "colbert+sparse+dense")
        result = {k: [] for k in keys}
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start:start + batch_size]
            q = self.embed([p[0] for p in chunk], max_query_length, warn=True)
            p = self.embed([p[1] for p in chunk], max_passage_length, warn=True)
            d = s_dense(q.dense, p.dense, pairwise=True)
            s = s_lex(q.ids, q.weights, p.ids, p.weights, self.ignore_ids, pairwise=True)
            c = s_mul(q.colbert, p.colbert, q.colbert_mask, p.colbert_mask, colbert_max_over_padding, pairwise=True)
            for key, val in zip(keys, (d, s, c, weighted_average((d, s), weights[:2]), weighted_average((d, s, c), weights))):
                result[key].extend(val.float().cpu().tolist())
        self.train(was_training)
        return {k: v[0] for k, v in result.items()} if single else result

    # ----------------------------------------------------------------- training
    def training_loss(self, queries: Sequence[str], passages: Sequence[Sequence[str]],
                      config: Optional[M3Config] = None, step: int = 0, max_query_length: int = 512,
                      max_passage_length: int = 512, teacher_scores=None, kd_kind: str = "m3_kd_loss") -> dict:
        """Every score and loss of one training batch (paper Sec. 3.3; ch. 05-06).

        passages[i] = [positive, negative, ...], the same G for every query. Returns
        tau-scaled scores s_dense, s_lex, s_mul, s_inter, each (B, B*G), and the losses
        L_dense, L_lex, L_mul, L_inter, L, L_prime, L_final (differentiable scalars).
        `teacher_scores` (B, G) switch on teacher distillation (`kd_kind`).
        """
        config = config or M3Config()
        if not queries or len(queries) != len(passages):
            raise M3Error(f"need one passage group per query: {len(queries)} queries, {len(passages)} groups")
        group_size = len(passages[0])
        for i, group in enumerate(passages):
            if isinstance(group, str) or len(group) != group_size or group_size == 0:
                raise M3Error(f"passages[{i}] has {1 if isinstance(group, str) else len(group)} passages; "
                              f"every group needs the same number (G={group_size} from passages[0]), positive first")
        q = self.embed(queries, max_query_length)
        p = self.embed([t for group in passages for t in group], max_passage_length)
        teacher = None
        if teacher_scores is not None:
            teacher = torch.softmax(torch.as_tensor(teacher_scores, dtype=torch.float, device=self.device)
                                    .view(len(queries), group_size), dim=-1)
        scores = m3_scores(q, p, config, self.ignore_ids)
        targets = group_targets(len(queries), group_size, device=self.device)
        return m3_loss(**scores, targets=targets, config=config, step=step, teacher_targets=teacher,
                       kd_kind=kd_kind, group_size=group_size)

    # -------------------------------------------------------------- checkpoints
    @classmethod
    def from_pretrained(cls, path, init_heads: bool = False, colbert_dim: int = -1,
                        device: Optional[str] = None) -> "M3Model":
        """Load a checkpoint in the official BGE-M3 layout (a local directory or a hub id).

        Head files are loaded safely (`weights_only=True`). A directory without
        `colbert_linear.pt` / `sparse_linear.pt` is an error unless `init_heads=True`, which
        starts the heads fresh on a plain encoder such as `xlm-roberta-large`.
        """
        from transformers import AutoModel, AutoTokenizer
        path = os.fspath(path)
        if os.path.isfile(path):
            raise M3Error(f"{path} is a file; give the checkpoint directory")
        if not os.path.isdir(path):
            if not _HUB_ID.match(path) or path.startswith((".", "/")):
                raise M3Error(f"no checkpoint directory at {path}")
            path = _download(path)
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise M3Error(f"{path} is not a model checkpoint: it has no config.json")
        heads = {name: os.path.join(path, f"{name}.pt") for name in HEAD_FILES}
        missing = [f"{name}.pt" for name, f in heads.items() if not os.path.isfile(f)]
        if missing and not init_heads:
            raise M3Error(f"{path} has no {' or '.join(missing)}, so it is not an M3 checkpoint; "
                          f"pass init_heads=True to start fresh heads on this encoder")
        states = {n: torch.load(f, map_location="cpu", weights_only=True) for n, f in heads.items() if os.path.isfile(f)}
        if "colbert_linear" in states:
            colbert_dim = states["colbert_linear"]["weight"].shape[0]
        try:
            encoder = AutoModel.from_pretrained(path, add_pooling_layer=False)
        except TypeError:  # encoders without a pooler option
            encoder = AutoModel.from_pretrained(path)
        model = cls(encoder, AutoTokenizer.from_pretrained(path), colbert_dim)
        for name, state in states.items():
            getattr(model, name).load_state_dict(state)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return model.to(device).float().eval()

    def save_pretrained(self, out_dir) -> None:
        """Write the official layout: encoder files, tokenizer, colbert_linear.pt, sparse_linear.pt."""
        os.makedirs(out_dir, exist_ok=True)
        self.encoder.save_pretrained(out_dir)
        self.tokenizer.save_pretrained(out_dir)
        for name in HEAD_FILES:
            state = {k: v.detach().cpu().clone() for k, v in getattr(self, name).state_dict().items()}
            torch.save(state, os.path.join(out_dir, f"{name}.pt"))


def m3_scores(q: Embeddings, p: Embeddings, config: M3Config, ignore_ids: Sequence[int]) -> dict:
    """tau-scaled s_dense, s_lex, s_mul of every query against every passage, each (B, N)."""
    tau = config.temperature
    out = {"s_dense": s_dense(q.dense, p.dense) / tau, "s_lex": None, "s_mul": None}
    if config.unified:
        out["s_lex"] = s_lex(q.ids, q.weights, p.ids, p.weights, ignore_ids) / tau
        out["s_mul"] = s_mul(q.colbert, p.colbert, q.colbert_mask, p.colbert_mask,
                             config.colbert_max_over_padding) / tau
    return out


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


def _check_texts(texts) -> list:
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, (list, tuple)):
        raise M3Error(f"texts must be a string or a list of strings, got {type(texts).__name__}")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise M3Error(f"texts[{i}] is a {type(t).__name__}, not a string")
    return list(texts)


def _download(hub_id: str) -> str:
    """Fetch a checkpoint from the Hugging Face hub (needs network; `BAAI/bge-m3`)."""
    from huggingface_hub import snapshot_download
    try:
        return snapshot_download(hub_id)
    except Exception as exc:  # offline, unknown repo, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise M3Error(f"cannot fetch {hub_id!r} from the hub: {first}") from None
