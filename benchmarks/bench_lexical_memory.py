"""Training memory of the lexical score at XLM-R's real vocabulary (250,002 ids).

FlagEmbedding's M3 training model (`EncoderOnlyEmbedderM3Model`, unified fine-tuning with
self-distillation, as in `tests/test_parity_flagembedding.py`) builds, for every text of the
batch, a (length, vocabulary) tensor: `zeros(B, L, V).scatter(...)`, then a max over L.
m3ref's `M3Model.training_loss` computes the same s_lex in the space of the ids present in
the batch. Both run forward + backward of the unified loss L_final on the same batch (queries
and passage groups from data_samples' fine-tuning file), on copies of the same weights of a
small XLM-R encoder whose embedding table has the real 250,002 rows.

Memory, two meters:
* live tensor bytes (`common.PeakMemory`): the peak of the bytes of every tensor allocated
  during forward + backward and still alive (gradients included, weights excluded); on a GPU
  `torch.cuda.max_memory_allocated` minus the memory allocated before the step;
* process RSS: each library in its own fresh subprocess, peak RSS (`VmHWM`, reset with
  `/proc/self/clear_refs`) during the step minus RSS just before it.
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import torch

try:
    from . import common as C
except ImportError:  # run as a script
    import common as C

SIZES = {
    "quick": dict(hidden=32, layers=2, heads=2, queries=2, group_size=4, query_max_len=32, passage_max_len=128,
                  repeat=3, rss=True, vocab=250_002),
    "full": dict(hidden=1024, layers=24, heads=16, queries=4, group_size=8, query_max_len=64, passage_max_len=512,
                 repeat=3, rss=False, vocab=250_002),
}


def batch(s: dict):
    """B queries with G passages each: the first rows of data_samples' fine-tuning file."""
    import random

    from m3ref.data import read_train_file, sample_group
    rows = read_train_file(os.path.join(C.FINETUNE_DIR, "ft_len-0-500.jsonl"))
    rng = random.Random(0)
    qs, groups = [], []
    for row in rows[:s["queries"]]:
        q, g, _ = sample_group(row, s["group_size"], rng)
        qs.append(q)
        groups.append(g)
    return qs, groups


def models(s: dict, device: str):
    """m3ref's M3Model and FlagEmbedding's training model holding copies of the same weights."""
    from FlagEmbedding.finetune.embedder.encoder_only.m3.modeling import EncoderOnlyEmbedderM3Model
    ours = C.m3_model(C.encoder_config(s["hidden"], s["layers"], s["heads"], s["vocab"]), device=device).train()
    base = {"model": copy.deepcopy(ours.encoder), "colbert_linear": copy.deepcopy(ours.colbert_linear),
            "sparse_linear": copy.deepcopy(ours.sparse_linear)}
    theirs = EncoderOnlyEmbedderM3Model(base, tokenizer=ours.tokenizer, temperature=0.02, normalize_embeddings=True,
                                        unified_finetuning=True, use_self_distill=True, self_distill_start_step=-1,
                                        sentence_pooling_method="cls", kd_loss_type="m3_kd_loss").train()
    return ours, theirs


def steps(s: dict, ours, theirs, device: str, dtype):
    """One forward + backward of each library's L_final (returns the two step functions)."""
    from m3ref import M3Config
    qs, groups = batch(s)
    flat = [t for g in groups for t in g]
    tok = ours.tokenizer
    cfg = M3Config.official(colbert_max_over_padding=True)  # the official batched ColBERT max
    autocast = torch.autocast(device, dtype=dtype, enabled=dtype is not None)
    losses = {}

    def step_ours():
        with autocast:
            loss = ours.training_loss(qs, groups, cfg, max_query_length=s["query_max_len"],
                                      max_passage_length=s["passage_max_len"])["L_final"]
        loss.backward()
        losses["m3ref"] = float(loss.detach())
        ours.zero_grad(set_to_none=True)

    def step_theirs():
        q = tok(qs, padding=True, truncation=True, max_length=s["query_max_len"], return_tensors="pt").to(device)
        p = tok(flat, padding=True, truncation=True, max_length=s["passage_max_len"], return_tensors="pt").to(device)
        with autocast:
            loss = theirs(queries=q, passages=p).loss
        loss.backward()
        losses["flag"] = float(loss.detach())
        theirs.zero_grad(set_to_none=True)

    return step_ours, step_theirs, losses


def _rss_child(which: str, mode: str, sizes: dict) -> dict:
    """Run in a fresh process: RSS growth of one library's step."""
    s = {**SIZES[mode], **sizes}
    ours, theirs = models(s, "cpu")
    C.set_dropout(ours, 0.0)
    C.set_dropout(theirs, 0.0)
    step_ours, step_theirs, _ = steps(s, ours, theirs, "cpu", None)
    fn = step_ours if which == "m3ref" else step_theirs
    import gc
    gc.collect()
    rss0, _ = C.rss_kib()
    if not C.reset_hwm():
        return {"error": "cannot reset VmHWM"}
    fn()
    _, hwm = C.rss_kib()
    return {"rss_growth_bytes": (hwm - rss0) * 1024}


def _rss(mode: str, sizes: dict) -> dict:
    """`_rss_child` of both libraries, each in a fresh interpreter (this file with --rss-child).
    The two run side by side: each reads only its own process's RSS."""
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    children = {which: subprocess.Popen([sys.executable, os.path.abspath(__file__), "--rss-child", which, mode,
                                         json.dumps(sizes)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, env=env)
                for which in ("flag", "m3ref")}
    growth = {}
    for which, child in children.items():
        out, err = child.communicate()
        if child.returncode:
            raise RuntimeError(f"RSS child ({which}) failed: {err.strip().splitlines()[-1:]}")
        res = json.loads(next(x for x in out.splitlines() if x.startswith("RESULT "))[len("RESULT "):])
        if "error" in res:
            raise RuntimeError(res["error"])
        growth[which] = float(res["rss_growth_bytes"])
    return growth


def run(mode: str = "quick", sizes: dict = None) -> dict:
    sizes = sizes or {}
    s = {**SIZES[mode], **sizes}
    device, dtype = C.device_for(mode), C.dtype_for(mode)
    ours, theirs = models(s, device)
    step_ours, step_theirs, losses = steps(s, ours, theirs, device, dtype)
    # dropout off: same weights, same batch, so the two losses must agree (checked below)
    C.set_dropout(ours, 0.0)
    C.set_dropout(theirs, 0.0)
    peak = {}
    for name, fn in (("m3ref", step_ours), ("flag", step_theirs)):
        with C.PeakMemory(device) as pm:
            fn()
        peak[name] = pm.peak
    loss_rel_diff = abs(losses["m3ref"] - losses["flag"]) / abs(losses["flag"])
    # the same with the word embeddings frozen: without the (V, d) embedding gradient, which
    # both libraries allocate alike, what is left is the scores' and the encoder's memory
    frozen = {}
    for model in (ours, theirs):
        model.get_submodule("encoder" if model is ours else "model").embeddings.word_embeddings.weight.requires_grad_(False)
    for name, fn in (("m3ref", step_ours), ("flag", step_theirs)):
        with C.PeakMemory(device) as pm:
            fn()
        frozen[name] = pm.peak
    for model in (ours, theirs):
        model.get_submodule("encoder" if model is ours else "model").embeddings.word_embeddings.weight.requires_grad_(True)
    times = C.compare_times({"flag": step_theirs, "m3ref": step_ours}, repeat=s["repeat"], device=device, warmup=0)
    out = {
        "lexical_train_memory_vs_flagembedding": peak["flag"] / peak["m3ref"],
        "lexical_train_memory_vs_flagembedding_frozen_embeddings": frozen["flag"] / frozen["m3ref"],
        "lexical_train_peak_bytes_flag_frozen_embeddings": float(frozen["flag"]),
        "lexical_train_peak_bytes_m3ref_frozen_embeddings": float(frozen["m3ref"]),
        "lexical_train_time_vs_flagembedding": C.ratio(times, "flag", "m3ref"),
        "lexical_train_time_vs_flagembedding_cpu": C.ratio(times, "flag", "m3ref", "cpu"),
        "lexical_train_peak_bytes_flag": float(peak["flag"]),
        "lexical_train_peak_bytes_m3ref": float(peak["m3ref"]),
        "lexical_train_flag_s": times["median"]["flag"],
        "lexical_train_m3ref_s": times["median"]["m3ref"],
        "lexical_train_loss_rel_diff": loss_rel_diff,
        "lexical_train_passages": float(s["queries"] * s["group_size"]),
    }
    if s["rss"] and device == "cpu" and os.path.exists("/proc/self/clear_refs"):
        del ours, theirs
        rss = _rss(mode, sizes)
        out.update({"lexical_train_rss_ratio_vs_flagembedding": rss["flag"] / max(rss["m3ref"], 1.0),
                    "lexical_train_rss_bytes_flag": rss["flag"], "lexical_train_rss_bytes_m3ref": rss["m3ref"]})
    return out


if __name__ == "__main__":
    if sys.argv[1:2] == ["--rss-child"]:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
        print("RESULT", json.dumps(_rss_child(sys.argv[2], sys.argv[3], json.loads(sys.argv[4]))))
    else:
        print(json.dumps(run(sys.argv[1] if len(sys.argv) > 1 else "quick"), indent=1))
