"""Maximum training batch at a fixed memory budget: m3ref's split-batch vs per-layer gradient
checkpointing and vs neither (paper Sec. 3.4 and Table 10: 1024 / 4096 / 8192 tokens).

The training encode path of `M3Model.training_loss`: `model.collate(model.tokenize(...))`
then `m3ref.batching.split_batch_forward(model, batch, sub_batch_size)`, with
`m3ref.batching.enable_checkpointing(model)` for the per-layer checkpointed configurations.
Four configurations:

* `plain`: one encoder pass over the whole batch, every activation kept for backward;
* `ckpt`: per-layer gradient checkpointing (FlagEmbedding's `gradient_checkpointing`), one pass
  over the whole batch: every text keeps each layer's input;
* `split_layer`: per-layer checkpointing + sub-batches of `sub_batch` texts (split-batch as
  FlagEmbedding implements it, its `sub_batch_size`);
* `split`: sub-batches of `sub_batch` texts, each sub-batch's whole pass one checkpoint
  (`gradient_checkpointing: sub_batch`, m3ref's split-batch): a text keeps only its outputs.

The paper's Table 10 reports the largest batch without and with split-batch (6 -> 130 at 8,192
tokens). `max_batch_ratio_*` is `split` over `ckpt`, the headline: against per-layer
checkpointing. Beside it: `_vs_plain` (`split` over `plain`), `_split_layer_vs_ckpt` (FlagEmbedding's
split-batch over its checkpointing alone, the comparison of Table 10 done FlagEmbedding's way) and
`_ckpt_vs_plain`.

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
the line through them (at 1k tokens, where it is cheap), at every width.

Widths: quick mode measures a narrow XLM-R at widths 32 and 128 (2 heads; at 128 each head is
64 wide, as BGE-M3's); the headline keys come from the wider one, every key also has a `_w32` /
`_w128` copy. A text's outputs hold a few bytes per token that do not grow with the width (ids,
mask, lexical weight), so the ratio against checkpointing grows with the width. The vocabulary is
the tiny one (8,000 ids): the word-embedding gradient is a fixed cost that would hide the
per-passage growth at these small batches (with 250,002 ids, P(n) is flat at 1k tokens from n = 1
to 5), and at BGE-M3's size it is inside the 16 bytes per parameter that the budget leaves out.

The measured bytes do not depend on the number of CPU threads (checked: the same with 1 and
2), so quick mode uses every core.

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

CONFIGS = ("plain", "ckpt", "split_layer", "split")
LAYER_CKPT = ("ckpt", "split_layer")  # configurations on the per-layer checkpointed model
# the two batch sizes measured per configuration, where P(n) is affine (docstring)
BATCH = {"plain": [1, 2], "ckpt": [3, 4], "split_layer": [3, 4], "split": [3, 4]}
SIZES = {
    # widths 32 and 128 (the headline keys come from the wider one; width 64 at 1k tokens checks that a
    # text's bytes are affine in the width), 2 heads (at width 128 as wide as BGE-M3's, 64); width 128
    # leaves 4k out, to stay near five minutes on 2 loaded cores
    "quick": dict(hidden=128, widths=[32, 64, 128], heads=2, vocab=8000, depths=[1, 2], target_depth=24,
                  lengths=[1024, 4096, 8192], lengths_per_width={64: [1024], 128: [1024, 8192]}, batch=BATCH,
                  sub_batch=1, configs=list(CONFIGS), threads=None, target_width=1024),
    "full": dict(hidden=1024, widths=[1024], heads=16, vocab=250_002, depths=[24], target_depth=24,
                 lengths=[1024, 4096, 8192], batch=BATCH, sub_batch=1, configs=list(CONFIGS), threads=None),
}


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
    return (80e9 - 16 * C.BGE_M3_PARAMS) * s["hidden"] / 1024 * 2


def run(mode: str = "quick", sizes: dict = None) -> dict:
    s = {**SIZES[mode], **(sizes or {})}
    out, measured = {}, {}
    with C.torch_threads(s.get("threads")):
        widths = s.get("widths", [s["hidden"]])
        for w in widths:
            res = _run({**s, "hidden": w, "lengths": s.get("lengths_per_width", {}).get(w, s["lengths"])}, mode)
            measured[f"w{w}"] = res.pop("max_batch_measured")
            out.update({f"{k}_w{w}": v for k, v in res.items()})
            if w == max(widths):  # the headline keys: the widest model measured
                out.update(res)
    errors = [v for k, v in out.items() if k.startswith("max_batch_affine_error_") and "_w" in k]
    out[f"max_batch_affine_error_{_tag(min(s['lengths']))}"] = max(errors)
    if len(widths) >= 3:
        out.update(_width_model(out, s, widths))
    out["max_batch_measured"] = measured
    return out


def _width_model(out: dict, s: dict, widths: list) -> dict:
    """BGE-M3's width from the narrow models: a text's bytes (b) are affine in the width (hidden
    states grow with it; ids, mask and lexical weights do not). Checked at 1k tokens: the middle
    width's b against the line through the outer two (`max_batch_width_affine_error_1k`). Then a
    and b at `target_width` from the two widest widths measured at each length, the budget of that
    width, and the ratios (keys ending in `_w{target}_model`: a model, not a measurement). The fixed
    part a also holds the layers' weight gradients, which grow with width squared; at BGE-M3's
    width they are about 1 GB of a 142 GB budget, and the budget already leaves out 16 bytes per
    parameter for them."""
    res = {}
    lo, mid, hi = widths[0], widths[1], widths[-1]
    tag = _tag(min(s["lengths"]))
    err = []
    for c in s.get("configs", CONFIGS):
        b = {w: out[f"max_batch_bytes_per_passage_{c}_{tag}_w{w}"] for w in (lo, mid, hi)}
        predicted = b[lo] + (b[hi] - b[lo]) * (mid - lo) / (hi - lo)
        err.append(abs(b[mid] / predicted - 1))
    res[f"max_batch_width_affine_error_{tag}"] = max(err)
    target = s.get("target_width", 1024)
    budget = budget_bytes({**s, "hidden": target}, "cpu", C.BGE_M3_PARAMS)
    for L in s["lengths"]:
        t = _tag(L)
        have = [w for w in widths if f"max_batch_bytes_per_passage_split_{t}_w{w}" in out]
        if len(have) < 2:
            continue
        w1, w2 = have[-2], have[-1]
        best = {}
        for c in s.get("configs", CONFIGS):
            ab = [(out[f"max_batch_fixed_bytes_{c}_{t}_w{w}"], out[f"max_batch_bytes_per_passage_{c}_{t}_w{w}"])
                  for w in (w1, w2)]
            a, b = (ab[0][i] + (ab[1][i] - ab[0][i]) * (target - w1) / (w2 - w1) for i in (0, 1))
            best[c] = max(0, math.floor((budget - a) / b))
            res[f"max_batch_{c}_{t}_w{target}_model"] = float(best[c])
        if best.get("ckpt"):
            res[f"max_batch_ratio_{t}_w{target}_model"] = best["split"] / best["ckpt"]
        if best.get("plain"):
            res[f"max_batch_ratio_{t}_vs_plain_w{target}_model"] = best["split"] / best["plain"]
    return res


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
        n_params = C.BGE_M3_PARAMS
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
            out[f"max_batch_fixed_bytes_{c}_{tag}"] = float(a)

        def ratio(num, den):
            return (best[num] / best[den]) if best[den] else exact[num] / exact[den]
        if "ckpt" in configs:  # the headline: against per-layer gradient checkpointing
            out[f"max_batch_ratio_{tag}"] = ratio("split", "ckpt")
            out[f"max_batch_ratio_{tag}_split_layer_vs_ckpt"] = ratio("split_layer", "ckpt")
            out[f"max_batch_ratio_{tag}_ckpt_vs_plain"] = ratio("ckpt", "plain")
        out[f"max_batch_ratio_{tag}_vs_plain"] = ratio("split", "plain")
        out[f"max_batch_ratio_{tag}_split_layer_vs_plain"] = ratio("split_layer", "plain")
        out[f"max_batch_ratio_per_passage_{tag}_vs_plain"] = (out[f"max_batch_bytes_per_passage_plain_{tag}"]
                                                             / out[f"max_batch_bytes_per_passage_split_{tag}"])
    out["max_batch_measured"] = {f"{c}@{L}": {f"depth{d},n{n}": v for (d, n), v in pts.items()}
                                 for (c, L), pts in points.items()}
    return out


if __name__ == "__main__":
    import json
    import sys
    print(json.dumps(run(sys.argv[1] if len(sys.argv) > 1 else "quick"), indent=1))
