"""Inference: m3ref `M3Model.encode` vs FlagEmbedding `BGEM3FlagModel.encode`, and m3ref's
overhead above a bare encoder forward.

Both libraries load the same checkpoint from disk (a random M3 model in the official layout,
`m3ref.tiny.build_tiny_model`) and encode the same mixed-length multilingual list (short
queries, passages and a few long same-language documents from data_samples/source) with
dense + sparse + ColBERT outputs, the same `batch_size` and `max_length`, in fp32 on CPU
(bf16 on a GPU in full mode). Each library runs its own default pipeline for these
arguments: FlagEmbedding sorts by length and cuts fixed batches of `batch_size` (after one
probe forward of the longest batch); m3ref sorts by length and also caps a batch at
`batch_size * 512` padded tokens (`length_batches`).

Overhead above the encoder, two ways:
- in the call (the headline figure): hooks time every `model.encoder(...)` call inside
  m3ref's own `encode`, and the figure is the whole call's time over the encoder's share
  of it. Both come from the same call, so the machine's drift between rounds cancels; what
  is left above 1 is tokenization, collation, the heads and building the outputs (the
  heads' linear layers and the tokenizer are timed too, to split it);
- in paired rounds: the same encode against `model.encoder(...)` alone over the very batches
  m3ref forms (same sorting, same `length_batches`, tokenized and collated outside the
  timer), call by call. On a shared CPU one round varies by +-20 %, so this figure is the
  cross-check, not the target.
"""
from __future__ import annotations

import contextlib
import io
import statistics

import numpy as np
import torch

try:
    from . import common as C
except ImportError:  # run as a script
    import common as C

SIZES = {
    "quick": dict(hidden=128, layers=2, heads=4, n_queries=150, n_passages=150, long_tokens=[600, 1000, 1500],
                  batch_size=16, max_length=8192, repeat=2, overhead_repeat=7),
    "full": dict(hidden=1024, layers=24, heads=16, n_queries=2000, n_passages=2000,
                 long_tokens=[8000] * 8 + [4000] * 16 + [2000] * 32 + [1000] * 64, batch_size=32,
                 max_length=8192, repeat=3, overhead_repeat=5),
}


def run(mode: str = "quick", sizes: dict = None) -> dict:
    from FlagEmbedding import BGEM3FlagModel

    from m3ref import M3Model
    from m3ref.inference import length_batches

    s = {**SIZES[mode], **(sizes or {})}
    device, dtype = C.device_for(mode), C.dtype_for(mode)
    path = C.checkpoint(s["hidden"], s["layers"], s["heads"])
    texts = C.mixed_texts(s["n_queries"], s["n_passages"], s["long_tokens"])
    ours = M3Model.from_pretrained(path, device=device)
    theirs = BGEM3FlagModel(path, use_fp16=False, use_bf16=dtype is not None,
                            devices="cuda:0" if device == "cuda" else "cpu",
                            batch_size=s["batch_size"])
    kw = dict(batch_size=s["batch_size"], max_length=s["max_length"])
    out = {}

    def run_ours():
        out["m3ref"] = ours.encode(texts, return_dense=True, return_sparse=True, return_colbert=True, dtype=dtype,
                                   show_progress=False, **kw)

    def flag_encode(items):
        with contextlib.redirect_stderr(io.StringIO()):  # its progress bars
            return theirs.encode(items, return_dense=True, return_sparse=True, return_colbert_vecs=True, **kw)

    def run_theirs():
        out["flag"] = flag_encode(texts)

    # the bare encoder over m3ref's own batches, tokenized and collated beforehand
    seqs = ours.tokenize(texts, s["max_length"], warn=False)
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    spans = length_batches([len(seqs[i]) for i in order], s["batch_size"], s["batch_size"] * 512)
    batches = [ours.collate([seqs[i] for i in order[a:b]]) for a, b in spans]
    autocast = torch.autocast(device, dtype=dtype, enabled=dtype is not None)

    @torch.inference_mode()
    def run_bare():
        with autocast:
            for batch in batches:
                ours.encoder(**batch).last_hidden_state

    def run_tokenize():
        ours.tokenize(texts, s["max_length"], warn=False)

    # warm up on a few texts (thread pools, first-call kernels), then the measured rounds
    ours.encode(texts[:4], **kw, show_progress=False)
    flag_encode(texts[:4])
    times = C.compare_times({"flag": run_theirs, "m3ref": run_ours}, repeat=s["repeat"], device=device, warmup=0)
    # the overhead in the call: the encoder's and the heads' share of each m3ref encode
    calls = []

    def run_ours_timed():  # each call records its own total beside the encoder's and heads' shares
        with C.ModuleTimer({"encoder": [ours.encoder], "heads": [ours.colbert_linear, ours.sparse_linear]},
                           device) as inside:
            total, _ = C.timed(run_ours, device)
        calls.append({**inside.seconds, "total": total})

    paired = C.compare_times({"m3ref": run_ours_timed, "bare": run_bare, "tokenize": run_tokenize},
                             repeat=s["overhead_repeat"], device=device, warmup=0)
    in_call = [c["total"] / c["encoder"] for c in calls]  # per call: whole call / encoder share
    head_share = [c["heads"] / c["total"] for c in calls]
    tok_share = [k / t for k, t in zip(paired["all"]["tokenize"], paired["all"]["m3ref"])]  # same round
    a, b = out["m3ref"], out["flag"]
    dense_diff = float(np.abs(a.dense - b["dense_vecs"].astype(np.float32)).max())
    colbert_diff = max(float(np.abs(x - y.astype(np.float32)).max()) for x, y in zip(a.colbert, b["colbert_vecs"]))
    sparse_same = all({str(k) for k in x} == set(y) for x, y in zip(a.sparse, b["lexical_weights"]))
    lengths = [len(x) for x in seqs]
    flag_tokens = sum(len(x) for x in seqs)
    # padded tokens each pipeline computes: m3ref's spans vs fixed batches of batch_size
    srt = sorted(lengths, reverse=True)
    ours_padded = sum((b - a) * srt[a] for a, b in spans)
    flag_padded = sum(len(srt[i:i + s["batch_size"]]) * srt[i] for i in range(0, len(srt), s["batch_size"]))
    med, omed = times["median"], paired["median"]
    return {
        "encode_vs_flagembedding": C.ratio(times, "flag", "m3ref"),
        "encode_overhead_vs_bare_encoder": statistics.median(in_call),
        "encode_overhead_in_call_min": min(in_call),
        "encode_overhead_in_call_max": max(in_call),
        "encode_overhead_paired_rounds": C.ratio(paired, "m3ref", "bare"),
        "encode_overhead_paired_rounds_cpu": C.ratio(paired, "m3ref", "bare", "cpu"),
        "encode_tokenize_share": statistics.median(tok_share),
        "encode_heads_share": statistics.median(head_share),
        "encode_vs_flagembedding_cpu": C.ratio(times, "flag", "m3ref", "cpu"),
        "encode_m3ref_s": omed["m3ref"],
        "encode_flag_s": med["flag"],
        "encode_bare_encoder_s": omed["bare"],
        "encode_tokenize_s": omed["tokenize"],
        "encode_n_texts": float(len(texts)),
        "encode_n_tokens": float(flag_tokens),
        "encode_longest_tokens": float(max(lengths)),
        "encode_padded_tokens_m3ref": float(ours_padded),
        "encode_padded_tokens_flag": float(flag_padded),
        "encode_dense_max_abs_diff": dense_diff,
        "encode_colbert_max_abs_diff": colbert_diff,
        "encode_sparse_keys_equal": float(sparse_same),
    }


if __name__ == "__main__":
    import json
    import sys
    print(json.dumps(run(sys.argv[1] if len(sys.argv) > 1 else "quick"), indent=1))
