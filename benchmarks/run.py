"""Run every benchmark and write one JSON of floats.

    .venv/bin/python benchmarks/run.py --quick --json OUT.json      # CPU, about 35 minutes on 2 cores
    .venv/bin/python benchmarks/run.py --full --json OUT.json       # a GPU (bf16), bigger sizes
    .venv/bin/python benchmarks/run.py --quick --json B.json --previous A.json   # a second run, compared
    .venv/bin/python benchmarks/run.py --json D.json --merge-into B.json --why "..."  # a re-run pair C, D of
                                                             # some benchmarks replaces theirs in the pair A, B

OUT.json holds only float values (the keys below and each benchmark's extra figures);
OUT.meta.json holds the machine, the torch threads and the load average before and after each
benchmark, the sizes used, the seconds each benchmark took, the raw measurements behind the fits
and whether each target (TARGETS below) is met. With `--previous`, it also holds that run's
figures and, for every figure measured over rounds (those with `_min` / `_max`), the relative
difference between the two runs' medians.

Each benchmark runs in a fresh Python process (this script with `--one NAME`), so what one
leaves behind (imported libraries, caches, a large heap for the garbage collector to walk)
cannot slow the next. In one shared process, the encode overhead measured 1.101 after the
three benchmarks before it, against 1.078 and 1.084 in runs of its own.
See benchmarks/RESULTS.md for the methods and the figures of a run.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common as C  # noqa: E402

# name -> module; in this order (cheap and CPU-light first)
BENCHMARKS = {
    "padding": "bench_padding",
    "sparse": "bench_sparse",
    "multivector": "bench_multivector",
    "encode": "bench_encode",
    "lexical_memory": "bench_lexical_memory",
    "max_batch": "bench_max_batch",
}
# m3ref's speed and memory targets: key -> (comparison, value)
TARGETS = {
    "encode_vs_flagembedding": (">=", 1.5),
    "encode_overhead_vs_bare_encoder": ("<=", 1.10),
    "lexical_train_memory_vs_flagembedding": (">=", 10.0),
    "padding_share_grouped": ("<=", 0.05),
    "max_batch_ratio_8k": (">=", 21.7),  # the paper's Table 10 at 8,192 tokens: 6 -> 130
    "sparse_retrieval_vs_flagembedding": (">=", 100.0),
}
STABLE = 0.10  # two runs' medians of a figure measured over rounds should agree within this


def met(key: str, value: float) -> bool:
    op, target = TARGETS[key]
    return value >= target if op == ">=" else value <= target


def book_build_seconds() -> float:
    """`jupyter-book build book` into a temporary folder (the tree's book/_build is left alone)."""
    import subprocess
    import tempfile
    exe = os.path.join(os.path.dirname(sys.executable), "jupyter-book")
    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        subprocess.run([exe, "build", os.path.join(C.ROOT, "book"), "--path-output", out], check=True,
                       capture_output=True)
        return time.perf_counter() - t


def run_one(name: str, mode: str, threads, out: str) -> int:
    """Worker: one benchmark in this process; {"result" or "error", "seconds", "sizes"} to `out`."""
    import torch
    if threads:
        torch.set_num_threads(threads)
    module = importlib.import_module(BENCHMARKS[name])
    outcome = {"sizes": getattr(module, "SIZES", {}).get(mode), "torch_threads": torch.get_num_threads(),
               "loadavg_start": os.getloadavg()}
    t = time.perf_counter()
    try:
        outcome["result"] = module.run(mode)
    except Exception:  # noqa: BLE001 - the parent reports it and goes on with the others
        outcome["error"] = traceback.format_exc()
    outcome["seconds"] = time.perf_counter() - t
    outcome["loadavg_end"] = os.getloadavg()
    with open(out, "w") as f:
        json.dump(outcome, f, default=str)
    return 0


def target_verdicts(figures: dict) -> dict:
    """{key: {"target", "value", "met"}} for every target key among `figures`."""
    return {k: {"target": f"{op} {v:g}", "value": figures[k], "met": met(k, figures[k])}
            for k, (op, v) in TARGETS.items() if k in figures}


def meta_path(json_path: str) -> str:
    """OUT.json -> OUT.meta.json, where a run keeps its details."""
    return os.path.splitext(json_path)[0] + ".meta.json"


def is_ratio(key: str) -> bool:
    """A figure that divides two measurements of the same run (m3ref against a baseline, a call
    against its encoder), as opposed to an absolute speed such as queries per second."""
    return "_vs_" in key or "overhead" in key


def stability(figures: dict, previous: dict) -> dict:
    """For each figure measured over rounds (it has _min and _max): both runs' medians,
    |this / previous - 1| and whether it is a ratio (`is_ratio`). A ratio should agree within
    STABLE; an absolute speed also follows the machine's own speed, which on a shared virtual
    machine drifts between runs."""
    out = {}
    for key, value in figures.items():
        if f"{key}_min" in figures and f"{key}_max" in figures and key in previous and previous[key]:
            out[key] = {"this": value, "previous": previous[key], "rel_diff": abs(value / previous[key] - 1),
                        "ratio": is_ratio(key)}
    return out


def merge_into(stored_path: str, new_path: str, why: str) -> list:
    """Replace, in a stored pair of runs (STORED.json, its meta and the previous run it names), the
    figures of the benchmarks that a newer pair re-ran (NEW.json, made with `--previous`), and
    record the re-run under `reruns` in the stored meta. Returns the benchmarks merged."""
    def load(path):
        with open(path) as f:
            return json.load(f)

    figures, meta = load(stored_path), load(meta_path(stored_path))
    new, new_meta = load(new_path), load(meta_path(new_path))
    if "previous_run" not in new_meta or "previous_run" not in meta:
        raise SystemExit(f"error: --merge-into wants two pairs made with --previous ({new_path}, {stored_path})")
    names = sorted(new_meta["seconds"])
    figures.update(new)
    meta["previous_run"]["figures"].update(new_meta["previous_run"]["figures"])
    for part in ("seconds", "sizes", "threads", "loadavg"):
        meta[part].update({n: new_meta[part][n] for n in names if n in new_meta[part]})
    meta["details"].update(new_meta["details"])
    meta["targets"] = target_verdicts(figures)
    meta["stability"] = stability(figures, meta["previous_run"]["figures"])
    meta.setdefault("reruns", []).append({
        "why": why, "benchmarks": names,
        "started": [new_meta["previous_run"].get("started"), new_meta["started"]], "machine": new_meta["machine"]})
    with open(stored_path, "w") as f:
        json.dump(figures, f, indent=1, sort_keys=True)
    with open(meta_path(stored_path), "w") as f:
        json.dump(meta, f, indent=1, default=str)
    return names


def wait_quiet(limit_s: float, below: float = 1.5, hold_s: float = 60) -> float:
    """Wait until the 1-minute load average has stayed below `below` for `hold_s` seconds, at most
    `limit_s`; returns the seconds waited."""
    t0 = time.perf_counter()
    quiet_since = None
    while time.perf_counter() - t0 < limit_s:
        if os.getloadavg()[0] < below:
            quiet_since = quiet_since or time.perf_counter()
            if time.perf_counter() - quiet_since >= hold_s:
                break
        else:
            quiet_since = None
        time.sleep(5)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", dest="mode", const="quick", help="CPU sizes (default)")
    mode.add_argument("--full", action="store_const", dest="mode", const="full", help="GPU sizes, bf16")
    ap.add_argument("--json", help="write the figures here (and the details to *.meta.json)")
    ap.add_argument("--only", help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's default)")
    ap.add_argument("--book", action="store_true", help="also time `jupyter-book build book` (into a temp dir)")
    ap.add_argument("--allow-cpu", action="store_true", help="run --full sizes even without a GPU (hours)")
    ap.add_argument("--previous", help="a previous run's OUT.json: store its figures and the runs' differences")
    ap.add_argument("--wait-quiet", type=float, default=0, metavar="S",
                    help="first wait up to S seconds for the 1-minute load average to stay below 1.5 for a minute")
    ap.add_argument("--merge-into", metavar="STORED.json",
                    help="put this pair's benchmarks (--json, made with --previous) into a stored pair; needs --why")
    ap.add_argument("--why", help="with --merge-into: why those benchmarks were re-run (kept in the meta file)")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # worker: run one benchmark, write its outcome to --json
    args = ap.parse_args(argv)
    mode = args.mode or "quick"
    if args.one:
        return run_one(args.one, mode, args.threads, args.json)
    if args.merge_into:
        if not (args.json and args.why):
            ap.error("--merge-into needs --json (the re-run pair's second run) and --why")
        print("merged:", ", ".join(merge_into(args.merge_into, args.json, args.why)), file=sys.stderr)
        return 0
    import torch
    if mode == "full" and not torch.cuda.is_available() and not args.allow_cpu:
        ap.error("--full wants a GPU (bf16, BGE-M3-sized models); pass --allow-cpu to run it on CPU anyway")
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        ap.error(f"unknown benchmark(s): {', '.join(unknown)}")

    waited = wait_quiet(args.wait_quiet) if args.wait_quiet else None
    figures, meta = {}, {"mode": mode, "machine": C.machine_info(), "seconds": {}, "sizes": {}, "details": {},
                         "errors": {}, "threads": {}, "loadavg": {}, "waited_for_quiet_s": waited,
                         "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    meta["machine"]["loadavg_1_5_15_start"] = os.getloadavg()
    failed = False
    for name in names:
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "out.json")
            cmd = [sys.executable, os.path.abspath(__file__), f"--{mode}", "--one", name, "--json", out]
            t = time.perf_counter()
            proc = subprocess.run(cmd + (["--threads", str(args.threads)] if args.threads else []), check=False)
            try:
                with open(out) as f:
                    outcome = json.load(f)
            except (OSError, ValueError):  # the worker died (killed, out of memory): report it, keep the others
                outcome = {"sizes": None, "seconds": time.perf_counter() - t,
                           "error": f"worker exited with status {proc.returncode} and wrote no result"}
        meta["sizes"][name], meta["seconds"][name] = outcome["sizes"], outcome["seconds"]
        meta["threads"][name] = outcome.get("torch_threads")
        meta["loadavg"][name] = {"start": outcome.get("loadavg_start"), "end": outcome.get("loadavg_end")}
        if "error" in outcome:  # report and go on with the others
            failed = True
            meta["errors"][name] = outcome["error"]
            print(f"[{name}] FAILED\n{outcome['error']}", file=sys.stderr)
            continue
        result = outcome["result"]
        for key, value in result.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                figures[key] = float(value)
            else:
                meta["details"][key] = value
        print(f"[{name}] {meta['seconds'][name]:.1f} s", file=sys.stderr)
    if args.book:
        meta["seconds"]["book_build"] = figures["book_build_s"] = book_build_seconds()
    meta["machine"]["loadavg_1min_end"] = os.getloadavg()[0]
    meta["targets"] = target_verdicts(figures)
    if args.previous:
        with open(args.previous) as f:
            previous = json.load(f)
        try:
            with open(meta_path(args.previous)) as f:
                started = json.load(f).get("started")
        except (OSError, ValueError):
            started = None
        meta["previous_run"] = {"file": os.path.basename(args.previous), "started": started, "figures": previous}
        meta["stability"] = stability(figures, previous)
        for kind, ratio in (("ratios", True), ("absolute speeds", False)):
            moved = {k: round(v["rel_diff"], 3) for k, v in meta["stability"].items()
                     if v["ratio"] == ratio and v["rel_diff"] > STABLE}
            print(f"{kind} over rounds that moved more than {STABLE:.0%} from {args.previous}: "
                  f"{moved or 'none'}", file=sys.stderr)

    width = max(len(k) for k in figures) if figures else 0
    for key in sorted(figures):
        note = ""
        if key in TARGETS:
            op, v = TARGETS[key]
            note = f"   target {op} {v:g}: {'met' if met(key, figures[key]) else 'MISSED'}"
        print(f"{key:<{width}}  {figures[key]:.6g}{note}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1, sort_keys=True)
        with open(meta_path(args.json), "w") as f:
            json.dump(meta, f, indent=1, default=str)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
