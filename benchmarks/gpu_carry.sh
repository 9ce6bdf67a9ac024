#!/usr/bin/env bash
# What the GPU check must carry to a GPU machine that has no network (issue 16), made here:
#   bash benchmarks/gpu_carry.sh [DIR]      # default carry/ (git-ignored), about 7 MiB
# The wheels of the project's dependencies that the machine's image lacks (DEVELOPERS.md:
# Python 3.12 with torch, numpy, pluggy, ...; no deepspeed, pydantic, webdataset, open_clip), at
# the versions this checkout's .venv runs, and DeepSpeed's source archive (it has no wheel; the
# check builds it there with DS_BUILD_OPS=0). torch is never carried: the machine's own is used.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-carry}
py=${PY:-.venv/bin/python}
binary=(pydantic pydantic-core annotated-types typing-inspection webdataset wids braceexpand hjson
        open-clip-torch ftfy wcwidth)
pins() { "$py" -c 'import sys, importlib.metadata as m; print(" ".join(f"{n}=={m.version(n)}" for n in sys.argv[1:]))' "$@"; }
mkdir -p "$dir"
# shellcheck disable=SC2046
"$py" -m pip download -q --no-deps -d "$dir" --python-version 3.12 --platform manylinux2014_x86_64 \
  --only-binary=:all: $(pins "${binary[@]}")
# shellcheck disable=SC2046
"$py" -m pip download -q --no-deps --no-binary=:all: -d "$dir" $(pins deepspeed)
du -sh "$dir"
