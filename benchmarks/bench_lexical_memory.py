"""Training memory of the unified loss at BGE-M3's width and vocabulary: m3ref vs FlagEmbedding.

FlagEmbedding's M3 training model (`EncoderOnlyEmbedderM3Model`, unified fine-tuning with
self-distillation, as in `tests/test_parity_flagembedding.py`) builds, for every text of the
batch, a (length, vocabulary) tensor: `zeros(B, L, V).scatter(...)`, then a max over L: 8 bytes
x 250,002 per padded token in fp32 (the zeros and the scattered copy), alive at once.
m3ref's `M3Model.training_loss` computes the same s_lex in the space of the ids present in the
batch. Both run forward + backward of L_final on the same batch, on copies of the same weights,
with dropout off (so the two losses agree, checked) and with per-layer gradient checkpointing
on both encoders, as the official fine-tuning recipe trains (configs/bge-m3-gpu.yaml).

The shape: width 1024, 16 heads, FFN 4096, 250,002 ids (BGE-M3's), but measured at depths 1
and 2; the target is the paper's per-GPU fine-tuning batch for the shortest length bucket
(Table 9, `m3ref.config.BATCH_SIZE_TABLES["table9"]`: 48 queries x G = 8 passages, 0-500
tokens) at BGE-M3's 24 layers. That needs hundreds of GB for FlagEmbedding, and this machine has
24 GB, so it is extrapolated, not measured:

* memory: `common.PeakMemory`, the peak of live tensor bytes during the step (activations,
  gradients, the lexical tensors; weights, inputs and optimizer states, equal for both, are not
  counted); `torch.cuda.max_memory_allocated` on a GPU;
* the word embeddings are frozen while measuring. Their gradient (250,002 x 1024 fp32, 1.02 GB,
  the same in both libraries) is a fixed cost that hides the per-token growth at the small batches
  this machine can run: unfrozen, m3ref's peak is the same 3.2 GB from 1,000 to 3,000 tokens.
  It is added back to both peaks as a constant, an upper bound (it is allocated at the end of the
  backward pass, when the activations are gone), which lowers the ratio;
* points: B queries (the first rows of data_samples' `ft_len-0-500.jsonl`, up to 64 tokens) with
  G = 2 passages of exactly 500 tokens each, at depths 1 and 2: B = 1, 2 for FlagEmbedding (2 MB
  per token) and B = 4, 6 for m3ref, whose peak is affine in the batch only once its activations
  outgrow the fixed costs (at B = 1, 2, 3 it grew by 39 and then 91 MB);
* fit: every layer has the same shapes and every padded token the same cost, so the peak is
  affine in the depth d and in the padded tokens T of the batch (queries and passages):
  P = c0 + c1 d + c2 T + c3 d T, four coefficients from the four points of each library;
* check: one more measured point per library (B = 3 and B = 8, depth 1) against the fit's
  prediction (`lexical_train_fit_error`, relative);
* extrapolation: the fit at d = 24 and T = 48 x (padded query length) + 384 x 500.

Also: the curve of both peaks against T at d = 24 (`lexical_train_curve` in the meta file), and
where they cross. Time: forward + backward of the largest measured point, `rounds` alternating
rounds.
"""
from __future__ import annotations

import copy
import os

import torch

try:
    from . import common as C
except ImportError:  # run as a script
    import common as C

SIZES = {
    # B queries x group_size passages per point; FlagEmbedding's points are smaller (2 MB per token)
    "quick": dict(hidden=1024, heads=16, vocab=250_002, depths=[1, 2], target_depth=24, group_size=2,
                  flag_batches=[1, 2], flag_check=3, m3ref_batches=[4, 6], m3ref_check=8, time_batch=1,
                  query_max_len=64, passage_len=500, rounds=9, target_queries=48, target_group_size=8),
    # (9 timed rounds on the CPU: with 5, two idle runs gave 2.25 and 1.98 for the step-time ratio)
    # full (a GPU, 80 GB): depths 12 and 24 (BGE-M3's own), larger batches
    "full": dict(hidden=1024, heads=16, vocab=250_002, depths=[12, 24], target_depth=24, group_size=2,
                 flag_batches=[2, 4], flag_check=6, m3ref_batches=[8, 16], m3ref_check=24, time_batch=2,
                 query_max_len=64, passage_len=500, rounds=5, target_queries=48, target_group_size=8),
}
CURVE_TOKENS = [1_000, 4_000, 16_000, 64_000]  # padded tokens of the curve (and the target's)


def texts(s: dict, n_queries: int, group_size: int) -> tuple:
    """n queries (data_samples' fine-tuning file) and groups of passages of exactly passage_len tokens."""
    from m3ref.data import read_train_file
    rows = read_train_file(os.path.join(C.FINETUNE_DIR, "ft_len-0-500.jsonl"))
    qs = [r["query"] for r in rows[:n_queries]]
    flat = C.exact_length_texts(n_queries * group_size, s["passage_len"])
    return qs, [flat[i * group_size:(i + 1) * group_size] for i in range(n_queries)]


def _checkpointing(encoder) -> None:
    """Per-layer gradient checkpointing (non-reentrant), as `m3ref.batching.enable_checkpointing`."""
    from m3ref.batching import enable_checkpointing

    class Holder:  # enable_checkpointing looks at `.encoder`
        pass
    holder = Holder()
    holder.encoder = encoder
    enable_checkpointing(holder)


def models(s: dict, depth: int, device: str):
    """m3ref's M3Model and FlagEmbedding's training model holding copies of the same weights."""
    from FlagEmbedding.finetune.embedder.encoder_only.m3.modeling import EncoderOnlyEmbedderM3Model
    ours = C.m3_model(C.encoder_config(s["hidden"], depth, s["heads"], s["vocab"], attention_dropout=0.0,
                                       hidden_dropout=0.0), device=device).train()
    base = {"model": copy.deepcopy(ours.encoder), "colbert_linear": copy.deepcopy(ours.colbert_linear),
            "sparse_linear": copy.deepcopy(ours.sparse_linear)}
    theirs = EncoderOnlyEmbedderM3Model(base, tokenizer=ours.tokenizer, temperature=0.02, normalize_embeddings=True,
                                        unified_finetuning=True, use_self_distill=True, self_distill_start_step=-1,
                                        sentence_pooling_method="cls", kd_loss_type="m3_kd_loss").train()
    _checkpointing(ours.encoder)
    _checkpointing(theirs.model)
    return ours, theirs


def steps(s: dict, ours, theirs, qs: list, groups: list, device: str, dtype):
    """One forward + backward of each library's L_final: (step_ours, step_theirs, losses, padded tokens)."""
    from m3ref import M3Config
    flat = [t for g in groups for t in g]
    tok = ours.tokenizer
    cfg = M3Config.official(colbert_max_over_padding=True)  # the official batched ColBERT max
    autocast = torch.autocast(device, dtype=dtype, enabled=dtype is not None)
    losses = {}
    q = tok(qs, padding=True, truncation=True, max_length=s["query_max_len"], return_tensors="pt").to(device)
    p = tok(flat, padding=True, truncation=True, max_length=s["passage_len"], return_tensors="pt").to(device)
    tokens = q["input_ids"].numel() + p["input_ids"].numel()

    def step_ours():
        with autocast:
            loss = ours.training_loss(qs, groups, cfg, max_query_length=s["query_max_len"],
                                      max_passage_length=s["passage_len"])["L_final"]
        loss.backward()
        losses["m3ref"] = float(loss.detach())
        ours.zero_grad(set_to_none=True)

    def step_theirs():
        with autocast:
            loss = theirs(queries=q, passages=p).loss
        loss.backward()
        losses["flag"] = float(loss.detach())
        theirs.zero_grad(set_to_none=True)

    return step_ours, step_theirs, losses, tokens


def peaks(step_ours, step_theirs, device: str) -> dict:
    out = {}
    for name, fn in (("m3ref", step_ours), ("flag", step_theirs)):
        with C.PeakMemory(device) as pm:
            fn()
        out[name] = float(pm.peak)
    return out


def fit(points: dict) -> tuple:
    """(c0, c1, c2, c3) of P = c0 + c1 d + c2 T + c3 d T through four points {(d, T): bytes}
    at two depths x two token counts per depth."""
    depths = sorted({d for d, _ in points})
    lines = {}
    for d in depths:  # P = a_d + b_d T at each depth
        (t1, p1), (t2, p2) = sorted((t, p) for (dd, t), p in points.items() if dd == d)
        b = (p2 - p1) / (t2 - t1)
        lines[d] = (p1 - b * t1, b)
    (d1, (a1, b1)), (d2, (a2, b2)) = sorted(lines.items())
    c1, c3 = (a2 - a1) / (d2 - d1), (b2 - b1) / (d2 - d1)
    return a1 - c1 * d1, c1, b1 - c3 * d1, c3


def predict(c: tuple, depth: float, tokens: float) -> float:
    return c[0] + c[1] * depth + c[2] * tokens + c[3] * depth * tokens


def run(mode: str = "quick", sizes: dict = None) -> dict:
    s = {**SIZES[mode], **(sizes or {})}
    device, dtype = C.device_for(mode), C.dtype_for(mode)
    points, raw, check, times, loss_diff = {"m3ref": {}, "flag": {}}, {}, {}, None, 0.0
    for depth in s["depths"]:
        ours, theirs = models(s, depth, device)
        for model in (ours.encoder, theirs.model):  # see the docstring: added back as a constant below
            model.embeddings.word_embeddings.weight.requires_grad_(False)
        for lib in ("flag", "m3ref"):
            todo = list(s[f"{lib}_batches"]) + ([s[f"{lib}_check"]] if depth == s["depths"][0] else [])
            for n in todo:
                qs, groups = texts(s, n, s["group_size"])
                step_ours, step_theirs, losses, tokens = steps(s, ours, theirs, qs, groups, device, dtype)
                with C.PeakMemory(device) as pm:
                    (step_ours if lib == "m3ref" else step_theirs)()
                raw[f"{lib}:depth{depth},B{n},G{s['group_size']},T{tokens}"] = float(pm.peak)
                if n == s[f"{lib}_check"] and depth == s["depths"][0] and n not in s[f"{lib}_batches"]:
                    check[lib] = (depth, tokens, float(pm.peak))
                else:
                    points[lib][(depth, tokens)] = float(pm.peak)
        # the same loss on the same batch (same weights, dropout off), and the time of one step
        qs, groups = texts(s, s["time_batch"], s["group_size"])
        step_ours, step_theirs, losses, tokens = steps(s, ours, theirs, qs, groups, device, dtype)
        step_ours()
        step_theirs()
        loss_diff = max(loss_diff, abs(losses["m3ref"] - losses["flag"]) / abs(losses["flag"]))
        if depth == s["depths"][-1]:
            # each side's rounds last about two seconds (one step per round put two idle runs 43 % apart)
            number = {"flag": C.calls_per_round(step_theirs, 2.0, device=device),
                      "m3ref": C.calls_per_round(step_ours, 2.0, device=device)}
            times = C.compare_times({"flag": step_theirs, "m3ref": step_ours}, repeat=s["rounds"], device=device,
                                    warmup=0, number=number)
        del ours, theirs
    coef = {lib: fit(points[lib]) for lib in points}
    fit_error = {lib: abs(predict(coef[lib], d, t) / p - 1) for lib, (d, t, p) in check.items()}
    # the word-embedding gradient (V x hidden, fp32), the same in both libraries
    embedding_grad = float(s["vocab"] * s["hidden"] * (2 if dtype is not None and device == "cuda" else 4))
    # the target batch: 48 queries padded to their longest (<= query_max_len), 384 passages of 500 tokens
    from m3ref.data import read_train_file
    rows = read_train_file(os.path.join(C.FINETUNE_DIR, "ft_len-0-500.jsonl"))
    q_len = max(len(ids) for ids in C.tokenizer()([r["query"] for r in rows[:s["target_queries"]]],
                                                   truncation=True, max_length=s["query_max_len"])["input_ids"])
    target_tokens = s["target_queries"] * q_len + s["target_queries"] * s["target_group_size"] * s["passage_len"]
    d = s["target_depth"]
    at = {lib: predict(coef[lib], d, target_tokens) + embedding_grad for lib in coef}
    # the two lines at depth d: P = a + b T; where FlagEmbedding's crosses m3ref's, and where it is 2x
    a = {lib: coef[lib][0] + coef[lib][1] * d + embedding_grad for lib in coef}
    b = {lib: coef[lib][2] + coef[lib][3] * d for lib in coef}
    # -1: no crossing at T > 0 (one line is above the other everywhere)
    cross = (a["m3ref"] - a["flag"]) / (b["flag"] - b["m3ref"]) if b["flag"] != b["m3ref"] else -1.0
    cross = cross if cross > 0 else -1.0
    def reaches(r):  # padded tokens from which FlagEmbedding's peak is r times m3ref's (-1: never)
        return (r * a["m3ref"] - a["flag"]) / (b["flag"] - r * b["m3ref"]) if b["flag"] > r * b["m3ref"] else -1.0
    twice, tenfold = reaches(2.0), reaches(10.0)
    model_states = 16.0 * C.BGE_M3_PARAMS  # fp32 weights, gradients' master copy and Adam: equal for both
    out = {
        "lexical_train_memory_vs_flagembedding": at["flag"] / at["m3ref"],
        "lexical_train_memory_vs_flagembedding_incl_model_states": (at["flag"] + model_states)
        / (at["m3ref"] + model_states),
        "lexical_train_peak_bytes_flag": at["flag"],
        "lexical_train_peak_bytes_m3ref": at["m3ref"],
        "lexical_train_target_tokens": float(target_tokens),
        "lexical_train_target_depth": float(d),
        "lexical_train_fit_error": max(fit_error.values()),
        "lexical_train_fit_error_flag": fit_error["flag"],
        "lexical_train_fit_error_m3ref": fit_error["m3ref"],
        "lexical_train_embedding_grad_bytes": embedding_grad,
        "lexical_train_bytes_per_token_flag": b["flag"],
        "lexical_train_bytes_per_token_m3ref": b["m3ref"],
        "lexical_train_fixed_bytes_flag": a["flag"],
        "lexical_train_fixed_bytes_m3ref": a["m3ref"],
        "lexical_train_asymptotic_ratio": b["flag"] / b["m3ref"],
        "lexical_train_crossing_tokens": cross,
        "lexical_train_twice_tokens": twice,
        "lexical_train_tenfold_tokens": tenfold,
        "lexical_train_loss_rel_diff": loss_diff,
        "lexical_train_measured_max_tokens_flag": float(max(t for _, t in points["flag"])),
        "lexical_train_measured_max_tokens_m3ref": float(max(t for _, t in points["m3ref"])),
    }
    for t in CURVE_TOKENS:
        out[f"lexical_train_ratio_at_{t}_tokens"] = (a["flag"] + b["flag"] * t) / (a["m3ref"] + b["m3ref"] * t)
    out["lexical_train_curve"] = {str(t): {lib: a[lib] + b[lib] * t for lib in coef}
                                  for t in CURVE_TOKENS + [target_tokens]}
    out["lexical_train_measured"] = raw
    out["lexical_train_fit"] = {lib: list(c) for lib, c in coef.items()}
    if times:
        out.update(C.spread("lexical_train_time_vs_flagembedding", C.ratios(times, "flag", "m3ref")))
        out["lexical_train_time_vs_flagembedding_cpu"] = C.ratio(times, "flag", "m3ref", "cpu")
        out["lexical_train_flag_s"] = times["median"]["flag"]
        out["lexical_train_m3ref_s"] = times["median"]["m3ref"]
    return out


if __name__ == "__main__":
    import json
    import sys
    print(json.dumps(run(sys.argv[1] if len(sys.argv) > 1 else "quick"), indent=1))
