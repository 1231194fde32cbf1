"""Train M3 on one process or many (paper Sec. 3.3-3.4, App. B.1; book ch. 08-09).

    python -m m3ref.train --config configs/tiny.yaml
    torchrun --nproc_per_node=2 -m m3ref.train --config configs/tiny.yaml --max-steps 3
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29400 \
        -m m3ref.train --config configs/bge-m3-gpu.yaml

Two stages in one run, as in the paper's recipe:
1. `dense_steps` optimizer steps of dense-only contrastive learning on (query, positive)
   pairs with in-batch negatives (M3Config(unified=False), G=1): the paper's
   pre-training stage on unsupervised pairs.
2. unified fine-tuning: G = `group_size` passages per query (positive + hard negatives),
   all three modes, L_final = (L + L')/2 with self-knowledge distillation from
   `self_distill_start_step` (counted in steps of this stage); teacher-score distillation
   (`teacher_kd`) on batches whose examples carry pos_scores/neg_scores.

Per optimizer step rank 0 appends one JSON line to OUTPUT_DIR/train_log.jsonl. Checkpoints
(OUTPUT_DIR/checkpoint-N, OUTPUT_DIR/final) are in the official BGE-M3 layout plus the
optimizer state, sampler position, step (the lr schedule is a function of it) and RNG
states, written to a temporary directory and renamed, so an interrupted write never
replaces the last good checkpoint.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import re
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import torch

from .batching import LENGTH_EDGES, BucketSampler, batch_size_for, enable_checkpointing, encode, make_buckets
from .config import M3Config
from .data import load_train_data, sample_group, write_jsonl_atomic
from .distributed import (CROSS_DEVICE, DistEnv, average_gradients, barrier, broadcast_parameters, cleanup,
                          m3_loss_across_ranks, mean_across_ranks, setup)
from .errors import M3Error, cli_errors
from .model import M3Model

LOSS_KEYS = ("L_final", "L", "L_dense", "L_lex", "L_mul", "L_inter", "L_prime",
             "L_prime_dense", "L_prime_lex", "L_prime_mul")
BatchSizes = Union[int, dict]


@dataclass
class TrainConfig:
    # --- model and data
    # Checkpoint directory or hub id: BAAI/bge-m3 (fine-tune), xlm-roberta-large (fresh heads).
    # None builds m3ref's untrained tiny model into OUTPUT_DIR/init.
    model: Optional[str] = None
    # Fine-tuning data: a JSONL file, a directory of them, a hub dataset, or a list of these
    # (as the official --train_data); each `*_len-lo-hi` file is a bucket.
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
    # --- stage 1: dense-only contrastive learning on pairs
    dense_steps: int = 0
    # Per-rank batch size, one int or {lower length: size}; big, as only G=1 (Table 9).
    dense_batch_size: BatchSizes = 16
    # --- stage 2: unified fine-tuning
    # G: one positive + G-1 hard negatives per query (paper: 7 ANCE negatives, G=8).
    group_size: int = 8
    batch_size: BatchSizes = 4
    # Loss constants: "official" (FlagEmbedding) or "paper" (Eqs. 6-10 as printed).
    preset: str = "official"
    # tau for all three scores (official default 0.02).
    temperature: float = 0.02
    self_distill: bool = True
    # L' joins when (step within stage 2) > this; -1 = from the start (official advice, #982).
    self_distill_start_step: int = -1
    # Teacher-score distillation: None, "m3_kd_loss" (official examples) or "kl_div".
    teacher_kd: Optional[str] = None
    # Cross-device negatives: "dense" (official), "all" three modes, or "none".
    cross_device: str = "dense"
    # --- optimisation
    max_steps: int = 100
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
    tensorboard: bool = True  # also log to OUTPUT_DIR/tb if tensorboard is installed
    # A collective that waits longer than this fails: a dead rank stops the others.
    dist_timeout_s: float = 600.0

    def check(self) -> None:
        """Raise `M3Error` on the first bad value (before anything is loaded)."""
        def need(ok, name, what):
            if not ok:
                raise M3Error(f"config: {name}={getattr(self, name)!r}: {what}")

        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        for name, lo in (("max_steps", 1), ("grad_accum", 1), ("group_size", 1), ("query_max_len", 2),
                         ("passage_max_len", 2), ("dense_steps", 0), ("save_every", 0), ("seed", 0),
                         ("self_distill_start_step", -1)):
            need(is_int(getattr(self, name)) and getattr(self, name) >= lo, name, f"must be an integer >= {lo}")
        for name in ("lr", "temperature", "dist_timeout_s", "weight_decay", "max_grad_norm", "warmup_ratio",
                     "head_lr_scale"):
            v = getattr(self, name)
            need(isinstance(v, (int, float)) and not isinstance(v, bool), name, "must be a number")
            need(v > 0 or (v == 0 and name in ("weight_decay", "max_grad_norm", "warmup_ratio", "head_lr_scale")), name,
                 "must be > 0" if name in ("lr", "temperature", "dist_timeout_s") else "must be >= 0")
        need(self.warmup_ratio <= 1, "warmup_ratio", "must be <= 1")
        need(isinstance(self.gradient_checkpointing, bool) or self.gradient_checkpointing in ("layer", "sub_batch"),
             "gradient_checkpointing", "choose one of true, false, layer, sub_batch")
        need(self.gradient_checkpointing != "sub_batch" or self.sub_batch_size is not None, "gradient_checkpointing",
             "sub_batch needs a sub_batch_size")
        for name in ("drop_last", "self_distill", "tensorboard"):
            need(isinstance(getattr(self, name), bool), name, "must be true or false")
        for name, options in (("precision", ("bf16", "fp16", "fp32")), ("preset", ("official", "paper")),
                              ("teacher_kd", (None, "m3_kd_loss", "kl_div")), ("cross_device", CROSS_DEVICE)):
            need(getattr(self, name) in options, name, f"choose one of {', '.join(map(str, options))}")
        for name in ("dense_batch_size", "batch_size"):
            v = getattr(self, name)
            table = v if isinstance(v, dict) else {0: v}
            need(table and all(is_int(k) and k >= 0 and is_int(s) and s >= 1 for k, s in table.items()), name,
                 "must be an integer >= 1 or a map {min length: batch size}")
        need(self.sub_batch_size in (None, "auto") or (is_int(self.sub_batch_size) and self.sub_batch_size >= 1),
             "sub_batch_size", "must be null, auto or an integer >= 1")
        need(isinstance(self.length_edges, list) and self.length_edges and all(map(is_int, self.length_edges))
             and self.length_edges == sorted(self.length_edges), "length_edges", "must be a sorted list of integers")
        need(self.model is None or isinstance(self.model, str), "model", "must be a path, a hub id or null")
        need(isinstance(self.output_dir, str) and self.output_dir, "output_dir", "must be a path")
        for name in ("train_data", "dense_train_data"):
            paths = getattr(self, name)
            if paths is None and name == "dense_train_data":
                continue
            paths = paths if isinstance(paths, list) and paths else [paths]
            for path in paths:
                need(isinstance(path, str) and (os.path.exists(path) or re.fullmatch(r"[\w.-]+/[\w.-]+", path)),
                     name, f"{path}: no such file or directory")


def load_config(path: Optional[str], **overrides) -> TrainConfig:
    """TrainConfig from a YAML file, then `overrides` (command-line flags; None = not given)."""
    import yaml
    values = {}
    if path:
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
    values.update({k: v for k, v in overrides.items() if v is not None})
    for f in dataclasses.fields(TrainConfig):  # PyYAML reads 1e-5 (no dot) as a string
        if f.type == "float" and isinstance(values.get(f.name), str):
            try:
                values[f.name] = float(values[f.name])
            except ValueError:
                pass
    cfg = TrainConfig(**values)
    cfg.check()
    return cfg


# ----------------------------------------------------------------------------- checkpoints
def latest_checkpoint(output_dir) -> Optional[Path]:
    """The complete checkpoint with the highest step (`checkpoint-N` or `final`), or None."""
    best, best_step = None, -1
    for d in Path(output_dir).glob("*"):
        if (re.fullmatch(r"checkpoint-\d+", d.name) or d.name == "final") and (d / "trainer_state.json").is_file():
            step = json.loads((d / "trainer_state.json").read_text())["step"]
            if step > best_step or (step == best_step and d.name != "final"):
                best, best_step = d, step
    return best


def save_checkpoint(path: Path, model: M3Model, trainer: dict, optim: dict, env: DistEnv) -> None:
    """Write `path` atomically: everything goes to `.tmp-<name>` first, then one rename.

    `trainer` (JSON: step, stage, sampler, ...) and `optim` (optimizer/grad-scaler
    state dicts) come from rank 0; every rank adds its own RNG state.
    """
    tmp = path.with_name(f".tmp-{path.name}")
    if env.master:
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)  # official layout: encoder, tokenizer, colbert/sparse heads
        torch.save(optim, tmp / "optimizer.pt")
    barrier(env)
    rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    tmp.mkdir(parents=True, exist_ok=True)  # (multi-node: OUTPUT_DIR should be a shared file system)
    torch.save(rng, tmp / f"rng_state_{env.rank}.pt")
    barrier(env)
    if env.master:
        (tmp / "trainer_state.json").write_text(json.dumps(trainer, indent=1))
        old = path.with_name(f".old-{path.name}")
        if path.exists():
            path.rename(old)
        tmp.rename(path)  # the only step that makes the checkpoint visible
        shutil.rmtree(old, ignore_errors=True)
    barrier(env)


def _rng_restore(ckpt: Path, env: DistEnv) -> None:
    f = ckpt / f"rng_state_{env.rank}.pt"
    if not f.is_file():
        warnings.warn(f"{f} missing: RNG not restored")
        return
    rng = torch.load(f, weights_only=True)
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])


# ----------------------------------------------------------------------------- one batch
def groups_of(rows: list, batch, group_size: int, seed: int):
    """Queries, passage groups (B, G) and teacher scores (B, G) or None of one batch.

    Each example's group is drawn with its own RNG keyed on (seed, epoch, bucket, index),
    so sampling is identical whatever the world size and after a resume.
    """
    queries, passages, scores = [], [], []
    for i in batch.indices:
        q, group, s = sample_group(rows[i], group_size, random.Random(f"{seed}-{batch.epoch}-{batch.bucket}-{i}"))
        queries.append(q)
        passages.append(group)
        scores.append(s)
    return queries, passages, (None if any(s is None for s in scores) else scores)


def batch_loss(model: M3Model, queries, passages, teacher_scores, cfg: TrainConfig, m3: M3Config,
               step: int) -> dict:
    """Encode one batch (split-batch if configured) and return every loss term (ch. 05-09)."""
    B, G = len(queries), len(passages[0])
    with warnings.catch_warnings():  # truncation to the max lengths is routine in training
        warnings.simplefilter("ignore")
        q_ids = model.tokenize(queries, cfg.query_max_len)
        p_ids = model.tokenize([t for g in passages for t in g], cfg.passage_max_len)
    per_sub_batch = cfg.gradient_checkpointing == "sub_batch"
    q = encode(model, model.collate(q_ids), cfg.sub_batch_size, per_sub_batch)  # (B, ...)
    p = encode(model, model.collate(p_ids), cfg.sub_batch_size, per_sub_batch)  # (B*G, ...)
    teacher = None
    if teacher_scores is not None and cfg.teacher_kd and m3.unified:
        teacher = torch.softmax(torch.tensor(teacher_scores, device=q.dense.device).view(B, G), dim=-1)
    return m3_loss_across_ranks(q, p, m3, model.ignore_ids, model.tokenizer.pad_token_id, G, step, teacher,
                                cfg.teacher_kd or "m3_kd_loss", cfg.cross_device)


# ----------------------------------------------------------------------------- the loop
def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up over warmup_ratio*max_steps, then linear decay to 0 (the schedule of the
    official HF-Trainer runs). A pure function of the step, so a resume needs no scheduler state."""
    warmup = int(cfg.warmup_ratio * cfg.max_steps)
    if step < warmup:
        return cfg.lr * step / warmup
    return cfg.lr * max(0.0, (cfg.max_steps - step) / max(1, cfg.max_steps - warmup))


def _load_model(cfg: TrainConfig, resume: Optional[Path], env: DistEnv) -> M3Model:
    torch.manual_seed(cfg.seed)  # fresh heads: same on every rank (and broadcast below)
    if resume is not None:
        path = resume
    elif cfg.model is None:  # build the tiny model once, on rank 0
        path = Path(cfg.output_dir) / "init"
        if env.master and not (path / "config.json").is_file():
            from .tiny import build_tiny_model
            build_tiny_model(str(path), seed=cfg.seed)
        barrier(env)
    else:
        path = cfg.model
    model = M3Model.from_pretrained(path, init_heads=resume is None, device=env.device)
    broadcast_parameters(model, env)
    torch.manual_seed(cfg.seed + env.rank)  # nanoGPT's seed_offset: different dropout masks per rank
    if cfg.gradient_checkpointing in (True, "layer"):
        enable_checkpointing(model)
    return model.train()


def _load_all(paths) -> dict:
    """load_train_data over one path or a list of them, merged: {name: dataset}."""
    data = {}
    for path in paths if isinstance(paths, list) else [paths]:
        for name, ds in load_train_data(path).items():
            if name in data:
                raise M3Error(f"{path}: a second data file named {name!r}; file names must differ")
            data[name] = ds
    return data


def _stage_data(cfg: TrainConfig) -> dict:
    """Load and validate every data file before any compute: {stage: datasets}."""
    stages = {}
    if cfg.dense_steps > 0:
        stages["dense"] = _load_all(cfg.dense_train_data or cfg.train_data)
    if cfg.max_steps > cfg.dense_steps:
        stages["unified"] = data = _load_all(cfg.train_data)
        for name, ds in data.items():
            if cfg.group_size > 1:
                for i, neg in enumerate(ds["neg"]):
                    if not neg:
                        raise M3Error(f"{name}: example {i + 1} has no negatives, but group_size={cfg.group_size}")
        if cfg.teacher_kd and not any("pos_scores" in ds.column_names for ds in data.values()):
            raise M3Error(f"teacher_kd={cfg.teacher_kd!r}, but no file of {cfg.train_data} has pos_scores/neg_scores")
    return stages


def train(cfg: TrainConfig, resume: Optional[str] = None) -> Path:
    """Run training; returns OUTPUT_DIR/final. `resume`: a checkpoint dir or "latest"."""
    cfg.check()
    env = setup(cfg.dist_timeout_s)
    try:
        return _train(cfg, resume, env)
    finally:
        cleanup()


def _train(cfg: TrainConfig, resume: Optional[str], env: DistEnv) -> Path:
    out = Path(cfg.output_dir)
    stage_data = _stage_data(cfg)
    if env.master and out.is_dir():  # tidy up after a run killed while writing a checkpoint
        for d in out.glob(".old-*"):  # killed between the two renames: the old copy is the good one
            if (out / d.name[5:]).exists():
                shutil.rmtree(d)
            else:
                d.rename(out / d.name[5:])
        for d in out.glob(".tmp-*"):
            shutil.rmtree(d)
    barrier(env)
    ckpt = None
    if resume:
        ckpt = latest_checkpoint(out) if resume == "latest" else Path(resume)
        if ckpt is None or not (ckpt / "trainer_state.json").is_file():
            raise M3Error(f"no checkpoint to resume from in {out if resume == 'latest' else resume}")
    model = _load_model(cfg, ckpt, env)
    buckets = {s: make_buckets(d, model.tokenizer, cfg.length_edges) for s, d in stage_data.items()}

    params = [p for p in model.parameters() if p.requires_grad]
    heads = {id(p) for head in (model.sparse_linear, model.colbert_linear) for p in head.parameters()}
    # no weight decay on biases and LayerNorm; the heads may learn at a scaled rate
    groups = [{"params": [p for p in params if (id(p) in heads) == is_head and (p.dim() >= 2) == decay],
               "weight_decay": cfg.weight_decay if decay else 0.0,
               "lr_scale": cfg.head_lr_scale if is_head else 1.0}
              for is_head in (False, True) for decay in (True, False)]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
    cuda = env.device.startswith("cuda")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[cfg.precision] if cuda else None
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None

    step, stage, sampler, sampler_state = 0, None, None, None
    if ckpt is not None:
        state = json.loads((ckpt / "trainer_state.json").read_text())
        if state["world_size"] != env.world_size:
            raise M3Error(f"{ckpt} was written by {state['world_size']} ranks; resume with the same number "
                          f"(now {env.world_size})")
        optim = torch.load(ckpt / "optimizer.pt", map_location=env.device, weights_only=True)
        optimizer.load_state_dict(optim["optimizer"])
        if scaler is not None and optim.get("scaler"):
            scaler.load_state_dict(optim["scaler"])
        step, sampler_state = state["step"], {state["stage"]: state["sampler"]}
        if step >= cfg.max_steps:
            raise M3Error(f"{ckpt} is at step {step}, max_steps is {cfg.max_steps}: nothing to do")
        _rng_restore(ckpt, env)
    log_path = out / "train_log.jsonl"
    if env.master:
        out.mkdir(parents=True, exist_ok=True)
        kept = [json.loads(x) for x in log_path.read_text().splitlines() if x.strip()] if log_path.exists() else []
        write_jsonl_atomic(log_path, [r for r in kept if ckpt is not None and r["step"] <= step])  # drop lost steps
        (out / "train_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
    from tqdm.auto import tqdm
    bar = tqdm(total=cfg.max_steps, initial=step, disable=not env.master, desc="train", dynamic_ncols=True)
    writer = _tensorboard(out) if cfg.tensorboard and env.master else None
    base = M3Config.from_preset(cfg.preset, temperature=cfg.temperature, self_distill=cfg.self_distill,
                                self_distill_start_step=cfg.self_distill_start_step)
    last_good = ckpt

    def stop(what):
        raise M3Error(f"step {step + 1}: {what}; stopped. Last good checkpoint: {last_good or 'none'}")

    def checkpoint(path: Path) -> None:
        trainer = {"step": step, "stage": stage, "sampler": sampler.state_dict(), "world_size": env.world_size,
                   "lr": lr_at(step, cfg), "config": dataclasses.asdict(cfg)}  # the schedule is lr_at(step)
        optim = {"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler is not None else None}
        save_checkpoint(path, model, trainer, optim, env)

    try:
        while step < cfg.max_steps:
            if stage != ("dense" if step < cfg.dense_steps else "unified"):  # a new stage: its own sampler
                stage = "dense" if step < cfg.dense_steps else "unified"
                _, los, rows = zip(*buckets[stage])
                table = cfg.dense_batch_size if stage == "dense" else cfg.batch_size
                sampler = BucketSampler([len(r) for r in rows], [batch_size_for(lo, table) for lo in los],
                                        env.world_size, env.rank, cfg.seed + (stage == "unified"), cfg.drop_last)
                if sampler_state and stage in sampler_state:
                    sampler.load_state_dict(sampler_state[stage])
            m3 = base.replace(unified=stage == "unified")
            G = cfg.group_size if stage == "unified" else 1  # stage 1: pairs, in-batch negatives only
            sums, n_queries, t0 = {}, 0, time.time()
            for _ in range(cfg.grad_accum):
                batch = next(sampler)
                queries, passages, teacher = groups_of(rows[batch.bucket], batch, G, cfg.seed)
                n_queries += len(queries) * env.world_size
                with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
                    losses = batch_loss(model, queries, passages, teacher, cfg, m3, step - cfg.dense_steps)
                loss = losses["L_final"] / cfg.grad_accum
                (scaler.scale(loss) if scaler is not None else loss).backward()
                for k in LOSS_KEYS:
                    if k in losses:
                        sums[k] = sums.get(k, 0.0) + losses[k].item() / cfg.grad_accum
            values = dict(zip(sums, mean_across_ranks(list(sums.values()), env.device)))  # same on every rank
            if not math.isfinite(values["L_final"]):
                stop(f"L_final = {values['L_final']} is not finite")
            average_gradients(params, env.world_size)
            if scaler is not None:
                scaler.unscale_(optimizer)
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm or float("inf"))
            if scaler is None and not torch.isfinite(norm):  # (fp16: the scaler skips such steps)
                stop(f"gradient norm = {norm.item()} is not finite")
            lr = lr_at(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if env.master:
                record = {"step": step, "stage": stage, "epoch": batch.epoch, "lr": lr,
                          **{k: values.get(k) for k in LOSS_KEYS}, "grad_norm": float(norm),
                          "queries": n_queries, "time_s": round(time.time() - t0, 4)}
                with open(log_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(record) + "\n")
                for k, v in record.items():
                    if writer is not None and isinstance(v, float):
                        writer.add_scalar(k, v, step)
                bar.set_postfix(stage=stage, L_final=f"{values['L_final']:.4f}")
                bar.update(1)
            if cfg.save_every and step % cfg.save_every == 0 and step < cfg.max_steps:
                last_good = out / f"checkpoint-{step}"
                checkpoint(last_good)
        checkpoint(out / "final")
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    return out / "final"


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # optional
        return None
    return SummaryWriter(str(out / "tb"))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m m3ref.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="YAML file of TrainConfig fields")
    ap.add_argument("--model", help="checkpoint directory or hub id (overrides the config)")
    ap.add_argument("--train-data", nargs="+", help="JSONL files, directories or hub datasets")
    ap.add_argument("--output-dir")
    ap.add_argument("--max-steps", type=int)
    ap.add_argument("--save-every", type=int)
    ap.add_argument("--resume", nargs="?", const="latest", metavar="CHECKPOINT_DIR",
                    help="resume from a checkpoint (default: the latest in the output dir)")
    args = ap.parse_args(argv)
    with cli_errors():
        if not os.path.isfile(args.config):
            raise M3Error(f"no config file at {args.config}")
        cfg = load_config(args.config, model=args.model, train_data=(args.train_data[0] if args.train_data and len(args.train_data) == 1 else args.train_data),
                          output_dir=args.output_dir,
                          max_steps=args.max_steps, save_every=args.save_every)
        final = train(cfg, args.resume)
        if int(os.environ.get("RANK", 0)) == 0:
            print(f"saved {final}", file=sys.stderr)


if __name__ == "__main__":
    main()
