"""Train M3 on one process or many (paper Sec. 3.3-3.4, App. B.1; book ch. 08-09).

    python -m m3ref.train --config configs/tiny.yaml
    torchrun --nproc_per_node=2 -m m3ref.train --config configs/tiny.yaml --max-steps 3
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29400 \
        -m m3ref.train --config configs/bge-m3-gpu.yaml

Up to three stages in one run, as in the paper's recipe (Sec. 3.4, Table 6):
0. `retromae_steps` steps of RetroMAE pre-training on passages (`m3ref.retromae`): the
   encoder rebuilds masked texts, and a one-layer decoder rebuilds them from its [CLS] state.
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
import json
import math
import os
import random
import re
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Optional

import pyarrow.compute as pc
import torch

from .batching import BucketSampler, batch_size_for, enable_checkpointing, make_buckets
from .config import TrainConfig, load_config
from .data import load_train_data, sample_group, write_jsonl_atomic
from .distributed import DistEnv, average_gradients, barrier, broadcast_parameters, cleanup, mean_across_ranks, setup
from .errors import M3Error, cli_errors
from .model import M3Model
from .retromae import RetroMAEDecoder, retromae_loss

LOSS_KEYS = ("L_final", "L", "L_dense", "L_lex", "L_mul", "L_inter", "L_prime",
             "L_prime_dense", "L_prime_lex", "L_prime_mul", "L_enc", "L_dec")
STAGES = ("retromae", "dense", "unified")
DECODER_FILE = "retromae_decoder.pt"  # in the checkpoints of a run with a RetroMAE stage, not in final/


def stage_start(stage: str, cfg: TrainConfig) -> int:
    """First step of a stage: RetroMAE, then dense-only, then unified fine-tuning."""
    return {"retromae": 0, "dense": cfg.retromae_steps, "unified": cfg.retromae_steps + cfg.dense_steps}[stage]


def stage_at(step: int, cfg: TrainConfig) -> str:
    return [s for s in STAGES if step >= stage_start(s, cfg)][-1]


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


def save_checkpoint(path: Path, model: M3Model, trainer: dict, optim: dict, env: DistEnv,
                    extra: Optional[dict] = None) -> None:
    """Write `path` atomically: everything goes to `.tmp-<name>` first, then one rename.

    `trainer` (JSON: step, stage, sampler, ...), `optim` (optimizer/grad-scaler state dicts)
    and `extra` ({file name: state dict}, e.g. the RetroMAE decoder) come from rank 0; every
    rank adds its own RNG state.
    """
    tmp = path.with_name(f".tmp-{path.name}")
    if env.master:
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)  # official layout: encoder, tokenizer, colbert/sparse heads
        torch.save(optim, tmp / "optimizer.pt")
        for name, state in (extra or {}).items():
            torch.save(state, tmp / name)
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
    model = M3Model.from_pretrained(path, init_heads=resume is None, config=cfg.m3, device=env.device)
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
    if cfg.retromae_steps > 0:
        stages["retromae"] = _load_all(cfg.retromae_data or cfg.dense_train_data or cfg.train_data)
    if cfg.dense_steps > 0:
        stages["dense"] = _load_all(cfg.dense_train_data or cfg.train_data)
    if cfg.max_steps > stage_start("unified", cfg):
        stages["unified"] = data = _load_all(cfg.train_data)
        for name, ds in data.items():
            if cfg.group_size > 1:
                counts = pc.list_value_length(ds.data.column("neg")).fill_null(0)  # (N,) negatives per example
                if pc.min(counts).as_py() == 0:
                    i = pc.index(pc.equal(counts, 0), True).as_py()
                    raise M3Error(f"{name}: example {i + 1} has no negatives, but group_size={cfg.group_size}")
        if cfg.teacher_kd and all(ds.data.column("pos_scores").null_count == len(ds) for ds in data.values()):
            raise M3Error(f"teacher_kd is on, but no file of {cfg.train_data} has pos_scores/neg_scores")
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

    decoder = None
    if cfg.retromae_steps > 0:  # its decoder is trained in stage 0 only, and never saved in final/
        torch.manual_seed(cfg.seed)
        decoder = RetroMAEDecoder(model.encoder).to(env.device).train()
        if ckpt is not None and (ckpt / DECODER_FILE).is_file():
            decoder.load_state_dict(torch.load(ckpt / DECODER_FILE, map_location=env.device, weights_only=True))
        broadcast_parameters(decoder, env)
    params = [p for p in model.parameters() if p.requires_grad]
    params += list(decoder.parameters()) if decoder is not None else []
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
        (out / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
    from tqdm.auto import tqdm
    bar = tqdm(total=cfg.max_steps, initial=step, disable=not env.master, desc="train", dynamic_ncols=True)
    writer = _tensorboard(out) if cfg.tensorboard and env.master else None
    last_good = ckpt

    def stop(what):
        raise M3Error(f"step {step + 1}: {what}; stopped. Last good checkpoint: {last_good or 'none'}")

    def checkpoint(path: Path) -> None:
        trainer = {"step": step, "stage": stage, "sampler": sampler.state_dict(), "world_size": env.world_size,
                   "lr": lr_at(step, cfg), "config": cfg.to_dict()}  # the schedule is lr_at(step)
        optim = {"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler is not None else None}
        extra = {DECODER_FILE: decoder.state_dict()} if decoder is not None and path.name != "final" else None
        save_checkpoint(path, model, trainer, optim, env, extra)

    try:
        while step < cfg.max_steps:
            if stage != stage_at(step, cfg):  # a new stage: its own sampler
                stage = stage_at(step, cfg)
                _, los, rows = zip(*buckets[stage])
                table = {"retromae": cfg.retromae_batch_size, "dense": cfg.dense_batch_size,
                         "unified": cfg.batch_size}[stage]
                seed = cfg.seed + {"dense": 0, "unified": 1, "retromae": 2}[stage]
                sampler = BucketSampler([len(r) for r in rows], [batch_size_for(lo, table) for lo in los],
                                        env.world_size, env.rank, seed, cfg.drop_last)
                if sampler_state and stage in sampler_state:
                    sampler.load_state_dict(sampler_state[stage])
            m3 = cfg.m3.replace(unified=stage == "unified")
            G = cfg.group_size if stage == "unified" else 1  # stage 1: pairs, in-batch negatives only
            sums, n_queries, t0 = {}, 0, time.time()
            for micro in range(cfg.grad_accum):
                batch = next(sampler)
                n_queries += len(batch.indices) * env.world_size
                with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
                    if stage == "retromae":
                        texts = [rows[batch.bucket][i]["pos"][0] for i in batch.indices]
                        losses = _retromae_step(model, decoder, texts, cfg, step, micro, env.rank)
                    else:
                        queries, passages, teacher = groups_of(rows[batch.bucket], batch, G, cfg.seed)
                        losses = model.training_loss(
                            queries, passages, m3, step - stage_start(stage, cfg), teacher if cfg.teacher_kd else None,
                            cfg.query_max_len, cfg.passage_max_len, cfg.sub_batch_size,
                            checkpoint_sub_batches=cfg.gradient_checkpointing == "sub_batch")
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


def _retromae_step(model: M3Model, decoder: RetroMAEDecoder, texts: list, cfg: TrainConfig, step: int,
                   micro: int, rank: int) -> dict:
    """RetroMAE's L = L_enc + L_dec on one batch of passages (`m3ref.retromae.retromae_loss`).
    The masks come from a generator seeded by (seed, step, micro-batch, rank): a resumed run
    draws the same masks."""
    generator = torch.Generator().manual_seed(((cfg.seed * 1_000_003 + step) * 131 + micro) * 8191 + rank)
    batch = model.collate(model.tokenize(texts, cfg.passage_max_len, warn=False))
    out = retromae_loss(model.encoder, decoder, batch["input_ids"], batch["attention_mask"],
                        model.tokenizer.mask_token_id, model.ignore_ids, *cfg.retromae_mask, generator=generator)
    return {"L_final": out["loss"], "L_enc": out["L_enc"], "L_dec": out["L_dec"]}


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
