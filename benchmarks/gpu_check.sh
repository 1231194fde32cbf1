#!/usr/bin/env bash
# The GPU checks the CPU runs cannot make, in one script (benchmarks/RESULTS.md, "GPU check"):
#   1. benchmarks/run.py --full: every benchmark at BGE-M3's shape, bf16, on the GPU;
#   2. a torchrun smoke test of `python -m m3ref.train --config configs/tiny.yaml` over NCCL.
# Sized for one H100 in under 8 minutes. Everything it writes goes under $OUT (default ./gpu_check_out).
#
#   OUT=/some/dir PYTHON=/path/to/python bash benchmarks/gpu_check.sh
#
# Needs a Python with CUDA torch and requirements-test.txt installed (FlagEmbedding 1.4.2 for the
# comparisons); nothing is downloaded. NCCL refuses two ranks on one GPU ("Duplicate GPU detected"),
# and m3ref.distributed.setup puts rank r on cuda:LOCAL_RANK, so with a single GPU the smoke test
# runs one NCCL rank (world size 1: process group, broadcast and gathers of size 1); with two or more
# GPUs it runs two ranks, the test the issue asks for.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_check_out}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false M3REF_BENCH_CACHE="$OUT/bench-cache" M3REF_CACHE="$OUT/m3ref-cache"
start=$(date +%s)
status=0

{
  date -u
  nvidia-smi || true
  "$PYTHON" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda,
[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())], 'transformers', transformers.__version__)"
  "$PYTHON" -c "from importlib.metadata import version; print('FlagEmbedding', version('FlagEmbedding'))" || true
} > "$OUT/environment.txt" 2>&1

# 1. the benchmarks at full size (bf16); a benchmark that fails is reported in the meta file and the rest go on
timeout 390 "$PYTHON" benchmarks/run.py --full --json "$OUT/results_full.json" > "$OUT/run_full.log" 2>&1
rc=$?; echo "run.py --full: exit $rc after $(( $(date +%s) - start )) s" | tee -a "$OUT/summary.txt"
[ $rc -eq 0 ] || status=1

# 2. torchrun over NCCL: two ranks when two GPUs are visible, else one
ngpu=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
nproc=$(( ngpu >= 2 ? 2 : 1 ))
t=$(date +%s)
timeout 150 "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node=$nproc -m m3ref.train \
  --config configs/tiny.yaml --output-dir "$OUT/tiny-run" --max-steps 4 > "$OUT/torchrun.log" 2>&1
rc=$?; echo "torchrun NCCL, $nproc rank(s) on $ngpu GPU(s): exit $rc after $(( $(date +%s) - t )) s" \
  | tee -a "$OUT/summary.txt"
[ $rc -eq 0 ] || status=1
[ -f "$OUT/tiny-run/train_log.jsonl" ] && tail -n 3 "$OUT/tiny-run/train_log.jsonl" > "$OUT/train_log_tail.jsonl"
rm -rf "$OUT/tiny-run" "$OUT/bench-cache" "$OUT/m3ref-cache"  # checkpoints and built models: large, not results

echo "total $(( $(date +%s) - start )) s, status $status" | tee -a "$OUT/summary.txt"
exit $status
