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
replaces the last good checkpoint; OUTPUT_DIR/init (`model: null`) is written the same way.
`--resume` continues from the newest checkpoint that loads (a damaged newer one is passed
over with a warning naming the file), `--resume auto` also starts a new run when there is
none (README, "When things go wrong"). A resume with another config than the checkpoint's
warns, naming each changed field (a changed schedule also gets the lr it now follows).
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
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import pyarrow.compute as pc
import torch

from .batching import BucketSampler, batch_size_for, enable_checkpointing, make_buckets
from .config import TrainConfig, load_config
from .data import load_train_data, sample_group, write_jsonl_atomic
from .distributed import DistEnv, average_gradients, barrier, broadcast_parameters, cleanup, mean_across_ranks, setup
from .errors import M3Error, M3Warning, cli_errors, first_line, os_error_message, writing
from .model import M3Model, check_model_dir, load_torch_file, save_torch_file
from .retromae import RetroMAEDecoder, retromae_loss

LOSS_KEYS = ("L_final", "L", "L_dense", "L_lex", "L_mul", "L_inter", "L_prime",
             "L_prime_dense", "L_prime_lex", "L_prime_mul", "L_enc", "L_dec")
STAGES = ("retromae", "dense", "unified")
RESUME_MODES = ("latest", "auto")  # --resume without a directory
DECODER_FILE = "retromae_decoder.pt"  # in the checkpoints of a run with a RetroMAE stage, not in final/
SCHEDULE_FIELDS = ("max_steps", "lr", "warmup_ratio")  # a resume that changes them gets `_schedule_note`
# Fields a resume may change without a warning: where and how often it writes, and how long ranks wait.
QUIET_FIELDS = ("output_dir", "save_every", "save_total_limit", "tensorboard", "dist_timeout_s")


def stage_start(stage: str, cfg: TrainConfig) -> int:
    """First step of a stage: RetroMAE, then dense-only, then unified fine-tuning."""
    return {"retromae": 0, "dense": cfg.retromae_steps, "unified": cfg.retromae_steps + cfg.dense_steps}[stage]


def stage_at(step: int, cfg: TrainConfig) -> str:
    return [s for s in STAGES if step >= stage_start(s, cfg)][-1]


# ----------------------------------------------------------------------------- checkpoints
def _read_state(ckpt: Path) -> dict:
    """`ckpt/trainer_state.json`, checked; a missing or damaged file is an `M3Error` naming it."""
    f = ckpt / "trainer_state.json"
    if not f.is_file():
        raise M3Error(f"{f}: missing")
    try:
        state = json.loads(f.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise M3Error(f"{f}: not valid JSON ({getattr(exc, 'msg', exc)}); the file is damaged") from None
    if not isinstance(state, dict) or not all(k in state for k in ("step", "stage", "sampler", "world_size")):
        raise M3Error(f"{f}: not a trainer state (needs step, stage, sampler, world_size)")
    return state


def checkpoints(output_dir) -> list:
    """The checkpoints (`checkpoint-N`, `final`) with a trainer_state.json, newest first:
    [(step, path)]; at the same step `checkpoint-N` comes before `final`. A checkpoint-N whose
    state cannot be read keeps its place (step N), so that a resume reports it; an unreadable
    `final` comes last."""
    found = []
    for d in Path(output_dir).glob("*"):
        named = re.fullmatch(r"checkpoint-(\d+)", d.name)
        if (named or d.name == "final") and (d / "trainer_state.json").is_file():
            try:
                step = _read_state(d)["step"]
            except M3Error:
                step = int(named.group(1)) if named else -1
            found.append((step, d.name != "final", d))
    return [(step, d) for step, _, d in sorted(found, key=lambda x: (x[0], x[1]), reverse=True)]


def latest_checkpoint(output_dir) -> Optional[Path]:
    """The complete checkpoint with the highest step (`checkpoint-N` or `final`), or None."""
    found = checkpoints(output_dir)
    return found[0][1] if found else None


def save_checkpoint(path: Path, model: M3Model, trainer: dict, optim: dict, env: DistEnv,
                    extra: Optional[dict] = None) -> None:
    """Write `path` atomically: everything goes to `.tmp-<name>` first, then one rename.

    `trainer` (JSON: step, stage, sampler, ...), `optim` (optimizer/grad-scaler state dicts)
    and `extra` ({file name: state dict}, e.g. the RetroMAE decoder) come from rank 0; every
    rank adds its own RNG state. `optim=None` writes a model-only checkpoint (final/: what
    inference, FlagEmbedding and sentence-transformers read, plus trainer_state.json). A
    failed write (a full disk) is an `M3Error` naming the file; the last checkpoint stays as it was.
    """
    tmp = path.with_name(f".tmp-{path.name}")
    if env.master:
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)  # official layout: encoder, tokenizer, colbert/sparse heads
        if optim is not None:
            save_torch_file(optim, tmp / "optimizer.pt")
        for name, state in (extra or {}).items():
            save_torch_file(state, tmp / name)
    barrier(env)
    if optim is not None:
        rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state()
        with writing(tmp):
            tmp.mkdir(parents=True, exist_ok=True)  # (multi-node: OUTPUT_DIR should be a shared file system)
        save_torch_file(rng, tmp / f"rng_state_{env.rank}.pt")
        barrier(env)
    if env.master:
        with writing(tmp / "trainer_state.json"):
            (tmp / "trainer_state.json").write_text(json.dumps(trainer, indent=1))
        old = path.with_name(f".old-{path.name}")
        with writing(path):
            if path.exists():
                path.rename(old)
            tmp.rename(path)  # the only step that makes the checkpoint visible
        shutil.rmtree(old, ignore_errors=True)
    barrier(env)


def rotate_checkpoints(written: Path, keep: Optional[int], env: DistEnv) -> list:
    """Keep `written` (the checkpoint-N just completed) and the newest `keep - 1` other
    checkpoint-N directories of its folder (`save_total_limit`; final/ is not counted); remove
    the rest, on rank 0. Each is renamed to `.tmp-<name>` first (what a killed run leaves there
    is removed by the next one), so a resume never sees half of one. Returns the removed paths."""
    if not keep or not env.master:
        return []
    found = sorted(((int(m.group(1)), d) for d in written.parent.glob("checkpoint-*")
                    if (m := re.fullmatch(r"checkpoint-(\d+)", d.name)) and d.is_dir() and d != written),
                   reverse=True)
    removed = []
    for _, d in found[keep - 1:]:
        tmp = d.with_name(f".tmp-{d.name}")
        with writing(d):
            d.rename(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        removed.append(d)
    return removed


def _rng_restore(rng: Optional[dict]) -> None:
    if rng is None:
        return
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])


def _open_checkpoint(ckpt: Path, cfg: TrainConfig, env: DistEnv) -> dict:
    """Everything a resume reads from `ckpt`, loaded and checked on this rank (no collective
    call): the trainer state, the model, the optimizer state, this rank's RNG state and the
    RetroMAE decoder. The first missing, truncated or damaged file is an `M3Error` naming it."""
    state = _read_state(ckpt)
    model = M3Model.from_pretrained(ckpt, config=cfg.m3, device=env.device)
    if ckpt.name == "final" and not (ckpt / "optimizer.pt").exists():  # final/ keeps the model only
        return {"path": ckpt, "state": state, "model": model, "optim": None, "rng": None, "decoder": None}
    optim = load_torch_file(ckpt / "optimizer.pt", map_location=env.device)
    if not (isinstance(optim, dict) and "optimizer" in optim):
        raise M3Error(f"{ckpt / 'optimizer.pt'}: not an optimizer state")
    rng_file = ckpt / f"rng_state_{env.rank}.pt"
    rng = None
    if rng_file.is_file():
        rng = load_torch_file(rng_file)
        if not (isinstance(rng, dict) and "torch" in rng and "python" in rng):
            raise M3Error(f"{rng_file}: not an RNG state")
    elif state.get("world_size") == env.world_size:
        warnings.warn(f"{rng_file} missing: RNG not restored", M3Warning)
    decoder = None
    if cfg.retromae_steps > 0 and (ckpt / DECODER_FILE).is_file():
        decoder = load_torch_file(ckpt / DECODER_FILE, map_location=env.device)
    return {"path": ckpt, "state": state, "model": model, "optim": optim, "rng": rng, "decoder": decoder}


def _all_ranks(ok: bool, env: DistEnv) -> bool:
    """True when `ok` holds on every rank."""
    return ok if env.world_size == 1 else mean_across_ranks([float(ok)], env.device)[0] == 1.0


def _resume_point(out: Path, resume: str, cfg: TrainConfig, env: DistEnv) -> Optional[dict]:
    """The checkpoint a resume continues from, opened (`_open_checkpoint`), or None.

    `resume`: "latest" (the newest usable checkpoint of OUTPUT_DIR; an error if there is
    none), "auto" (the same, or None for a new run when OUTPUT_DIR has no checkpoint) or a
    checkpoint directory (an error if it cannot be used). A newest checkpoint that cannot be
    used (a file missing, truncated or damaged) is passed over with a warning that names the
    file, for the one before it; every rank must be able to use the one chosen.
    """
    if resume not in RESUME_MODES:
        opened = _open_checkpoint(Path(resume), cfg, env) if Path(resume).is_dir() else None
        if opened is None:
            raise M3Error(f"--resume {resume}: no checkpoint directory there")
        return opened
    found = checkpoints(out)
    if not found:
        if resume == "auto":
            return None
        raise M3Error(f"no checkpoint to resume from in {out} (--resume auto starts a new run when there is none)")
    problems = []
    for _, ckpt in found:
        try:
            opened, problem = _open_checkpoint(ckpt, cfg, env), None
        except M3Error as exc:
            opened, problem = None, str(exc)
        if _all_ranks(opened is not None, env):
            if problems and env.master:
                warnings.warn(f"resuming from {ckpt}: the newer {'; '.join(problems)}", M3Warning)
            return opened
        problems.append(f"{ckpt.name} cannot be used ({problem or 'not on every rank'})")
    raise M3Error(f"no usable checkpoint in {out}: {'; '.join(problems)}")


def _tidy(out: Path) -> None:
    """Clean up after a run killed while writing (rank 0, before anything is read)."""
    for d in out.glob(".old-*"):  # killed between the two renames: the old copy is the good one
        if (out / d.name[5:]).exists():
            shutil.rmtree(d)
        else:
            d.rename(out / d.name[5:])
    for d in out.glob(".tmp-*"):  # a checkpoint or OUTPUT_DIR/init half written
        shutil.rmtree(d) if d.is_dir() else d.unlink()
    for f in out.glob(".*.tmp"):  # train_log.jsonl / train_config.json half rewritten
        f.unlink()


def _init_model(out: Path, cfg: TrainConfig, env: DistEnv) -> Path:
    """OUTPUT_DIR/init, m3ref's untrained tiny model (`model: null`), built once on rank 0 under
    a temporary name and renamed, so a kill or a full disk never leaves half a model there. An
    incomplete init/ (left by an older version) is built again."""
    path = out / "init"
    if env.master:
        try:
            check_model_dir(path)
            problem = None
        except M3Error as exc:
            problem = str(exc)
        if problem is not None:
            from .tiny import build_tiny_model
            if path.exists():
                warnings.warn(f"{path} is incomplete ({problem}); building it again", M3Warning)
                shutil.rmtree(path)
            tmp = out / ".tmp-init"
            shutil.rmtree(tmp, ignore_errors=True)
            with writing(tmp):
                build_tiny_model(str(tmp), seed=cfg.seed)
            with writing(path):
                tmp.rename(path)
    barrier(env)
    return path


def _read_log(log_path: Path, upto: int) -> list:
    """The records of train_log.jsonl up to step `upto`. A torn last line (a run killed or out
    of disk space while appending it) is dropped with a warning; a damaged line before the
    last is an `M3Error` naming it."""
    if not log_path.exists():
        return []
    lines = [(no, raw) for no, raw in enumerate(log_path.read_bytes().split(b"\n"), 1) if raw.strip()]
    rows = []
    for i, (no, raw) in enumerate(lines):
        try:
            row = json.loads(raw.decode("utf-8"))
            if not (isinstance(row, dict) and isinstance(row.get("step"), int)):
                raise ValueError("not a log record")
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            if i == len(lines) - 1:
                warnings.warn(f"{log_path}:{no}: the last line is torn (an interrupted write); dropped", M3Warning)
                break
            raise M3Error(f"{log_path}:{no}: not a log record ({getattr(exc, 'msg', exc)}); "
                          f"the log is damaged: remove that line to resume") from None
        if row["step"] <= upto:
            rows.append(row)
    return rows


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


def _load_model(cfg: TrainConfig, out: Path, opened: Optional[dict], env: DistEnv) -> M3Model:
    """The model a run starts from: the resumed checkpoint's (`opened`), `cfg.model` with fresh
    heads where it has none, or m3ref's tiny model built into OUTPUT_DIR/init (`model: null`)."""
    torch.manual_seed(cfg.seed)  # fresh heads: same on every rank (and broadcast below)
    if opened is not None:
        model, source = opened["model"], opened["path"]
    else:
        source = _init_model(out, cfg, env) if cfg.model is None else cfg.model
        model = M3Model.from_pretrained(source, init_heads=True, config=cfg.m3, device=env.device)
    for name in ("query_max_len", "passage_max_len"):
        if getattr(cfg, name) > model.max_length:
            raise M3Error(f"config: {name}={getattr(cfg, name)}: above the {model.max_length} positions "
                          f"of the model {source}")
    if cfg.fix_encoder:  # official fix_encoder: only the lexical and multi-vector heads learn
        model.encoder.requires_grad_(False)
    broadcast_parameters(model, env)
    torch.manual_seed(cfg.seed + env.rank)  # nanoGPT's seed_offset: different dropout masks per rank
    if cfg.gradient_checkpointing in (True, "layer"):
        enable_checkpointing(model)
    return model.train()


def _load_all(paths, meta: Optional[dict] = None) -> dict:
    """load_train_data over one path or a list of them, merged: {name: dataset}. `meta`, a dict,
    receives {name: {"local": ..., "type": ...}} (`data_meta`)."""
    data = {}
    for path in paths if isinstance(paths, list) else [paths]:
        for name, ds in load_train_data(path).items():
            if name in data:
                raise M3Error(f"{path}: a second data file named {name!r}; file names must differ")
            data[name] = ds
            if meta is not None:
                meta[name] = data_meta(path, name, ds)
    return data


NO_IN_BATCH_NEG = "no_in_batch_neg"
_LEN_TAG = re.compile(r"_len-\d+-(\d+|inf)$")


def data_meta(path, name: str, ds) -> dict:
    """How the official trainer treats a data file (FlagEmbedding's AbsEmbedderSameDatasetTrainDataset):

    * "local": the path given (a directory or a file) or the file's own name, without a
      `_len-` tag, ends in `no_in_batch_neg`: each query is scored against its own group
      only, no in-batch or cross-device negatives (classification, clustering data);
    * "type": the examples' `type` field (one per file: the official batches are of one type):
      `only_1neg` trains with G = 2, `symmetric_class` with G = min(negatives + 1, G), any
      `symmetric*` type with half the batch size, `symmetric_sts` and `symmetric_clustering`
      with the query's instruction on the passages too.
    """
    given = Path(str(path)).name
    for suffix in (".gz", ".jsonl", ".json"):
        given = given.removesuffix(suffix)
    local = given.endswith(NO_IN_BATCH_NEG) or _LEN_TAG.sub("", name).endswith(NO_IN_BATCH_NEG)
    types = []
    if "type" in ds.column_names:
        types = [t for t in pc.unique(ds.data.column("type")).to_pylist() if t is not None]
    if len(types) > 1:
        raise M3Error(f"{name}: examples of {len(types)} types ({', '.join(sorted(types))}); a file holds one type, "
                      f"as the official trainer batches one type at a time")
    return {"local": local, "type": types[0] if types else None}


def group_size_for(meta: dict, rows, batch, group_size: int) -> int:
    """G of a unified batch: `only_1neg` -> 2, `symmetric_class` -> min(negatives of the batch's
    first example + 1, G), otherwise `group_size` (official `_get_train_group_size`)."""
    kind = meta.get("type")
    if kind == "only_1neg":
        return 2
    if kind == "symmetric_class":
        return max(1, min(len(rows[batch.indices[0]]["neg"] or []) + 1, group_size))
    return group_size


def instructed(queries: list, passages: list, prompts: list, kind: Optional[str], cfg: TrainConfig):
    """Queries and passage groups with their instructions (official AbsEmbedderDataset): a
    query becomes query_instruction_format.format(prompt or query instruction, query); passages
    of symmetric_sts / symmetric_clustering examples get the same instruction, other passages
    passage_instruction_format.format(passage instruction, passage). Nothing to prepend (no
    prompt, no instruction): the text stays as it is."""
    out_q, out_p = [], []
    for query, group, prompt in zip(queries, passages, prompts):
        instruction = prompt if prompt is not None else cfg.query_instruction_for_retrieval
        fmt = cfg.query_instruction_format
        out_q.append(query if instruction is None else fmt.format(instruction, query))
        if kind in ("symmetric_sts", "symmetric_clustering"):
            out_p.append(group if instruction is None else [fmt.format(instruction, p) for p in group])
        elif cfg.passage_instruction_for_retrieval is not None:
            out_p.append([cfg.passage_instruction_format.format(cfg.passage_instruction_for_retrieval, p)
                          for p in group])
        else:
            out_p.append(group)
    return out_q, out_p


def batches_per_epoch(sizes, batch_sizes, world_size: int, drop_last: bool) -> int:
    """Global batches in one epoch of `BucketSampler`: per bucket ceil(n / (bs * W)), or
    floor with drop_last."""
    return sum(n // (bs * world_size) if drop_last else -(-n // (bs * world_size)) for n, bs in zip(sizes, batch_sizes))


def _stage_data(cfg: TrainConfig, meta: Optional[dict] = None) -> dict:
    """Load and validate every data file before any compute: {stage: datasets}; `meta` (a
    dict) receives {stage: {name: data_meta}}."""
    stages, meta = {}, {} if meta is None else meta
    if cfg.retromae_steps > 0:
        stages["retromae"] = _load_all(cfg.retromae_data or cfg.dense_train_data or cfg.train_data,
                                       meta.setdefault("retromae", {}))
    if cfg.dense_steps > 0:
        stages["dense"] = _load_all(cfg.dense_train_data or cfg.train_data, meta.setdefault("dense", {}))
    if cfg.max_steps > stage_start("unified", cfg) or cfg.num_train_epochs is not None:
        stages["unified"] = data = _load_all(cfg.train_data, meta.setdefault("unified", {}))
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
    """Run training; returns OUTPUT_DIR/final.

    `resume`: None (a new run), "latest" (the newest usable checkpoint of OUTPUT_DIR),
    "auto" (the same, or a new run when there is no checkpoint; a run whose `final` is done
    returns it at once) or a checkpoint directory.
    """
    cfg.check()
    env = setup(cfg.dist_timeout_s)
    try:
        return _train(cfg, resume, env)
    finally:
        cleanup()


def _schedule_note(state: dict, cfg: TrainConfig, ckpt: Path) -> Optional[str]:
    """A warning when a resume changes the learning-rate schedule (max_steps, lr, warmup_ratio)."""
    saved = state.get("config") or {}
    changed = [k for k in SCHEDULE_FIELDS if k in saved and saved[k] != getattr(cfg, k)]
    if not changed:
        return None
    step = state["step"]
    try:
        was = lr_at(step, SimpleNamespace(**{k: saved.get(k, getattr(cfg, k)) for k in ("max_steps", "lr", "warmup_ratio")}))
    except TypeError:  # a damaged saved config
        was = float("nan")
    diff = ", ".join(f"{k}={saved[k]} -> {getattr(cfg, k)}" for k in changed)
    return (f"resuming {ckpt} at step {step} with {diff}: the learning-rate schedule is recomputed for the new "
            f"values (lr at step {step + 1}: {lr_at(step, cfg):.3g}, the old schedule's {was:.3g}); the steps "
            f"already taken keep the lr they had")


def _config_note(state: dict, cfg: TrainConfig, ckpt: Path) -> Optional[str]:
    """A warning when a resume changes what a step computes (the data, the start model, the batches,
    the loss, the seed...): the steps already taken used the saved values, so the run is a mix."""
    saved, now = state.get("config") or {}, json.loads(json.dumps(cfg.to_dict()))  # as the checkpoint stores it

    def short(value) -> str:
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + "..."
    changed = [k for k in now if k in saved and k not in SCHEDULE_FIELDS + QUIET_FIELDS and saved[k] != now[k]]
    if not changed:
        return None
    diff = "; ".join(f"{k}: {short(saved[k])} -> {short(now[k])}" for k in changed)
    return (f"resuming {ckpt} at step {state['step']} with another config ({diff}): the steps already taken "
            f"used the saved values, so this run mixes two configs")


def _nothing_to_do(state: dict, ckpt: Path, cfg: TrainConfig, resume: Optional[str], env: DistEnv) -> bool:
    """True when `--resume auto` finds final/ at max_steps; an error for any other resume past it."""
    if state["step"] < cfg.max_steps:
        return False
    if resume == "auto" and ckpt.name == "final":
        if env.master:
            print(f"{ckpt} is at step {state['step']} of max_steps={cfg.max_steps}: nothing to do", file=sys.stderr)
        return True
    raise M3Error(f"{ckpt} is at step {state['step']}, max_steps is {cfg.max_steps}: nothing to do")


def _train(cfg: TrainConfig, resume: Optional[str], env: DistEnv) -> Path:
    out = Path(cfg.output_dir)
    meta = {}
    stage_data = _stage_data(cfg, meta)
    if env.master:
        with writing(out):
            out.mkdir(parents=True, exist_ok=True)
            _tidy(out)
        probe = out / f".tmp-probe-{os.getpid()}"  # fail now, not at the first checkpoint
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise M3Error(f"cannot write in the output directory {out}: "
                          f"{os_error_message(OSError(exc.errno, exc.strerror))}") from None
    barrier(env)
    opened = _resume_point(out, resume, cfg, env) if resume else None
    ckpt = opened["path"] if opened is not None else None
    if opened is not None:
        state = opened["state"]
        if state["world_size"] != env.world_size:
            raise M3Error(f"{ckpt} was written by {state['world_size']} ranks; resume with the same number "
                          f"(now {env.world_size})")
        if cfg.num_train_epochs is None and _nothing_to_do(state, ckpt, cfg, resume, env):
            return ckpt
    model = _load_model(cfg, out, opened, env)
    buckets = {}  # {stage: [(name, lower length, rows, data_meta)]}, one file's buckets after another
    for s, data in stage_data.items():
        buckets[s] = [(*b, meta[s][name]) for name, ds in data.items()
                      for b in make_buckets({name: ds}, model.tokenizer, cfg.length_edges)]
    if cfg.num_train_epochs is not None:  # max_steps from the unified stage's batches per epoch
        _, los, rows, metas = zip(*buckets["unified"])
        per_epoch = batches_per_epoch([len(r) for r in rows], _batch_sizes("unified", los, metas, cfg),
                                      env.world_size, cfg.drop_last)
        unified = math.ceil(cfg.num_train_epochs * per_epoch / cfg.grad_accum)
        cfg = dataclasses.replace(cfg, max_steps=stage_start("unified", cfg) + max(1, unified))
        if env.master:
            print(f"num_train_epochs={cfg.num_train_epochs:g}: {per_epoch} batches per epoch, max_steps={cfg.max_steps}",
                  file=sys.stderr)
        if opened is not None and _nothing_to_do(state, ckpt, cfg, resume, env):
            return ckpt
    if opened is not None:
        for note in (_schedule_note(state, cfg, ckpt), _config_note(state, cfg, ckpt)):
            if note and env.master:
                warnings.warn(note, M3Warning)

    decoder = None
    if cfg.retromae_steps > 0:  # its decoder is trained in stage 0 only, and never saved in final/
        torch.manual_seed(cfg.seed)
        decoder = RetroMAEDecoder(model.encoder).to(env.device).train()
        if opened is not None and opened["decoder"] is not None:
            try:
                decoder.load_state_dict(opened["decoder"])
            except RuntimeError as exc:
                raise M3Error(f"{ckpt / DECODER_FILE}: does not fit this model ({first_line(exc)})") from None
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
    if opened is not None:
        optim = opened["optim"]
        if optim is None and env.master:  # final/ of a finished run, continued to a larger max_steps
            warnings.warn(f"{ckpt} holds the model only (no optimizer state, no RNG state): AdamW's moments "
                          f"start from zero at step {state['step']}", M3Warning)
        try:
            if optim is not None:
                optimizer.load_state_dict(optim["optimizer"])
            if scaler is not None and optim is not None and optim.get("scaler"):
                scaler.load_state_dict(optim["scaler"])
        except (ValueError, KeyError, RuntimeError) as exc:
            raise M3Error(f"{ckpt / 'optimizer.pt'}: does not fit this run's parameters ({first_line(exc)}); "
                          f"was the config changed?") from None
        step, sampler_state = state["step"], {state["stage"]: state["sampler"]}
        _rng_restore(opened["rng"])
        opened = None  # the loaded copies are in use now
    log_path = out / "train_log.jsonl"
    if env.master:
        kept = _read_log(log_path, step) if ckpt is not None else []  # drop lost steps, a torn line
        with writing(log_path):
            write_jsonl_atomic(log_path, kept)
        with writing(out / "train_config.json"):
            _write_text_atomic(out / "train_config.json", json.dumps(cfg.to_dict(), indent=1))
    from tqdm.auto import tqdm
    bar = tqdm(total=cfg.max_steps, initial=step, disable=not env.master, desc="train", dynamic_ncols=True)
    writer = _tensorboard(out) if cfg.tensorboard and env.master else None
    last_good = ckpt

    def stop(what):
        raise M3Error(f"step {step + 1}: {what}; stopped. Last good checkpoint: {last_good or 'none'}")

    def checkpoint(path: Path) -> None:
        nonlocal last_good
        trainer = {"step": step, "stage": stage, "sampler": sampler.state_dict(), "world_size": env.world_size,
                   "lr": lr_at(step, cfg), "config": cfg.to_dict()}  # the schedule is lr_at(step)
        final = path.name == "final"  # the model only: no optimizer, RNG or decoder state
        optim = None if final else {"optimizer": optimizer.state_dict(),
                                    "scaler": scaler.state_dict() if scaler is not None else None}
        extra = {DECODER_FILE: decoder.state_dict()} if decoder is not None and not final else None
        try:
            save_checkpoint(path, model, trainer, optim, env, extra)
            if not final:
                rotate_checkpoints(path, cfg.save_total_limit, env)
        except M3Error as exc:
            raise M3Error(f"step {step}: {exc}; stopped. Last good checkpoint: {last_good or 'none'}") from None
        last_good = path

    try:
        while step < cfg.max_steps:
            if stage != stage_at(step, cfg):  # a new stage: its own sampler
                stage = stage_at(step, cfg)
                _, los, rows, metas = zip(*buckets[stage])
                seed = cfg.seed + {"dense": 0, "unified": 1, "retromae": 2}[stage]
                sampler = BucketSampler([len(r) for r in rows], _batch_sizes(stage, los, metas, cfg),
                                        env.world_size, env.rank, seed, cfg.drop_last)
                if sampler_state and stage in sampler_state:
                    sampler.load_state_dict(sampler_state[stage])
            m3 = cfg.m3.replace(unified=stage == "unified" and cfg.m3.unified)
            sums, n_queries, t0 = {}, 0, time.time()
            for micro in range(cfg.grad_accum):
                batch = next(sampler)
                n_queries += len(batch.indices) * env.world_size
                with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
                    if stage == "retromae":
                        texts = [rows[batch.bucket][i]["pos"][0] for i in batch.indices]
                        losses = _retromae_step(model, decoder, texts, cfg, step, micro, env.rank)
                    else:
                        data, info = rows[batch.bucket], metas[batch.bucket]
                        # stage 1: pairs, in-batch negatives only; stage 2: G by the file's type
                        G = group_size_for(info, data, batch, cfg.group_size) if stage == "unified" else 1
                        queries, passages, teacher = groups_of(data, batch, G, cfg.seed)
                        queries, passages = instructed(queries, passages, [data[i].get("prompt") for i in batch.indices],
                                                       info["type"], cfg)
                        losses = model.training_loss(
                            queries, passages, m3, step - stage_start(stage, cfg), teacher if cfg.teacher_kd else None,
                            cfg.query_max_len, cfg.passage_max_len, cfg.sub_batch_size,
                            checkpoint_sub_batches=cfg.gradient_checkpointing == "sub_batch",
                            **({"in_batch_negatives": False} if stage == "unified" and info["local"] else {}))
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
                try:
                    with writing(log_path), open(log_path, "a", encoding="utf-8") as f:
                        f.write(json.dumps(record) + "\n")
                except M3Error as exc:
                    raise M3Error(f"step {step}: {exc}; stopped. Last good checkpoint: {last_good or 'none'}") from None
                for k, v in record.items():
                    if writer is not None and isinstance(v, float):
                        writer.add_scalar(k, v, step)
                bar.set_postfix(stage=stage, L_final=f"{values['L_final']:.4f}")
                bar.update(1)
            if cfg.save_every and step % cfg.save_every == 0 and step < cfg.max_steps:
                checkpoint(out / f"checkpoint-{step}")
        checkpoint(out / "final")
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    return out / "final"


def _batch_sizes(stage: str, los, metas, cfg: TrainConfig) -> list:
    """Per-rank batch size of each bucket of a stage: its table's size for the bucket's lower
    length, halved (at least 1) for a `symmetric*` file in the contrastive stages (official)."""
    table = {"retromae": cfg.retromae_batch_size, "dense": cfg.dense_batch_size, "unified": cfg.batch_size}[stage]
    sizes = []
    for lo, info in zip(los, metas):
        size = batch_size_for(lo, table)
        if stage != "retromae" and "symmetric" in (info.get("type") or ""):
            size = max(1, size // 2)
        sizes.append(size)
    return sizes


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


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
    """A SummaryWriter on OUTPUT_DIR/tb; `tensorboard: true` without the package is a warning."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # the optional extra
        warnings.warn("tensorboard: true, but the tensorboard package is not installed (pip install "
                      "'m3ref[tensorboard]'): the losses go to train_log.jsonl only", M3Warning)
        return None
    return SummaryWriter(str(out / "tb"))


# ----------------------------------------------------------------------------- command line
# Official FlagEmbedding argument names (python -m FlagEmbedding.finetune.embedder.encoder_only.m3)
# that m3ref spells differently: official name -> TrainConfig field, or "m3.<M3Config field>".
# Names that are the same in both (train_data, query_max_len, passage_max_len, warmup_ratio,
# num_train_epochs, fix_encoder, output_dir, max_steps, weight_decay, seed, sub_batch_size,
# gradient_checkpointing, save_total_limit, max_grad_norm, query_instruction_for_retrieval,
# temperature, kd_loss_type, colbert_dim, normalize_embeddings, self_distill_start_step, ...)
# are flags already.
OFFICIAL_NAMES = {
    "model_name_or_path": "model", "train_group_size": "group_size", "learning_rate": "lr",
    "per_device_train_batch_size": "batch_size", "knowledge_distillation": "teacher_kd",
    "save_steps": "save_every", "gradient_accumulation_steps": "grad_accum", "dataloader_drop_last": "drop_last",
    "unified_finetuning": "m3.unified", "use_self_distill": "m3.self_distill",
    "sentence_pooling_method": "m3.pooling",
}
# Official arguments with no m3ref counterpart, accepted so that a command carries over, with the
# value that changes nothing; any other value gives a warning.
OFFICIAL_IGNORED = {
    "logging_steps": (None, "m3ref logs every step to train_log.jsonl"),
    "cache_dir": (None, "models come from the Hugging Face cache (HF_HOME)"),
    "cache_path": (None, "the data cache is the datasets library's (HF_DATASETS_CACHE)"),
    "overwrite_output_dir": (None, "a run writes its own checkpoints; --resume continues one"),
    "pad_to_multiple_of": (None, "m3ref pads each sub-batch to its longest text"),
    "deepspeed": (None, "m3ref runs plain DDP-style data parallelism under torchrun (ZeRO stage 0)"),
    "same_dataset_within_batch": (True, "m3ref always draws a batch from one file"),
    "small_threshold": (0, "files are never merged"), "drop_threshold": (0, "files are never dropped"),
    "shuffle_ratio": (0, "the positive-passage shuffling augmentation is not implemented"),
    "dataloader_num_workers": (None, "batches are built in the training process"),
    "fp16_opt_level": (None, "not used"), "ddp_find_unused_parameters": (None, "not used"),
}


def _field_help(cls) -> dict:
    """{field: its comment in the dataclass source}: the text of --help."""
    import inspect
    notes, comment = {}, []
    for line in inspect.getsource(cls).splitlines():
        text = line.strip()
        if text.startswith("#"):
            if not text.startswith("# ---"):  # a section heading
                comment.append(text.lstrip("# ").strip())
            continue
        m = re.match(r"(\w+): [^=]+=[^#]*(?:#\s*(.*))?$", text)
        if m and line.startswith("    ") and not line.startswith("     "):
            notes[m.group(1)] = " ".join(comment + ([m.group(2)] if m.group(2) else []))
        if not text.startswith("#"):
            comment = []
    return notes


def _bool(text: str) -> bool:
    value = {"true": True, "false": False, "yes": True, "no": False, "1": True, "0": False}.get(str(text).lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value


def _value(text: str):
    """A flag's value read as YAML (numbers, true/false, null, [lists], {maps}); "none" is null too."""
    import yaml
    if text.lower() == "none":
        return None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _optional_str(text: str):
    return None if text.lower() in ("null", "none") else text


def _names(name: str) -> list:
    """--name and, when it has an underscore, --name-with-dashes."""
    return [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])


def build_parser() -> argparse.ArgumentParser:
    """The CLI, generated from the dataclasses: a flag per TrainConfig field (--max_steps or
    --max-steps), a flag per M3Config field both nested (--m3.temperature) and flat
    (--temperature: no M3Config field has a TrainConfig field's name), and the official
    FlagEmbedding names as aliases (OFFICIAL_NAMES, --negatives_cross_device, --fp16/--bf16,
    --report_to; OFFICIAL_IGNORED are accepted). A flag overrides the config file."""
    from .config import DATA_FIELDS, M3Config
    prog = "m3ref-train" if os.path.basename(sys.argv[0]) == "m3ref-train" else "python -m m3ref.train"
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                 epilog="Boolean flags take true/false or stand alone (= true). Values are read as "
                                        "YAML: --batch_size '{0: 4, 1000: 2}', --m3.ensemble_weights '[1, 0.3, 1]'.")
    ap.add_argument("--config", help="YAML file of TrainConfig fields, or the name of a shipped config "
                                     "(tiny, bge-m3-gpu, bge-m3-paper-gpu); without it the TrainConfig defaults")
    ap.add_argument("--resume", nargs="?", const="latest", metavar="latest|auto|CHECKPOINT_DIR",
                    help="resume from the newest usable checkpoint of the output dir (latest, the default), "
                         "from it if there is one and else start a new run (auto: for requeue scripts), "
                         "or from a checkpoint directory")
    aliases = {}
    for official, target in OFFICIAL_NAMES.items():
        aliases.setdefault(target, []).append(official)
    train_fields = [f for f in dataclasses.fields(TrainConfig) if f.name != "m3"]
    m3_fields = [f for f in dataclasses.fields(M3Config)]
    clash = {f.name for f in train_fields} & {f.name for f in m3_fields}
    assert not clash, f"flat --m3 flags would be ambiguous: {clash}"
    groups = {"": ap.add_argument_group("training (TrainConfig)"),
              "m3.": ap.add_argument_group("the objective and the dense vector (M3Config; --m3.NAME or --NAME)")}
    for prefix, fields, notes in (("", train_fields, _field_help(TrainConfig)), ("m3.", m3_fields, _field_help(M3Config))):
        for f in fields:
            names = ([f"--m3.{f.name}"] if prefix else []) + _names(f.name)
            for official in aliases.get(prefix + f.name, []):
                names += _names(official)
            kwargs = {"dest": prefix + f.name, "default": None, "help": notes.get(f.name, "").replace("%", "%%")}
            if f.type == "bool":
                kwargs.update(nargs="?", const=True, type=_bool, metavar="BOOL")
            elif "bool" in f.type:  # gradient_checkpointing: true/false/layer/sub_batch
                kwargs.update(nargs="?", const=True, type=_value)
            elif f.name in DATA_FIELDS:
                kwargs.update(nargs="+", type=str, metavar="PATH")
            elif f.type in ("str", "Optional[str]"):
                kwargs.update(type=_optional_str if f.type.startswith("Optional") else str)
            else:
                kwargs.update(type=_value)
            groups[prefix].add_argument(*names, **kwargs)
    official = ap.add_argument_group("official FlagEmbedding arguments without a field of the same name")
    official.add_argument("--negatives_cross_device", "--negatives-cross-device", nargs="?", const=True, type=_bool,
                          metavar="BOOL", help="true = --m3.cross_device dense (the official choice), false = none")
    official.add_argument("--fp16", nargs="?", const=True, type=_bool, metavar="BOOL", help="= --precision fp16")
    official.add_argument("--bf16", nargs="?", const=True, type=_bool, metavar="BOOL", help="= --precision bf16")
    official.add_argument("--report_to", "--report-to", nargs="+", metavar="NAME",
                          help="tensorboard turns on --tensorboard; none (or anything else) turns it off")
    for name, (_, why) in OFFICIAL_IGNORED.items():
        official.add_argument(*_names(name), dest=f"ignored.{name}", default=None, nargs="?", const=True,
                              type=_value, metavar="VALUE", help=f"accepted, no effect: {why}")
    return ap


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of parsed flags: the config file (or the defaults), then every flag given."""
    from .config import DATA_FIELDS
    values = vars(args)
    top, m3 = {}, {}
    for key, value in values.items():
        if value is None or key in ("config", "resume", "negatives_cross_device", "fp16", "bf16", "report_to") \
                or key.startswith("ignored."):
            continue
        if key.startswith("m3."):
            m3[key[3:]] = value
        elif key in DATA_FIELDS:
            top[key] = value[0] if len(value) == 1 else value  # data paths: one or several
        else:
            top[key] = value
    if values["negatives_cross_device"] is not None:
        m3.setdefault("cross_device", "dense" if values["negatives_cross_device"] else "none")
    for flag in ("fp16", "bf16"):
        if values[flag]:
            top.setdefault("precision", flag)
    if values["report_to"] is not None:
        top.setdefault("tensorboard", "tensorboard" in values["report_to"])
    for name, (noop, why) in OFFICIAL_IGNORED.items():
        value = values[f"ignored.{name}"]
        if value is not None and noop is not None and value != noop:
            warnings.warn(f"--{name} {value}: not supported ({why}); ignored", M3Warning)
    return load_config(args.config, m3=m3 or None, **top)


def main(argv=None) -> None:
    ap = build_parser()
    args = ap.parse_args(argv)
    with cli_errors():
        cfg = config_from_args(args)
        final = train(cfg, args.resume)
        if int(os.environ.get("RANK", 0)) == 0:
            print(f"saved {final}", file=sys.stderr)


if __name__ == "__main__":
    main()
