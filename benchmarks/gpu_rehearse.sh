#!/usr/bin/env bash
# The GPU check rehearsed on the GPU's own software stack, before any GPU time is spent (issue 24):
#   bash benchmarks/gpu_rehearse.sh            # both stand-ins; exits non-zero on any failure
#   bash benchmarks/gpu_rehearse.sh image      # one of them: image | worst
# 1. carry/ from benchmarks/gpu_carry.sh (emptied, then filled; checked: one version each, < 64 MiB);
# 2. a Python 3.12 venv standing in for the GPU image (benchmarks/gpu_image.txt: torch 2.11.0,
#    torchvision 0.26.0, numpy 2.5.2, ...), built once under $LZN_STANDIN (default
#    ~/.cache/lzn/gpu-standin; a few GB: torch's CUDA wheels) and brought back to exactly those pins
#    before each pass (what a previous pass installed is removed), for two passes:
#      image: the pins as listed;
#      worst: the oldest pip, setuptools and typing_extensions the image might hold (the file's
#             WORST line);
# 3. in each pass, exactly what the device runs: `bash benchmarks/gpu_check.sh --rehearse` (the same
#    install script, benchmarks/gpu_install.sh, then the device checks of tests/e2e/test_gpu.py and the
#    measurement at small sizes on the CPU), then the GPU-relevant test files on that interpreter
#    (the worst pass: the quick ones).
# Needs the network here (PyPI) for the stand-in and the carry; python3.12 from PATH, pyenv or $PY312.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
passes=("$@")
((${#passes[@]})) || passes=(image worst)
standin=${LZN_STANDIN:-$HOME/.cache/lzn/gpu-standin}
# The test files that exercise what the image changes (torch 2.11, numpy 2.5, safetensors 0.8,
# sentencepiece 0.2, huggingface_hub 1.x, scipy 1.18, the carried pydantic/webdataset/open_clip):
# the step and its micro-batches, the solver, the plugins, the data, export/load, evaluation, the
# memory plan and the check's own tools (its end-to-end rehearsal, tests/e2e/test_gpu_check.py, just
# ran: not listed). The worst pass differs in what the install meets (pip, setuptools,
# typing_extensions): it runs the install, the rehearsal and the quick files. Not part of `make test`.
tests_image=(tests/benchmarks/test_gpu_tools.py tests/repo/test_make.py tests/train/test_plan.py
             tests/train/test_passes.py tests/core/test_batch_types.py tests/core/test_zoning.py
             tests/benchmarks/test_solver.py tests/core/test_alignment.py tests/plugins/image/test_image.py
             tests/plugins/label/test_label.py tests/plugins/text/test_text.py tests/data/test_loader.py
             tests/benchmarks/test_loader.py tests/data/test_shards.py tests/data/test_digits.py
             tests/data/test_convert.py tests/io/test_export.py tests/core/test_model.py
             tests/core/test_package.py tests/eval/test_metrics.py tests/eval/test_protocol.py
             tests/eval/test_training.py tests/plugins/image/test_features.py tests/cli/test_eval.py
             tests/plugins/image/test_official.py tests/recipe/test_recipe.py tests/core/test_plugins.py
             tests/core/test_kit.py tests/graphs/test_compose.py)
tests_worst=(tests/benchmarks/test_gpu_tools.py tests/repo/test_make.py tests/core/test_batch_types.py
             tests/recipe/test_recipe.py tests/core/test_plugins.py tests/core/test_kit.py
             tests/core/test_zoning.py tests/benchmarks/test_solver.py)

find_py312() {
  local c
  for c in "${PY312:-}" python3.12 "$(pyenv root 2>/dev/null)"/versions/3.12*/bin/python3.12; do
    [[ -n $c ]] && "$c" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null && { echo "$c"; return; }
  done
  echo "gpu_rehearse: no Python 3.12 (set PY312=/path/to/python3.12)" >&2
  return 1
}

t0=$(date +%s)
py312=$(find_py312)
echo "gpu_rehearse: carry/ (benchmarks/gpu_carry.sh)"
PY=$py312 bash benchmarks/gpu_carry.sh carry

mkdir -p "$standin"
exec 9>"$standin.lock"
flock 9  # one rehearsal at a time per stand-in
venv=$standin/venv
vpy=$venv/bin/python
if [[ ! -x $vpy ]]; then
  echo "gpu_rehearse: building the stand-in venv at $venv (once; torch's CUDA wheels are a few GB)"
  "$py312" -m venv "$venv"
fi

to_pins() {  # the venv holds exactly the pins (worst: with the WORST line's versions)
  local plan drop=() add=() line
  plan=$("$vpy" benchmarks/_carry.py standin benchmarks/gpu_image.txt "$@")
  while read -r verb what; do
    [[ -z $verb ]] && continue
    if [[ $verb == uninstall ]]; then drop+=("$what"); else add+=("$what"); fi
  done <<<"$plan"
  for line in "${add[@]}"; do  # pip first: the one that installs the rest
    [[ $line == pip==* ]] && "$vpy" -m pip install -q "$line"
  done
  ((${#drop[@]})) && "$vpy" -m pip uninstall -q -y "${drop[@]}"
  local rest=()
  for line in "${add[@]}"; do [[ $line == pip==* ]] || rest+=("$line"); done
  ((${#rest[@]})) && "$vpy" -m pip install -q --no-deps "${rest[@]}"
  plan=$("$vpy" benchmarks/_carry.py standin benchmarks/gpu_image.txt "$@")
  [[ -z $plan ]] || { echo "gpu_rehearse: the stand-in still differs from the pins: $plan" >&2; return 1; }
}

failed=()
for pass in "${passes[@]}"; do
  case $pass in
    image) extra=() tests=("${tests_image[@]}") ;;
    worst) extra=(worst) tests=("${tests_worst[@]}") ;;
    *) echo "gpu_rehearse: unknown pass $pass (image, worst)" >&2; exit 2 ;;
  esac
  t=$(date +%s)
  echo "gpu_rehearse: [$pass] the stand-in to benchmarks/gpu_image.txt ${extra[*]}"
  to_pins "${extra[@]}" 2>&1 | grep -v "is ignored: it is neither" || true
  "$vpy" benchmarks/_carry.py standin benchmarks/gpu_image.txt "${extra[@]}" | grep -q . && { failed+=("$pass: stand-in"); continue; }
  work=$(mktemp -d "${TMPDIR:-/tmp}/lzn-rehearse-$pass.XXXX")
  echo "gpu_rehearse: [$pass] bash benchmarks/gpu_check.sh --rehearse (work: $work)"
  if ! env -u VIRTUAL_ENV PATH="$venv/bin:$PATH" PY="$vpy" WORK="$work" OUT="$work/out" BUDGET="${REHEARSE_BUDGET:-5000}" \
      bash benchmarks/gpu_check.sh --rehearse 2>&1 | tee "$work/check.log"; then
    failed+=("$pass: gpu_check.sh --rehearse (log: $work/check.log)")
  fi
  echo "gpu_rehearse: [$pass] the GPU-relevant tests on the stand-in"
  if ! env -u VIRTUAL_ENV PATH="$venv/bin:$PATH" OMP_NUM_THREADS=1 DS_ACCELERATOR=cpu HF_HUB_OFFLINE=1 \
      "$vpy" -m pytest -q -p no:cacheprovider "${tests[@]}" 2>&1 | tee "$work/tests.log" | tail -n 25; then
    failed+=("$pass: tests (log: $work/tests.log)")
  fi
  echo "gpu_rehearse: [$pass] done in $(($(date +%s) - t)) s"
done

echo "gpu_rehearse: $(($(date +%s) - t0)) s in all"
if ((${#failed[@]})); then
  printf 'gpu_rehearse: FAILED %s\n' "${failed[@]}" >&2
  exit 1
fi
echo "gpu_rehearse: passed (${passes[*]})"
