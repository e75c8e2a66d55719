#!/usr/bin/env bash
# The GPU check in one command (about 5-10 minutes on one GPU): the CUDA tests (pytest -m cuda), the torchrun data
# tests, and bench/gpu_train.py at the WavLM-large size. Output goes to the terminal and to $OUT (gpu_check_out/).
#   bash bench/gpu_check.sh            # or: make gpu-check
#   PY=/path/to/python bash bench/gpu_check.sh   # a Python whose torch sees the GPU (default: .venv/bin/python)
# Exits non-zero when torch sees no GPU, or when a test or the bench fails (the bench runs even if a test fails).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONWARNINGS=ignore TOKENIZERS_PARALLELISM=false

"$PY" - <<'PY' | tee "$OUT/device.txt" || exit 1
import sys, torch
if not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__} sees no CUDA device (torch.cuda.is_available() is False): install a CUDA "
             "build of torch (make install TORCH_SPEC=torch) or point PY at a Python that has one")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s): "
      f"{torch.cuda.get_device_name(0)}, bf16 {torch.cuda.is_bf16_supported()}")
PY

status=0
echo "== pytest -m cuda tests/ (the CUDA tests), then tests/test_ddp_data.py (torchrun data-parallel jobs)"
timeout 180 "$PY" -m pytest -q -rs -p no:cacheprovider -m cuda --durations=10 tests 2>&1 | tee "$OUT/pytest_cuda.txt" \
  || status=1
timeout 150 "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_ddp_data.py 2>&1 | tee "$OUT/pytest_ddp_data.txt" \
  || status=1
if grep -q "SKIPPED" "$OUT/pytest_cuda.txt"; then
  echo "a CUDA test was skipped although torch sees a GPU"; status=1
fi
echo "== bench/gpu_train.py (WavLM-large-sized random model, ours vs the challenge baseline)"
timeout 300 "$PY" bench/gpu_train.py --no-tiny --utterances 512 --batch-size 16 --threads 4 2>&1 \
  | grep -v -e "it/s]" -e "Warning" | tee "$OUT/gpu_train.txt" || status=1
echo "== gpu check $([ $status -eq 0 ] && echo passed || echo FAILED); output in $OUT/"
exit $status
