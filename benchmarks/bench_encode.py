"""Inference: m3ref `M3Model.encode` vs FlagEmbedding `BGEM3FlagModel.encode`, and m3ref's
overhead above a bare encoder forward, on two model shapes.

Input: `common.length_mix_texts`, 2,000 texts in ten languages whose lengths are spread evenly
on a log scale from 10 to 2,000 tokens (short queries to long documents), built from the
sample texts of data_samples/source.

Both libraries run at their own defaults except `max_length=8192` and the three outputs
(dense, lexical weights, ColBERT vectors), in fp32 on CPU (bf16 on a GPU in full mode):

* FlagEmbedding: `batch_size=256`. It tokenizes everything, sorts by length, runs its first
  (longest) batch once to probe whether the batch size fits, then cuts fixed batches of 256
  texts, each padded to its longest text.
* m3ref: `batch_size=32`. It sorts by length and also stops a batch before its padded size
  passes `batch_size * 512` tokens (`inference.length_batches`).

Model shapes, both random weights in the official layout, loaded from disk by both libraries:
`realistic` (12 layers x 384, 6 heads, XLM-R's 250,002-row vocabulary: the headline) and
`tiny` (the book's 2 x 128 model, 8,001 ids). Full mode adds BGE-M3's own shape (24 x 1024).

What the CPU cannot afford, and what quick mode does instead. At the defaults the whole input is
737k tokens: one m3ref call on the 12 x 384 model takes many minutes on 2 cores, and five rounds
of both libraries would take hours. Quick mode therefore encodes a 1/k sample of the input
(every k-th text of the length-sorted list, so the same length mix) and divides FlagEmbedding's
batch size by k (256/k): it then cuts the same batches as on the whole input, k times thinner,
probe included. Encoding 2,000 / k texts in one batch of 256, probed twice, would flatter m3ref.
m3ref keeps its own default (32 texts, at most 16,384 padded tokens): on a sample its batches
span more lengths than on the whole input and pad more, so the sample understates m3ref.
Dividing m3ref's batch size by k too was tried and dropped: with 2 torch threads on a shared
2-core machine every operator waits for a descheduled thread, so many small calls cost far more
than their arithmetic (a 2-layer forward of 4 texts of 30 tokens ran at 674 tokens/s with 2
threads and 33,188 with 1), and the figure measured that, not the libraries. A compute model
(padded tokens x (linear + attention) cost per token, `flop_ratio`) gives the ratio of the
encoder work for the sample and for the whole input; both are reported beside each measurement,
with the model's prediction for larger inputs, where FlagEmbedding's one-off probe and its
padding matter less. Full mode (a GPU) runs k = 1, the true defaults.

The same-batch figure: m3ref called with FlagEmbedding's batch size (256/k), so both libraries
get the same `batch_size` argument.

Timing: after a warm-up call of each on 4 texts, `rounds` alternating rounds (FlagEmbedding,
m3ref, m3ref at the same batch size); each ratio is the median of the per-round ratios, with
their range (`_min`, `_max`). On the tiny shape one call lasts 1-3 s, so a round times each
contender over as many calls in a row as last about six seconds (`round_seconds`,
`common.calls_per_round`; the counts are reported): with one call per round the two stored runs
were 12.6 % apart.

Overhead above the encoder, in the call: hooks time every `model.encoder(...)` call inside
each timed m3ref `encode` call (the same calls as above), and the figure is the call's time over
its encoder share; what is left above 1 is tokenization, collation, the heads and building the
outputs. For the tiny shape a paired cross-check also times `model.encoder(...)` alone over
the very batches m3ref forms.
"""
from __future__ import annotations

import contextlib
import io
import math
import random
import statistics

import numpy as np
import torch

try:
    from . import common as C
except ImportError:  # run as a script
    import common as C

# name -> checkpoint shape; vocab None = the tiny tokenizer's 8,001 ids
SHAPES = {
    "realistic": dict(hidden=384, layers=12, heads=6, vocab=250_002),
    "tiny": dict(hidden=128, layers=2, heads=4, vocab=None),
    "bge_m3": dict(hidden=1024, layers=24, heads=16, vocab=250_002),
}
SUFFIX = {"realistic": "", "tiny": "_tiny", "bge_m3": "_bge_m3"}  # key suffix per shape
FLAG_BATCH, M3REF_BATCH = 256, 32  # the two libraries' default batch sizes
SIZES = {
    # shape -> k (encode every k-th text of the length-sorted input, FlagEmbedding's batch size / k)
    "quick": dict(n_texts=2000, min_tokens=10, max_tokens=2000, max_length=8192, rounds=9,
                  cases={"realistic": 16, "tiny": 16}, paired_check=["tiny"], round_seconds={"tiny": 6.0}),
    "full": dict(n_texts=2000, min_tokens=10, max_tokens=2000, max_length=8192, rounds=5,
                 cases={"realistic": 1, "tiny": 1, "bge_m3": 1}, paired_check=["tiny"]),
}


def sample(texts: list, lengths: list, k: int, seed: int = 0) -> tuple:
    """Every k-th text of the list sorted by length (longest first), in a shuffled order."""
    order = sorted(range(len(texts)), key=lambda i: (-lengths[i], i))[::k]
    random.Random(seed).shuffle(order)
    return [texts[i] for i in order], [lengths[i] for i in order]


def flag_batches(lengths: list, batch_size: int) -> list:
    """(batch, padded length) of each forward pass of FlagEmbedding's encode, its probe first."""
    srt = sorted(lengths, reverse=True)
    chunks = [(len(srt[i:i + batch_size]), srt[i]) for i in range(0, len(srt), batch_size)]
    return chunks[:1] + chunks


def m3ref_batches(lengths: list, batch_size: int) -> list:
    """(batch, padded length) of each forward pass of m3ref's encode."""
    from m3ref.inference import length_batches
    srt = sorted(lengths, reverse=True)
    return [(b - a, srt[a]) for a, b in length_batches(srt, batch_size, batch_size * 512)]


def flop_ratio(lengths: list, hidden: int, flag_batch: int, m3ref_batch: int) -> float:
    """FlagEmbedding's encoder compute / m3ref's, counted as padded tokens x per-token cost of a
    layer: 24 d^2 (projections and feed-forward) + 4 d L (attention scores and values)."""
    def cost(batches):
        return sum(b * n * (24 * hidden ** 2 + 4 * hidden * n) for b, n in batches)
    return cost(flag_batches(lengths, flag_batch)) / cost(m3ref_batches(lengths, m3ref_batch))


def _measure(shape: str, k: int, texts_all: list, lengths_all: list, s: dict, device: str, dtype) -> dict:
    from FlagEmbedding import BGEM3FlagModel

    from m3ref import M3Model
    from m3ref.inference import length_batches

    sfx, spec = SUFFIX[shape], SHAPES[shape]
    texts, lengths = sample(texts_all, lengths_all, k)
    fb, ob = max(1, FLAG_BATCH // k), M3REF_BATCH
    path = C.checkpoint(spec["hidden"], spec["layers"], spec["heads"], vocab=spec["vocab"])
    ours = M3Model.from_pretrained(path, device=device)
    theirs = BGEM3FlagModel(path, use_fp16=False, use_bf16=dtype is not None,
                            devices="cuda:0" if device == "cuda" else "cpu", batch_size=fb)
    out, calls = {}, []

    def encode_ours(items, batch_size):
        return ours.encode(items, batch_size=batch_size, max_length=s["max_length"], return_dense=True,
                           return_sparse=True, return_colbert=True, dtype=dtype, show_progress=False)

    def encode_theirs(items):
        with contextlib.redirect_stderr(io.StringIO()):  # its progress bars
            return theirs.encode(items, batch_size=fb, max_length=s["max_length"], return_dense=True,
                                 return_sparse=True, return_colbert_vecs=True)

    def run_ours():  # m3ref at its defaults; hooks split the call into the encoder's share and the rest
        with C.ModuleTimer({"encoder": [ours.encoder], "heads": [ours.colbert_linear, ours.sparse_linear]},
                           device) as inside:
            total, _ = C.timed(lambda: out.__setitem__("m3ref", encode_ours(texts, ob)), device)
        calls.append({**inside.seconds, "total": total})

    def run_ours_same():
        out["m3ref_same"] = encode_ours(texts, fb)

    def run_theirs():
        out["flag"] = encode_theirs(texts)

    encode_ours(texts[:4], ob)  # warm-up: thread pools, first-call kernels
    encode_theirs(texts[:4])
    secs = s.get("round_seconds", {}).get(shape)  # a short call: time several in a row per round

    def calls_per_round(fns):  # compare_times' `number`: None (one call a round) without round_seconds
        return {k: C.calls_per_round(fn, secs) for k, fn in fns.items()} if secs else None

    fns = {"flag": run_theirs, "m3ref": run_ours, "m3ref_same": run_ours_same}
    number = calls_per_round(fns)
    calls.clear()  # calls_per_round's untimed call of run_ours
    times = C.compare_times(fns, repeat=s["rounds"], device=device, warmup=0, number=number)
    in_call = [c["total"] / c["encoder"] for c in calls]
    a, b = out["m3ref"], out["flag"]
    res = {
        **C.spread(f"encode_vs_flagembedding{sfx}", C.ratios(times, "flag", "m3ref")),
        **C.spread(f"encode_vs_flagembedding{sfx}_same_batch", C.ratios(times, "flag", "m3ref_same")),
        f"encode_vs_flagembedding{sfx}_cpu": C.ratio(times, "flag", "m3ref", "cpu"),
        **C.spread(f"encode_overhead_vs_bare_encoder{sfx}", in_call),
        f"encode_heads_share{sfx}": statistics.median(c["heads"] / c["total"] for c in calls),
        f"encode_m3ref_s{sfx}": times["median"]["m3ref"],
        f"encode_m3ref_same_batch_s{sfx}": times["median"]["m3ref_same"],
        f"encode_flag_s{sfx}": times["median"]["flag"],
        **{f"encode_calls_per_round_{k}{sfx}": float(v) for k, v in (number or {}).items()},
        f"encode_n_texts{sfx}": float(len(texts)),
        f"encode_sample_every{sfx}": float(k),
        f"encode_flag_batch_size{sfx}": float(fb),
        f"encode_m3ref_batch_size{sfx}": float(ob),
        f"encode_n_tokens{sfx}": float(sum(lengths)),
        f"encode_longest_tokens{sfx}": float(max(lengths)),
        f"encode_padded_tokens_flag{sfx}": float(sum(b * n for b, n in flag_batches(lengths, fb))),
        f"encode_padded_tokens_m3ref{sfx}": float(sum(b * n for b, n in m3ref_batches(lengths, ob))),
        f"encode_flop_model_ratio{sfx}": flop_ratio(lengths, spec["hidden"], fb, ob),
        f"encode_flop_model_ratio{sfx}_same_batch": flop_ratio(lengths, spec["hidden"], fb, fb),
        f"encode_flop_model_ratio{sfx}_whole_input": flop_ratio(lengths_all, spec["hidden"], FLAG_BATCH,
                                                                 M3REF_BATCH),
        f"encode_dense_max_abs_diff{sfx}": float(np.abs(a.dense - b["dense_vecs"].astype(np.float32)).max()),
        f"encode_colbert_max_abs_diff{sfx}": max(float(np.abs(x - y.astype(np.float32)).max())
                                                 for x, y in zip(a.colbert, b["colbert_vecs"])),
        f"encode_sparse_keys_equal{sfx}": float(all({str(t) for t in x} == set(y)
                                                    for x, y in zip(a.sparse, b["lexical_weights"]))),
        f"encode_same_batch_dense_max_abs_diff{sfx}": float(np.abs(a.dense - out["m3ref_same"].dense).max()),
    }
    if shape in s.get("paired_check", []):  # the bare encoder over m3ref's own batches
        seqs = ours.tokenize(texts, s["max_length"], warn=False)
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
        spans = length_batches([len(seqs[i]) for i in order], ob, ob * 512)
        batches = [ours.collate([seqs[i] for i in order[x:y]]) for x, y in spans]
        autocast = torch.autocast(device, dtype=dtype, enabled=dtype is not None)

        @torch.inference_mode()
        def run_bare():
            with autocast:
                for batch in batches:
                    ours.encoder(**batch).last_hidden_state

        def run_tokenize():
            ours.tokenize(texts, s["max_length"], warn=False)

        fns = {"m3ref": lambda: encode_ours(texts, ob), "bare": run_bare, "tokenize": run_tokenize}
        paired = C.compare_times(fns, repeat=s["rounds"], device=device, warmup=0, number=calls_per_round(fns))
        res.update({
            **C.spread(f"encode_overhead_paired_rounds{sfx}", C.ratios(paired, "m3ref", "bare")),
            f"encode_tokenize_share{sfx}": statistics.median(C.ratios(paired, "tokenize", "m3ref")),
            f"encode_bare_encoder_s{sfx}": paired["median"]["bare"],
        })
    return res


def run(mode: str = "quick", sizes: dict = None) -> dict:
    s = {**SIZES[mode], **(sizes or {})}
    device, dtype = C.device_for(mode), C.dtype_for(mode)
    texts = C.length_mix_texts(s["n_texts"], s["min_tokens"], s["max_tokens"])
    lengths = [len(x) for x in C.tokenizer()(texts)["input_ids"]]
    out = {"encode_input_texts": float(len(texts)), "encode_input_tokens": float(sum(lengths))}
    for shape, k in s["cases"].items():
        out.update(_measure(shape, k, texts, lengths, s, device, dtype))
    # The compute model on larger inputs of the same length mix (no measurement): the probe is a
    # one-off per call, and batches of 256 pad less when more texts share a length.
    rng = np.random.default_rng(0)
    for n in (2_000, 20_000, 200_000):
        draw = np.exp(rng.uniform(math.log(s["min_tokens"]), math.log(s["max_tokens"]), n)).astype(int).tolist()
        out[f"encode_flop_model_ratio_n{n}"] = flop_ratio(draw, SHAPES["realistic"]["hidden"], FLAG_BATCH,
                                                          M3REF_BATCH)
    return out


if __name__ == "__main__":
    import json
    import sys
    print(json.dumps(run(sys.argv[1] if len(sys.argv) > 1 else "quick"), indent=1))
