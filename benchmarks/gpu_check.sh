#!/usr/bin/env bash
# CUDA checks of the speed work, for a machine with one NVIDIA GPU (H100/H200 class):
#   1. the CUDA tests (bf16 + channels_last step vs fp32, compiled step, no host sync per
#      step, device-resident batches) and the 2-rank DDP test (gloo on the CPU);
#   2. benchmarks/train_step.py and benchmarks/sample.py with --config paper.
# Budget: under 8 minutes in all; each part has its own time limit so one slow part
# cannot eat the rest (150 + 210 + 120 s at most). Results go to $OUT (the device runner's folder) or ./bench-out.
#
#   bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-bench-out}"
mkdir -p "$OUT_DIR"
status=0

python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA GPU visible')" || exit 2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT_DIR/gpu.txt"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT_DIR/gpu.txt"

part() {  # part NAME SECONDS CMD...: run with a time limit, keep its output, remember failures
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s): $*"
    local t0=$SECONDS
    timeout --signal=INT --kill-after=15 "$limit" "$@" 2>&1 | tee "$OUT_DIR/$name.txt"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc after $((SECONDS - t0))s" | tee -a "$OUT_DIR/summary.txt"
    [ "$rc" -eq 0 ] || status=1
}

# 1. Tests (about 2 minutes): CUDA-only tests, the compiled-step tests, DDP on the CPU.
export CBDM_TEST_COMPILE=1
part tests 150 python -m pytest -q -rs tests/test_speed_paths.py tests/test_ddp.py \
    -k "cuda or falls_back or device_batches or two_ranks or shards"

# 2. Training step, paper U-Net, batch 128 (about 3 minutes, most of it compiling two graphs).
part train_step 210 python benchmarks/train_step.py --device cuda --config paper \
    --steps 15 --rounds 3 --warmup 4 --json "$OUT_DIR/train_step.json"

# 3. Guided DDIM-100 sampling at batch 256 (about 2 minutes).
part sample 120 python benchmarks/sample.py --device cuda --config paper \
    --batch 256 --steps 100 --rounds 2 --json "$OUT_DIR/sample.json"

echo "gpu_check: $([ $status -eq 0 ] && echo all parts passed || echo SOME PARTS FAILED) (see $OUT_DIR/summary.txt)"
exit $status
