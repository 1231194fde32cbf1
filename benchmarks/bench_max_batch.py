"""Maximum training batch at a fixed memory budget: split-batch + gradient checkpointing vs
neither (paper Sec. 3.4, Table 10: 1024 / 4096 / 8192 tokens).

The training encode path of `m3ref.train.batch_loss`: `model.collate(model.tokenize(...))`
then `m3ref.batching.encode(model, batch, sub_batch_size)`, with
`m3ref.batching.enable_checkpointing(model)` for the per-layer checkpointed configurations.
Four configurations:

* `plain`: one encoder pass over the whole batch, every activation kept for backward;
* `ckpt`: per-layer gradient checkpointing only (the paper's "without split-batch"; the
  official recipes train long documents with checkpointing on);
* `split_layer`: per-layer checkpointing + sub-batches of `sub_batch` texts (the paper's "with
  split-batch", as FlagEmbedding implements it: every text keeps each layer's input);
* `split`: sub-batches of `sub_batch` texts, each sub-batch's whole pass one checkpoint
  (`gradient_checkpointing: sub_batch`, m3ref's split-batch): a text keeps only its outputs.

`max_batch_ratio_*` is `split` over `plain`; `max_batch_ratio_layer_ckpt_*` is `split_layer`
over `plain`.

For each configuration we measure the peak memory of forward + backward (`common.PeakMemory`:
live tensor bytes on CPU, `torch.cuda.max_memory_allocated` on a GPU) for n passages of
exactly L tokens, with a loss that uses all three outputs (dense, lexical weights, ColBERT
vectors; the (B, N) score matrices are left out: they depend on the number of queries, not
on the encoder). Memory is affine in n: P(n) = a + b*n, and, because every layer has the
same shapes, a and b are affine in the number of layers. Two batch sizes and two depths give
a and b exactly; they are evaluated at BGE-M3's 24 layers. The largest batch that fits is
floor((budget - a) / b).

CPU has no memory limit to hit, so the budget is the activation memory of the paper's GPU
scaled to this model: (80 GB - 16 bytes/param of BGE-M3's 568M parameters for fp32 weights,
gradients and Adam) * hidden / 1024 * (4 bytes fp32 / 2 bytes fp16). In full mode on a GPU the
model has BGE-M3's shape and the budget is the device memory less 16 bytes per parameter.
"""
from __future__ import annotations

import math

import torch

try:
    from . import common as C
except ImportError:  # run as a script
    import common as C

BGE_M3_PARAMS = 568e6
SIZES = {
    # batch: the two batch sizes measured at each length (bigger at 1k, where fixed costs such
    # as the embedding gradients are of the same order as one passage)
    # quick leaves out `ckpt` (the paper's baseline, in full mode) to stay near a minute on 2 CPU cores
    "quick": dict(hidden=32, heads=2, vocab=8000, depths=[1, 2], target_depth=24, lengths=[1024, 4096, 8192],
                  batch={1024: [4, 8], 4096: [2, 4], 8192: [1, 2]}, sub_batch=1,
                  configs=["plain", "split_layer", "split"]),
    "full": dict(hidden=1024, heads=16, vocab=250_002, depths=[24], target_depth=24, lengths=[1024, 4096, 8192],
                 batch={1024: [4, 8], 4096: [1, 2], 8192: [1, 2]}, sub_batch=1,
                 configs=["plain", "ckpt", "split_layer", "split"]),
}
CONFIGS = ("plain", "ckpt", "split_layer", "split")
LAYER_CKPT = ("ckpt", "split_layer")  # configurations on the per-layer checkpointed model


def _model(s: dict, depth: int, checkpointing: bool, device: str):
    from m3ref.batching import enable_checkpointing
    # On CPU, attention dropout sends SDPA to its math kernel, which stores (L, L) attention
    # probabilities; GPU training keeps dropout in a fused kernel. Quick mode turns attention
    # dropout off so that CPU attention memory is linear in L, as on the GPU.
    cfg = C.encoder_config(s["hidden"], depth, s["heads"], s["vocab"],
                           attention_dropout=0.1 if device == "cuda" else 0.0)
    model = C.m3_model(cfg, device=device).train()
    if checkpointing:
        enable_checkpointing(model)
    return model


def peak(model, batch: dict, sub_batch, device: str, dtype, per_sub_batch: bool = False) -> int:
    """Peak memory (bytes) of one forward + backward of the training encode."""
    from m3ref.batching import encode
    autocast = torch.autocast(device, dtype=dtype, enabled=dtype is not None)
    with C.PeakMemory(device) as pm:
        with autocast:
            emb = encode(model, batch, sub_batch, checkpoint_sub_batches=per_sub_batch)
            loss = emb.dense.float().sum() + emb.weights.float().sum() + emb.colbert.float().sum()
        loss.backward()
        del emb, loss
    model.zero_grad(set_to_none=True)
    return pm.peak


def fit(points: dict, target_depth: int) -> tuple:
    """(a, b) of P(n) = a + b*n at `target_depth` from {(depth, n): bytes}."""
    depths = sorted({d for d, _ in points})
    ab = {}
    for d in depths:
        ns = sorted(n for dd, n in points if dd == d)
        n1, n2 = ns[0], ns[-1]
        b = (points[(d, n2)] - points[(d, n1)]) / (n2 - n1)
        ab[d] = (points[(d, n1)] - b * n1, b)
    if len(depths) == 1:
        return ab[depths[0]]
    d1, d2 = depths[0], depths[-1]
    return tuple(ab[d1][i] + (target_depth - d1) * (ab[d2][i] - ab[d1][i]) / (d2 - d1) for i in (0, 1))


def budget_bytes(s: dict, device: str, n_params: float) -> float:
    if device == "cuda":
        return torch.cuda.get_device_properties(0).total_memory - 16 * n_params
    return (80e9 - 16 * BGE_M3_PARAMS) * s["hidden"] / 1024 * 2


def run(mode: str = "quick", sizes: dict = None) -> dict:
    s = {**SIZES[mode], **(sizes or {})}
    device, dtype = C.device_for(mode), C.dtype_for(mode)
    configs = s.get("configs", CONFIGS)
    points = {(c, L): {} for c in configs for L in s["lengths"]}
    n_params = 0.0
    for depth in s["depths"]:
        models = {False: _model(s, depth, False, device), True: _model(s, depth, True, device)}
        if depth == s["target_depth"]:
            n_params = sum(p.numel() for p in models[False].parameters())
        for L in s["lengths"]:
            sizes_at = s["batch"][L] if isinstance(s["batch"], dict) else s["batch"]
            texts = C.exact_length_texts(max(sizes_at), L)
            for n in sizes_at:
                batch = models[False].collate(models[False].tokenize(texts[:n], L, warn=False))
                assert batch["input_ids"].shape == (n, L)
                for c in configs:
                    if c == "split_layer" and n <= s["sub_batch"] and "ckpt" in configs:  # one sub-batch: as ckpt
                        points[(c, L)][(depth, n)] = points[("ckpt", L)][(depth, n)]
                        continue
                    sub = s["sub_batch"] if c.startswith("split") else None
                    points[(c, L)][(depth, n)] = peak(models[c in LAYER_CKPT], batch, sub, device, dtype,
                                                      per_sub_batch=c == "split")
        del models
    if not n_params:  # quick: the parameter count of the extrapolated model does not enter the CPU budget
        n_params = BGE_M3_PARAMS
    budget = budget_bytes(s, device, n_params)
    out = {"max_batch_budget_bytes": float(budget)}
    for L in s["lengths"]:
        tag = f"{L // 1024}k" if L % 1024 == 0 else str(L)
        best, exact = {}, {}
        for c in configs:
            a, b = fit(points[(c, L)], s["target_depth"])
            exact[c] = (budget - a) / b
            best[c] = max(0, math.floor(exact[c]))
            out[f"max_batch_{c}_{tag}"] = float(best[c])
            out[f"max_batch_bytes_per_passage_{c}_{tag}"] = float(b)
        out[f"max_batch_ratio_{tag}"] = (best["split"] / best["plain"]) if best["plain"] else exact["split"] / exact["plain"]
        if "ckpt" in configs:
            out[f"max_batch_ratio_split_vs_ckpt_{tag}"] = ((best["split"] / best["ckpt"]) if best["ckpt"]
                                                          else exact["split"] / exact["ckpt"])
        out[f"max_batch_ratio_layer_ckpt_{tag}"] = ((best["split_layer"] / best["plain"]) if best["plain"]
                                                   else exact["split_layer"] / exact["plain"])
        out[f"max_batch_ratio_per_passage_{tag}"] = (out[f"max_batch_bytes_per_passage_plain_{tag}"]
                                                    / out[f"max_batch_bytes_per_passage_split_{tag}"])
    out["max_batch_measured"] = {f"{c}@{L}": {f"depth{d},n{n}": v for (d, n), v in pts.items()}
                                 for (c, L), pts in points.items()}
    return out


if __name__ == "__main__":
    import json
    import sys
    print(json.dumps(run(sys.argv[1] if len(sys.argv) > 1 else "quick"), indent=1))
