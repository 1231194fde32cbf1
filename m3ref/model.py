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
        self.st_config = None  # config_sentence_transformers.json of the loaded checkpoint (its prompts)
        self.colbert_linear = nn.Linear(hidden, hidden if config.colbert_dim <= 0 else config.colbert_dim)
        self.sparse_linear = nn.Linear(hidden, 1)
        if config.sparse_init_bias is not None:  # every token starts at weight sparse_init_bias
            nn.init.zeros_(self.sparse_linear.weight)
            nn.init.constant_(self.sparse_linear.bias, config.sparse_init_bias)
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
        return Embeddings(dense=self.dense_vector(hidden, cls_mask, attention_mask), ids=input_ids,
                          weights=self.lexical_weights(hidden), colbert=colbert, colbert_mask=colbert_mask)

    # The three heads, shared by `forward` (training) and `encode` (inference).
    def dense_vector(self, hidden: torch.Tensor, cls_mask: Optional[torch.Tensor] = None,
                     attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """e_q = normalize(h[CLS]) (Eq. 1), or with MCLS the mean of the [CLS] states (ch. 10). (B, d)

        `config.pooling` "mean" (over real tokens) or "last_token" (the last real token) and
        `config.normalize_embeddings=False` are the official code's alternatives."""
        pooling = self.config.pooling
        if cls_mask is not None:
            if pooling != "cls":
                raise M3Error(f"MCLS needs pooling='cls' (the model's pooling is {pooling!r})")
            m = cls_mask.to(hidden.dtype)[..., None]  # (B, L, 1)
            vector = (hidden * m).sum(1) / m.sum(1)
        elif pooling == "cls":
            vector = hidden[:, 0]
        else:
            mask = torch.ones(hidden.shape[:2], device=hidden.device) if attention_mask is None else attention_mask
            if pooling == "mean":
                m = mask.to(hidden.dtype)[..., None]  # (B, L, 1)
                vector = (hidden * m).sum(1) / m.sum(1)
            else:  # last_token: right padding, so the last real token is at length - 1
                last = mask.long().sum(1) - 1  # (B,)
                vector = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return F.normalize(vector, dim=-1) if self.config.normalize_embeddings else vector

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
                      sub_batch_size=None, checkpoint_sub_batches: bool = False,
                      in_batch_negatives: bool = True) -> dict:
        """Every score and loss of one training batch (paper Sec. 3.3; ch. 05-06, 08).

        passages[i] = [positive, negative, ...], the same G for every query. Returns
        tau-scaled scores s_dense, s_lex, s_mul, s_inter, each (B, B*G), and the losses
        L_dense, L_lex, L_mul, L_inter, L, L_prime, L_final (differentiable scalars).
        `teacher_scores` (B, G) switch on teacher distillation (`config.kd_loss_type`).
        `sub_batch_size` and `checkpoint_sub_batches` encode in sub-batches (split-batch,
        `batching.split_batch_forward`): the numbers stay the same. `in_batch_negatives=False`
        scores each query against its own G passages only (an official `no_in_batch_neg`
        dataset; `losses.m3_objective`). The trainer calls this too.
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
                            teacher_scores, in_batch_negatives)

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
        path = os.fspath(path)
        if os.path.isfile(path):
            raise M3Error(f"{path} is a file; give the checkpoint directory")
        if not os.path.isdir(path):
            if not is_hub_id(path):
                raise M3Error(f"no checkpoint directory at {path}")
            path = _download(path)
        check_model_dir(path, heads=not init_heads)
        config = _dense_config(path, config)
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
        model.st_config = read_json(os.path.join(path, ST_CONFIG))  # prompts etc., kept by save_pretrained
        for name, state in states.items():
            try:
                getattr(model, name).load_state_dict(state)
            except RuntimeError as exc:
                raise M3Error(f"{heads[name]}: does not fit this encoder ({_first_sentence(exc)})") from None
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return model.to(device).float().eval()

    def save_pretrained(self, out_dir) -> None:
        """Write the official layout: encoder files, tokenizer, colbert_linear.pt, sparse_linear.pt,
        and the sentence-transformers files of the dense vector (`save_sentence_transformers`).
        A failed write (a full disk, a read-only directory) is an `M3Error` naming the file."""
        out_dir = os.fspath(out_dir)
        with writing(out_dir):
            os.makedirs(out_dir, exist_ok=True)
        with writing(os.path.join(out_dir, "model.safetensors")):
            self.encoder.save_pretrained(out_dir)
        with writing(os.path.join(out_dir, "tokenizer.json")):
            self.tokenizer.save_pretrained(out_dir)
        tok_config = os.path.join(out_dir, "tokenizer_config.json")
        values = read_json(tok_config)
        if values is not None and values.get("tokenizer_class") == "TokenizersBackend":
            # transformers 5's name for a plain tokenizer.json; 4.x knows it as PreTrainedTokenizerFast,
            # which 5.x reads as the same class
            write_json(tok_config, {**values, "tokenizer_class": "PreTrainedTokenizerFast"})
        for name in HEAD_FILES:
            state = {k: v.detach().cpu().clone() for k, v in getattr(self, name).state_dict().items()}
            save_torch_file(state, os.path.join(out_dir, f"{name}.pt"))
        self.save_sentence_transformers(out_dir)

    def save_sentence_transformers(self, out_dir) -> None:
        """The files through which `SentenceTransformer(out_dir)` computes this model's dense
        vector, as the official BAAI/bge-m3 ships them: modules.json (the encoder, pooling,
        normalisation), 1_Pooling/config.json (`config.pooling`), sentence_bert_config.json
        (the maximum length) and config_sentence_transformers.json (kept from the loaded
        checkpoint: its prompts). Without them sentence-transformers mean-pools silently."""
        out_dir = os.fspath(out_dir)
        modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                   {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
        if self.config.normalize_embeddings:
            modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                            "type": "sentence_transformers.models.Normalize"})
            with writing(os.path.join(out_dir, "2_Normalize")):
                os.makedirs(os.path.join(out_dir, "2_Normalize"), exist_ok=True)
        with writing(os.path.join(out_dir, "1_Pooling")):
            os.makedirs(os.path.join(out_dir, "1_Pooling"), exist_ok=True)
        pooling = {"word_embedding_dimension": self.encoder.config.hidden_size,
                   **{key: self.config.pooling == name for name, key in ST_POOLING.items()},
                   "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False,
                   "pooling_mode_weightedmean_tokens": False, "include_prompt": True}
        write_json(os.path.join(out_dir, "1_Pooling", "config.json"), pooling)
        write_json(os.path.join(out_dir, "modules.json"), modules)
        write_json(os.path.join(out_dir, "sentence_bert_config.json"),
                   {"max_seq_length": self.max_length, "do_lower_case": False})
        st_config = getattr(self, "st_config", None) or {"prompts": {}, "default_prompt_name": None,
                                                          "similarity_fn_name": "cosine"}
        write_json(os.path.join(out_dir, ST_CONFIG), st_config)


# sentence-transformers: the 1_Pooling/config.json key of each pooling (`M3Config.pooling`).
ST_POOLING = {"cls": "pooling_mode_cls_token", "mean": "pooling_mode_mean_tokens", "last_token": "pooling_mode_lasttoken"}
ST_CONFIG = "config_sentence_transformers.json"


def read_json(file):
    """A JSON file's value, or None when the file is missing or is not valid JSON."""
    import json
    try:
        with open(file, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_json(file, value) -> None:
    import json
    with writing(file):
        with open(file, "w", encoding="utf-8") as f:
            f.write(json.dumps(value, indent=2) + "\n")


def declared_dense(path) -> Optional[dict]:
    """How a checkpoint's sentence-transformers files compute the dense vector:
    {"pooling": ..., "normalize_embeddings": ...}, or None without a modules.json. A pooling
    m3ref does not have (max, weighted mean) is returned by its sentence-transformers name."""
    modules = read_json(os.path.join(path, "modules.json"))
    if not isinstance(modules, list):
        return None
    types = {str(m.get("type", "")).rsplit(".", 1)[-1]: m for m in modules if isinstance(m, dict)}
    pooling = "cls"
    if "Pooling" in types:
        values = read_json(os.path.join(path, types["Pooling"].get("path", ""), "config.json")) or {}
        mode = values.get("pooling_mode") or next((k for k, v in values.items() if k.startswith("pooling_mode_") and v),
                                                  "pooling_mode_mean_tokens")
        names = {**{key: name for name, key in ST_POOLING.items()}, "lasttoken": "last_token"}
        pooling = names.get(mode, mode if mode in ST_POOLING else mode.removeprefix("pooling_mode_"))
    return {"pooling": pooling, "normalize_embeddings": "Normalize" in types}


def _dense_config(path, config: Optional[M3Config]) -> M3Config:
    """`config`, or when it is None an M3Config with the pooling and normalisation that the
    checkpoint's sentence-transformers files declare (M3's CLS + normalisation without them).
    A given config that disagrees with those files wins, with a warning."""
    from .config import POOLING
    from .errors import M3Warning
    declared = declared_dense(path)
    if config is None:
        if declared is None:
            return M3Config()
        if declared["pooling"] not in POOLING:
            warnings.warn(f"{path}: its sentence-transformers pooling {declared['pooling']!r} is not one of "
                          f"{', '.join(POOLING)}; the dense vector uses 'cls'", M3Warning)
            declared["pooling"] = "cls"
        return M3Config(**declared)
    if declared is not None and declared != {k: getattr(config, k) for k in declared}:
        warnings.warn(f"{path}: its sentence-transformers files declare {declared}, the config says "
                      f"pooling={config.pooling!r}, normalize_embeddings={config.normalize_embeddings}: the config "
                      f"is used, and save_pretrained writes it", M3Warning)
    return config


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
