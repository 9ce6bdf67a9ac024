#!/usr/bin/env bash
# The GPU check of issue 16 as one command (about 8 minutes on one H200; nothing is downloaded):
#   bash benchmarks/gpu_check.sh              # a GPU machine: install, data, measure, page
#   bash benchmarks/gpu_check.sh --rehearse   # CPU: the same steps at tiny sizes (tests/test_gpu_check.py)
# Before a GPU run, here: bash benchmarks/gpu_carry.sh (wheels -> carry/), then with the device
# tool: run(command="bash benchmarks/gpu_check.sh", carry=["carry"]).
# The page goes to $OUT/gpu.md when OUT is set (the device tool's folder), else benchmarks/results/.
# Environment: PY (default python3), WORK (scratch folder), BUDGET (seconds of measuring, default 400).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PY:-python3}
work=${WORK:-$(mktemp -d)}
out=${OUT:-benchmarks/results}/gpu.md
args=(--budget "${BUDGET:-400}")
if [[ ${1:-} == --rehearse ]]; then
  export DS_ACCELERATOR=cpu OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
  args+=(--rehearse)
  images=64
else
  images=2400
  # The machine's torch stays: nothing is installed with its dependencies, constraints.txt is not read.
  if ! "$py" -c "import deepspeed, pydantic, webdataset, wids, open_clip" 2>/dev/null; then
    "$py" -m pip install -q --no-deps --no-index carry/*.whl
    DS_BUILD_OPS=0 "$py" -m pip install -q --no-deps --no-index --no-build-isolation carry/deepspeed-*.tar.gz
  fi
  "$py" -c "import lzn_core" 2>/dev/null || "$py" -m pip install -q --no-deps --no-index --no-build-isolation -e .
  "$py" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())"
fi
export DS_BUILD_OPS=0 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
"$py" benchmarks/gpu_check.py data "$work/cifar" --images "$images"
"$py" benchmarks/gpu_check.py run --data "$work/cifar" --out "$out" "${args[@]}"
echo "gpu_check: wrote $out"
