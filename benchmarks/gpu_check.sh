#!/usr/bin/env bash
# The GPU check (issues 16, 24, 27) as one command; nothing is downloaded:
#   bash benchmarks/gpu_check.sh                          # a GPU machine: install, data, measure, page
#   bash benchmarks/gpu_check.sh --rehearse               # CPU: the same steps at tiny sizes
#   bash benchmarks/gpu_check.sh --rehearse --installed   # ... in an environment that has the project
#                                                         #     (tests/e2e/test_gpu_check.py: the dev .venv)
# Before a GPU run, here: bash benchmarks/gpu_rehearse.sh (carry/ + the rehearsal on a stand-in of the
# GPU image); then with the device tool: run(command="bash benchmarks/gpu_check.sh", carry=["carry"]).
# The installs are benchmarks/gpu_install.sh (the rehearsal runs the same script). The first lines
# printed are the versions the run ended up with. The page goes to $OUT/gpu.md when OUT is set (the
# device tool's folder), else benchmarks/results/; it is rewritten after each configuration.
# Environment: PY (default python3), WORK (scratch folder), BUDGET (seconds, default 390: the
# installs, the data and everything measured end inside it; a configuration is started only while
# its estimated time fits).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PY:-python3}
work=${WORK:-$(mktemp -d)}
out=${OUT:-benchmarks/results}/gpu.md
rehearse=0 installed=0
for arg in "$@"; do
  case $arg in
    --rehearse) rehearse=1 ;;
    --installed) installed=1 ;;
    *) echo "gpu_check: unknown argument $arg (--rehearse, --installed)" >&2; exit 2 ;;
  esac
done
export WORK=$work DS_BUILD_OPS=0 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
start=$(date +%s)
if ((!installed)); then
  bash benchmarks/gpu_install.sh carry
fi
"$py" benchmarks/gpu_check.py versions
args=(--budget "${BUDGET:-390}" --started "$start")
if ((rehearse)); then
  export DS_ACCELERATOR=cpu OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
  args+=(--rehearse)
  images=64
else
  images=2400
  "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA device (torch ' + torch.__version__ + ')')"
fi
"$py" benchmarks/gpu_check.py data "$work/cifar" --images "$images"
"$py" benchmarks/gpu_check.py run --data "$work/cifar" --out "$out" "${args[@]}"
echo "gpu_check: wrote $out"
