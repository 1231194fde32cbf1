"""Shared helpers of the benchmarks: sizes per mode, models, inputs, timers, memory meters.

Every benchmark module has `run(mode, sizes=None) -> dict` (keys of `run.py`'s JSON) and reads its
sizes from `SIZES[mode]`, so `--full` is the same code with bigger parameters.
"""
from __future__ import annotations

import contextlib
import gc
import glob
import json
import os
import statistics
import time
import weakref
from typing import Callable, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE_DIR = os.path.join(ROOT, "data_samples", "source")
FINETUNE_DIR = os.path.join(ROOT, "data_samples", "train", "finetune")
BGE_M3_PARAMS = 568e6  # parameters of BAAI/bge-m3 (XLM-R large with 8194 positions, and the two heads)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars
try:
    from transformers.utils import logging as _hf_logging
    _hf_logging.disable_progress_bar()  # "Loading weights" bars of from_pretrained
except ImportError:  # pragma: no cover
    pass


# ----------------------------------------------------------------------------- modes
def device_for(mode: str) -> str:
    """quick runs on CPU in fp32; full wants a GPU (bf16) and falls back to CPU if there is none."""
    return "cuda" if mode == "full" and torch.cuda.is_available() else "cpu"


def dtype_for(mode: str) -> Optional[torch.dtype]:
    """None = fp32. Full mode on a GPU: bf16 (autocast for m3ref, use_bf16 for FlagEmbedding)."""
    return torch.bfloat16 if device_for(mode) == "cuda" else None


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- models
_TOKENIZER = None


def cache_dir() -> str:
    """Where built checkpoints are kept between runs (outside the repository)."""
    path = os.environ.get("M3REF_BENCH_CACHE") or os.path.join("/tmp", f"m3ref-bench-{os.getuid()}")
    os.makedirs(path, exist_ok=True)
    return path


def tokenizer():
    """The tiny XLM-R-style tokenizer: `m3ref.tiny.build_tokenizer`, the shipped one, loaded once."""
    global _TOKENIZER
    if _TOKENIZER is None:
        from m3ref.tiny import build_tokenizer
        _TOKENIZER = build_tokenizer()
    return _TOKENIZER


def checkpoint(hidden: int, layers: int, heads: int, seed: int = 0, vocab: Optional[int] = None) -> str:
    """A random M3 checkpoint in the official layout, cached by shape in `cache_dir()`. Both
    libraries load it from disk.

    vocab=None: `m3ref.tiny.build_tiny_model` (the tiny tokenizer's 8,001 ids, initializer range
    0.2). vocab=N: an `XLMRobertaConfig` of that shape (`encoder_config`) with N embedding rows
    (250,002 for XLM-R's vocabulary) and transformers' own initialisation, built offline; the
    tokenizer is the tiny one either way (its ids are a subset of the rows).
    """
    from m3ref.book import _fingerprint  # texts, shipped tokenizer and builder code, as for the book's model
    tag = f"-v{vocab}" if vocab else ""
    path = os.path.join(cache_dir(), f"m3-{_fingerprint(seed)}-h{hidden}-l{layers}-a{heads}{tag}")
    if not os.path.isfile(os.path.join(path, "sparse_linear.pt")):
        tmp = path + f".tmp{os.getpid()}"
        if vocab:
            from transformers import XLMRobertaModel

            from m3ref import M3Model
            torch.manual_seed(seed)
            encoder = XLMRobertaModel(encoder_config(hidden, layers, heads, vocab), add_pooling_layer=False)
            M3Model(encoder, tokenizer()).save_pretrained(tmp)
        else:
            from m3ref.tiny import build_tiny_model
            build_tiny_model(tmp, seed=seed, hidden_size=hidden, num_layers=layers, num_heads=heads,
                             tokenizer=tokenizer())
        if os.path.isdir(path):  # another process built it first
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.rename(tmp, path)
    return path


def encoder_config(hidden: int, layers: int, heads: int, vocab_size: int, attention_dropout: float = 0.1,
                   hidden_dropout: float = 0.1):
    """An XLM-R config shaped like BGE-M3's (8194 positions, FFN 4x, eps 1e-5) at any size."""
    from transformers import XLMRobertaConfig
    return XLMRobertaConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                            num_attention_heads=heads, intermediate_size=4 * hidden,
                            max_position_embeddings=8194, type_vocab_size=1, pad_token_id=1, bos_token_id=0,
                            eos_token_id=2, layer_norm_eps=1e-5, attention_probs_dropout_prob=attention_dropout,
                            hidden_dropout_prob=hidden_dropout)


def m3_model(config, seed: int = 0, device: str = "cpu"):
    """An `M3Model` (m3ref) around a fresh `XLMRobertaModel` built from `config`."""
    from transformers import XLMRobertaModel

    from m3ref import M3Model
    torch.manual_seed(seed)
    encoder = XLMRobertaModel(config, add_pooling_layer=False)
    return M3Model(encoder, tokenizer()).to(device)


def set_dropout(module: torch.nn.Module, p: float) -> None:
    for m in module.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = p


# ----------------------------------------------------------------------------- inputs
def source_rows() -> list:
    rows = []
    for path in sorted(glob.glob(os.path.join(SOURCE_DIR, "*.jsonl"))):
        with open(path, encoding="utf-8") as f:
            rows += [json.loads(line) for line in f if line.strip()]
    return rows


def mixed_texts(n_queries: int, n_passages: int, long_tokens: list, seed: int = 0) -> list:
    """A realistic mixed-length multilingual input list, shuffled deterministically.

    `n_queries` short queries and `n_passages` passages (titles, queries, passages and related
    texts of data_samples/source, ten languages), plus one long document per entry of
    `long_tokens`: same-language passages joined with spaces until the tiny tokenizer counts
    at least that many tokens (documents of one language, as in MLDR).
    """
    import random
    rng = random.Random(seed)
    rows = source_rows()
    queries = [r["query"] for r in rows]
    passages = [r[k] for r in rows for k in ("passage", "related", "title") if r.get(k)]
    rng.shuffle(queries)
    rng.shuffle(passages)
    texts = (queries * (n_queries // len(queries) + 1))[:n_queries]
    texts += (passages * (n_passages // len(passages) + 1))[:n_passages]
    by_lang = {}
    for r in rows:
        by_lang.setdefault(r["lang"], []).extend([r["passage"], r["related"]])
    langs = sorted(by_lang)
    tok = tokenizer()
    for i, want in enumerate(long_tokens):
        pool = by_lang[langs[i % len(langs)]][:]
        rng.shuffle(pool)
        parts, n = [], 0
        while n < want:  # add passages until the joined text has `want` tokens
            chunk = pool[len(parts) % len(pool)]
            parts.append(chunk)
            n += len(tok(chunk, add_special_tokens=False)["input_ids"])
            if n >= want:
                n = len(tok(" ".join(parts), add_special_tokens=False)["input_ids"])
        texts.append(" ".join(parts))
    rng.shuffle(texts)
    return texts


def length_mix_texts(n: int, lo: int = 10, hi: int = 2000, seed: int = 0) -> list:
    """n multilingual texts whose lengths are spread evenly on a log scale from `lo` to `hi`
    tokens (the tiny tokenizer's count, <s> and </s> included): short queries to long documents.

    Text i is in language i mod 10. Its target length is drawn log-uniformly in [lo, hi]; its
    text is a run of that language's sample texts (queries, titles, passages and related texts
    of data_samples/source, shuffled, from a random start, joined with spaces), cut at the
    character where the target's last token ends. Deterministic for a seed.
    """
    import math
    import random
    rng = random.Random(seed)
    tok = tokenizer()
    by_lang = {}
    for r in source_rows():
        by_lang.setdefault(r["lang"], []).extend(r[k] for k in ("query", "title", "passage", "related") if r.get(k))
    langs = sorted(by_lang)
    for pool in by_lang.values():
        rng.shuffle(pool)
    counts = {lang: [len(ids) for ids in tok(pool, add_special_tokens=False)["input_ids"]]
              for lang, pool in by_lang.items()}
    texts = []
    for i in range(n):
        lang = langs[i % len(langs)]
        pool, cnt = by_lang[lang], counts[lang]
        want = max(1, round(math.exp(rng.uniform(math.log(lo), math.log(hi)))) - 2)  # content tokens
        j, parts, have = rng.randrange(len(pool)), [], 0
        while have < want + 8:  # a little more than needed: joining can merge tokens at the seams
            parts.append(pool[j % len(pool)])
            have += cnt[j % len(pool)] + 1
            j += 1
        joined = " ".join(parts)
        enc = tok(joined, add_special_tokens=False, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
        texts.append(joined[:offsets[min(want, len(offsets)) - 1][1]].strip())
    return texts


def exact_length_texts(n: int, tokens: int, seed: int = 0) -> list:
    """n multilingual texts of at least `tokens` tokens (truncation then gives exactly `tokens`)."""
    return mixed_texts(0, 0, [tokens] * n, seed=seed)


# ----------------------------------------------------------------------------- timing
def timed(fn: Callable, device: str = "cpu") -> tuple:
    """(wall seconds, CPU seconds of this process) of one call."""
    sync(device)
    t, c = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - t, time.process_time() - c


def calls_per_round(fn: Callable, seconds: float = 1.0, cap: int = 50, device: str = "cpu") -> int:
    """Call fn once (an untimed warm-up) and return how many calls in a row last about `seconds`:
    the `number` for `compare_times` that makes a short function's round long enough to time."""
    wall, _ = timed(fn, device)
    return min(cap, max(1, round(seconds / max(wall, 1e-9))))


def compare_times(fns: dict, repeat: int, device: str = "cpu", warmup: int = 1, number: Optional[dict] = None) -> dict:
    """Run the functions interleaved (a, b, a, b, ...) `repeat` times after `warmup` rounds.

    Returns {"median": {name: wall s}, "all": {name: [wall s]}, "cpu": {name: [CPU s]}}, per call.
    Interleaving gives every contender the same share of a shared machine's load; `ratio()`
    compares them round by round. CPU time (all threads of this process) does not count the
    time spent waiting for a core another process holds, so its ratios are steadier on a
    loaded machine (on a GPU only wall time means anything). `number` ({name: calls}, default 1)
    times a short function over several calls in a row and records their mean, as `timeit` does:
    a 0.3 s call against a 2 s one is otherwise at the mercy of one scheduler hiccup.
    """
    number = {k: (number or {}).get(k, 1) for k in fns}
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            gc.collect()
            w, c = timed(lambda: [fn() for _ in range(number[k])], device)
            times[k].append(w / number[k])
            cpu[k].append(c / number[k])
    return {"median": {k: statistics.median(v) for k, v in times.items()}, "all": times, "cpu": cpu}


def ratios(result: dict, num: str, den: str, kind: str = "all") -> list:
    """Per-round time[num] / time[den] (kind: "all" = wall clock, "cpu" = process CPU time)."""
    return [x / y for x, y in zip(result[kind][num], result[kind][den])]


def spread(key: str, values: list) -> dict:
    """{key: median, key_min: min, key_max: max} of per-round figures."""
    return {key: float(statistics.median(values)), f"{key}_min": float(min(values)), f"{key}_max": float(max(values))}


def ratio(result: dict, num: str, den: str, kind: str = "all") -> float:
    """Median over rounds of time[num] / time[den] (robust to load that changes between rounds).
    kind: "all" (wall clock) or "cpu" (process CPU time)."""
    a, b = result[kind][num], result[kind][den]
    return float(statistics.median(x / y for x, y in zip(a, b)))


class ModuleTimer:
    """Wall seconds spent inside some modules' forward calls, while the `with` block runs.

    `groups` maps a name to modules; `.seconds[name]` sums the time between each module's
    forward pre-hook and forward hook (synchronised on a GPU). Used to split one call's time
    into the encoder's share and the rest, with no second run to compare against.
    """

    def __init__(self, groups: dict, device: str = "cpu"):
        self.groups, self.device = groups, device
        self.seconds = {name: 0.0 for name in groups}
        self._handles, self._start = [], {}

    def __enter__(self):
        for name, modules in self.groups.items():
            for module in modules:
                self._handles.append(module.register_forward_pre_hook(self._pre(module)))
                self._handles.append(module.register_forward_hook(self._post(name, module)))
        return self

    def _pre(self, module):
        def hook(*_):
            sync(self.device)
            self._start[id(module)] = time.perf_counter()
        return hook

    def _post(self, name, module):
        def hook(*_):
            sync(self.device)
            self.seconds[name] += time.perf_counter() - self._start.pop(id(module))
        return hook

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


@contextlib.contextmanager
def torch_threads(n: Optional[int]):
    """torch's CPU thread count inside the block: n, or every core for None."""
    before = torch.get_num_threads()
    torch.set_num_threads(n or os.cpu_count() or 1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ----------------------------------------------------------------------------- memory
class LiveTensorPeak(TorchDispatchMode):
    """Peak bytes of tensor storages allocated inside the `with` block and still alive.

    Every aten op's outputs are seen (forward, backward and checkpoint recomputation alike);
    each new storage is counted once (views share it) until Python frees it. Tensors that
    existed before the block (weights, inputs) are not counted, gradients created in backward
    are. This is what `torch.cuda.max_memory_allocated` measures on a GPU, minus allocator
    rounding and kernel workspaces, and it works on any device.
    """

    def __init__(self):
        super().__init__()
        self.current = self.peak = 0
        self._seen = set()
        self.marks = {}

    def _free(self, key: int, nbytes: int) -> None:
        self._seen.discard(key)
        self.current -= nbytes

    def mark(self, name: str) -> None:
        """Remember the live bytes now (e.g. at the end of the forward pass)."""
        self.marks[name] = self.current

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                st = t.untyped_storage()
                key = id(st)
                n = st.nbytes()
                if key in self._seen or n == 0:
                    continue
                self._seen.add(key)
                self.current += n
                self.peak = max(self.peak, self.current)
                weakref.finalize(st, self._free, key, n)
        return out


class PeakMemory:
    """Peak extra memory of a block: CUDA allocator stats on a GPU, `LiveTensorPeak` elsewhere."""

    def __init__(self, device: str):
        self.device, self.peak, self.marks = device, 0, {}

    def __enter__(self):
        # On a GPU, free cyclic garbage the allocator would count as in use. The CPU meter counts
        # only tensors made inside the block, and a full collection costs a quarter of a second
        # once transformers is imported.
        if self.device == "cuda":
            gc.collect()
        # no automatic collection inside: tensors held by reference cycles stay counted until
        # the block ends, so the figure does not depend on when the collector happens to run
        self._gc = gc.isenabled()
        gc.disable()
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
        else:
            self._mode = LiveTensorPeak().__enter__()
        return self

    def mark(self, name: str) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.marks[name] = torch.cuda.memory_allocated() - self._base
        else:
            self._mode.mark(name)

    def __exit__(self, *exc):
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self._base
        else:
            self._mode.__exit__(*exc)
            self.peak, self.marks = self._mode.peak, dict(self._mode.marks)
        if self._gc:
            gc.enable()
        return False


def rss_kib() -> tuple:
    """(VmRSS, VmHWM) of this process in KiB, from /proc/self/status (Linux)."""
    vals = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":")
                vals[key] = int(value.split()[0])
    return vals.get("VmRSS", 0), vals.get("VmHWM", 0)


def reset_hwm() -> bool:
    """Reset this process's peak RSS (VmHWM) to the current RSS: `echo 5 > clear_refs` (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def machine_info() -> dict:
    import platform

    import transformers
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    info = {"cpu": cpu or platform.processor(), "nproc": os.cpu_count(), "torch": torch.__version__,
            "transformers": transformers.__version__, "torch_threads": torch.get_num_threads(),
            "python": platform.python_version()}
    try:
        import FlagEmbedding  # noqa: F401
        from importlib.metadata import version
        info["FlagEmbedding"] = version("FlagEmbedding")
    except Exception:  # noqa: BLE001 - optional
        info["FlagEmbedding"] = None
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    try:
        info["loadavg_1min"] = os.getloadavg()[0]
    except OSError:
        pass
    return info
