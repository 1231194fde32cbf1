"""M3Model: one encoder, three retrieval heads (paper Sec. 3.2, Fig. 2; book ch. 00-04).

    hidden = encoder(tokens)                               # (B, L, d)
    dense   = normalize(hidden[:, 0])                      # [CLS], (B, d)
    lexical = relu(sparse_linear(hidden))                  # one weight per token, (B, L)
    colbert = normalize(colbert_linear(hidden[:, 1:]))     # every token after [CLS], (B, L-1, d')

Checkpoints use the official BGE-M3 layout: the encoder's own files, `colbert_linear.pt`,
`sparse_linear.pt` and the tokenizer, so FlagEmbedding loads what m3ref saves and the
other way round. The FlagEmbedding-compatible API (`encode`, `compute_score`, `tokenize`,
`collate`) lives in `inference.py` and is bound here as methods; `training_loss` tokenizes,
encodes (`batching.split_batch_forward`) and hands the embeddings to `losses.m3_objective`.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, fields
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import inference
from .batching import split_batch_forward
from .config import M3Config
from .data import is_hub_id
from .errors import M3Error, first_line, writing
from .losses import m3_objective

HEAD_FILES = ("colbert_linear", "sparse_linear")


@dataclass
class Embeddings:
    """Differentiable outputs of one forward pass (training and scoring)."""
    dense: torch.Tensor  # (B, d)
    ids: torch.Tensor  # (B, L) token ids, padding = pad id
    weights: torch.Tensor  # (B, L) lexical weights ReLU(W_lex h)
    colbert: torch.Tensor  # (B, L-1, d') zero on padding
    colbert_mask: torch.Tensor  # (B, L-1) 1 on real tokens after [CLS]

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "Embeddings":
        """`fn` applied to every field (select rows, gather across ranks, ...)."""
        return Embeddings(*(fn(getattr(self, f.name)) for f in fields(Embeddings)))

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
        return self.map(lambda t: t[index])

    @staticmethod
    def cat(parts: Sequence["Embeddings"], pad_id: int) -> "Embeddings":
        """Concatenate sub-batches along B, padding L to the longest one."""
        length = max(p.ids.shape[1] for p in parts)
        parts = [p.pad(length, pad_id) for p in parts]
        return Embeddings(*(torch.cat([getattr(p, f.name) for p in parts]) for f in fields(Embeddings)))


class M3Model(nn.Module):
    """An encoder (any `transformers.AutoModel`) plus BGE-M3's two heads, each with bias.

    `config` (an `M3Config`) sets the ColBERT width and the defaults of `encode`,
    `compute_score` and `training_loss`.
    """

    def __init__(self, encoder: nn.Module, tokenizer, config: Optional[M3Config] = None):
        super().__init__()
        self.config = config = config or M3Config()
        hidden = encoder.config.hidden_size
        self.encoder, self.tokenizer = encoder, tokenizer
        self.colbert_linear = nn.Linear(hidden, hidden if config.colbert_dim <= 0 else config.colbert_dim)
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

    # The FlagEmbedding-compatible API lives in m3ref/inference.py; these bind it as methods.
    tokenize = inference.tokenize
    collate = inference.collate
    embed = inference.embed
    encode = inference.encode
    compute_score = inference.compute_score

    # ----------------------------------------------------------------- training
    def training_loss(self, queries: Sequence[str], passages: Sequence[Sequence[str]],
                      config: Optional[M3Config] = None, step: int = 0, teacher_scores=None,
                      max_query_length: int = 512, max_passage_length: int = 512,
                      sub_batch_size=None, checkpoint_sub_batches: bool = False) -> dict:
        """Every score and loss of one training batch (paper Sec. 3.3; ch. 05-06, 08).

        passages[i] = [positive, negative, ...], the same G for every query. Returns
        tau-scaled scores s_dense, s_lex, s_mul, s_inter, each (B, B*G), and the losses
        L_dense, L_lex, L_mul, L_inter, L, L_prime, L_final (differentiable scalars).
        `teacher_scores` (B, G) switch on teacher distillation (`config.kd_loss_type`).
        `sub_batch_size` and `checkpoint_sub_batches` encode in sub-batches (split-batch,
        `batching.split_batch_forward`): the numbers stay the same. The trainer calls this too.
        """
        config = config or self.config
        if not queries or len(queries) != len(passages):
            raise M3Error(f"need one passage group per query: {len(queries)} queries, {len(passages)} groups")
        group_size = len(passages[0])
        for i, group in enumerate(passages):
            if isinstance(group, str) or len(group) != group_size or group_size == 0:
                raise M3Error(f"passages[{i}] has {1 if isinstance(group, str) else len(group)} passages; "
                              f"every group needs the same number (G={group_size} from passages[0]), positive first")
        with warnings.catch_warnings():  # truncation to the max lengths is routine in training
            warnings.simplefilter("ignore")
            q_ids = self.tokenize(queries, max_query_length)
            p_ids = self.tokenize([t for group in passages for t in group], max_passage_length)
        q = split_batch_forward(self, self.collate(q_ids), sub_batch_size, checkpoint_sub_batches)  # (B, ...)
        p = split_batch_forward(self, self.collate(p_ids), sub_batch_size, checkpoint_sub_batches)  # (B*G, ...)
        return m3_objective(q, p, config, self.ignore_ids, self.tokenizer.pad_token_id, group_size, step,
                            teacher_scores)

    # -------------------------------------------------------------- checkpoints
    @classmethod
    def from_pretrained(cls, path, init_heads: bool = False, config: Optional[M3Config] = None,
                        device: Optional[str] = None) -> "M3Model":
        """Load a checkpoint in the official BGE-M3 layout (a local directory or a hub id).

        Head files are loaded safely (`weights_only=True`). A directory without
        `colbert_linear.pt` / `sparse_linear.pt` is an error unless `init_heads=True`, which
        starts the heads fresh (`config.colbert_dim` wide) on a plain encoder such as
        `xlm-roberta-large`. Loaded heads keep their own width. A missing, truncated or
        unsafe file is an `M3Error` that names it.
        """
        from transformers import AutoModel, AutoTokenizer
        config = config or M3Config()
        path = os.fspath(path)
        if os.path.isfile(path):
            raise M3Error(f"{path} is a file; give the checkpoint directory")
        if not os.path.isdir(path):
            if not is_hub_id(path):
                raise M3Error(f"no checkpoint directory at {path}")
            path = _download(path)
        check_model_dir(path, heads=not init_heads)
        heads = {name: os.path.join(path, f"{name}.pt") for name in HEAD_FILES}
        states = {n: _head_state(f) for n, f in heads.items() if os.path.isfile(f)}
        weights = next(f for f in WEIGHT_FILES if os.path.isfile(os.path.join(path, f)))
        try:
            try:
                encoder = AutoModel.from_pretrained(path, add_pooling_layer=False)
            except TypeError:  # encoders without a pooler option
                encoder = AutoModel.from_pretrained(path)
        except Exception as exc:  # noqa: BLE001 - a bad encoder file becomes one line naming it
            raise _load_error(os.path.join(path, weights), exc, "cannot load the encoder") from None
        if "colbert_linear" in states:
            width = states["colbert_linear"]["weight"].shape[0]
            config = config.replace(colbert_dim=-1 if width == encoder.config.hidden_size else width)
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
        except Exception as exc:  # noqa: BLE001
            tok = next((f for f in TOKENIZER_FILES if os.path.isfile(os.path.join(path, f))), "")
            raise _load_error(os.path.join(path, tok), exc, "cannot load the tokenizer") from None
        model = cls(encoder, tokenizer, config)
        for name, state in states.items():
            try:
                getattr(model, name).load_state_dict(state)
            except RuntimeError as exc:
                raise M3Error(f"{heads[name]}: does not fit this encoder ({_first_sentence(exc)})") from None
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return model.to(device).float().eval()

    def save_pretrained(self, out_dir) -> None:
        """Write the official layout: encoder files, tokenizer, colbert_linear.pt, sparse_linear.pt.
        A failed write (a full disk, a read-only directory) is an `M3Error` naming the file."""
        out_dir = os.fspath(out_dir)
        with writing(out_dir):
            os.makedirs(out_dir, exist_ok=True)
        with writing(os.path.join(out_dir, "model.safetensors")):
            self.encoder.save_pretrained(out_dir)
        with writing(os.path.join(out_dir, "tokenizer.json")):
            self.tokenizer.save_pretrained(out_dir)
        for name in HEAD_FILES:
            state = {k: v.detach().cpu().clone() for k, v in getattr(self, name).state_dict().items()}
            save_torch_file(state, os.path.join(out_dir, f"{name}.pt"))


# Files of a checkpoint directory: encoder weights (one of them), tokenizer (one of them).
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "sentencepiece.bpe.model", "spiece.model", "vocab.txt", "vocab.json")


def check_model_dir(path, heads: bool = True) -> None:
    """Raise `M3Error` naming the first missing or unreadable file of a checkpoint directory:
    config.json (valid JSON), the encoder weights (a safetensors header that covers the file),
    a tokenizer file and, with `heads`, both head files. Reads headers only, not the weights."""
    import json
    path = os.fspath(path)
    cfg = os.path.join(path, "config.json")
    if not os.path.isfile(cfg):
        raise M3Error(f"{path} is not a model checkpoint: it has no config.json")
    try:
        with open(cfg, encoding="utf-8") as f:
            json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise M3Error(f"{cfg}: not valid JSON ({_first_sentence(exc)}); the file is truncated or corrupt") from None
    weights = [f for f in WEIGHT_FILES if os.path.isfile(os.path.join(path, f))]
    if not weights:
        raise M3Error(f"{path} has no encoder weights (model.safetensors or pytorch_model.bin)")
    if weights[0] == "model.safetensors":
        from safetensors import safe_open
        file = os.path.join(path, weights[0])
        try:
            with safe_open(file, "pt") as f:  # checks that the header covers the whole file
                f.keys()
        except Exception as exc:  # noqa: BLE001
            raise M3Error(f"{file}: cannot be read, the file is truncated or corrupt "
                          f"({_first_sentence(exc)})") from None
    if not any(os.path.isfile(os.path.join(path, f)) for f in TOKENIZER_FILES):
        raise M3Error(f"{path} has no tokenizer.json (nor another tokenizer file), so its tokenizer "
                      f"cannot be loaded")
    missing = [f"{name}.pt" for name in HEAD_FILES if not os.path.isfile(os.path.join(path, f"{name}.pt"))]
    if missing and heads:
        raise M3Error(f"{path} has no {' or '.join(missing)}, so it is not an M3 checkpoint; "
                      f"pass init_heads=True to start fresh heads on this encoder")


def load_torch_file(file, map_location="cpu"):
    """`torch.load(file, weights_only=True)`; a missing, truncated or unsafe file is an
    `M3Error` naming it (a pickle that asks for code is refused, never loaded)."""
    file = os.fspath(file)
    if not os.path.isfile(file):
        raise M3Error(f"{file}: missing")
    try:
        return torch.load(file, map_location=map_location, weights_only=True)
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001
        raise _load_error(file, exc, "cannot be read, the file is truncated or corrupt") from None


def save_torch_file(obj, file) -> None:
    """`torch.save` through a Python file, so that a full disk is an OSError with its errno;
    a failed write is an `M3Error` naming the file."""
    file = os.fspath(file)
    with writing(file):
        with open(file, "wb") as f:
            torch.save(obj, f)


def _head_state(file: str) -> dict:
    state = load_torch_file(file)
    if not (isinstance(state, dict) and isinstance(state.get("weight"), torch.Tensor)
            and isinstance(state.get("bias"), torch.Tensor)):
        raise M3Error(f"{file}: not a linear head's state dict (expected tensors 'weight' and 'bias')")
    return state


def _first_sentence(exc: BaseException) -> str:
    """The first line of an error, cut at its first sentence (library messages go on with advice)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[:1].lower() + exc.strerror[1:]
    line = first_line(exc)
    return line.split(". ")[0].rstrip(".")


def _load_error(file: str, exc: BaseException, what: str) -> M3Error:
    """One line for a file that failed to load. A pickle refused by `weights_only=True` is
    called unsafe; torch's advice to load it with weights_only=False is not repeated."""
    import re
    text = str(exc)
    if "Weights only load failed" in text and re.search(r"GLOBAL|[Uu]nsupported", text):
        asked = re.search(r"GLOBAL ([\w.]+)", text)
        return M3Error(f"{file}: refused as unsafe: it holds pickled objects, not only tensors"
                       + (f" (it asks for {asked.group(1)})" if asked else ""))
    return M3Error(f"{file}: {what} ({_first_sentence(exc)})")


def _download(hub_id: str) -> str:
    """Fetch a checkpoint from the Hugging Face hub (needs network; `BAAI/bge-m3`)."""
    from huggingface_hub import snapshot_download
    try:
        return snapshot_download(hub_id)
    except Exception as exc:  # offline, unknown repo, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise M3Error(f"cannot fetch {hub_id!r} from the hub: {first}") from None
