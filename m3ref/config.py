"""Every setting of m3ref, in two dataclasses (book ch. 00, 06, 08).

* `M3Config`: the objective and the model's defaults: tau, the weights w and lambda, the
  divisors of L, L' and L_final, self-distillation, teacher distillation, cross-device
  negatives, the ColBERT width, the ColBERT max and MCLS. `M3Model`, its `encode`,
  `compute_score` and `training_loss`, and the trainer all read it.
* `TrainConfig`: one training run (data, stages, batches, optimiser, checkpoints). It holds
  an `M3Config` as `m3`; a YAML file sets it in a nested `m3:` block.

Two presets of `M3Config` cover the two published definitions of the loss:

* ``official``: the constants of the official code (FlagEmbedding,
  ``EncoderOnlyEmbedderM3Model.forward``): L' is divided by 3, then the final loss by 2.
* ``paper``: the formulas as printed in the arXiv revision of the paper (Sec. 3.3): the
  same weights, but L' is the plain weighted sum, no /3.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field, replace
from typing import Optional, Union

from .errors import M3Error

# Length buckets of the official `split_data_by_length.py`, in tokens (paper Sec. 3.4).
LENGTH_EDGES = (0, 500, 1000, 2000, 3000, 4000, 5000, 6000, 7000)
# Per-GPU fine-tuning batch size by bucket start (G = 8, 80 GB GPUs; legacy research/BGE_M3/
# data.py). Times 24 GPUs it is the paper's Table 9 fine-tuning column, 1152 ... 192.
# A YAML file names it as `batch_size: table9`.
BATCH_SIZE_TABLES = {"table9": {0: 48, 500: 32, 1000: 20, 2000: 18, 3000: 14, 4000: 14, 5000: 12,
                                6000: 10, 7000: 8}}
# Which scores see the passages of every rank: none, the dense one (official), or all three.
CROSS_DEVICE = ("none", "dense", "all")
KD_LOSS_TYPES = ("m3_kd_loss", "kl_div")
# How the dense vector pools the last hidden states: [CLS] (M3, Eq. 1), the mean of the real
# tokens, or the last real token (the official `sentence_pooling_method` choices).
POOLING = ("cls", "mean", "last_token")


@dataclass(frozen=True)
class M3Config:
    # Training temperature tau in exp(s / tau). 0.02 is the official default. The paper
    # does not state it. All three scores are divided by the same tau, including s_lex,
    # which is not normalised, so the lexical logits are scaled by 50.
    temperature: float = 0.02
    # w = (w1, w2, w3) in s_inter = w1*s_dense + w2*s_lex + w3*s_mul (paper Sec. 3.3). The
    # official `ensemble_score` hard-codes (1, 0.3, 1).
    ensemble_weights: tuple[float, float, float] = (1.0, 0.3, 1.0)
    # lambda = (l1, l2, l3), the weights of the dense, lexical and multi-vector losses in
    # L and L' (paper Sec. 3.3). The lexical score is not normalised (unbounded), and gets 0.1.
    loss_weights: tuple[float, float, float] = (1.0, 0.1, 1.0)
    # L = (l1*L_dense + l2*L_lex + l3*L_mul + L_inter) / l_divisor (paper Sec. 3.3; code agrees).
    l_divisor: float = 4.0
    # L' = (l1*L'_dense + l2*L'_lex + l3*L'_mul) / l_prime_divisor. 3 in the official
    # code, 1 in the paper (Sec. 3.3).
    l_prime_divisor: float = 3.0
    # L_final = (L + L') / l_final_divisor (paper Sec. 3.3; code agrees).
    l_final_divisor: float = 2.0
    # Train the lexical and multi-vector heads too (M3's "unified fine-tuning"). When False,
    # only L_dense is optimised, as in the official `unified_finetuning=False`.
    unified: bool = True
    # Self-knowledge distillation (paper Sec. 3.3) on or off.
    self_distill: bool = True
    # L' is added only when step > self_distill_start_step. The official default is -1
    # ("from the first step"). Users report that a late start lets sparse weights collapse.
    self_distill_start_step: int = -1
    # Distillation from teacher scores (a batch's pos_scores / neg_scores) replaces each
    # mode's InfoNCE: "m3_kd_loss" (the official examples) or "kl_div" (the official default).
    kd_loss_type: str = "m3_kd_loss"
    # Scores that see the passages of every rank: "dense" (official), "all" or "none".
    cross_device: str = "dense"
    # Output size of the ColBERT projection. -1 keeps the encoder's hidden size, as BGE-M3 does.
    colbert_dim: int = -1
    # A fresh lexical head starts with W_lex = 0 and this bias: every token weighs the same, and
    # s_lex begins as a count of shared tokens (x bias^2, so s_lex / tau stays small). With
    # PyTorch's default init (None, as FlagEmbedding's fresh heads), s_lex / tau starts in the
    # hundreds, the first steps push every pre-activation below 0 and the ReLU head dies
    # (FlagEmbedding #982; book ch. 12). Heads loaded from a checkpoint keep their weights.
    sparse_init_bias: Optional[float] = 0.1
    # The dense vector: "cls" pooling and L2 normalisation are M3's definition (Eq. 1) and the
    # official defaults; "mean" / "last_token" and normalize_embeddings=False are the official
    # `sentence_pooling_method` / `normalize_embeddings` alternatives. `save_pretrained`
    # writes the same choice for sentence-transformers (1_Pooling, 2_Normalize).
    pooling: str = "cls"
    normalize_embeddings: bool = True
    # The official batched ColBERT score takes its max over padded passage positions too
    # (zero vectors, similarity 0). False = the paper's definition (max over real tokens).
    colbert_max_over_padding: bool = False
    # Multiple CLS (paper App. B.2) in `encode`: one extra [CLS] every `mcls_stride` tokens
    # of a long document (the paper: 256). None = off, as in the official code.
    mcls_stride: Optional[int] = None
    # Name of the preset this config came from, for logs and the book.
    preset: str = field(default="official")

    def __post_init__(self):
        if not (_is_number(self.temperature) and self.temperature > 0):
            raise M3Error(f"temperature must be > 0, got {self.temperature!r}")
        for name in ("ensemble_weights", "loss_weights"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or len(value) != 3:
                raise M3Error(f"{name} needs 3 values (dense, lexical, multi-vector), got {value!r}")
            object.__setattr__(self, name, tuple(value))  # YAML gives lists
            if not all(_is_number(w) for w in value):
                raise M3Error(f"{name} must be 3 finite numbers, got {value!r}")
        for name in ("l_divisor", "l_prime_divisor", "l_final_divisor"):
            if not (_is_number(getattr(self, name)) and getattr(self, name) > 0):
                raise M3Error(f"{name} must be a number > 0, got {getattr(self, name)!r}")
        if not _is_int(self.colbert_dim):
            raise M3Error(f"colbert_dim must be an integer (-1: the encoder's width), got {self.colbert_dim!r}")
        if self.mcls_stride is not None and not (_is_int(self.mcls_stride) and self.mcls_stride >= 1):
            raise M3Error(f"mcls_stride must be None (off) or an integer >= 1, got {self.mcls_stride!r}")
        if self.sparse_init_bias is not None and not (_is_number(self.sparse_init_bias) and self.sparse_init_bias > 0):
            raise M3Error(f"sparse_init_bias must be a number > 0 or None (PyTorch's init), got {self.sparse_init_bias!r}")
        if self.pooling not in POOLING:
            raise M3Error(f"pooling must be one of {', '.join(POOLING)}, got {self.pooling!r}")
        for name in ("unified", "self_distill", "colbert_max_over_padding", "normalize_embeddings"):
            if not isinstance(getattr(self, name), bool):
                raise M3Error(f"{name} must be true or false, got {getattr(self, name)!r}")
        if not (_is_int(self.self_distill_start_step) and self.self_distill_start_step >= -1):
            raise M3Error(f"self_distill_start_step must be an integer >= -1, got {self.self_distill_start_step!r}")
        if self.kd_loss_type not in KD_LOSS_TYPES:
            raise M3Error(f"kd_loss_type must be one of {', '.join(KD_LOSS_TYPES)}, got {self.kd_loss_type!r}")
        if self.cross_device not in CROSS_DEVICE:
            raise M3Error(f"cross_device must be one of {', '.join(CROSS_DEVICE)}, got {self.cross_device!r}")

    @classmethod
    def official(cls, **overrides) -> "M3Config":
        """The official code's constants (FlagEmbedding 1.4.2, `m3/modeling.py`).

        The official batched ColBERT max over padding is a quirk, not a constant, so it stays
        off here: pass `colbert_max_over_padding=True` to reproduce it too."""
        return cls(**{"preset": "official", **overrides})

    @classmethod
    def paper(cls, **overrides) -> "M3Config":
        """The paper's Sec. 3.3 formulas as printed (arXiv 2402.03216, revision with weights)."""
        return cls(**{"preset": "paper", "l_prime_divisor": 1.0, **overrides})

    @classmethod
    def from_preset(cls, name: str = "official", **overrides) -> "M3Config":
        if name not in ("official", "paper"):
            raise M3Error(f"unknown preset {name!r}: choose 'official' or 'paper'")
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        for key, value in overrides.items():
            if key not in types:
                raise M3Error(f"m3: unknown key {key!r}")
            if types[key] == "float" and isinstance(value, str):  # PyYAML reads 2e-2 as a string
                try:
                    overrides[key] = float(value)
                except ValueError:
                    raise M3Error(f"m3: {key}={value!r} is not a number") from None
            if types[key].startswith("tuple[float") and isinstance(value, list):  # [1, 1e-1, 1] too
                try:
                    overrides[key] = [float(v) if isinstance(v, str) else v for v in value]
                except ValueError:
                    raise M3Error(f"m3: {key}={value!r}: give 3 numbers") from None
        return getattr(cls, name)(**overrides)

    def replace(self, **changes) -> "M3Config":
        return replace(self, **changes)

    def summary(self) -> str:
        """The constants of the loss on one line (how ch. 00 and ch. 06 print the presets)."""
        return (f"{self.preset:>8}: tau = {self.temperature}, w = {self.ensemble_weights}, "
                f"lambda = {self.loss_weights}, L/{self.l_divisor:g}, L'/{self.l_prime_divisor:g}, "
                f"L_final = (L + L')/{self.l_final_divisor:g}")


BatchSizes = Union[int, dict, str]
DATA_FIELDS = ("train_data", "dense_train_data", "retromae_data")


@dataclass
class TrainConfig:
    # --- model and data
    # Checkpoint directory or hub id: BAAI/bge-m3 (fine-tune), xlm-roberta-large (fresh heads).
    # None builds m3ref's untrained tiny model into OUTPUT_DIR/init.
    model: Optional[str] = None
    # Fine-tuning data: a JSONL file, a directory of them, a hub dataset, or a list of these
    # (as the official --train_data); each `*_len-lo-hi` file is a bucket. A directory or file
    # whose name ends in `no_in_batch_neg` trains on each query's own group only (no in-batch
    # negatives, official). A relative `data_samples/...` path that is not in the current
    # directory is the sample shipped with m3ref.
    train_data: Union[str, list] = "data_samples/train/finetune"
    # Pairs for the dense-only stage (no negatives needed); None = `train_data`.
    dense_train_data: Union[str, list, None] = None
    output_dir: str = "runs/tiny"
    # One seed for every rank: same bucket at each step, same fresh heads.
    seed: int = 0
    # Token limits; the official example uses 512 / 512, the paper trains passages up to 8192.
    query_max_len: int = 32
    passage_max_len: int = 128
    # Length buckets for files without a `_len-` tag (official split_data_by_length edges).
    length_edges: list = field(default_factory=lambda: list(LENGTH_EDGES))
    # Official: incomplete batches are dropped. False fills them up, so no example is skipped.
    drop_last: bool = False
    # Instructions (official): a query becomes query_instruction_format.format(instruction, query),
    # where the example's `prompt` field, if any, replaces the instruction; None and no prompt =
    # the query as it is. Passages get the passage instruction the same way, and examples of
    # type symmetric_sts / symmetric_clustering get the query's instruction (or prompt) instead.
    query_instruction_for_retrieval: Optional[str] = None
    query_instruction_format: str = "{}{}"
    passage_instruction_for_retrieval: Optional[str] = None
    passage_instruction_format: str = "{}{}"
    # --- stage 0: RetroMAE pre-training (paper Sec. 3.4; RetroMAE, arXiv 2205.12035)
    # Steps of masked auto-encoding before any contrastive stage; 0 = none (BAAI/bge-m3 and
    # xlm-roberta-large are past it: the paper's encoder is XLM-R after RetroMAE).
    retromae_steps: int = 0
    # Texts to pre-train on: the `pos` passages of these training files; None = dense_train_data.
    retromae_data: Union[str, list, None] = None
    # Per-rank batch size of stage 0 (an int or {lower length: size}).
    retromae_batch_size: BatchSizes = 32
    # Share of content tokens masked: the encoder's input (RetroMAE: 15-30 %) and the
    # decoder's attention (50-70 %); RetroMAE's defaults are 0.3 and 0.5 (its Sec. 4.1).
    retromae_mask: list = field(default_factory=lambda: [0.3, 0.5])
    # --- stage 1: dense-only contrastive learning on pairs
    dense_steps: int = 0
    # Per-rank batch size, one int or {lower length: size}; big, as only G=1 (Table 9).
    dense_batch_size: BatchSizes = 16
    # --- stage 2: unified fine-tuning
    # G: one positive + G-1 hard negatives per query (paper: 7 ANCE negatives, G=8).
    group_size: int = 8
    # Per-rank batch size: an int, {lower length: size}, or the name of a table ("table9").
    batch_size: BatchSizes = 4
    # Distil from the teacher scores of examples that carry pos_scores / neg_scores, with
    # the loss `m3.kd_loss_type`. False ignores teacher scores.
    teacher_kd: bool = False
    # The objective: tau, weights, divisors, self-distillation, cross-device negatives.
    m3: M3Config = field(default_factory=M3Config)
    # Only the two heads train; the encoder is frozen (official `fix_encoder`; unified stage only).
    fix_encoder: bool = False
    # --- optimisation
    max_steps: int = 100
    # Epochs over the unified stage's data instead of max_steps: max_steps is then the steps of
    # the stages before it plus ceil(num_train_epochs * batches per epoch / grad_accum). A
    # max_steps given as well wins (as in the official HF-Trainer arguments).
    num_train_epochs: Optional[float] = None
    lr: float = 1e-5
    # The two heads (sparse_linear, colbert_linear) learn at lr * this. Below 1 it guards the
    # ReLU sparse head against dying in the first unified steps (FlagEmbedding #982; ch. 12).
    head_lr_scale: float = 1.0
    weight_decay: float = 0.01
    # Linear warm-up over this share of max_steps, then linear decay to 0.
    warmup_ratio: float = 0.1
    # Clip the global grad norm; 0 = off.
    max_grad_norm: float = 1.0
    # Micro-batches per optimizer step.
    grad_accum: int = 1
    # Autocast dtype on GPU (bf16 / fp16 with a grad scaler / fp32); CPU always runs fp32.
    precision: str = "bf16"
    # Recompute encoder activations in backward (paper Sec. 3.4): true / "layer" keeps each
    # layer's input (the official way); "sub_batch" keeps only each sub-batch's input, one
    # checkpoint per sub-batch (needs sub_batch_size; the least memory per text, ch. 08).
    gradient_checkpointing: Union[bool, str] = False
    # Split-batch: encode this many texts at a time, "auto" (legacy table) or None.
    sub_batch_size: Union[int, str, None] = None
    # --- bookkeeping
    save_every: int = 0  # checkpoint every N steps (0 = only OUTPUT_DIR/final)
    # Keep only the newest K checkpoint-N directories (None = all); final/ is not counted.
    save_total_limit: Optional[int] = None
    # Also log to OUTPUT_DIR/tb (needs the `tensorboard` extra: pip install m3ref[tensorboard]).
    tensorboard: bool = False
    # A collective that waits longer than this fails: a dead rank stops the others.
    dist_timeout_s: float = 600.0

    def __post_init__(self):
        from .assets import resolve_path
        for name in DATA_FIELDS:  # data_samples/...: the shipped sample when it is not in the current directory
            value = getattr(self, name)
            setattr(self, name, [resolve_path(v) for v in value] if isinstance(value, list) else resolve_path(value))
        if isinstance(self.m3, dict):  # the nested `m3:` block of a YAML file
            values = dict(self.m3)
            self.m3 = M3Config.from_preset(values.pop("preset", "official"), **values)
        for name in ("batch_size", "dense_batch_size", "retromae_batch_size"):
            table = getattr(self, name)
            if isinstance(table, str):
                if table not in BATCH_SIZE_TABLES:
                    raise M3Error(f"config: {name}={table!r}: no such table "
                                  f"(known: {', '.join(BATCH_SIZE_TABLES)})")
                setattr(self, name, dict(BATCH_SIZE_TABLES[table]))

    def to_dict(self) -> dict:
        """Plain values (lists, dicts, numbers, strings): what `load_config` reads back, as YAML or JSON."""
        def plain(v):
            return [plain(x) for x in v] if isinstance(v, (list, tuple)) else (
                {k: plain(x) for k, x in v.items()} if isinstance(v, dict) else v)
        return plain(dataclasses.asdict(self))

    def check(self) -> None:
        """Raise `M3Error` on the first bad value (before anything is loaded)."""
        def need(ok, name, what):
            if not ok:
                raise M3Error(f"config: {name}={getattr(self, name)!r}: {what}")

        for name, lo in (("max_steps", 1), ("grad_accum", 1), ("group_size", 1), ("query_max_len", 2),
                         ("passage_max_len", 2), ("retromae_steps", 0), ("dense_steps", 0), ("save_every", 0),
                         ("seed", 0)):
            need(_is_int(getattr(self, name)) and getattr(self, name) >= lo, name, f"must be an integer >= {lo}")
        for name in ("lr", "dist_timeout_s", "weight_decay", "max_grad_norm", "warmup_ratio", "head_lr_scale"):
            v = getattr(self, name)
            need(isinstance(v, (int, float)) and not isinstance(v, bool), name, "must be a number")
            need(v > 0 or (v == 0 and name not in ("lr", "dist_timeout_s")), name,
                 "must be > 0" if name in ("lr", "dist_timeout_s") else "must be >= 0")
        need(self.warmup_ratio <= 1, "warmup_ratio", "must be <= 1")
        need(isinstance(self.gradient_checkpointing, bool) or self.gradient_checkpointing in ("layer", "sub_batch"),
             "gradient_checkpointing", "choose one of true, false, layer, sub_batch")
        need(self.gradient_checkpointing != "sub_batch" or self.sub_batch_size is not None, "gradient_checkpointing",
             "sub_batch needs a sub_batch_size")
        for name in ("drop_last", "teacher_kd", "tensorboard", "fix_encoder"):
            need(isinstance(getattr(self, name), bool), name, "must be true or false")
        need(self.num_train_epochs is None or (_is_number(self.num_train_epochs) and self.num_train_epochs > 0),
             "num_train_epochs", "must be a number > 0 or null")
        need(self.save_total_limit is None or (_is_int(self.save_total_limit) and self.save_total_limit >= 1),
             "save_total_limit", "must be an integer >= 1 or null (keep every checkpoint)")
        for name in ("query_instruction_for_retrieval", "passage_instruction_for_retrieval"):
            need(getattr(self, name) is None or isinstance(getattr(self, name), str), name, "must be a string or null")
        for name in ("query_instruction_format", "passage_instruction_format"):
            value = getattr(self, name)
            try:
                ok = isinstance(value, str) and value.format("I", "T") is not None and "T" in value.format("I", "T")
            except (IndexError, KeyError, ValueError):
                ok = False
            need(ok, name, "must be a format string with two {} fields: instruction, then text")
        need(not self.fix_encoder or (self.dense_steps == 0 and self.retromae_steps == 0
                                      and getattr(self.m3, "unified", True)),
             "fix_encoder", "trains only the lexical and multi-vector heads: it needs unified fine-tuning alone "
             "(dense_steps: 0, retromae_steps: 0, m3.unified: true)")
        need(self.precision in ("bf16", "fp16", "fp32"), "precision", "choose one of bf16, fp16, fp32")
        need(isinstance(self.m3, M3Config), "m3", "must be a mapping of M3Config fields")
        need(isinstance(self.retromae_mask, (list, tuple)) and len(self.retromae_mask) == 2
             and all(isinstance(r, (int, float)) and 0 < r < 1 for r in self.retromae_mask), "retromae_mask",
             "must be [encoder ratio, decoder ratio], each between 0 and 1")
        for name in ("retromae_batch_size", "dense_batch_size", "batch_size"):
            v = getattr(self, name)
            table = v if isinstance(v, dict) else {0: v}
            need(table and all(_is_int(k) and k >= 0 and _is_int(s) and s >= 1 for k, s in table.items()), name,
                 "must be an integer >= 1, a map {min length: batch size} or a table name")
        need(self.sub_batch_size in (None, "auto") or (_is_int(self.sub_batch_size) and self.sub_batch_size >= 1),
             "sub_batch_size", "must be null, auto or an integer >= 1")
        need(isinstance(self.length_edges, list) and self.length_edges and all(map(_is_int, self.length_edges))
             and self.length_edges == sorted(self.length_edges), "length_edges", "must be a sorted list of integers")
        need(self.model is None or isinstance(self.model, str), "model", "must be a path, a hub id or null")
        need(isinstance(self.output_dir, str) and self.output_dir, "output_dir", "must be a path")
        from .data import is_hub_id
        for name in ("train_data", "dense_train_data", "retromae_data"):
            paths = getattr(self, name)
            if paths is None and name != "train_data":
                continue
            for path in paths if isinstance(paths, list) and paths else [paths]:
                need(isinstance(path, str) and (os.path.exists(path) or is_hub_id(path)),
                     name, f"{path}: no such file or directory")


def find_config(path: str) -> str:
    """The config file `path` names: a file there, else a shipped config by its bare name
    ("tiny", "bge-m3-gpu.yaml") or by its path in the repository ("configs/tiny.yaml")."""
    from .assets import resolve_path, shipped_config, shipped_configs
    if os.path.isfile(path):
        return path
    found = shipped_config(path) or resolve_path(path)
    if found is not None and os.path.isfile(found):
        return str(found)
    raise M3Error(f"no config file at {path} (shipped configs, by name: {', '.join(shipped_configs()) or 'none'})")


def load_config(path: Optional[str], **overrides) -> TrainConfig:
    """TrainConfig from a YAML file, then `overrides` (command-line flags; None = not given).

    `path` may name a shipped config ("tiny", `find_config`). Between max_steps and
    num_train_epochs, a command-line flag wins over the file; given together, max_steps wins
    (as in the official arguments)."""
    import yaml
    values = {}
    if path:
        path = find_config(path)
        try:
            with open(path, encoding="utf-8") as f:
                values = yaml.safe_load(f) or {}
        except yaml.YAMLError as exc:
            raise M3Error(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(values, dict):
            raise M3Error(f"{path}: expected a mapping of config keys")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    for key in values:
        if key not in known:
            raise M3Error(f"{path}: unknown config key {key!r}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if isinstance(overrides.get("m3"), dict) and isinstance(values.get("m3"), dict):
        overrides["m3"] = {**values["m3"], **overrides["m3"]}  # flags change single fields of the m3: block
    for flag, other in (("num_train_epochs", "max_steps"), ("max_steps", "num_train_epochs")):
        if flag in overrides and other not in overrides:
            values.pop(other, None)  # the command line's choice of length replaces the file's
    values.update(overrides)
    if values.get("num_train_epochs") is not None and values.get("max_steps") is not None:
        import warnings
        from .errors import M3Warning
        warnings.warn(f"max_steps={values['max_steps']} and num_train_epochs={values['num_train_epochs']} are both "
                      f"set: max_steps wins", M3Warning)
        values["num_train_epochs"] = None
    for f in dataclasses.fields(TrainConfig):  # PyYAML reads 1e-5 (no dot) as a string
        if f.type in ("float", "Optional[float]") and isinstance(values.get(f.name), str):
            try:
                values[f.name] = float(values[f.name])
            except ValueError:
                pass
    try:
        cfg = TrainConfig(**values)
    except M3Error as exc:
        raise M3Error(f"{path}: {exc}" if path else str(exc)) from None
    cfg.check()
    return cfg


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
