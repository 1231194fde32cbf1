"""Maximum training batch at a fixed memory budget: split-batch + gradient checkpointing vs
neither (paper Sec. 3.4, Table 10: 1024 / 4096 / 8192 tokens).

The training encode path of `M3Model.training_loss`: `model.collate(model.tokenize(...))`
then `m3ref.batching.split_batch_forward(model, batch, sub_batch_size)`, with
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
on the encoder). Memory is affine in n, P(n) = a + b*n, once n is large enough, and,
because every layer has the same shapes, a and b are affine in the number of layers. Two
batch sizes and two depths give a and b exactly; they are evaluated at BGE-M3's 24 layers. The
largest batch that fits is floor((budget - a) / b).

"Large enough": without checkpointing, P(n) is affine from n = 1. With checkpointing, the peak
falls in the backward pass (for `split`, from n = 2 on, in the second sub-batch to be
recomputed), and P(n) settles into its per-passage slope only from n = 3: the steps from 1 to 2
and from 2 to 3 are larger than the later ones (measured, not derived), so a slope from n = 1, 2
overstates b by up to 45 % at 8k tokens and understates the batch. The checkpointed configurations are
therefore measured at n = 3 and 4; `max_batch_affine_error_1k` checks a fifth passage against
the line through them (at 1k tokens, where it is cheap).

The measured bytes do not depend on the number of CPU threads (checked: the same with 1 and
2), so quick mode uses every core; on 2 cores it takes about a minute.

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
# the two batch sizes measured per configuration, where P(n) is affine (docstring)
BATCH = {"plain": [1, 2], "ckpt": [3, 4], "split_layer": [3, 4], "split": [3, 4]}
SIZES = {
    # quick leaves out `ckpt` (the paper's baseline, in full mode) to stay near a minute on 2 CPU cores
    "quick": dict(hidden=32, heads=2, vocab=8000, depths=[1, 2], target_depth=24, lengths=[1024, 4096, 8192],
                  batch=BATCH, sub_batch=1, configs=["plain", "split_layer", "split"], threads=None),
    "full": dict(hidden=1024, heads=16, vocab=250_002, depths=[24], target_depth=24, lengths=[1024, 4096, 8192],
                 batch=BATCH, sub_batch=1, configs=["plain", "ckpt", "split_layer", "split"], threads=None),
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
    from m3ref.batching import split_batch_forward
    autocast = torch.autocast(device, dtype=dtype, enabled=dtype is not None)
    with C.PeakMemory(device) as pm:
        with autocast:
            emb = split_batch_forward(model, batch, sub_batch, checkpoint_sub_batches=per_sub_batch)
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


def _tag(L: int) -> str:
    return f"{L // 1024}k" if L % 1024 == 0 else str(L)


def budget_bytes(s: dict, device: str, n_params: float) -> float:
    if device == "cuda":
        return torch.cuda.get_device_properties(0).total_memory - 16 * n_params
    return (80e9 - 16 * BGE_M3_PARAMS) * s["hidden"] / 1024 * 2


def run(mode: str = "quick", sizes: dict = None) -> dict:
    s = {**SIZES[mode], **(sizes or {})}
    with C.torch_threads(s.get("threads")):
        return _run(s, mode)


def _measure(models: dict, s: dict, config: str, texts: list, L: int, n: int, device: str, dtype) -> int:
    """Peak bytes of `config` for the first n of `texts` (each exactly L tokens)."""
    batch = models[False].collate(models[False].tokenize(texts[:n], L, warn=False))
    assert batch["input_ids"].shape == (n, L)
    sub = s["sub_batch"] if config.startswith("split") else None
    return peak(models[config in LAYER_CKPT], batch, sub, device, dtype, per_sub_batch=config == "split")


def _run(s: dict, mode: str) -> dict:
    device, dtype = C.device_for(mode), C.dtype_for(mode)
    configs = s.get("configs", CONFIGS)
    points = {(c, L): {} for c in configs for L in s["lengths"]}
    n_params, affine_error = 0.0, {}
    for depth in s["depths"]:
        models = {False: _model(s, depth, False, device), True: _model(s, depth, True, device)}
        if depth == s["target_depth"]:
            n_params = sum(p.numel() for p in models[False].parameters())
        for L in s["lengths"]:
            texts = C.exact_length_texts(max(max(s["batch"][c]) for c in configs) + 1, L)
            for c in configs:
                for n in s["batch"][c]:
                    points[(c, L)][(depth, n)] = _measure(models, s, c, texts, L, n, device, dtype)
                if L == min(s["lengths"]) and depth == s["depths"][0]:  # one more passage on the line?
                    (n1, p1), (n2, p2) = sorted((n, p) for (d, n), p in points[(c, L)].items() if d == depth)
                    n3 = n2 + 1
                    predicted = p2 + (p2 - p1) / (n2 - n1) * (n3 - n2)
                    affine_error[c] = abs(_measure(models, s, c, texts, L, n3, device, dtype) / predicted - 1)
        del models
    if not n_params:  # quick: the parameter count of the extrapolated model does not enter the CPU budget
        n_params = BGE_M3_PARAMS
    budget = budget_bytes(s, device, n_params)
    out = {"max_batch_budget_bytes": float(budget)}
    out[f"max_batch_affine_error_{_tag(min(s['lengths']))}"] = max(affine_error.values())
    for L in s["lengths"]:
        tag = _tag(L)
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
