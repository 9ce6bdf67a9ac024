#!/usr/bin/env bash
# The installs of the GPU check (issue 24): one script for the device run (gpu_check.sh) and its
# rehearsal on a stand-in of the GPU image (gpu_rehearse.sh), so the rehearsal cannot skip what the
# device does.
#   PY=python3 bash benchmarks/gpu_install.sh [CARRY]     # default carry/ (benchmarks/gpu_carry.sh)
# Offline and hermetic: pip reads no configuration file and no index, only CARRY. Then:
#  1. CARRY holds every pin of gpu_carry.txt, one version each (two stop pip);
#  2. the carried wheels the interpreter lacks, or holds older, are installed with --no-deps (the
#     image's torch, numpy, ... stay as they are; nothing is downgraded);
#  3. DeepSpeed from its source archive with DS_BUILD_OPS=0, built against the image's torch
#     (--no-build-isolation: its setup.py imports torch), unless that version is there;
#  4. the project, editable, unless this interpreter already has THIS checkout installed editable
#     (read from the distribution's direct_url.json in a process started outside the checkout:
#     from its root, `import lzn_core` succeeds without any install). Built in pip's isolated build
#     environment from CARRY/build (setuptools >= 77 reads the PEP 639 license), whatever
#     setuptools the image holds;
#  5. every module the check imports is imported from outside the checkout, and the entry points
#     of the built-in plugins are registered.
# pip's output goes to $WORK/install.log (shown on failure), so the caller's first lines are its own.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
py=${PY:-python3}
pyabs=$(command -v "$py" || true)
[[ -n $pyabs ]] || { echo "gpu_install: no interpreter $py" >&2; exit 1; }
[[ $pyabs == /* ]] || pyabs="$repo/$pyabs"
carry=$(cd "${1:-carry}" 2>/dev/null && pwd) || { echo "gpu_install: no folder ${1:-carry}: run bash benchmarks/gpu_carry.sh here first" >&2; exit 1; }
log=${WORK:-$(mktemp -d)}/install.log
mkdir -p "$(dirname "$log")"
: >"$log"
export PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_ROOT_USER_ACTION=ignore
unset PIP_FIND_LINKS PIP_EXTRA_INDEX_URL PIP_INDEX_URL PIP_CONSTRAINT PIP_REQUIREMENT PIP_TARGET PIP_PREFIX
outside() { (cd / && "$pyabs" "$@"); }
step() {  # step WHAT CMD...: run CMD, its output to the log; on failure the log's tail and exit 1
  local what=$1; shift
  echo "== $what: $*" >>"$log"
  if ! "$@" >>"$log" 2>&1; then
    echo "gpu_install: $what failed; the end of $log:" >&2
    tail -n 30 "$log" >&2
    exit 1
  fi
}

step "carry check" "$pyabs" benchmarks/_carry.py check "$carry"
mapfile -t wanted < <("$pyabs" benchmarks/_carry.py select "$carry")
if ((${#wanted[@]})); then
  step "carried wheels" "$pyabs" -m pip install --no-index --no-deps --upgrade "${wanted[@]}"
fi
ds_version=$("$pyabs" benchmarks/_carry.py pins source | sed -n 's/^deepspeed==//p')
if ! outside -c "import importlib.metadata as m, sys; sys.exit(m.version('deepspeed') != '$ds_version')" 2>/dev/null; then
  step "deepspeed $ds_version" env DS_BUILD_OPS=0 DS_BUILD_SHM_COMM=0 "$pyabs" -m pip install --no-index \
    --no-deps --no-build-isolation "$carry/deepspeed-$ds_version.tar.gz"
fi
if ! outside "$repo/benchmarks/_carry.py" editable "$repo"; then
  step "lzn (editable)" "$pyabs" -m pip install --no-index --find-links "$carry/build" --no-deps -e "$repo"
fi
step "imports" outside -c "
import importlib.metadata as m
from pathlib import Path
import deepspeed, open_clip, pydantic, webdataset, wids, lzn_core, lzn_image, lzn_label, lzn_recipes, lzn_text
assert Path(lzn_core.__file__).resolve().is_relative_to(Path('$repo').resolve()), lzn_core.__file__
names = {ep.name for ep in m.entry_points(group='lzn')}
assert {'image', 'label', 'text'} <= names, names
"
